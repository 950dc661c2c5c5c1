//! GCRA ("virtual scheduling") arithmetic, shared by the kernel program, the model and the daemon.
//!
//! GCRA keeps one `u64` per bucket (the theoretical arrival time, TAT), so the kernel can
//! update it with a single compare-and-swap no matter how many CPUs see the same source.

use crate::maps::RateRule;

const NS_PER_SEC: u64 = 1_000_000_000;

/// Highest configurable rate: one packet per nanosecond.
pub const MAX_PPS: u64 = NS_PER_SEC;
/// Highest configurable burst; keeps `tolerance_ns` far from overflow.
pub const MAX_BURST: u64 = 1 << 24;

impl RateRule {
    /// No limit.
    pub const UNLIMITED: RateRule = RateRule { interval_ns: 0, tolerance_ns: 0 };

    /// `pps` packets per second with bursts of up to `burst` packets.
    ///
    /// Callers validate `1 <= pps <= MAX_PPS` and `1 <= burst <= MAX_BURST`; out-of-range
    /// values are clamped rather than trusted.
    pub const fn from_rate(pps: u64, burst: u64) -> RateRule {
        let pps = clamp(pps, 1, MAX_PPS);
        let burst = clamp(burst, 1, MAX_BURST);
        let interval_ns = NS_PER_SEC / pps;
        RateRule { interval_ns, tolerance_ns: interval_ns * (burst - 1) }
    }

    /// Packets per second this rule admits (0 when unlimited).
    pub fn pps(&self) -> u64 {
        NS_PER_SEC.checked_div(self.interval_ns).unwrap_or(0)
    }

    /// Burst size this rule admits (0 when unlimited).
    pub fn burst(&self) -> u64 {
        self.tolerance_ns.checked_div(self.interval_ns).map_or(0, |b| b + 1)
    }

    pub const fn is_unlimited(&self) -> bool {
        self.interval_ns == 0
    }

    /// One GCRA step: the new TAT if a packet arriving at `now_ns` conforms, `None` if it is
    /// over the limit (the TAT then stays as it is).
    #[inline(always)]
    pub const fn admit(&self, tat_ns: u64, now_ns: u64) -> Option<u64> {
        let tat = if tat_ns > now_ns { tat_ns } else { now_ns };
        if tat - now_ns > self.tolerance_ns { None } else { Some(tat + self.interval_ns) }
    }

    /// The TAT as this rule sees it at `now_ns`. Under one rule the TAT never runs further
    /// ahead than `now + tolerance + interval`; one far beyond that was left by an earlier,
    /// more generous rule (say a burst of thousands) and would hold the source back until it
    /// came due, minutes after the operator changed the rule. Bringing it back to that
    /// horizon judges the source as one that has just spent its whole burst under the current
    /// rule, so a changed rate or burst binds from the next packet (the source then waits at
    /// most one interval plus [`RULE_CHANGE_SLACK_NS`]).
    ///
    /// It never admits a packet by itself, and it is monotonic in `now`, like GCRA. The slack
    /// keeps a CPU whose clock read came just before another CPU advanced the TAT from taking
    /// the fresh TAT for a leftover and lowering it, which would leak rate.
    #[inline(always)]
    pub const fn rebase(&self, tat_ns: u64, now_ns: u64) -> u64 {
        let horizon = now_ns.saturating_add(self.tolerance_ns).saturating_add(self.interval_ns);
        if tat_ns > horizon.saturating_add(RULE_CHANGE_SLACK_NS) { horizon } else { tat_ns }
    }
}

/// Ticks of the coarse clock a rule's tolerance must span for the program to read that clock.
/// A coarse reading stands still for a tick and then jumps by one; GCRA carries over a jump
/// no larger than the tolerance exactly, but one larger refills only the burst, so a rule
/// whose burst lasts less than a tick (100,000 pps in bursts of 100: 1 ms) would admit only
/// its burst each tick. Four ticks leave room for ticks the host delays.
pub const COARSE_TICKS: u64 = 4;
/// Ticks a rule's interval must span for the coarse clock to do without a tolerance: each
/// admission then comes at most a tick late, which costs at most 1% of the rate.
pub const COARSE_INTERVAL_TICKS: u64 = 100;

/// Whether every one of `rules` holds its rate on a clock of `tick_ns` resolution: exactly,
/// when its tolerance spans [`COARSE_TICKS`], or to within 1%, when its interval spans
/// [`COARSE_INTERVAL_TICKS`] (one packet a second, say, at any burst).
pub fn coarse_clock_fits<'a>(rules: impl IntoIterator<Item = &'a RateRule>, tick_ns: u64) -> bool {
    rules.into_iter().all(|r| {
        r.is_unlimited()
            || r.tolerance_ns >= COARSE_TICKS.saturating_mul(tick_ns)
            || r.interval_ns >= COARSE_INTERVAL_TICKS.saturating_mul(tick_ns)
    })
}

