//! The packet's arrival time, read at most once and only when a decision needs it (permanent
//! bans and unlimited sources never need it), from `CLOCK_MONOTONIC`: finely
//! (`bpf_ktime_get_ns`), or coarsely (`bpf_ktime_get_coarse_ns`, the time of the last tick)
//! when the daemon sets `FLAG_COARSE_CLOCK`. The fine read costs 40–70 ns on a virtual
//! machine, as much as a whole deny verdict (`cargo xtask bench cost`: an expiring ban
//! against a permanent one); the coarse one is a load. The coarse clock lags the fine one by
//! at most a tick (4 ms at `HZ=250`): a ban outlasts its expiry by that much at most, and a
//! bucket sees time advance a tick at a time, which holds its rate exactly as long as its
//! tolerance spans the jump; the daemon sets the flag only when every rule's does
//! (`secgate_common::limit::coarse_clock_fits`), as iptables' `hashlimit` has long counted
//! in jiffies.

use aya_ebpf::helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns};

pub struct Clock {
    coarse: bool,
    read: Option<u64>,
}

impl Clock {
    pub fn new(coarse: bool) -> Clock {
        Clock { coarse, read: None }
    }

    #[inline(always)]
    pub fn now(&mut self) -> u64 {
        let coarse = self.coarse;
        // SAFETY: BPF helpers without arguments or side effects.
        *self.read.get_or_insert_with(|| unsafe {
            if coarse { bpf_ktime_get_coarse_ns() } else { bpf_ktime_get_ns() }
        })
    }
}
