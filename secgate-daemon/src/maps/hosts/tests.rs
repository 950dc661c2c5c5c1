use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;

fn table(sets: u32, seed: u64) -> Table {
    Table { slots: Mapped::anonymous(sets), seed }
}

fn ban(expires_ns: u64) -> DenyEntry {
    DenyEntry { expires_ns }
}

#[test]
fn a_full_table_of_random_hosts_places_every_one() {
    let t = table(HOST_SETS, 0x5eed);
    let mut keys = BTreeSet::new();
    let mut x = 1u64;
    while keys.len() < MAX_DENY_HOSTS as usize {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        keys.insert(x);
    }
    for (i, &k) in keys.iter().enumerate() {
        assert_eq!(
            t.insert(k, ban(i as u64)),
            Some(true),
            "host {i} of {MAX_DENY_HOSTS} found no room"
        );
    }
    assert_eq!(t.entries().len(), keys.len());
    for (i, &k) in keys.iter().enumerate().step_by(997) {
        assert_eq!(t.get(k), Some(ban(i as u64)));
        assert_eq!(t.get(k ^ 1 << 40), None, "an absent host is not banned");
    }
}

#[test]
fn a_moved_occupant_is_still_found() {
    // Two sets: every key's pair is {0, 1} or one of them twice, so filling both forces moves.
    let t = table(2, 7);
    let mut placed = Vec::new();
    for k in 0..64u64 {
        if t.insert(k, ban(k)) == Some(true) {
            placed.push(k);
        }
    }
    assert_eq!(placed.len(), 2 * HOST_WAYS, "the eight slots fill up");
    for &k in &placed {
        assert_eq!(t.get(k), Some(ban(k)));
    }
}

#[test]
fn rehashing_under_a_new_seed_keeps_every_ban() {
    let mut t = table(256, 1);
    for k in 0..300u64 {
        assert_eq!(t.insert(k * 7919, ban(k)), Some(true));
    }
    let entries = t.entries();
    assert_eq!(t.rehash(2, &entries), 0);
    for k in 0..300u64 {
        assert_eq!(t.get(k * 7919), Some(ban(k)));
    }
    assert_eq!(t.entries().len(), 300);
}

#[derive(Clone, Debug)]
enum Op {
    Ban(u8, u64),
    Lift(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (any::<u8>(), 0..1_000_000u64).prop_map(|(k, e)| Op::Ban(k, e)),
        any::<u8>().prop_map(Op::Lift),
    ]
}

proptest! {
    /// Bans and lifts in any order leave the table saying what a map of the same changes
    /// says, for every key, and holding each key at most once. A ban that found no room
    /// changed nothing, and only when both its sets are full.
    #[test]
    fn the_table_agrees_with_a_map(ops in proptest::collection::vec(op(), 1..300), seed in any::<u64>()) {
        let t = table(8, seed | 1);
        let mut model = BTreeMap::new();
        for op in ops {
            match op {
                Op::Ban(k, e) => match t.insert(u64::from(k), ban(e)) {
                    Some(new) => {
                        prop_assert_eq!(new, model.insert(k, e).is_none());
                    }
                    None => {
                        let [a, b] = t.sets_of(u64::from(k));
                        prop_assert!(t.slots.set(a).free_slot().is_none());
                        prop_assert!(t.slots.set(b).free_slot().is_none());
                        prop_assert!(!model.contains_key(&k));
                    }
                },
                Op::Lift(k) => {
                    prop_assert_eq!(t.remove(u64::from(k)), model.remove(&k).is_some());
                }
            }
            for k in 0..=u8::MAX {
                prop_assert_eq!(t.get(u64::from(k)), model.get(&k).map(|&e| ban(e)));
            }
            let mut held: Vec<u64> = t.entries().into_iter().map(|(k, _)| k).collect();
            held.sort_unstable();
            held.dedup();
            prop_assert_eq!(held.len(), model.len());
        }
    }
}
