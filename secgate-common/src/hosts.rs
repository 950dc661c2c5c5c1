//! The table of host bans: where the ban on one IPv4 /32 or IPv6 /[`HOST_V6_PREFIX`] lives.
//!
//! Escalation bans a botnet source by source, so under attack nearly every ban is a single
//! host and the program looks the source up among them on every packet. In a BPF hash map
//! that lookup is a hash walk of dependent cache misses (the bucket, then the element, each
//! often on a page of its own); this table is a `BPF_MAP_TYPE_ARRAY` of [`HostSet`]s, one
//! cache line each (the map is `BPF_F_MMAPABLE`, which page-aligns the value area; each
//! value is 64 bytes, so each set is one line), of [`HOST_WAYS`] slots holding a host's
//! exact key and its ban. A host lives in its first set, or, when that was full, its second
//! ([`host_sets`], a keyed hash); a lookup reads the first, and the second only if the
//! first does not hold the host and counts hosts of its own that live in their second set
//! ([`HostSet::spilled`]). So a banned host its first set holds costs one line, and so does
//! nearly every source that is not banned: under a flood from sources escalation has not
//! banned yet, every packet makes that lookup.
//!
//! Unlike the limiter's buckets the keys are exact, never tags (a collision must not ban an
//! innocent host), and only the daemon writes: it places a new host in its first set if
//! there is room, else its second, else it moves one occupant from its first set to its
//! second (never back: a packet reads the first set first, so a host copied forward and then
//! cleared is always found, where one moved back could be missed between the two reads).
//! Sized at two slots per host ([`HOST_SETS`]), a full table of [`MAX_DENY_HOSTS`] random
//! hosts is placed without a failure (the daemon's tests fill one).
//!
//! The daemon writes a slot's key before its state and clears a slot by its state alone, one
//! aligned 8-byte store each; a lookup reads the key, the state and the key again
//! ([`HostSet::find`]), in that order, so a racing packet sees the slot before or after a
//! write, never the state of one host beside the key of another: at worst one packet of a
//! host being banned passes, or one of a host whose ban is being lifted is dropped.

use crate::maps::{DenyEntry, HOST_V6_PREFIX, MAX_DENY_HOSTS};
use crate::sources::{mix, reduce};

/// Slots per set: 4 × 16 bytes fill one 64-byte cache line.
pub const HOST_WAYS: usize = 4;

/// [`HostSlot::state`] bit of a slot holding a ban.
pub const HOST_TAKEN: u64 = 1 << 63;
/// Where, in the state of a set's slot 0 (whether that slot is taken or free), the set
/// counts the hosts whose first set it is that live in their second ([`HostSet::spilled`]).
pub const HOST_SPILL_SHIFT: u32 = 59;
/// The most a spill count holds: a set that reached it keeps it (it no longer knows when
/// the last such host leaves) until the daemon recounts at its next start.
pub const HOST_SPILL_MAX: u64 = 15;
const HOST_SPILL_BITS: u64 = HOST_SPILL_MAX << HOST_SPILL_SHIFT;
/// The state bits that are a ban's expiry: 2^59 ns, 18 years of uptime, at most.
pub const HOST_EXPIRY: u64 = (1 << HOST_SPILL_SHIFT) - 1;
/// [`HostInfo::count`] mark: every set's spill count is kept. Tables an earlier build left
/// have no counts (and may hold expiries in their bits) until the daemon's start recounts
/// them; until then a lookup reads both sets, as that build's did.
///
/// The marks sit in `count`, not beside it, because a daemon of the earlier build rewrites
/// `count` at its start: run against this build's tables (a downgrade), it clears the marks,
/// and then its program and this one both read every second set, while it places hosts there
/// without counting them.
pub const HOSTS_SPILL_COUNTED: u32 = 1 << 30;
/// [`HostInfo::count`] mark: the daemon's start has cut an earlier build's expiries to
/// [`HOST_EXPIRY`] and cleared its slot-0 bits ([`HOSTS_SPILL_COUNTED`] follows once the
/// counts are in). Done once: after it, those bits are counts, which a second pass would
/// take for expiries.
pub const HOSTS_ADOPTED: u32 = 1 << 31;
const HOSTS_MARKS: u32 = HOSTS_SPILL_COUNTED | HOSTS_ADOPTED;

