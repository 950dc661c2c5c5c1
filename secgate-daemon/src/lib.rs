//! secgate daemon library.

/// The XDP object built from `secgate-ebpf` by this crate's build script.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/secgate"));
