//! secgate daemon library: config, datapath loading, map access, the policy and the one
//! service layer that changes it, and the control plane. `main.rs` is only glue.
//!
//! Data flows one way: config → daemon → service → policy → maps → XDP.

pub mod audit;
pub mod bans;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod escalate;
pub mod events;
pub mod fleet;
pub mod gateway;
pub mod link_watch;
pub mod lock;
pub mod maps;
pub mod metrics;
mod policy;
pub mod render;
pub mod service;
pub mod state;
pub mod token;
pub mod trace;
pub mod views;

pub use policy::PolicyError;

/// The XDP object built from `secgate-ebpf` by this crate's build script.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/secgate"));
