//! Per-source GCRA limiter over the shared set-associative table (`secgate_common::sources`).
//!
//! One `u64` TAT per bucket, advanced with compare-and-swap, so a source whose flows RSS
//! spreads over several CPUs is still held to one rate. Buckets of the same source on other
//! CPUs race only for the CAS; the loser re-reads and retries. A new bucket claims its slot
//! with a compare-and-swap of the slot's tag, so two CPUs cannot both take one slot, and
//! under a lock chosen by its tag (`sources::ClaimLock`), so CPUs that see one new source at
//! once agree on one slot for it.
//!
//! The races left cost a packet's worth of accuracy, or a new bucket a debt it inherits, and
//! none lets a source out of its limit for longer: a packet that found its bucket just as another CPU
//! evicted it counts against the newcomer; a lapsed slot claimed just as its old owner came
//! back hands the newcomer that owner's TAT (the owner gets a fresh bucket); an eviction
//! whose TAT reset loses to the old owner's CAS leaves the newcomer the old owner's debt.

use core::intrinsics::{AtomicOrdering, atomic_cxchg};

use secgate_common::{
    limit::candidates,
    maps::{
        BucketKey, DatapathConfig, FLAG_DROP_FRAGMENTS, LimitKey, OverLimitEvent, RateRule,
        STATS_EVICTED_BUCKETS, STATS_NEW_BUCKETS,
    },
    model::{Packet, bucket_key},
    sources::{
        self, CLAIM_LOCKS, PICK_EVICT, PICK_FOUND, PICK_NONE, Pick, Place, SET_WAYS, SourceSlot,
    },
    verdict::Reason,
};

use crate::{
    clock::Clock,
    maps::{SG_CLAIMS, SG_EVENTS, SG_EVT_BUDGET, SG_PICK, SG_SOURCES, count, override_rule},
};

/// CAS attempts before a contended packet is let through (reason `contended`): bounded for
/// the verifier, and more attempts than CPUs that can realistically collide on one bucket.
const CAS_ATTEMPTS: u32 = 8;
/// Picks a CPU makes while another claims the same new bucket, before it lets the packet
/// through (`contended`): the claim is a pick and a compare-and-swap away.
const CLAIM_WAITS: u32 = 8;

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
    let place = sources::place(cfg.source_seed, cfg.source_sets, &key);
    let Some(scratch) = SG_PICK.get_ptr_mut(0) else {
        return Reason::Contended;
    };
    let pick = chosen(&place, now, scratch);
    let at = if pick.action == PICK_FOUND || pick.action == PICK_NONE {
        bucket(&place, &pick)
    } else {
        new_bucket(&place, &pick, now, scratch)
    };
    match at {
        Some(at) => admit(cfg, &key, at, &rule, now),
        None => Reason::Contended,
    }
}

/// [`choose`]'s pick, read back from this CPU's `scratch`.
#[inline(always)]
fn chosen(place: &Place, now: u64, scratch: *mut Pick) -> Pick {
    choose(place, now, scratch);
    // SAFETY: this CPU's slot, written just above.
    unsafe { core::ptr::read_volatile(scratch) }
}

/// The slot of a bucket `first` found no slot of, claimed under its lock
/// ([`sources::ClaimLock`]). Holding the lock, it looks again, for a claim that ended
/// between `first` and the lock. Finding the lock held for the same bucket, it looks until
/// the holder's claim shows (a few picks' time), and lets the packet through (`contended`)
/// should it not: counting it in a slot not yet the bucket's would charge it to the source
/// evicted from there. A bucket whose lock is held for another (tags colliding on it) is
/// claimed without the lock.
#[inline(always)]
fn new_bucket(
    place: &Place,
    first: &Pick,
    now: u64,
    scratch: *mut Pick,
) -> Option<*mut SourceSlot> {
    let lock = SG_CLAIMS.get_ptr_mut(place.tag % CLAIM_LOCKS)?;
    // SAFETY: `lock` points at a live, 8-aligned array value.
    let word = unsafe { core::ptr::addr_of_mut!((*lock).word) };
    let (held, locked) = cas_seen(word, 0, sources::claim_word(place.tag, first.index));
    if !locked {
        if sources::claimed_slot(held, place.tag).is_none() {
            return bucket(place, first);
        }
        for _ in 0..CLAIM_WAITS {
            let again = chosen(place, now, scratch);
            if again.action == PICK_FOUND {
                return bucket(place, &again);
            }
        }
        return None;
    }
    // Nothing from here to the unlock may return early: a lock left held would send every
    // new bucket of its tags down the unlocked path.
    let again = chosen(place, now, scratch);
    let at = bucket(place, if again.action == PICK_FOUND { &again } else { first });
    // SAFETY: as above. A claim made is ordered before this (a compare-and-swap is a full
    // barrier), so a CPU that takes the lock next finds its tag.
    unsafe { core::ptr::write_volatile(word, 0) };
    at
}

