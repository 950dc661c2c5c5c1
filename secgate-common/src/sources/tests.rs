extern crate std;
use std::vec::Vec;

use super::*;

fn key(n: u32) -> BucketKey {
    let mut key = BucketKey { family: crate::maps::FAMILY_V4, ..Default::default() };
    key.addr[..4].copy_from_slice(&n.to_be_bytes());
    key
}

fn taken(tag: u32, tat_ns: u64) -> SourceSlot {
    SourceSlot { tat_ns, tag, event_stamp: 0 }
}

#[test]
fn tables_hold_max_sources_at_half_their_slots() {
    assert_eq!(sets_for(0), 1);
    assert_eq!(sets_for(1), 1);
    assert_eq!(sets_for(3), 2);
    assert_eq!(sets_for(256 * 1024), 128 * 1024);
    assert_eq!(sets_for(u32::MAX), (u32::MAX as u64 * 2).div_ceil(4) as u32);
    assert_eq!(capacity_of(sets_for(256 * 1024)), 256 * 1024);
    assert_eq!(capacity_of(u32::MAX), u32::MAX, "saturates");
    assert_eq!(core::mem::size_of::<SourceSet>(), 64, "one cache line");
}

/// At the load `sets_for` sizes for, two choices leave almost no bucket without a slot;
/// one choice would leave thousands.
#[test]
fn two_choices_keep_sets_from_overflowing_at_max_sources() {
    let max = 1 << 18;
    let n = sets_for(max);
    let seed = 0x0005_eed0_f5ec_9a7e;
    let mut sets = std::vec![SourceSet::default(); n as usize];
    let (mut evicted, mut one_choice_full) = (0, 0);
    let mut load = std::vec![0usize; n as usize];
    for i in 0..max {
        let p = place(seed, n, &key(0xc612_0000 + i));
        let c = pick([&sets[p.sets[0] as usize], &sets[p.sets[1] as usize]], p.tag, 10);
        assert_ne!(c.action, PICK_FOUND, "a fresh key is not found");
        evicted += usize::from(c.action == PICK_EVICT);
        let (set, slot) = c.at();
        sets[p.sets[set] as usize].slots[slot] = taken(p.tag, 1_000);
        let one = &mut load[p.sets[0] as usize];
        one_choice_full += usize::from(*one >= SET_WAYS);
        *one += 1;
    }
    assert!(evicted <= 20, "{evicted} of {max} buckets found both sets full");
    assert!(one_choice_full > 1000, "one choice: {one_choice_full} (the comparison is moot)");
}

/// Where `pick` puts a new bucket (tag 99) in `sets` at time 50: (set, slot, action).
fn new_bucket(sets: &[SourceSet; 2]) -> (usize, usize, u32) {
    let p = pick([&sets[0], &sets[1]], 99, 50);
    let (set, slot) = p.at();
    assert_eq!((p.tag_seen, p.tat_seen), (sets[set].slots[slot].tag, sets[set].slots[slot].tat_ns));
    (set, slot, p.action)
}

#[test]
fn a_new_bucket_takes_a_free_slot_of_the_emptier_set() {
    let mut sets = [SourceSet::default(); 2];
    sets[0].slots[0] = taken(7, 100);
    assert_eq!(new_bucket(&sets), (1, 0, PICK_CLAIM), "set 1 has fewer in use");
    sets[1].slots = [taken(1, 100), taken(2, 100), taken(3, 100), taken(4, 40)];
    assert_eq!(new_bucket(&sets), (0, 1, PICK_CLAIM), "set 0 has 1 in use");
    sets[0].slots[1] = taken(10, 20);
    assert_eq!(new_bucket(&sets), (0, 2, PICK_CLAIM), "a never-taken slot before a lapsed one");
    sets[0].slots = [taken(5, 100), taken(6, 90), taken(8, 100), taken(9, 100)];
    assert_eq!(new_bucket(&sets), (1, 3, PICK_CLAIM), "lapsed TAT");
    sets[1].slots[3] = taken(4, 95);
    assert_eq!(new_bucket(&sets), (0, 1, PICK_EVICT), "nearest to lapse");
    sets[1].slots[2] = taken(3, 51);
    assert_eq!(new_bucket(&sets), (1, 2, PICK_EVICT), "nearest to lapse, in the second set");
}

