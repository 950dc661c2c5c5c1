//! secgate daemon library: config, datapath loading, map access, policy and the control
//! plane. `main.rs` is only glue around these.

pub mod audit;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod events;
pub mod maps;
pub mod metrics;
pub mod policy;
pub mod render;
pub mod shared;
pub mod state;

/// The XDP object built from `secgate-ebpf` by this crate's build script.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/secgate"));
