//! Reference model of the XDP decision: `(config, tables, frame, now) → (verdict, new state)`.
//!
//! The kernel program mirrors this logic with verifier-friendly code; the differential test
//! feeds both the same frames and map contents and requires identical verdicts and limiter
//! state. Keep this version obvious: it is the specification.

mod parse;

pub use parse::{L4, Packet, Parsed, parse};

use crate::limit::candidates;
use crate::maps::{
    BucketKey, DatapathConfig, DenyEntry, FLAG_DROP_FRAGMENTS, FLAG_NO_ALLOW, FLAG_PASS_MALFORMED,
    LimitKey, MODE_MONITOR, OverLimitEvent, RateRule, SourceState,
};
use crate::verdict::{Action, Reason, Verdict};

/// The map contents the decision reads and writes.
pub trait Tables {
    /// Whether any allowlist prefix covers `addr`.
    fn allowed(&self, family: u8, addr: &[u8; 16]) -> bool;
    /// The ban in force for `addr`: of all bans covering it, the one that lasts longest
    /// ([`DenyEntry::outlasting`]), so that no ban hides another. The kernel meets this with
    /// a host lookup and one longest-prefix lookup because the daemon writes every entry with
    /// that expiry.
    fn denied(&self, family: u8, addr: &[u8; 16]) -> Option<DenyEntry>;
    /// An override rule.
    fn rule(&self, key: &LimitKey) -> Option<RateRule>;
    fn source(&self, key: &BucketKey) -> Option<SourceState>;
    fn set_source(&mut self, key: &BucketKey, state: SourceState);
    /// This CPU's event-budget TAT.
    fn event_budget(&mut self) -> &mut u64;
}

/// Verdict plus the limiter bucket the packet was counted against and the event it raised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub verdict: Verdict,
    /// Set when the packet reached a limited bucket (whether it passed or not).
    pub bucket: Option<BucketKey>,
    /// The packet created its bucket (counted in `STATS_NEW_BUCKETS`).
    pub created: bool,
    pub event: Option<OverLimitEvent>,
}

/// Decides one frame at `now_ns`, updating limiter state in `tables`.
pub fn decide(
    cfg: &DatapathConfig,
    tables: &mut impl Tables,
    frame: &[u8],
    now_ns: u64,
) -> Outcome {
    let j = match parse(frame) {
        Parsed::NonIp => Judged::reason(Reason::NonIp),
        Parsed::Malformed => Judged::reason(Reason::Malformed),
        Parsed::Ip(pkt) => judge(cfg, tables, &pkt, now_ns),
    };
    Outcome {
        verdict: verdict(cfg, j.reason),
        bucket: j.bucket,
        created: j.created,
        event: j.event,
    }
}

/// A reason and what the limiter did, before the mode turns the reason into an action.
struct Judged {
    reason: Reason,
    bucket: Option<BucketKey>,
    created: bool,
    event: Option<OverLimitEvent>,
}

impl Judged {
    fn reason(reason: Reason) -> Judged {
        Judged { reason, bucket: None, created: false, event: None }
    }
}

/// Turns a reason into an action under the configured mode and flags.
pub fn verdict(cfg: &DatapathConfig, reason: Reason) -> Verdict {
    let pass = !reason.drops()
        || cfg.mode == MODE_MONITOR
        || (reason == Reason::Malformed && cfg.flags & FLAG_PASS_MALFORMED != 0);
    Verdict { reason, action: if pass { Action::Pass } else { Action::Drop } }
}

fn judge(cfg: &DatapathConfig, tables: &mut impl Tables, pkt: &Packet, now_ns: u64) -> Judged {
    if cfg.flags & FLAG_NO_ALLOW == 0 && tables.allowed(pkt.family, &pkt.src) {
        return Judged::reason(Reason::Allow);
    }
    if let Some(entry) = tables.denied(pkt.family, &pkt.src)
        && entry.active(now_ns)
    {
        return Judged::reason(Reason::Deny);
    }
    if pkt.fragment && cfg.flags & FLAG_DROP_FRAGMENTS != 0 {
        return Judged::reason(Reason::Fragment);
    }
    let (limit, rule) = select_rule(cfg, tables, pkt);
    if rule.is_unlimited() {
        return Judged::reason(Reason::Pass);
    }
    let key = bucket_key(cfg, pkt, limit);
    let mut judged = limit_bucket(cfg, tables, &key, &rule, now_ns);
    judged.bucket = Some(key);
    judged
}