#[test]
fn a_known_bucket_is_found_in_either_set() {
    let mut sets = [SourceSet::default(); 2];
    sets[1].slots[2] = taken(99, 10);
    let p = pick([&sets[0], &sets[1]], 99, 50);
    assert_eq!((p.at(), p.action), ((1, 2), PICK_FOUND), "found even with its TAT lapsed");
    sets[0].slots[3] = taken(99, 100);
    assert_eq!(pick([&sets[0], &sets[1]], 99, 50).at(), (0, 3), "the first copy");
    assert_eq!(Pick { index: u32::MAX, ..Pick::default() }.at(), (1, 3), "any index is in range");
}

#[test]
fn event_stamps_space_events_and_survive_wrapping() {
    let second = 1_000_000_000;
    let t = 5 * second;
    assert!(event_due(0, t, second), "no event yet");
    let s = event_stamp(t);
    assert!(!event_due(s, t, second));
    assert!(!event_due(s, t + second - (1 << EVENT_STAMP_SHIFT), second));
    assert!(event_due(s, t + second + (1 << EVENT_STAMP_SHIFT), second));
    assert!(!event_due(event_stamp(t + (5 << EVENT_STAMP_SHIFT)), t, second), "stamped ahead");
    assert!(event_due(s, t, 0), "no spacing set");
    let late = (u32::MAX as u64 + 3) << EVENT_STAMP_SHIFT;
    assert!(!event_due(event_stamp(late - (3 << EVENT_STAMP_SHIFT)), late, second));
    assert!(event_due(event_stamp(late - 2 * second), late, second), "across the wrap");
    let wrap = (1u64 << 32) << EVENT_STAMP_SHIFT;
    let month = 30 * 86_400 * second;
    assert!(event_due(event_stamp(t + month), t + wrap, second), "a stamp 22 days from a wrap");
    let skew = ((EVENT_STAMP_SKEW as u64) << EVENT_STAMP_SHIFT) - 1;
    assert!(!event_due(event_stamp(t + skew), t, second), "ahead by clock skew: recent");
    assert_ne!(event_stamp(0), 0);
}

proptest::proptest! {
    /// Every key lands in the table with a tag that is never the empty one, and its place
    /// depends on the seed.
    #[test]
    fn places_are_in_range_and_keyed(
        seed in proptest::num::u64::ANY,
        sets in 1u32..=u32::MAX,
        addr in proptest::array::uniform16(0u8..),
        limit in proptest::num::u32::ANY,
    ) {
        let mut key = BucketKey { addr, family: crate::maps::FAMILY_V6, ..Default::default() };
        key.limit.port = limit as u16;
        key.limit.proto = (limit >> 16) as u8;
        let p = place(seed, sets, &key);
        proptest::prop_assert!(p.sets[0] < sets && p.sets[1] < sets);
        proptest::prop_assert_ne!(p.tag, EMPTY_TAG);
        proptest::prop_assert_eq!(p, place(seed, sets, &key));
        let other = place(seed ^ 0x8000_0000_0000_0100, sets, &key);
        proptest::prop_assert_ne!(p.tag, other.tag, "another seed, another tag");
    }
}

/// Neighbouring sources (a /16 flood) spread over the sets and differ in their tags.
#[test]
fn neighbouring_sources_spread() {
    let n = 1024;
    let mut per_set = std::vec![0u32; n as usize];
    let mut tags: Vec<u32> = Vec::new();
    for i in 0..65_536 {
        let p = place(42, n, &key(0xc612_0000 + i));
        per_set[p.sets[0] as usize] += 1;
        tags.push(p.tag);
    }
    let max = *per_set.iter().max().unwrap();
    assert!(max < 64 * 2, "64 per set on average, one set got {max}");
    tags.sort_unstable();
    tags.dedup();
    assert!(tags.len() > 65_500, "only {} distinct tags", tags.len());
    assert_ne!(place(42, n, &key(1)).sets, place(43, n, &key(1)).sets);
}
