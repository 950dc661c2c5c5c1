//! The packet's arrival time, read at most once and only when a decision needs it:
//! `bpf_ktime_get_ns` costs about as much as the rest of a deny verdict, and permanent bans
//! and unlimited sources never need it.

use aya_ebpf::helpers::bpf_ktime_get_ns;

#[derive(Default)]
pub struct Clock(Option<u64>);

impl Clock {
    #[inline(always)]
    pub fn now(&mut self) -> u64 {
        // SAFETY: a BPF helper without arguments or side effects.
        *self.0.get_or_insert_with(|| unsafe { bpf_ktime_get_ns() })
    }
}
