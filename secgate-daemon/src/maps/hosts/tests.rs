use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;

fn table(sets: u32, seed: u64) -> Table {
    Table { slots: Mapped::anonymous(sets), seed }
}

fn ban(expires_ns: u64) -> DenyEntry {
    DenyEntry { expires_ns }
}

/// Each set's spill count, against the hosts standing in their second set it covers: equal,
/// or at its most (where it stays while it may count more than it holds). Never fewer, or
/// a packet would skip a second set that holds a ban.
fn assert_spills_counted(t: &Table) {
    let mut want = vec![0u64; t.slots.sets as usize];
    for s in 0..t.slots.sets {
        for slot in t.slots.set(s).slots.iter().filter(|slot| !slot.is_free()) {
            if let Some(first) = t.spilled_from(slot.key, s) {
                want[first as usize] += 1;
            }
        }
    }
    for (s, &want) in want.iter().enumerate() {
        let got = t.slots.spill(s as u32);
        assert!(
            got == want || got == HOST_SPILL_MAX,
            "set {s} counts {got} hosts in their second set, {want} stand there"
        );
    }
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
    // A packet of a banned host reads one line unless its host is in its second set.
    let first = keys.iter().filter(|&&k| t.find(k) == [(t.sets_of(k)[0], t.find(k)[0].1)]);
    let share = first.count() as f64 / keys.len() as f64;
    assert!(share > 0.8, "only {share:.3} of a full table's hosts are in their first set");
    assert_spills_counted(&t);
    // A source not banned reads one line unless its first set spilled.
    let spilled = (0..HOST_SETS).filter(|&s| t.slots.spill(s) > 0).count();
    let share = spilled as f64 / f64::from(HOST_SETS);
    assert!(share < 0.4, "{share:.3} of a full table's sets spilled");
}

/// Keys of a two-set table whose first and second sets are `want`.
fn keys_with(t: &Table, want: [u32; 2], n: usize) -> Vec<u64> {
    (0..).filter(|&k| t.sets_of(k) == want).take(n).collect()
}

#[test]
fn a_host_moves_from_its_first_set_to_its_second_to_make_room_and_is_still_found() {
    let t = table(2, 7);
    let forward = keys_with(&t, [0, 1], HOST_WAYS);
    for &k in &forward {
        assert_eq!(t.insert(k, ban(k)), Some(true));
        assert_eq!(t.find(k)[0].0, 0, "a host goes to its first set while it has room");
    }
    // Set 0 is full, and this host has no other: one of the four moves on to set 1.
    let only_zero = keys_with(&t, [0, 0], 1)[0];
    assert_eq!(t.insert(only_zero, ban(1)), Some(true));
    assert_eq!(t.get(only_zero), Some(ban(1)));
    let moved: Vec<u64> = forward.iter().copied().filter(|&k| t.find(k)[0].0 == 1).collect();
    assert_eq!(moved.len(), 1, "exactly one occupant moved");
    for &k in &forward {
        assert_eq!(t.get(k), Some(ban(k)));
    }
}

#[test]
fn a_host_in_its_second_set_never_moves_back() {
    let t = table(2, 7);
    // Set 0 full of hosts that can only live there, then a host whose first set is 0 goes
    // to set 1; set 1 then fills with hosts that can only live there.
    for &k in &keys_with(&t, [0, 0], HOST_WAYS) {
        assert_eq!(t.insert(k, ban(k)), Some(true));
    }
    let spilled = keys_with(&t, [0, 1], 1)[0];
    assert_eq!(t.insert(spilled, ban(2)), Some(true));
    assert_eq!(t.find(spilled)[0].0, 1);
    let ones = keys_with(&t, [1, 1], HOST_WAYS);
    for &k in &ones[..HOST_WAYS - 1] {
        assert_eq!(t.insert(k, ban(k)), Some(true));
    }
    // Room in set 1 would need `spilled` moved back to set 0 (full anyway) or forward
    // (it is in its last set): the table is full for this host.
    assert_eq!(t.insert(ones[HOST_WAYS - 1], ban(3)), None);
    assert_eq!(t.get(spilled), Some(ban(2)));
}

#[test]
fn a_host_held_twice_keeps_one_copy_with_the_longer_ban() {
    let t = table(2, 7);
    let k = keys_with(&t, [0, 1], 1)[0];
    assert_eq!(t.insert(k, ban(5)), Some(true));
    // As a daemon killed between a move's copy and its clear leaves it, with a longer ban.
    t.place(1, 0, HostSlot::holding(k, ban(9)));
    assert_eq!(t.find(k).len(), 2);
    assert_eq!(t.slots.spill(0), 1);
    assert_eq!(t.drop_copies(), 1);
    assert_eq!(t.find(k).len(), 1);
    assert_eq!(t.get(k), Some(ban(9)));
    assert_spills_counted(&t);
    assert!(t.remove(k));
    assert_eq!(t.get(k), None, "a lifted ban leaves no copy behind");
}

#[test]
fn a_packet_racing_moves_always_finds_a_standing_ban() {
    let t = table(16, 3);
    let standing: Vec<u64> = (1..=24u64).map(|k| k * 0x9e37_79b9).collect();
    for &k in &standing {
        assert_eq!(t.insert(k, ban(k)), Some(true));
    }
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for &k in &standing {
                    assert_eq!(t.get(k), Some(ban(k)), "a standing ban missed after {reads} reads");
                    reads += 1;
                }
            }
            reads
        });
        // Fill the table with other hosts and empty it again, over and over: each fill
        // moves standing hosts on to their second sets to make room.
        let mut churn = 1u64 << 40;
        for _ in 0..2_000 {
            let mut placed = Vec::new();
            while placed.len() < 64 {
                churn += 1;
                if t.insert(churn, ban(0)) == Some(true) {
                    placed.push(churn);
                }
                if placed.len() + standing.len() >= 16 * HOST_WAYS - 4 {
                    break;
                }
            }
            placed.iter().for_each(|&k| assert!(t.remove(k)));
        }
        stop.store(true, Ordering::Relaxed);
        assert!(reader.join().expect("the reader") > 0);
    });
    assert_spills_counted(&t);
}