/// One host's ban.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostSlot {
    /// [`host_key_v4`] or [`host_key_v6`] of the host; meaningless while the slot is free.
    pub key: u64,
    /// 0 for a free slot, else [`HOST_TAKEN`] | the ban's `expires_ns` (0: permanent); in
    /// slot 0, also its set's spill count.
    pub state: u64,
}

impl HostSlot {
    /// The slot holding `entry` for `key`. An expiry past [`HOST_EXPIRY`] (18 years of
    /// uptime) is kept as the latest one the slot can hold.
    pub const fn holding(key: u64, entry: DenyEntry) -> HostSlot {
        let expires = if entry.expires_ns > HOST_EXPIRY { HOST_EXPIRY } else { entry.expires_ns };
        HostSlot { key, state: HOST_TAKEN | expires }
    }

    /// The ban the slot holds, if any.
    #[inline(always)]
    pub const fn entry(&self) -> Option<DenyEntry> {
        entry_of_state(self.state)
    }

    pub const fn is_free(&self) -> bool {
        self.state & HOST_TAKEN == 0
    }
}

/// The ban a slot's `state` word stands for, if any.
#[inline(always)]
pub const fn entry_of_state(state: u64) -> Option<DenyEntry> {
    if state & HOST_TAKEN == 0 { None } else { Some(DenyEntry { expires_ns: state & HOST_EXPIRY }) }
}

/// The spill count a slot-0 `state` word holds.
pub const fn spill_of_state(state: u64) -> u64 {
    (state & HOST_SPILL_BITS) >> HOST_SPILL_SHIFT
}

/// `state` with its spill count set to `count` (at most [`HOST_SPILL_MAX`]).
pub const fn with_spill(state: u64, count: u64) -> u64 {
    let count = if count > HOST_SPILL_MAX { HOST_SPILL_MAX } else { count };
    (state & !HOST_SPILL_BITS) | count << HOST_SPILL_SHIFT
}

/// One cache line of the table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostSet {
    pub slots: [HostSlot; HOST_WAYS],
}

impl HostSet {
    /// The slot holding a ban on `key`, if any, and its state word. The key is read before
    /// and after the state, each read its own load in that order: the daemon writes a key
    /// before its state, so a state read between two reads of one key was written for it.
    #[inline(always)]
    pub fn find(&self, key: u64) -> Option<(usize, u64)> {
        (0..HOST_WAYS).find_map(|i| {
            let slot = &self.slots[i];
            // SAFETY: reads of fields of a live reference; volatile only to fix their order.
            let (before, state, after) = unsafe {
                let before = core::ptr::read_volatile(&slot.key);
                let state = core::ptr::read_volatile(&slot.state);
                (before, state, core::ptr::read_volatile(&slot.key))
            };
            (before == key && after == key && state & HOST_TAKEN != 0).then_some((i, state))
        })
    }

    /// Whether hosts whose first set this is live in their second: read after
    /// [`HostSet::find`] missed, and its own load, so a host moved on (counted before its
    /// copy, cleared after) is always looked for where it went. Like `find`, this relies on
    /// the CPU keeping loads in program order, as x86 does; a weakly ordered CPU would need
    /// BPF's load-acquire here.
    #[inline(always)]
    pub fn spilled(&self) -> bool {
        // SAFETY: a read of a field of a live reference; volatile only to fix its order.
        let state = unsafe { core::ptr::read_volatile(&self.slots[0].state) };
        state & HOST_SPILL_BITS != 0
    }

    /// The first free slot, if any.
    pub fn free_slot(&self) -> Option<usize> {
        (0..HOST_WAYS).find(|&i| self.slots[i].is_free())
    }

