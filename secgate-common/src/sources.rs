//! The per-source limiter table: where a bucket lives, and which slot a new one takes.
//!
//! A flood from a million sources makes the limiter's map lookup the whole cost of a packet:
//! a hash map (LRU or not) is a walk of dependent cache misses, the bucket array, then the
//! element (whose 24-byte key and list links span a second line). This table is a
//! `BPF_MAP_TYPE_ARRAY` of [`SourceSet`]s, one cache line each (the map is made
//! `BPF_F_MMAPABLE`, which page-aligns its values), holding [`SET_WAYS`] slots of a 32-bit tag
//! and a TAT. A bucket may live in either of two sets chosen by a keyed hash of its key
//! ("two choices": a new bucket goes to the emptier set, which keeps sets from overflowing
//! at the load [`sets_for`] sizes for), so a lookup reads one line, or two that do not
//! depend on each other.
//!
//! A slot whose TAT has passed holds nothing a fresh bucket would not: GCRA treats a TAT in
//! the past like an absent bucket. So such a slot is free for any key, without loss, and
//! claiming it takes one compare-and-swap of its tag; only when all eight candidates are in
//! use does a new bucket evict one (the one nearest to lapsing), as the LRU map did. [`pick`]
//! decides all of this from one read of the two sets.

use crate::maps::BucketKey;

/// Slots per set: 4 × 16 bytes fill one 64-byte cache line.
pub const SET_WAYS: usize = 4;
/// Tag of a slot no bucket has taken yet (a zeroed table is empty).
pub const EMPTY_TAG: u32 = 0;

/// One bucket: the 32-bit tag of its key, its GCRA TAT and when it last raised an event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceSlot {
    /// GCRA theoretical arrival time (ns, the datapath clock), updated by compare-and-swap.
    pub tat_ns: u64,
    /// Which key holds the slot ([`Place::tag`]); [`EMPTY_TAG`] for none. Changed only by
    /// compare-and-swap, so two CPUs cannot both claim one slot.
    pub tag: u32,
    /// [`event_stamp`] of the bucket's last over-limit event; 0 for none.
    pub event_stamp: u32,
}

/// One cache line of the table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceSet {
    pub slots: [SourceSlot; SET_WAYS],
}

/// Where a bucket key may live: two sets (possibly the same one) and its tag in them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    pub sets: [u32; 2],
    pub tag: u32,
}

/// Slots per bucket the table is sized for: at half its slots in use, the emptier of two
/// sets is almost never full, so buckets are evicted only past `max_sources`.
const SLOTS_PER_SOURCE: u64 = 2;

/// Sets for a table that holds `max_sources` buckets without evicting.
pub const fn sets_for(max_sources: u32) -> u32 {
    let slots = max_sources as u64 * SLOTS_PER_SOURCE;
    let sets = slots.div_ceil(SET_WAYS as u64);
    if sets == 0 { 1 } else { sets as u32 }
}

/// Buckets a table of `sets` sets holds without evicting: the inverse of [`sets_for`].
pub const fn capacity_of(sets: u32) -> u32 {
    let buckets = sets as u64 * SET_WAYS as u64 / SLOTS_PER_SOURCE;
    if buckets > u32::MAX as u64 { u32::MAX } else { buckets as u32 }
}