/// A table an earlier build left: no spill counts, hosts in their second sets, and an
/// expiry in the bits counts now use. Adopted and recounted, it keeps every ban, the far
/// one cut to the latest a slot holds, and a lookup that trusts the counts finds them all.
#[test]
fn an_earlier_builds_table_is_adopted_with_every_ban() {
    let t = table(2, 7);
    let zeros = keys_with(&t, [0, 0], HOST_WAYS);
    let far = HostSlot { key: zeros[0], state: HOST_TAKEN | (HOST_TAKEN - 1) };
    t.slots.store_raw(0, 0, 0);
    t.slots.put(0, 0, HostSlot { key: far.key, state: 0 });
    t.slots.store_raw(0, 0, far.state);
    for (w, &k) in zeros.iter().enumerate().skip(1) {
        t.slots.put(0, w, HostSlot::holding(k, ban(k)));
    }
    let spilled = keys_with(&t, [0, 1], 2);
    for (w, &k) in spilled.iter().enumerate() {
        t.slots.put(1, w, HostSlot::holding(k, ban(k)));
    }
    t.adopt();
    assert_eq!(t.recount(), 1, "set 0's count was missing");
    assert_eq!(t.slots.spill(0), 2);
    assert_spills_counted(&t);
    assert_eq!(t.get(far.key), Some(ban(HOST_EXPIRY)), "the far ban is cut, not lost");
    for &k in zeros.iter().skip(1).chain(&spilled) {
        assert_eq!(t.get(k), Some(ban(k)));
    }
    assert_eq!(t.recount(), 0, "a recount of kept counts changes none");
}

/// A start brings an earlier build's table to this one's in steps, each saved as it ends: a
/// start killed after adoption and before the counts were marked adopts nothing again (the
/// bits of slot 0 are counts by then, and a second adoption would take them for an expiry).
#[test]
fn a_table_is_adopted_once_however_its_start_ends() {
    let mut t = table(2, 7);
    let zeros = keys_with(&t, [0, 0], HOST_WAYS);
    for (w, &k) in zeros.iter().enumerate() {
        t.slots.put(0, w, HostSlot::holding(k, ban(k + 1)));
    }
    let spilled = keys_with(&t, [0, 1], 2);
    for (w, &k) in spilled.iter().enumerate() {
        t.slots.put(1, w, HostSlot::holding(k, ban(k + 1)));
    }
    let info = HostInfo { seed: 7, count: 0, _pad: 0 };
    // Killed before adoption was saved: nothing may be counted yet, or the next start would
    // adopt counts as expiry bits.
    let mut killed = |_| Err(MapsError::Missing("killed"));
    assert!(t.ready(info, "test", &mut killed).is_err());
    assert_eq!(t.slots.spill(0), 0, "nothing is counted before adoption is saved");
    for &k in &spilled {
        t.remove(k);
    }
    let mut saved = Vec::new();
    let mut save = |i| {
        saved.push(i);
        Ok(())
    };
    t.ready(info, "test", &mut save).expect("ready");
    assert_eq!(saved.len(), 2, "adoption and the end are each saved");
    assert!(saved[0].adopted() && !saved[0].spill_counted());
    let last = *saved.last().expect("saved");
    assert!(last.adopted() && last.spill_counted() && last.hosts() == HOST_WAYS as u32);
    // Hosts whose first set is full go on to their second: set 0's slot 0, a ban, now also
    // holds a count.
    for &k in &keys_with(&t, [0, 1], 3) {
        assert_eq!(t.insert(k, ban(k + 1)), Some(true));
    }
    assert_eq!(t.slots.spill(0), 3);
    // A start killed after adopting, then one that ran to the end: neither adopts again.
    for info in [saved[0], last] {
        t.ready(info, "test", &mut |_| Ok(())).expect("ready again");
        assert_spills_counted(&t);
        assert_eq!(t.slots.spill(0), 3);
        for &k in &zeros {
            assert_eq!(t.get(k), Some(ban(k + 1)), "slot 0's ban keeps its expiry");
        }
    }
}

/// Counts that reached their most stay there while hosts leave, and a recount makes them
/// exact again.
#[test]
fn a_full_spill_count_stays_until_recounted() {
    let t = table(2, 7);
    for &k in &keys_with(&t, [0, 0], HOST_WAYS) {
        assert_eq!(t.insert(k, ban(k)), Some(true));
    }
    let spilled = keys_with(&t, [0, 1], HOST_WAYS);
    for &k in &spilled {
        assert_eq!(t.insert(k, ban(k)), Some(true));
    }
    assert_eq!(t.slots.spill(0), HOST_WAYS as u64);
    t.slots.set_spill(0, HOST_SPILL_MAX);
    spilled.iter().for_each(|&k| assert!(t.remove(k)));
    assert_eq!(t.slots.spill(0), HOST_SPILL_MAX, "a full count may count more than it holds");
    assert_eq!(t.recount(), 1);
    assert_eq!(t.slots.spill(0), 0);
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
            let held: BTreeSet<u64> = t.entries().into_iter().map(|(k, _)| k).collect();
            prop_assert_eq!(held.len(), model.len());
            prop_assert_eq!(t.entries().len(), model.len(), "a key held twice");
            assert_spills_counted(&t);
        }
    }
}