/// One GCRA step on `key`'s bucket, creating it on first sight.
fn limit_bucket(
    cfg: &DatapathConfig,
    tables: &mut impl Tables,
    key: &BucketKey,
    rule: &RateRule,
    now_ns: u64,
) -> Judged {
    let Some(mut state) = tables.source(key) else {
        let fresh = SourceState { tat_ns: now_ns + rule.interval_ns, event_stamp: 0 };
        tables.set_source(key, fresh);
        let mut judged = Judged::reason(Reason::Pass);
        judged.created = true;
        return judged;
    };
    let base = rule.rebase(state.tat_ns, now_ns);
    match rule.admit(base, now_ns) {
        Some(tat) => {
            state.tat_ns = tat;
            tables.set_source(key, state);
            Judged::reason(Reason::Pass)
        }
        None => {
            // A rebased TAT is kept, so the source waits one interval of the current rule.
            state.tat_ns = base;
            let mut judged = Judged::reason(Reason::Rate);
            judged.event = over_limit_event(cfg, &mut state, tables.event_budget(), key, now_ns);
            tables.set_source(key, state);
            judged
        }
    }
}

/// The fragment limit for non-first fragments; otherwise the first override present among
/// the packet's candidates, else the default limit.
fn select_rule(cfg: &DatapathConfig, tables: &impl Tables, pkt: &Packet) -> (LimitKey, RateRule) {
    if pkt.fragment {
        return (LimitKey::FRAGMENTS, cfg.fragment_rule);
    }
    if let Some(l4) = pkt.l4()
        && pkt.proto < 64
        && cfg.override_protos & (1 << pkt.proto) != 0
    {
        let (keys, n) = candidates(pkt.proto, l4.dport, l4.syn);
        for key in &keys[..n] {
            if let Some(rule) = tables.rule(key) {
                return (*key, rule);
            }
        }
    }
    (LimitKey::DEFAULT, cfg.default_rule)
}

/// The bucket a packet counts against: its source masked to the configured prefix.
pub fn bucket_key(cfg: &DatapathConfig, pkt: &Packet, limit: LimitKey) -> BucketKey {
    let [s0, s1] = pkt.src_words();
    let [m0, m1] = if pkt.family == crate::maps::FAMILY_V4 {
        let m = cfg.v4_mask;
        [u64::from_ne_bytes([m[0], m[1], m[2], m[3], 0, 0, 0, 0]), 0]
    } else {
        words(&cfg.v6_mask)
    };
    let mut addr = [0u8; 16];
    addr[..8].copy_from_slice(&(s0 & m0).to_ne_bytes());
    addr[8..].copy_from_slice(&(s1 & m1).to_ne_bytes());
    BucketKey { addr, family: pkt.family, _pad: [0; 3], limit }
}

/// An address as two words in memory order. Masking words, not bytes, is a fraction of the
/// datapath's instructions, and of its stack (the bytes were each spilled to it).
#[inline(always)]
fn words(addr: &[u8; 16]) -> [u64; 2] {
    let word = |i: usize| {
        let b = &addr[i * 8..i * 8 + 8];
        u64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    };
    [word(0), word(1)]
}

/// Emits an event when the bucket has been quiet for `event_interval_ns` and this CPU's
/// event budget admits one.
fn over_limit_event(
    cfg: &DatapathConfig,
    state: &mut SourceState,
    budget: &mut u64,
    key: &BucketKey,
    now_ns: u64,
) -> Option<OverLimitEvent> {
    if !crate::sources::event_due(state.event_stamp, now_ns, cfg.event_interval_ns) {
        return None;
    }
    *budget = cfg.event_budget.rebase(*budget, now_ns);
    *budget = cfg.event_budget.admit(*budget, now_ns)?;
    state.event_stamp = crate::sources::event_stamp(now_ns);
    Some(OverLimitEvent {
        addr: key.addr,
        family: key.family,
        _pad: [0; 3],
        limit: key.limit,
        ts_ns: now_ns,
    })
}

/// Builds the network-order mask for a prefix length over `N` bytes.
pub const fn prefix_mask<const N: usize>(prefix: u32) -> [u8; N] {
    let mut mask = [0u8; N];
    let mut i = 0;
    while i < N {
        let bits = prefix as i64 - (i as i64) * 8;
        mask[i] = if bits >= 8 {
            0xff
        } else if bits <= 0 {
            0
        } else {
            0xffu8 << (8 - bits)
        };
        i += 1;
    }
    mask
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec;

    use super::*;

    proptest::proptest! {
        /// Any byte string parses to a verdict without panicking; ones shorter than an
        /// Ethernet header are malformed.
        #[test]
        fn parse_never_panics(frame in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let parsed = parse(&frame);
            if frame.len() < crate::net::ETH_HLEN {
                proptest::prop_assert_eq!(parsed, Parsed::Malformed);
            }
        }

        /// Frames with an IP ethertype right after the MAC addresses never parse as non-IP.
        #[test]
        fn ip_ethertypes_are_judged(body in proptest::collection::vec(proptest::num::u8::ANY, 0..200), v6 in proptest::bool::ANY) {
            let mut frame = vec![0u8; 12];
            let ethertype = if v6 { crate::net::ETH_P_IPV6 } else { crate::net::ETH_P_IPV4 };
            frame.extend_from_slice(&ethertype.to_be_bytes());
            frame.extend_from_slice(&body);
            proptest::prop_assert_ne!(parse(&frame), Parsed::NonIp);
        }
    }
}
