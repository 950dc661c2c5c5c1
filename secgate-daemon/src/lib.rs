//! secgate daemon library: config, datapath loading, map access and the control plane.
//! `main.rs` is only glue around these.

pub mod config;
pub mod maps;

/// The XDP object built from `secgate-ebpf` by this crate's build script.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/secgate"));
