//! Per-source GCRA limiter over the shared LRU map.
//!
//! One `u64` TAT per bucket, advanced with compare-and-swap, so a source whose flows RSS
//! spreads over several CPUs is still held to one rate. Buckets of the same source on other
//! CPUs race only for the CAS; the loser re-reads and retries.

use core::intrinsics::{AtomicOrdering, atomic_cxchg};

use aya_ebpf::bindings::BPF_NOEXIST;
use secgate_common::{
    limit::candidates,
    maps::{BucketKey, DatapathConfig, LimitKey, OverLimitEvent, RateRule, SourceState},
    model::{Packet, bucket_key},
    verdict::Reason,
};

use crate::{
    clock::Clock,
    maps::{SG_EVENTS, SG_EVT_BUDGET, SG_LIMITS, SG_SOURCES},
};

/// CAS attempts before a contended packet is let through: bounded for the verifier, and
/// more attempts than CPUs that can realistically collide on one bucket at once.
const CAS_ATTEMPTS: u32 = 8;

#[inline(always)]
pub fn check(cfg: &DatapathConfig, pkt: &Packet, clock: &mut Clock) -> Reason {
    let (limit, rule) = select_rule(cfg, pkt);
    if rule.is_unlimited() {
        return Reason::Pass;
    }
    let now = clock.now();
    let key = bucket_key(cfg, pkt, limit);
    let Some(state) = SG_SOURCES.get_ptr_mut(key) else {
        let fresh = SourceState { tat_ns: now + rule.interval_ns, last_event_ns: 0 };
        if SG_SOURCES.insert(key, fresh, BPF_NOEXIST as u64).is_ok() {
            return Reason::Pass;
        }
        // Another CPU created the bucket first: count against it.
        return match SG_SOURCES.get_ptr_mut(key) {
            Some(state) => admit(cfg, &key, state, &rule, now),
            None => Reason::Pass,
        };
    };
    admit(cfg, &key, state, &rule, now)
}

#[inline(always)]
fn select_rule(cfg: &DatapathConfig, pkt: &Packet) -> (LimitKey, RateRule) {
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
        let Some(next) = rule.admit(seen, now) else {
            over_limit(cfg, key, state, now);
            return Reason::Rate;
        };
        // SAFETY: as above; the kernel accepts BPF_CMPXCHG on map values.
        let (prev, ok) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                tat, seen, next,
            )
        };
        if ok {
            return Reason::Pass;
        }
        seen = prev;
    }
    Reason::Pass
}

/// Emits a sampled over-limit event: at most one per bucket per `event_interval_ns` and
/// within this CPU's event budget, so a flood cannot flood the daemon.
#[inline(always)]
fn over_limit(cfg: &DatapathConfig, key: &BucketKey, state: *mut SourceState, now: u64) {
    // SAFETY: `state` is a live map value; a racy read or write of `last_event_ns` only
    // changes which packet of a burst reports the event.
    let last = unsafe { (*state).last_event_ns };
    if last != 0 && now - last < cfg.event_interval_ns {
        return;
    }
    let Some(budget) = SG_EVT_BUDGET.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot owned by this CPU while the program runs.
    let Some(next) = cfg.event_budget.admit(unsafe { *budget }, now) else {
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