    /// How many slots are free.
    pub fn free_slots(&self) -> usize {
        self.slots.iter().filter(|s| s.is_free()).count()
    }
}

/// What the program needs to find a family's hosts, and whether to look at all: index
/// [`crate::maps::HOSTS_V4`] or [`crate::maps::HOSTS_V6`] of `SG_HOST_INFO`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostInfo {
    /// Random key of [`host_sets`], chosen with the table and kept as long as it lives, so a
    /// sender cannot pick sources that crowd one pair of sets and make a ban fail to place.
    pub seed: u64,
    /// Hosts in the table ([`HostInfo::hosts`]): while 0 the program skips the lookup (a
    /// cache miss in a table this size). Written after a host is placed and after one is
    /// cleared. Its top bits are the marks [`HOSTS_ADOPTED`] and [`HOSTS_SPILL_COUNTED`].
    pub count: u32,
    pub _pad: u32,
}

impl HostInfo {
    /// How many hosts the table holds.
    #[inline(always)]
    pub const fn hosts(&self) -> u32 {
        self.count & !HOSTS_MARKS
    }

    /// Whether a lookup may trust the spill counts.
    #[inline(always)]
    pub const fn spill_counted(&self) -> bool {
        self.count & HOSTS_SPILL_COUNTED != 0
    }

    /// Whether an earlier build's expiries and slot-0 bits have been made this build's.
    #[inline(always)]
    pub const fn adopted(&self) -> bool {
        self.count & HOSTS_ADOPTED != 0
    }
}

/// Slots per host the table is sized for: at half its slots in use, a new host almost
/// always finds room in one of its sets, and otherwise an occupant can move.
const SLOTS_PER_HOST: u64 = 2;

/// Sets in each family's table.
pub const HOST_SETS: u32 = (MAX_DENY_HOSTS as u64 * SLOTS_PER_HOST / HOST_WAYS as u64) as u32;

/// The key of the IPv4 host `addr`.
#[inline(always)]
pub const fn host_key_v4(addr: [u8; 4]) -> u64 {
    u64::from_ne_bytes([addr[0], addr[1], addr[2], addr[3], 0, 0, 0, 0])
}

/// The bits of an address's first word that are its IPv4 host key.
pub const V4_KEY_MASK: u64 = u64::from_ne_bytes([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);

/// The key of the IPv6 /[`HOST_V6_PREFIX`] holding `addr`.
#[inline(always)]
pub const fn host_key_v6(addr: &[u8; 16]) -> u64 {
    const _: () = assert!(HOST_V6_PREFIX == 64, "the key is the address's first eight bytes");
    let a = addr;
    u64::from_ne_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]])
}

/// The first `HOST_V6_PREFIX / 8` address bytes a v6 host key stands for.
pub const fn host_v6_prefix(key: u64) -> [u8; 8] {
    key.to_ne_bytes()
}

/// The first and second sets (possibly one) of a table of `sets` sets that `key` may live
/// in.
#[inline(always)]
pub fn host_sets(seed: u64, sets: u32, key: u64) -> [u32; 2] {
    let h = mix(seed ^ key);
    let second = mix(h ^ seed.rotate_left(32));
    [reduce((h >> 32) as u32, sets), reduce((second >> 32) as u32, sets)]
}

