//! The host-ban tables (`secgate_common::hosts`) as the daemon places bans in them.
//!
//! Each table is mapped into the daemon's memory, so a slot is read and written with single
//! aligned 8-byte loads and stores in the order the program's lookup relies on (key, then
//! state; a clear by its state alone). A syscall copying a whole set promises no order, and
//! a packet reading a half-copied slot could find a key beside another host's ban.
//!
//! Each set's spill count (in its slot 0's state, kept by every write of that slot) rises
//! before a host whose first set it is goes to its second, and falls after such a host is
//! cleared there, so a packet that skips a second set because the count read 0 skips no
//! host standing there. The counts live in the table, not in the daemon, so every handle
//! and every restart sees the same ones.

use std::{
    num::NonZeroUsize,
    os::fd::AsFd,
    ptr::NonNull,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use aya::maps::{Array, MapData};
use nix::sys::mman::{MapFlags, ProtFlags};
use secgate_common::{
    hosts::{
        HOST_EXPIRY, HOST_SETS, HOST_SPILL_MAX, HOST_TAKEN, HOST_WAYS, HOSTS_ADOPTED,
        HOSTS_SPILL_COUNTED, HostInfo, HostSet, HostSlot, entry_of_state, host_sets,
        spill_of_state, with_spill,
    },
    maps::{self as names, DenyEntry, HOSTS_V4, HOSTS_V6, MAX_DENY_HOSTS},
};

use super::{MapsError, Result, wrap};

/// Placement reads two sets and writes one: two writers at once could both take one free
/// slot. Every handle the daemon opens on the tables places under this lock (only the
/// daemon holding the instance lock writes them).
static PLACING: Mutex<()> = Mutex::new(());

/// Words per slot: its key and its state.
const SLOT_WORDS: usize = 2;

/// A table's sets, mapped shared with the kernel's copy.
struct Mapped {
    base: NonNull<AtomicU64>,
    sets: u32,
    len: NonZeroUsize,
}

// SAFETY: the mapping is only accessed through atomics, and lives until dropped.
unsafe impl Send for Mapped {}
// SAFETY: as above.
unsafe impl Sync for Mapped {}

impl Mapped {
    /// Maps the `sets` sets of an mmapable array map.
    fn map(data: &MapData, sets: u32, name: &'static str) -> Result<Mapped> {
        let len = NonZeroUsize::new(sets as usize * size_of::<HostSet>())
            .ok_or(MapsError::Missing(name))?;
        let prot = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
        // SAFETY: a fresh shared mapping of the map's own value area; nothing else in this
        // process aliases it, and the kernel's side is accessed with single aligned stores.
        let base = unsafe {
            nix::sys::mman::mmap(None, len, prot, MapFlags::MAP_SHARED, data.fd().as_fd(), 0)
        }
        .map_err(|e| MapsError::Mmap { name, source: e.into() })?;
        Ok(Mapped { base: base.cast(), sets, len })
    }

    /// A private table of `sets` sets, for tests of placement.
    #[cfg(test)]
    fn anonymous(sets: u32) -> Mapped {
        let len = NonZeroUsize::new(sets as usize * size_of::<HostSet>()).expect("sets");
        let prot = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
        let flags = MapFlags::MAP_PRIVATE | MapFlags::MAP_ANONYMOUS;
        // SAFETY: a fresh anonymous mapping.
        let base = unsafe { nix::sys::mman::mmap_anonymous(None, len, prot, flags) }.expect("mmap");
        Mapped { base: base.cast(), sets, len }
    }

    fn word(&self, set: u32, way: usize, field: usize) -> &AtomicU64 {
        assert!(set < self.sets && way < HOST_WAYS, "slot {set}/{way} outside the table");
        let i = (set as usize * HOST_WAYS + way) * SLOT_WORDS + field;
        // SAFETY: in bounds (asserted), 8-aligned (the mapping is page-aligned), and only
        // ever accessed atomically.
        unsafe { &*self.base.as_ptr().add(i) }
    }

    /// Set `set` as a packet would read it now, slot by slot.
    fn set(&self, set: u32) -> HostSet {
        let mut out = HostSet::default();
        for (way, slot) in out.slots.iter_mut().enumerate() {
            let state = self.word(set, way, 1).load(Ordering::Acquire);
            *slot = HostSlot { key: self.word(set, way, 0).load(Ordering::Relaxed), state };
        }
        out
    }

    /// The state of the slot of `set` that holds `key`, read as the program reads it: key,
    /// state, key, each load ordered after the one before.
    fn find(&self, set: u32, key: u64) -> Option<u64> {
        (0..HOST_WAYS).find_map(|way| {
            let before = self.word(set, way, 0).load(Ordering::Acquire);
            let state = self.word(set, way, 1).load(Ordering::Acquire);
            let after = self.word(set, way, 0).load(Ordering::Acquire);
            (before == key && after == key && state & HOST_TAKEN != 0).then_some(state)
        })
    }

    /// Writes `slot` into a slot that is free or already holds its key (slot 0 keeps its
    /// set's spill count).
    fn put(&self, set: u32, way: usize, slot: HostSlot) {
        self.word(set, way, 0).store(slot.key, Ordering::Relaxed);
        self.store_state(set, way, slot.state);
    }

    fn clear(&self, set: u32, way: usize) {
        self.store_state(set, way, 0);
    }

    /// Stores a slot's state, and in slot 0 the set's spill count beside it.
    fn store_state(&self, set: u32, way: usize, state: u64) {
        let word = self.word(set, way, 1);
        let state = if way == 0 {
            with_spill(state, spill_of_state(word.load(Ordering::Relaxed)))
        } else {
            state
        };
        word.store(state, Ordering::Release);
    }

    fn spill(&self, set: u32) -> u64 {
        spill_of_state(self.word(set, 0, 1).load(Ordering::Acquire))
    }

    fn set_spill(&self, set: u32, count: u64) {
        let word = self.word(set, 0, 1);
        word.store(with_spill(word.load(Ordering::Relaxed), count), Ordering::Release);
    }

    /// One more host of `set` in its second set. A count at its most stays there.
    fn spill_one(&self, set: u32) {
        let count = self.spill(set);
        if count < HOST_SPILL_MAX {
            self.set_spill(set, count + 1);
        }
    }

    /// One such host fewer. A count at its most stays (it may count more hosts than it
    /// can hold). A count of 0 here is one too low, which nothing should leave: it stays 0,
    /// with a warning, and the next start recounts.
    fn unspill_one(&self, set: u32) {
        match self.spill(set) {
            0 => tracing::warn!(set, "a spill count was too low; the next start recounts it"),
            HOST_SPILL_MAX => {}
            count => self.set_spill(set, count - 1),
        }
    }

    /// Stores a slot's whole state word, spill count and all.
    fn store_raw(&self, set: u32, way: usize, state: u64) {
        self.word(set, way, 1).store(state, Ordering::Release);
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`/`anonymous`, unmapped once.
        let _ = unsafe { nix::sys::mman::munmap(self.base.cast(), self.len.get()) };
    }
}

/// One family's table and the key it is hashed with.
struct Table {
    slots: Mapped,
    seed: u64,
}

impl Table {
    fn sets_of(&self, key: u64) -> [u32; 2] {
        host_sets(self.seed, self.slots.sets, key)
    }

    /// The ban on `key` as a packet finds it, reading the live table in the program's
    /// order: the first set's slots, then its spill count, then the second set. (A copy of
    /// each set made first would read the count before the slots, and could miss a host
    /// moved on meanwhile.)
    fn get(&self, key: u64) -> Option<DenyEntry> {
        let [a, b] = self.sets_of(key);
        let found = self.slots.find(a, key);
        let found =
            found.or_else(|| if self.slots.spill(a) > 0 { self.slots.find(b, key) } else { None });
        entry_of_state(found?)
    }

    /// `key`'s first set, when `set` is its second and not its first: the set whose spill
    /// count covers `key` while it stands in `set`.
    fn spilled_from(&self, key: u64, set: u32) -> Option<u32> {
        let [first, second] = self.sets_of(key);
        (set == second && first != second).then_some(first)
    }

    /// Writes `slot` for its key into `(set, way)`, a free slot, counted first if it is in
    /// the key's second set.
    fn place(&self, set: u32, way: usize, slot: HostSlot) {
        if let Some(first) = self.spilled_from(slot.key, set) {
            self.slots.spill_one(first);
        }
        self.slots.put(set, way, slot);
    }

    /// Clears `key`'s slot `(set, way)`, and then its count if it stood in its second set.
    fn clear(&self, key: u64, set: u32, way: usize) {
        self.slots.clear(set, way);
        if let Some(first) = self.spilled_from(key, set) {
            self.slots.unspill_one(first);
        }
    }

    /// Every slot holding `key`: one, or two after a daemon was killed while moving it.
    fn find(&self, key: u64) -> Vec<(u32, usize)> {
        let [first, second] = self.sets_of(key);
        let sets = if first == second { &[first][..] } else { &[first, second][..] };
        let hits = sets.iter().map(|&s| (s, self.slots.set(s).find(key)));
        hits.filter_map(|(s, hit)| hit.map(|(w, _)| (s, w))).collect()
    }

    /// Writes the ban on `key`: in its slots if it has any, else in a free slot of its first
    /// set, else of its second, else in one freed by moving an occupant forward. Returns
    /// whether the key is new, or `None` if neither of its sets has room however occupants
    /// move.
    fn insert(&self, key: u64, entry: DenyEntry) -> Option<bool> {
        let slot = HostSlot::holding(key, entry);
        let held = self.find(key);
        if !held.is_empty() {
            held.into_iter().for_each(|(s, w)| self.slots.put(s, w, slot));
            return Some(false);
        }
        let sets = self.sets_of(key);
        let free = sets.into_iter().find_map(|s| self.slots.set(s).free_slot().map(|w| (s, w)));
        let (s, w) = free.or_else(|| self.make_room(sets))?;
        self.place(s, w, slot);
        Some(true)
    }

    /// Frees a slot of `sets` by moving an occupant that is in its first set to its second:
    /// counted and copied there first, then cleared here, so a packet (reading the first
    /// set first, and its count after) always finds it. Occupants already in their second
    /// set stay: moved back, a packet could read the first set before the copy and the
    /// second after the clear.
    fn make_room(&self, sets: [u32; 2]) -> Option<(u32, usize)> {
        for s in sets {
            let set = self.slots.set(s);
            for (w, occupant) in set.slots.iter().enumerate() {
                let [first, second] = self.sets_of(occupant.key);
                if first != s || second == s {
                    continue;
                }
                if let Some(to) = self.slots.set(second).free_slot() {
                    self.place(second, to, *occupant);
                    self.slots.clear(s, w);
                    return Some((s, w));
                }
            }
        }
        None
    }

    fn remove(&self, key: u64) -> bool {
        let held = self.find(key);
        held.iter().for_each(|&(s, w)| self.clear(key, s, w));
        !held.is_empty()
    }

    /// Clears the second copy of each host held twice (a daemon killed between a move's
    /// copy and its clear), keeping in the first the ban that outlasts; returns how many.
    fn drop_copies(&self) -> usize {
        let mut copies = 0;
        for (key, _) in self.entries() {
            let held = self.find(key);
            if let [(s, w), rest @ ..] = held.as_slice()
                && !rest.is_empty()
            {
                let ban = |&(s, w): &(u32, usize)| self.slots.set(s).slots[w].entry();
                let kept = held.iter().filter_map(ban).reduce(DenyEntry::outlasting);
                self.slots.put(*s, *w, HostSlot::holding(key, kept.expect("a held ban")));
                rest.iter().for_each(|&(s, w)| self.clear(key, s, w));
                copies += rest.len();
            }
        }
        copies
    }

    /// Every ban in the table.
    fn entries(&self) -> Vec<(u64, DenyEntry)> {
        let mut out = Vec::new();
        for s in 0..self.slots.sets {
            for slot in self.slots.set(s).slots {
                if let Some(entry) = entry_of_state(slot.state) {
                    out.push((slot.key, entry));
                }
            }
        }
        out
    }

    /// Sets every set's spill count to the hosts standing in their second set it covers
    /// (capped): exact again after counts that reached their most, or a daemon killed
    /// between a count and its slot's write. Returns how many counts changed.
    fn recount(&self) -> usize {
        let mut counts = vec![0u64; self.slots.sets as usize];
        for s in 0..self.slots.sets {
            for slot in self.slots.set(s).slots.iter().filter(|slot| !slot.is_free()) {
                if let Some(first) = self.spilled_from(slot.key, s) {
                    counts[first as usize] += 1;
                }
            }
        }
        let stale = (0..self.slots.sets).filter(|&s| {
            let want = counts[s as usize].min(HOST_SPILL_MAX);
            let stale = self.slots.spill(s) != want;
            if stale {
                self.slots.set_spill(s, want);
            }
            stale
        });
        stale.count()
    }

    /// Makes a table an earlier build left (whose slot 0 held no count, and whose expiries
    /// could use the count's bits) one of this build's: an expiry past [`HOST_EXPIRY`] is
    /// cut to it, and each slot 0's count starts at 0 for [`Table::recount`].
    fn adopt(&self) {
        for s in 0..self.slots.sets {
            for (w, slot) in self.slots.set(s).slots.iter().enumerate() {
                let state = match slot.state {
                    st if st & HOST_TAKEN == 0 => 0,
                    st => HOST_TAKEN | (st & !HOST_TAKEN).min(HOST_EXPIRY),
                };
                if state != slot.state {
                    self.slots.store_raw(s, w, state);
                }
            }
        }
    }

    /// Brings a table to this build's form, `info` its `SG_HOST_INFO` entry, saved through
    /// `save` after each step a restart must not redo. First adoption (until then expiries
    /// and counts may share bits), marked at once: a second pass would take counts for
    /// expiries. Then a table without a seed (made anew) gets a random one and its entries,
    /// if an earlier run left any, are placed again under it; spill counts are recounted; a
    /// host held twice (a daemon killed in a move) keeps one copy; only then are the counts
    /// marked kept (till then a lookup reads both sets); the count of hosts is set to what the
    /// table holds (a daemon killed between a slot's write and the count's leaves them
    /// apart).
    fn ready(
        &mut self,
        mut info: HostInfo,
        name: &str,
        save: &mut dyn FnMut(HostInfo) -> Result<()>,
    ) -> Result<()> {
        if !info.adopted() {
            self.adopt();
            info.count |= HOSTS_ADOPTED;
            save(info)?;
        }
        if info.seed == 0 {
            let entries = self.entries();
            let lost = self.rehash(rand::random::<u64>() | 1, &entries);
            if lost > 0 {
                tracing::warn!(table = name, lost, "host bans found no room when re-placed");
            }
        }
        let stale = self.recount();
        if stale > 0 && info.spill_counted() {
            tracing::info!(table = name, sets = stale, "spill counts made exact again");
        }
        let copies = self.drop_copies();
        if copies > 0 {
            tracing::info!(table = name, copies, "host bans held twice now held once");
        }
        let hosts = u32::try_from(self.entries().len()).unwrap_or(u32::MAX);
        info.seed = self.seed;
        info.count = hosts | HOSTS_ADOPTED | HOSTS_SPILL_COUNTED;
        save(info)
    }

    /// Empties the table and places `entries` again under `seed`: for a table whose seed
    /// was lost. Returns the entries that found no room (none, unless the table was full).
    fn rehash(&mut self, seed: u64, entries: &[(u64, DenyEntry)]) -> usize {
        for s in 0..self.slots.sets {
            for w in 0..HOST_WAYS {
                self.slots.store_raw(s, w, 0);
            }
        }
        self.seed = seed;
        entries.iter().filter(|(k, e)| self.insert(*k, *e).is_none()).count()
    }
}

/// Both families' tables and `SG_HOST_INFO`.
pub struct HostTables {
    tables: [Table; 2],
    info: Array<MapData, HostInfo>,
}

/// Table names by `SG_HOST_INFO` index.
const NAMES: [&str; 2] = [names::HOST_BANS_V4, names::HOST_BANS_V6];

impl HostTables {
    /// Opens tables another handle set up (`init`): their seeds are in `SG_HOST_INFO`.
    pub fn open(v4: &MapData, v6: &MapData, info: Array<MapData, HostInfo>) -> Result<HostTables> {
        let seed = |family: u32| -> Result<u64> {
            let seed = info.get(&family, 0).map_err(wrap(names::HOST_INFO))?.seed;
            if seed == 0 {
                return Err(MapsError::Uninitialised(NAMES[family as usize]));
            }
            Ok(seed)
        };
        let table = |data: &MapData, family: u32| -> Result<Table> {
            let name = NAMES[family as usize];
            let sets = data.info().map_err(wrap(name))?.max_entries();
            if sets != HOST_SETS {
                return Err(MapsError::Size { name, found: sets, expected: HOST_SETS });
            }
            Ok(Table { slots: Mapped::map(data, sets, name)?, seed: seed(family)? })
        };
        Ok(HostTables { tables: [table(v4, HOSTS_V4)?, table(v6, HOSTS_V6)?], info })
    }

    /// Makes the tables ready for [`HostTables::open`] once the program is loaded: each is
    /// brought to this build's form by [`Table::ready`].
    pub fn init(v4: &MapData, v6: &MapData, info: &mut Array<MapData, HostInfo>) -> Result<()> {
        let _placing = PLACING.lock().unwrap_or_else(|p| p.into_inner());
        for (family, data) in [(HOSTS_V4, v4), (HOSTS_V6, v6)] {
            let name = NAMES[family as usize];
            let now = info.get(&family, 0).map_err(wrap(names::HOST_INFO))?;
            let mut table = Table { slots: Mapped::map(data, HOST_SETS, name)?, seed: now.seed };
            let mut save = |i: HostInfo| info.set(family, i, 0).map_err(wrap(names::HOST_INFO));
            table.ready(now, name, &mut save)?;
        }
        Ok(())
    }

    /// The ban on `key` in `family`'s table, as the program finds it.
    pub fn get(&self, family: u32, key: u64) -> Option<DenyEntry> {
        self.tables[family as usize].get(key)
    }

    /// Bans `key`, or changes its ban.
    pub fn insert(&mut self, family: u32, key: u64, entry: DenyEntry) -> Result<()> {
        let _placing = PLACING.lock().unwrap_or_else(|p| p.into_inner());
        let name = NAMES[family as usize];
        let table = &self.tables[family as usize];
        let full = MapsError::Full { name, capacity: MAX_DENY_HOSTS };
        let mut info = self.info.get(&family, 0).map_err(wrap(names::HOST_INFO))?;
        if table.find(key).is_empty() && info.hosts() >= MAX_DENY_HOSTS {
            return Err(full);
        }
        if table.insert(key, entry).ok_or(full)? {
            // After the slot: a program that sees a count finds the host. A count not
            // written takes the host out again, so the count never falls below the table.
            info.count += 1;
            if let Err(e) = self.info.set(family, info, 0) {
                table.remove(key);
                return Err(wrap(names::HOST_INFO)(e));
            }
        }
        Ok(())
    }

    /// Lifts the ban on `key`; `false` if there was none.
    pub fn remove(&mut self, family: u32, key: u64) -> Result<bool> {
        let _placing = PLACING.lock().unwrap_or_else(|p| p.into_inner());
        if !self.tables[family as usize].remove(key) {
            return Ok(false);
        }
        let mut info = self.info.get(&family, 0).map_err(wrap(names::HOST_INFO))?;
        if info.hosts() > 0 {
            info.count -= 1;
        }
        self.info.set(family, info, 0).map_err(wrap(names::HOST_INFO))?;
        Ok(true)
    }

    /// Every ban in `family`'s table.
    pub fn entries(&self, family: u32) -> Vec<(u64, DenyEntry)> {
        self.tables[family as usize].entries()
    }
}

#[cfg(test)]
mod tests;