/// Writes to `out` where the bucket of `place` is or goes ([`sources::pick`]): through a
/// map, so the verifier walks the rest of the limiter once, not once per way of choosing
/// (see [`Pick`]). Its own frame keeps the limiter's stack within what BPF allows.
#[inline(never)]
fn choose(place: &Place, now: u64, out: *mut Pick) {
    let pick = match (SG_SOURCES.get_ptr(place.sets[0]), SG_SOURCES.get_ptr(place.sets[1])) {
        // SAFETY: both point at live array values. Other CPUs write them meanwhile, which
        // only misleads the choice; every change it leads to is a compare-and-swap.
        (Some(a), Some(b)) => unsafe { sources::pick([&*a, &*b], place.tag, now) },
        _ => Pick { action: PICK_NONE, ..Pick::default() },
    };
    // SAFETY: `out` is this CPU's slot of `SG_PICK`.
    unsafe { core::ptr::write_volatile(out, pick) };
}

/// The slot `pick` chose, claimed first if it is for a new bucket. None when the sets could
/// not be read or another CPU took the slot first.
#[inline(always)]
fn bucket(place: &Place, pick: &Pick) -> Option<*mut SourceSlot> {
    if pick.action == PICK_NONE {
        return None;
    }
    let (set, i) = pick.at();
    let set = SG_SOURCES.get_ptr_mut(if set == 0 { place.sets[0] } else { place.sets[1] })?;
    // SAFETY: `set` is a live array value of SET_WAYS slots and `i < SET_WAYS`.
    let at = unsafe { (set as *mut SourceSlot).add(i % SET_WAYS) };
    if pick.action != PICK_FOUND && !claim(at, pick, place.tag) {
        return None;
    }
    Some(at)
}

/// Takes the slot `at` for the bucket tagged `tag`, counted as a new bucket (and as an
/// eviction if it pushes out a live one), if it still holds the tag `pick` saw. An evicted
/// bucket's TAT, still ahead, is not the new one's: it is reset to 0 (a free slot's TAT has
/// passed, which GCRA reads as no bucket at all).
#[inline(always)]
fn claim(at: *mut SourceSlot, pick: &Pick, tag: u32) -> bool {
    // SAFETY: `at` points into a live array value; its fields are aligned.
    let (at_tag, tat) =
        unsafe { (core::ptr::addr_of_mut!((*at).tag), core::ptr::addr_of_mut!((*at).tat_ns)) };
    if !cas32(at_tag, pick.tag_seen, tag) {
        return false;
    }
    count(STATS_NEW_BUCKETS, 0);
    // SAFETY: as above; a racing writer of this field is the bucket evicted.
    unsafe { (*at).event_stamp = 0 };
    if pick.action == PICK_EVICT {
        count(STATS_EVICTED_BUCKETS, 0);
        cas(tat, pick.tat_seen, 0);
    }
    true
}

#[inline(always)]
pub(crate) fn select_rule(cfg: &DatapathConfig, pkt: &Packet) -> (LimitKey, RateRule) {
    if pkt.fragment {
        return (LimitKey::FRAGMENTS, cfg.fragment_rule);
    }
    if let Some(l4) = pkt.l4()
        && pkt.proto < 64
        && cfg.override_protos & (1u64 << pkt.proto) != 0
    {
        let (keys, n) = candidates(pkt.proto, l4.dport, l4.syn);
        for key in keys.iter().take(n) {
            if let Some(rule) = override_rule(key) {
                return (*key, rule);
            }
        }
    }
    (LimitKey::DEFAULT, cfg.default_rule)
}

/// In a frame of its own, beside [`choose`]'s, for the stack's sake.
#[inline(never)]
fn admit(
    cfg: &DatapathConfig,
    key: &BucketKey,
    state: *mut SourceSlot,
    rule: &RateRule,
    now: u64,
) -> Reason {
    // SAFETY: `state` points at a live array value; `tat_ns` is 8-byte aligned.
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
        let (prev, ok) = cas_seen(tat, seen, next);
        if ok {
            return Reason::Pass;
        }
        seen = prev;
    }
    Reason::Contended
}

#[inline(always)]
fn cas_seen(tat: *mut u64, seen: u64, next: u64) -> (u64, bool) {
    // SAFETY: `tat` points into a live map value; the kernel accepts BPF_CMPXCHG on map values.
    unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(tat, seen, next)
    }
}

#[inline(always)]
fn cas(tat: *mut u64, seen: u64, next: u64) -> bool {
    cas_seen(tat, seen, next).1
}

#[inline(always)]
fn cas32(tag: *mut u32, seen: u32, next: u32) -> bool {
    // SAFETY: as `cas_seen`, on a 4-byte field (BPF_W cmpxchg, eBPF v3).
    unsafe {
        atomic_cxchg::<u32, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(tag, seen, next)
            .1
    }
}

/// Emits a sampled over-limit event: at most one per bucket per `event_interval_ns` and
/// within this CPU's event budget, so a flood cannot flood the daemon.
#[inline(always)]
fn over_limit(cfg: &DatapathConfig, key: &BucketKey, state: *mut SourceSlot, now: u64) {
    // SAFETY: `state` is a live map value; a racy read or write of `event_stamp` only
    // changes which packet of a burst reports the event.
    let last = unsafe { (*state).event_stamp };
    if !sources::event_due(last, now, cfg.event_interval_ns) {
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
    unsafe { (*state).event_stamp = sources::event_stamp(now) };
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