/// A 64-bit finalizer (SplitMix64's): every input bit flips about half the output bits.
pub(crate) const fn mix(x: u64) -> u64 {
    let x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Maps 32 uniform bits onto `0..n` without a division (Lemire's multiply-shift).
pub(crate) const fn reduce(bits: u32, n: u32) -> u32 {
    ((bits as u64 * n as u64) >> 32) as u32
}

/// Where `key` lives in a table of `sets` sets hashed with `seed`.
///
/// The seed is random per table and never leaves the host, so a sender cannot pick sources
/// that share a set or a tag with a victim's bucket; SplitMix rounds are not a PRF, but with
/// 64 unknown key bits and no way to observe the table an attacker has nothing to invert.
/// A keyed cryptographic hash (SipHash) would cost more per packet than the lookup it feeds.
#[inline(always)]
pub fn place(seed: u64, sets: u32, key: &BucketKey) -> Place {
    let [a, b, c] = key.words();
    let h = mix(mix(mix(seed ^ a) ^ b) ^ c);
    let second = mix(h ^ seed.rotate_left(32));
    let tag = h as u32;
    Place {
        sets: [reduce((h >> 32) as u32, sets), reduce((second >> 32) as u32, sets)],
        tag: if tag == EMPTY_TAG { 1 } else { tag },
    }
}

impl SourceSet {
    /// The slot holding `tag`, if any.
    #[inline(always)]
    pub fn find(&self, tag: u32) -> Option<usize> {
        (0..SET_WAYS).find(|&i| self.slots[i].tag == tag)
    }

    /// Slots in use at `now_ns`: taken, with a TAT still ahead. Summed without a branch,
    /// which leaves the verifier fewer paths to walk.
    #[inline(always)]
    fn in_use(&self, now_ns: u64) -> u64 {
        let mut n = 0;
        for i in 0..SET_WAYS {
            n += self.slots[i].busy_bit(now_ns);
        }
        n
    }
}

impl SourceSlot {
    /// 1 when the slot holds a bucket a fresh one would differ from, else 0, by arithmetic: the sign of `now - tat` (a TAT is never
    /// 2^63 ns ahead: at most an interval plus a burst, each capped far below) and the carry
    /// of `tag + 2^32 - 1`, set for every tag but 0.
    #[inline(always)]
    fn busy_bit(&self, now_ns: u64) -> u64 {
        let ahead = now_ns.wrapping_sub(self.tat_ns) >> 63;
        ahead & self.taken_bit()
    }

    /// 1 when a bucket took the slot (its tag is not [`EMPTY_TAG`]), else 0.
    #[inline(always)]
    fn taken_bit(&self) -> u64 {
        (self.tag as u64 + 0xffff_ffff) >> 32
    }
}

/// [`Pick::action`]: the bucket is in slot [`Pick::index`].
pub const PICK_FOUND: u32 = 0;
/// [`Pick::action`]: a new bucket takes the free slot [`Pick::index`].
pub const PICK_CLAIM: u32 = 1;
/// [`Pick::action`]: a new bucket evicts the one in slot [`Pick::index`] (every slot of
/// both sets is in use).
pub const PICK_EVICT: u32 = 2;
/// [`Pick::action`]: the sets could not be read; the packet is let through (`contended`).
pub const PICK_NONE: u32 = 3;

/// Where a packet's bucket is, or goes, among its two sets, decided from one read of them.
///
/// The datapath writes it to a per-CPU map and reads it back before it touches the slot: the
/// verifier does not track map contents, so the dozen ways of choosing a slot reach the
/// limiter as one state instead of each walking it (which exceeded the verifier's budget).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pick {
    /// `set * SET_WAYS + slot`, the set being 0 or 1 of [`Place::sets`].
    pub index: u32,
    /// [`PICK_FOUND`], [`PICK_CLAIM`], [`PICK_EVICT`] or [`PICK_NONE`].
    pub action: u32,
    /// The slot's tag as read: claiming is a compare-and-swap from this value, so a slot
    /// another CPU took meanwhile is not taken from it.
    pub tag_seen: u32,
    pub _pad: u32,
    /// The slot's TAT as read, reset by compare-and-swap when its bucket is evicted.
    pub tat_seen: u64,
}

impl Pick {
    /// The set (0 or 1) and the slot in it, in range whatever `index` holds.
    #[inline(always)]
    pub const fn at(&self) -> (usize, usize) {
        let i = self.index as usize;
        ((i / SET_WAYS) & 1, i % SET_WAYS)
    }
}

/// Claim locks in `SG_CLAIMS`, chosen by a new bucket's tag.
pub const CLAIM_LOCKS: u32 = 1024;

/// A claim in progress: two CPUs that see a new source at once may choose different slots
/// for it (each judges which slots are free by its own clock), and a compare-and-swap of one
/// slot's tag cannot stop that. So a new bucket is claimed under the lock its tag selects,
/// which says whose claim it is (and the slot chosen): a second CPU finding it held for the
/// same bucket waits for the claim to show rather than make one of its own. A bucket whose
/// lock is held for another (their tags collide on it) is claimed without the lock. Each
/// lock has its own cache line, so CPUs claiming buckets on different locks do not contend.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClaimLock {
    /// 0 when free, else [`claim_word`] of the claim in progress.
    pub word: u64,
    pub _pad: [u64; 7],
}

/// The lock word of a claim of slot `index` for the bucket tagged `tag` (never 0).
#[inline(always)]
pub const fn claim_word(tag: u32, index: u32) -> u64 {
    (tag as u64) << 32 | (index as u64 + 1)
}

/// The slot a held lock word names, if it is held for `tag`.
#[inline(always)]
pub const fn claimed_slot(word: u64, tag: u32) -> Option<u32> {
    if word >> 32 == tag as u64 && word as u32 != 0 { Some(word as u32 - 1) } else { None }
}

/// Claim scores of busy slots start here, above every free slot's (see [`claim_score`]).
const BUSY_SCORE: u64 = 2 * SET_WAYS as u64 + 2;

/// How little a new bucket loses by taking `slot` of a set with `in_use` busy slots. A free
/// slot scores below any busy one; among free slots, those of the emptier set come first
/// (which keeps sets from overflowing), then one never taken (so an idle source coming back
/// finds its lapsed bucket, and its event spacing, while it can); a busy slot scores by how
/// far its TAT is ahead (halved, so every score stays below 2^63), so the bucket evicted is
/// the one nearest to lapsing. Without a branch, as [`pick`] explains.
#[inline(always)]
fn claim_score(slot: &SourceSlot, in_use: u64, now_ns: u64) -> u64 {
    let free = in_use * 2 + slot.taken_bit();
    let busy = BUSY_SCORE + (slot.tat_ns.wrapping_sub(now_ns) >> 1);
    blend(opaque(slot.busy_bit(now_ns).wrapping_neg()), busy, free)
}

