//! Per-source GCRA limiter over the shared LRU map.
//!
//! One `u64` TAT per bucket, advanced with compare-and-swap, so a source whose flows RSS
//! spreads over several CPUs is still held to one rate. Buckets of the same source on other
//! CPUs race only for the CAS; the loser re-reads and retries.

use core::intrinsics::{AtomicOrdering, atomic_cxchg};

use aya_ebpf::bindings::BPF_NOEXIST;
use secgate_common::{
    limit::candidates,
    maps::{
        BucketKey, DatapathConfig, FLAG_DROP_FRAGMENTS, LimitKey, OverLimitEvent, RateRule,
        STATS_NEW_BUCKETS, SourceState,
    },
    model::{Packet, bucket_key},
    verdict::Reason,
};

use crate::{
    clock::Clock,
    maps::{SG_EVENTS, SG_EVT_BUDGET, SG_LIMITS, SG_SOURCES, count},
};

/// CAS attempts before a contended packet is let through (reason `contended`): bounded for
/// the verifier, and more attempts than CPUs that can realistically collide on one bucket.
const CAS_ATTEMPTS: u32 = 8;

#[inline(always)]
pub fn check(cfg: &DatapathConfig, pkt: &Packet, clock: &mut Clock) -> Reason {
    if pkt.fragment && cfg.flags & FLAG_DROP_FRAGMENTS != 0 {
        return Reason::Fragment;
    }
    let (limit, rule) = select_rule(cfg, pkt);
    if rule.is_unlimited() {
        return Reason::Pass;
    }
    let now = clock.now();
    let key = bucket_key(cfg, pkt, limit);
    let Some(state) = SG_SOURCES.get_ptr_mut(key) else {
        let fresh = SourceState { tat_ns: now + rule.interval_ns, last_event_ns: 0 };
        if SG_SOURCES.insert(key, fresh, BPF_NOEXIST as u64).is_ok() {
            count(STATS_NEW_BUCKETS, 0);
            return Reason::Pass;
        }
        // Another CPU created the bucket first: count against it. Should the LRU already have
        // evicted it again, the packet was let through by contention, not by the limit.
        return match SG_SOURCES.get_ptr_mut(key) {
            Some(state) => admit(cfg, &key, state, &rule, now),
            None => Reason::Contended,
        };
    };
    admit(cfg, &key, state, &rule, now)
}

#[inline(always)]
pub(crate) fn select_rule(cfg: &DatapathConfig, pkt: &Packet) -> (LimitKey, RateRule) {
    if pkt.fragment {
        return (LimitKey::FRAGMENTS, cfg.fragment_rule);
    }
    if let Some(l4) = pkt.l4
        && pkt.proto < 64
        && cfg.override_protos & (1u64 << pkt.proto) != 0
    {
        let (keys, n) = candidates(pkt.proto, l4.dport, l4.syn);
        for key in keys.iter().take(n) {
            // SAFETY: map values are plain data.
            if let Some(rule) = unsafe { SG_LIMITS.get(key) } {
                return (*key, *rule);
            }
        }
    }
    (LimitKey::DEFAULT, cfg.default_rule)
}

#[inline(always)]
fn admit(
    cfg: &DatapathConfig,
    key: &BucketKey,
    state: *mut SourceState,
    rule: &RateRule,
    now: u64,
) -> Reason {
    // SAFETY: `state` points at a live LRU map value; `tat_ns` is 8-byte aligned.
    let tat = unsafe { core::ptr::addr_of_mut!((*state).tat_ns) };
    let mut seen = unsafe { core::ptr::read_volatile(tat) };
    for _ in 0..CAS_ATTEMPTS {
        let base = rule.rebase(seen, now);
        let Some(next) = rule.admit(base, now) else {
            if base != seen {
                // Keep the rebased TAT (left by an earlier rule); losing this race only means
                // another CPU moved the TAT meanwhile.
                cas(tat, seen, base);
            }
            over_limit(cfg, key, state, now);
            return Reason::Rate;
        };
        let (prev, ok) = cas(tat, seen, next);
        if ok {
            return Reason::Pass;
        }
        seen = prev;
    }
    Reason::Contended
}

#[inline(always)]
fn cas(tat: *mut u64, seen: u64, next: u64) -> (u64, bool) {
    // SAFETY: `tat` points into a live map value; the kernel accepts BPF_CMPXCHG on map values.
    unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(tat, seen, next)
    }
}

/// Emits a sampled over-limit event: at most one per bucket per `event_interval_ns` and
/// within this CPU's event budget, so a flood cannot flood the daemon.
#[inline(always)]
fn over_limit(cfg: &DatapathConfig, key: &BucketKey, state: *mut SourceState, now: u64) {
    // SAFETY: `state` is a live map value; a racy read or write of `last_event_ns` only
    // changes which packet of a burst reports the event.
    let last = unsafe { (*state).last_event_ns };
    // Saturating: another CPU may have stamped a later event than this packet's clock read.
    if last != 0 && now.saturating_sub(last) < cfg.event_interval_ns {
        return;
    }
    let Some(budget) = SG_EVT_BUDGET.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot owned by this CPU while the program runs.
    let base = cfg.event_budget.rebase(unsafe { *budget }, now);
    unsafe { *budget = base };
    let Some(next) = cfg.event_budget.admit(base, now) else {
        return;
    };
    unsafe { *budget = next };
    unsafe { (*state).last_event_ns = now };
    if let Some(mut entry) = SG_EVENTS.reserve::<OverLimitEvent>(0) {
        entry.write(OverLimitEvent {
            addr: key.addr,
            family: key.family,
            _pad: [0; 3],
            limit: key.limit,
            ts_ns: now,
        });
        entry.submit(0);
    }
}
