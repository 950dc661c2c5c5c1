//! Everything the XDP program and the daemon must agree on, defined once.
//!
//! `maps` holds map names, capacities and the `#[repr(C)]` key and value types;
//! `limit` the GCRA arithmetic; `sources` the per-source limiter table (where a bucket lives);
//! `hosts` the table of host bans;
//! `model` a plain-Rust reference of the per-packet decision that the kernel program mirrors
//! and the tests compare it against.
#![no_std]

pub mod hosts;
pub mod limit;
pub mod maps;
pub mod model;
pub mod net;
pub mod sources;
pub mod verdict;

#[cfg(feature = "user")]
mod pod;