/// The ban on `key` in its first set, else its second, as the program looks it up: the
/// second is read only if the first spilled, or if the table's spill counts are not kept
/// (`counted` false).
#[inline(always)]
pub fn lookup([first, second]: [&HostSet; 2], key: u64, counted: bool) -> Option<DenyEntry> {
    let found = match first.find(key) {
        None if !counted || first.spilled() => second.find(key),
        hit => hit,
    };
    entry_of_state(found?.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_keeps_the_ban_it_holds() {
        for expires_ns in [0, 1, 5_000_000_000, HOST_EXPIRY] {
            let slot = HostSlot::holding(7, DenyEntry { expires_ns });
            assert_eq!(slot.entry(), Some(DenyEntry { expires_ns }));
            assert!(!slot.is_free());
        }
        let far = HostSlot::holding(7, DenyEntry { expires_ns: u64::MAX });
        assert_eq!(far.entry(), Some(DenyEntry { expires_ns: HOST_EXPIRY }));
        assert_eq!(spill_of_state(far.state), 0, "an expiry never reads as a spill count");
        assert_eq!(HostSlot::default().entry(), None);
    }

    #[test]
    fn a_free_slot_matches_no_key_not_even_its_stale_one() {
        let mut set = HostSet::default();
        set.slots[2] = HostSlot { key: 42, state: 0 };
        assert_eq!(set.find(42), None);
        set.slots[2] = HostSlot::holding(42, DenyEntry::default());
        assert_eq!(set.find(42).map(|(i, _)| i), Some(2));
        assert_eq!(lookup([&set, &HostSet::default()], 43, true), None);
    }

    #[test]
    fn the_second_set_is_read_only_when_the_first_spilled_or_counts_are_not_kept() {
        let mut second = HostSet::default();
        second.slots[1] = HostSlot::holding(42, DenyEntry::default());
        let mut first = HostSet::default();
        assert_eq!(lookup([&first, &second], 42, false), Some(DenyEntry::default()));
        assert_eq!(lookup([&first, &second], 42, true), None, "no spill, no second read");
        first.slots[0].state = with_spill(first.slots[0].state, 1);
        assert!(first.slots[0].is_free(), "a count leaves a free slot free");
        assert_eq!(lookup([&first, &second], 42, true), Some(DenyEntry::default()));
        first.slots[0] = HostSlot::holding(7, DenyEntry { expires_ns: HOST_EXPIRY });
        first.slots[0].state = with_spill(first.slots[0].state, HOST_SPILL_MAX + 3);
        assert_eq!(spill_of_state(first.slots[0].state), HOST_SPILL_MAX);
        assert_eq!(first.slots[0].entry(), Some(DenyEntry { expires_ns: HOST_EXPIRY }));
        assert_eq!(lookup([&first, &second], 7, true), Some(DenyEntry { expires_ns: HOST_EXPIRY }));
    }

    #[test]
    fn keys_of_distinct_hosts_differ() {
        assert_ne!(host_key_v4([198, 18, 0, 1]), host_key_v4([198, 18, 0, 2]));
        let a: [u8; 16] = [0xfd, 0, 0, 1, 0, 2, 0, 3, 0xff, 0, 0, 0, 0, 0, 0, 1];
        let mut same_net = a;
        same_net[15] = 9;
        assert_eq!(host_key_v6(&a), host_key_v6(&same_net));
        assert_eq!(host_v6_prefix(host_key_v6(&a)), [0xfd, 0, 0, 1, 0, 2, 0, 3]);
    }

    #[test]
    fn a_packet_keys_its_source_as_the_daemon_does() {
        use crate::maps::{FAMILY_V4, FAMILY_V6};
        use crate::model::Packet;
        let mut v4 = [0u8; 16];
        v4[..4].copy_from_slice(&[198, 18, 7, 9]);
        v4[4..].fill(0xaa);
        let pkt = |family, src| Packet::new(family, src, 6, None, false);
        assert_eq!(pkt(FAMILY_V4, v4).host_key(), host_key_v4([198, 18, 7, 9]));
        let v6: [u8; 16] = core::array::from_fn(|i| i as u8 + 1);
        assert_eq!(pkt(FAMILY_V6, v6).host_key(), host_key_v6(&v6));
    }

    #[test]
    fn sets_are_in_range_and_depend_on_the_seed() {
        let spread = |seed: u64| -> [[u32; 2]; 64] {
            core::array::from_fn(|k| host_sets(seed, 1000, k as u64))
        };
        for pair in spread(1) {
            assert!(pair[0] < 1000 && pair[1] < 1000);
        }
        assert_ne!(spread(1), spread(2));
    }
}