/// How far past the current rule's horizon a TAT must be before [`RateRule::rebase`] takes it
/// for a leftover of an earlier rule: far more than two CPUs' clock reads can differ by, which
/// is all a concurrent update can account for. Under `FLAG_COARSE_CLOCK` the program reads the
/// coarse clock, so one CPU's read may be a whole tick (up to 10 ms at `HZ=100`) behind
/// another's, and a switch from the fine clock to the coarse one steps back by up to a tick;
/// delays of the timekeeping tick on a busy virtual machine stay well inside this too.
pub const RULE_CHANGE_SLACK_NS: u64 = 100_000_000;

const fn clamp(v: u64, lo: u64, hi: u64) -> u64 {
    if v < lo {
        lo
    } else if v > hi {
        hi
    } else {
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_steady_rate() {
        let rule = RateRule::from_rate(10, 3);
        let mut tat = 0;
        let now = 1_000_000_000;
        for _ in 0..3 {
            tat = rule.admit(tat, now).expect("burst admits three");
        }
        assert_eq!(rule.admit(tat, now), None, "fourth packet at once is over the limit");
        assert!(rule.admit(tat, now + 100_000_000).is_some(), "one interval later one more fits");
    }

    #[test]
    fn the_coarse_clock_fits_rules_whose_burst_spans_the_ticks() {
        let tick = 4_000_000;
        assert!(coarse_clock_fits([&RateRule::from_rate(1000, 50)], tick), "49 ms");
        assert!(coarse_clock_fits([&RateRule::UNLIMITED], tick), "no limit, no clock");
        assert!(!coarse_clock_fits([&RateRule::from_rate(100_000, 100)], tick), "990 µs");
        assert!(coarse_clock_fits([&RateRule::from_rate(1, 1)], tick), "1 pps: a tick is 0.4%");
        let mixed = [RateRule::from_rate(10, 10), RateRule::from_rate(100, 1)];
        assert!(!coarse_clock_fits(&mixed, tick), "10 ms intervals, no burst: fine clock");
    }

    #[test]
    fn pps_and_burst_round_trip() {
        let rule = RateRule::from_rate(2000, 50);
        assert_eq!((rule.pps(), rule.burst()), (2000, 50));
        assert!(RateRule::UNLIMITED.is_unlimited());
    }

    #[test]
    fn a_changed_rule_binds_on_the_next_packet() {
        // Regression: a source that spent a generous burst under the old rule (TAT far ahead)
        // was held back until that TAT came due, minutes after the operator raised its rate.
        let old = RateRule::from_rate(1, 1000);
        let mut now = 1_000_000_000;
        let mut tat = 0;
        for _ in 0..1000 {
            tat = old.admit(tat, now).expect("within the old burst");
        }
        assert!(tat > now + 900 * 1_000_000_000, "the old rule left the TAT far ahead");
        let new = RateRule::from_rate(1000, 10);
        let tat = new.rebase(tat, now);
        assert_eq!(new.admit(tat, now), None, "judged as a source that has spent its new burst");
        now += new.interval_ns;
        assert!(new.admit(new.rebase(tat, now), now).is_some(), "one new interval later it passes");
    }

    proptest::proptest! {
        /// After any rule change, a sender waits at most one interval of the new rule (plus the
        /// slack) from its first packet, and then gets no more than the new rule's burst at
        /// once.
        #[test]
        fn new_rule_applies_from_the_next_interval(
            old_pps in 1u64..10_000, old_burst in 1u64..5000,
            pps in 1u64..100_000, burst in 1u64..1000, warmup in 0usize..6000,
        ) {
            let (old, new) = (RateRule::from_rate(old_pps, old_burst), RateRule::from_rate(pps, burst));
            let start = 5_000_000_000u64;
            let mut tat = 0u64;
            for _ in 0..warmup {
                if let Some(t) = old.admit(tat, start) { tat = t; }
            }
            // The first packet after the change, and if it is over the new limit (its rebased
            // TAT is kept), a retry one new interval later.
            let base = new.rebase(tat, start);
            let retry = start + new.interval_ns + RULE_CHANGE_SLACK_NS;
            let (now, admitted) = match new.admit(base, start) {
                Some(t) => (start, Some(t)),
                None => (retry, new.admit(new.rebase(base, retry), retry)),
            };
            proptest::prop_assert!(admitted.is_some(), "held back past one new interval");
            let mut tat = admitted.unwrap();
            let mut passed = 1u64;
            for i in 1..=2 * burst {
                if let Some(t) = new.admit(new.rebase(tat, now + i), now + i) { tat = t; passed += 1; }
            }
            proptest::prop_assert!(passed <= burst + 1, "passed {passed} > burst {burst} + 1");
        }

        /// Under one rule, rebasing never moves the TAT, whatever the traffic, even seen by a
        /// CPU whose clock read lags the update by up to the slack.
        #[test]
        fn rebase_is_a_no_op_under_one_rule(pps in 1u64..100_000, burst in 1u64..1000, lag in 0u64..=RULE_CHANGE_SLACK_NS, gaps in proptest::collection::vec(0u64..2_000_000, 1..500)) {
            let rule = RateRule::from_rate(pps, burst);
            let (mut now, mut tat) = (5_000_000_000u64, 0u64);
            for gap in gaps {
                now += gap;
                proptest::prop_assert_eq!(rule.rebase(tat, now - lag), tat);
                if let Some(t) = rule.admit(tat, now) { tat = t; }
            }
        }

        /// Over any window, a saturating sender gets at most `rate * window + burst` through.
        #[test]
        fn never_exceeds_rate_plus_burst(pps in 1u64..100_000, burst in 1u64..1000, gaps in proptest::collection::vec(0u64..2_000_000, 1..2000)) {
            let rule = RateRule::from_rate(pps, burst);
            let start = 5_000_000_000u64;
            let (mut now, mut tat, mut passed) = (start, 0u64, 0u64);
            for gap in gaps {
                now += gap;
                if let Some(t) = rule.admit(tat, now) { tat = t; passed += 1; }
            }
            let allowed = (now - start) / rule.interval_ns + burst;
            proptest::prop_assert!(passed <= allowed, "passed {passed} > allowed {allowed}");
        }
    }
}

/// The override keys a packet is matched against, most specific first: port + SYN, port,
/// any port + SYN, any port. The first one present in `SG_LIMITS` applies; if none is, the
/// default limit does. Returns the keys and how many are valid.
#[inline(always)]
pub const fn candidates(proto: u8, dport: u16, syn: bool) -> ([crate::maps::LimitKey; 4], usize) {
    use crate::maps::LimitKey;
    let mut keys = [LimitKey::DEFAULT; 4];
    let mut n = 0;
    if dport != 0 {
        if syn {
            keys[n] = LimitKey { port: dport, proto, syn_only: 1 };
            n += 1;
        }
        keys[n] = LimitKey { port: dport, proto, syn_only: 0 };
        n += 1;
    }
    if syn {
        keys[n] = LimitKey { port: 0, proto, syn_only: 1 };
        n += 1;
    }
    keys[n] = LimitKey { port: 0, proto, syn_only: 0 };
    n += 1;
    (keys, n)
}

/// Where `SG_OVERRIDE_PORTS` records that `SG_LIMITS` holds a key for TCP or UDP `port`
/// (0: any port), SYN-only or not: the word and the bit in it. The program tests the bit of
/// each candidate's port before its hash lookup, so a packet to a port no override names
/// (while its protocol has no any-port rule) costs up to four loads instead of as many hash
/// misses. `None` for protocols without ports (ICMP), whose one candidate is looked up
/// directly.
pub const fn override_port_bit(proto: u8, port: u16) -> Option<(u32, u64)> {
    let base = match proto {
        crate::net::IPPROTO_TCP => 0,
        crate::net::IPPROTO_UDP => crate::maps::OVERRIDE_PORT_WORDS / 2,
        _ => return None,
    };
    Some((base + port as u32 / 64, 1 << (port % 64)))
}

#[cfg(test)]
mod candidate_tests {
    use super::{candidates, override_port_bit};
    use crate::{
        maps::{LimitKey, OVERRIDE_PORT_WORDS},
        net::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP},
    };

    #[test]
    fn every_tcp_and_udp_port_has_a_bit_of_its_own() {
        let mut seen = [0u64; OVERRIDE_PORT_WORDS as usize];
        for proto in [IPPROTO_TCP, IPPROTO_UDP] {
            for port in 0..=u16::MAX {
                let (word, bit) = override_port_bit(proto, port).expect("ports");
                assert!(bit.is_power_of_two());
                let word = &mut seen[word as usize];
                assert_eq!(*word & bit, 0, "proto {proto} port {port} shares a bit");
                *word |= bit;
            }
        }
        assert!(seen.iter().all(|w| *w == u64::MAX), "every bit is some port's");
        assert_eq!(override_port_bit(IPPROTO_ICMP, 0), None);
        assert_eq!(override_port_bit(IPPROTO_ICMPV6, 0), None);
    }

    #[test]
    fn most_specific_first() {
        let (keys, n) = candidates(6, 443, true);
        let k = |port, syn_only| LimitKey { port, proto: 6, syn_only };
        assert_eq!(&keys[..n], &[k(443, 1), k(443, 0), k(0, 1), k(0, 0)]);
        let (keys, n) = candidates(1, 0, false);
        assert_eq!(&keys[..n], &[LimitKey { port: 0, proto: 1, syn_only: 0 }]);
    }
}