/// `a` where `mask` is all ones, `b` where it is zero.
#[inline(always)]
const fn blend(mask: u64, a: u64, b: u64) -> u64 {
    b ^ ((a ^ b) & mask)
}

/// All ones when `a < b`, else zero, for `a` and `b` below 2^63.
#[inline(always)]
fn below(a: u64, b: u64) -> u64 {
    opaque((a.wrapping_sub(b) as i64 >> 63) as u64)
}

/// `mask`, hidden from the optimiser: seeing a mask of all ones or zero it would choose with
/// a branch again (BPF has no conditional move).
#[inline(always)]
fn opaque(mask: u64) -> u64 {
    core::hint::black_box(mask)
}

/// Where the bucket tagged `tag` is in `sets` at `now_ns`, or the slot a new one takes
/// (ties go to the earlier slot).
///
/// Other CPUs change the sets meanwhile, so each slot is read where it is used, once: the
/// slot chosen is claimed from the very tag and TAT it was scored by. (Reads the compiler
/// could not repeat also keep it from holding all 16 fields at once, which spilled them to a
/// stack BPF limits to 512 bytes.) The search for a slot to claim has no branch: the
/// verifier walks every path through a program, and eight slots each scored and compared
/// with branches made more paths than it accepts.
#[inline(always)]
pub fn pick(sets: [&SourceSet; 2], tag: u32, now_ns: u64) -> Pick {
    let slot = |i: usize| &sets[(i / SET_WAYS) & 1].slots[i % SET_WAYS];
    for i in 0..2 * SET_WAYS {
        // SAFETY: a read of a live, aligned field.
        if unsafe { core::ptr::read_volatile(&slot(i).tag) } == tag {
            return Pick { index: i as u32, action: PICK_FOUND, ..Pick::default() };
        }
    }
    let in_use = [sets[0].in_use(now_ns), sets[1].in_use(now_ns)];
    let (mut score, mut index, mut tag_seen, mut tat_seen) = (u64::MAX >> 1, 0, 0, 0);
    for i in 0..2 * SET_WAYS {
        // SAFETY: as above.
        let seen = unsafe { core::ptr::read_volatile(slot(i)) };
        let this = claim_score(&seen, in_use[(i / SET_WAYS) & 1], now_ns);
        let better = below(this, score);
        score = blend(better, this, score);
        index = blend(better, i as u64, index);
        tag_seen = blend(better, u64::from(seen.tag), tag_seen);
        tat_seen = blend(better, seen.tat_ns, tat_seen);
    }
    Pick {
        index: index as u32,
        action: if score < BUSY_SCORE { PICK_CLAIM } else { PICK_EVICT },
        tag_seen: tag_seen as u32,
        _pad: 0,
        tat_seen,
    }
}

/// Nanoseconds per [`event_stamp`] unit (2^20, about 1.05 ms): a 32-bit stamp then wraps
/// after 52 days, and event spacing is kept to the millisecond, far finer than it is set.
pub const EVENT_STAMP_SHIFT: u32 = 20;

/// The 32-bit stamp of an event at `now_ns`, never 0 (which means "no event yet").
#[inline(always)]
pub const fn event_stamp(now_ns: u64) -> u32 {
    let stamp = (now_ns >> EVENT_STAMP_SHIFT) as u32;
    if stamp == 0 { 1 } else { stamp }
}

/// How far (in stamps, about 134 ms) a stamp may lie ahead of `now_ns` and still be recent:
/// another CPU read a later clock. Further ahead, it is one so old that it wrapped.
pub const EVENT_STAMP_SKEW: i64 = 128;

/// Whether a bucket whose last event bears `stamp` may raise another at `now_ns`, at least
/// `interval_ns` (rounded up to whole stamps) after it. Stamps wrap every 52 days, which
/// a quiet source keeping its slot may outlive: read as a distance modulo 2^32, a stamp is
/// old unless it lies within [`EVENT_STAMP_SKEW`] ahead of now or within the interval
/// behind, so a wrapped one holds an event back by at most one interval (were every stamp
/// ahead read as recent, one 26 to 52 days old would silence the source for weeks).
#[inline(always)]
pub const fn event_due(stamp: u32, now_ns: u64, interval_ns: u64) -> bool {
    if stamp == 0 || interval_ns == 0 {
        return true;
    }
    let ago = event_stamp(now_ns).wrapping_sub(stamp) as i32 as i64;
    if ago < -EVENT_STAMP_SKEW {
        return true;
    }
    let interval = interval_ns.div_ceil(1 << EVENT_STAMP_SHIFT);
    let interval = if interval > i32::MAX as u64 { i32::MAX as i64 } else { interval as i64 };
    ago >= interval
}

#[cfg(test)]
mod tests;
