//! Time. Every expiry the daemon keeps or compares is on the clock the XDP program reads
//! (`CLOCK_MONOTONIC`, which the program reads a tick at a time under `FLAG_COARSE_CLOCK`:
//! [`datapath_ns`]), so the sweeper, `ban list` and the kernel agree to within a tick (the
//! kernel never lifts a ban before the daemon does) and a wall clock stepped by NTP or an
//! operator can neither stretch nor cut a ban short.
//! The state file keeps wall-clock expiries too, because a reboot restarts the monotonic
//! clock: they are converted to monotonic time once, at start, and from it at each save.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The clocks the daemon reads. Tests inject a wall clock with an offset; the monotonic
/// clock is always the kernel's, because the XDP program compares against it.
pub trait Clock: Send + Sync {
    fn wall(&self) -> SystemTime;

    fn monotonic_ns(&self) -> u64 {
        monotonic_ns()
    }
}

/// The system's clocks.
pub struct SystemClock;

impl Clock for SystemClock {
    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }
}

pub fn monotonic_ns() -> u64 {
    read(nix::time::ClockId::CLOCK_MONOTONIC)
}

/// The coarse monotonic clock (`CLOCK_MONOTONIC_COARSE`), which the XDP program reads under
/// `FLAG_COARSE_CLOCK`: at most a tick behind [`monotonic_ns`]. Whatever brackets the
/// program's coarse reads uses this one.
pub fn datapath_ns() -> u64 {
    read(nix::time::ClockId::CLOCK_MONOTONIC_COARSE)
}

/// The coarse clock's resolution: the kernel's tick.
pub fn coarse_tick_ns() -> u64 {
    let res = nix::time::clock_getres(nix::time::ClockId::CLOCK_MONOTONIC_COARSE)
        .expect("CLOCK_MONOTONIC_COARSE is always available on Linux");
    ns(res)
}

fn read(clock: nix::time::ClockId) -> u64 {
    ns(nix::time::clock_gettime(clock).expect("the monotonic clocks are always available on Linux"))
}

fn ns(ts: nix::sys::time::TimeSpec) -> u64 {
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

/// `now_ns + ttl` on the monotonic clock, saturating.
pub fn after(now_ns: u64, ttl: Duration) -> u64 {
    now_ns.saturating_add(ttl.as_nanos().min(u128::from(u64::MAX)) as u64)
}

/// The pairing of wall and monotonic time taken once at start, and the boot it belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Anchor {
    wall_ms: u64,
    mono_ns: u64,
    /// `/proc/sys/kernel/random/boot_id`: while it is unchanged, monotonic times saved by an
    /// earlier run are still valid and are used as they are.
    pub boot_id: Option<String>,
}

impl Anchor {
    pub fn take(clock: &dyn Clock) -> Anchor {
        Anchor { wall_ms: unix_ms(clock.wall()), mono_ns: clock.monotonic_ns(), boot_id: boot_id() }
    }

    /// Wall-clock Unix milliseconds of monotonic time `mono_ns`.
    pub fn to_unix_ms(&self, mono_ns: u64) -> u64 {
        let delta_ms = (i128::from(mono_ns) - i128::from(self.mono_ns)).div_euclid(1_000_000);
        (i128::from(self.wall_ms) + delta_ms).max(0) as u64
    }

    /// Monotonic time of wall-clock Unix milliseconds `unix_ms` (0 when that is before boot,
    /// which is in the past anyway).
    pub fn to_monotonic_ns(&self, unix_ms: u64) -> u64 {
        let delta_ns = (i128::from(unix_ms) - i128::from(self.wall_ms)) * 1_000_000;
        (i128::from(self.mono_ns) + delta_ns).clamp(0, i128::from(u64::MAX)) as u64
    }
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok().map(|s| s.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchor_round_trips_and_clamps() {
        let a = Anchor { wall_ms: 1_700_000_000_000, mono_ns: 5_000_000_000, boot_id: None };
        let mono = 65_000_000_000;
        assert_eq!(a.to_unix_ms(mono), 1_700_000_060_000);
        assert_eq!(a.to_monotonic_ns(a.to_unix_ms(mono)), mono);
        assert_eq!(a.to_monotonic_ns(1_000), 0, "before boot clamps to 0");
    }

    proptest::proptest! {
        /// Converting to wall time and back loses less than a millisecond.
        #[test]
        fn conversion_is_stable(wall in 0u64..4_000_000_000_000, mono in 0u64..1 << 60, t in 0u64..1 << 60) {
            let a = Anchor { wall_ms: wall, mono_ns: mono, boot_id: None };
            let back = a.to_monotonic_ns(a.to_unix_ms(t));
            proptest::prop_assert!(back <= t && t - back < 1_000_000 || a.to_unix_ms(t) == 0);
        }
    }
}
