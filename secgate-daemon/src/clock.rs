//! The clock the XDP program reads (`bpf_ktime_get_ns` is `CLOCK_MONOTONIC`), so ban
//! expiries written from userspace compare correctly in the kernel.

use std::time::Duration;

pub fn monotonic_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available on Linux");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

/// Monotonic deadline `ttl` from now.
pub fn deadline(ttl: Duration) -> u64 {
    monotonic_ns().saturating_add(ttl.as_nanos().min(u128::from(u64::MAX)) as u64)
}
