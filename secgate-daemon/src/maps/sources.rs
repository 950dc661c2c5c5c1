//! The per-source limiter table (`secgate_common::sources`): its hash key, lookups the way
//! the program makes them, and emptying it.

use aya::maps::{Array, MapData};
use secgate_common::{
    maps::{self as names, BucketKey, DatapathConfig, SourceState},
    sources::{self, SET_WAYS, SourceSet},
};

use super::{Result, wrap};

/// `SG_SOURCES` and the hash key its buckets were placed with.
pub struct SourceTable {
    sets: Array<MapData, SourceSet>,
    count: u32,
    seed: u64,
}

impl SourceTable {
    /// Takes the table, keeping the seed `cfg` holds when it was written for a table of this
    /// size (a reused pin: its buckets stay found). Otherwise the table is new, or was placed
    /// with a key no longer known, and gets a fresh random one. Unknown buckets need no
    /// sweep: their tags match no key but by chance (2^-32), and their slots are free once
    /// their TATs pass, at most one interval plus burst of the slowest rule later.
    pub fn new(sets: Array<MapData, SourceSet>, cfg: &DatapathConfig) -> SourceTable {
        let count = sets.len();
        let known = cfg.source_seed != 0 && cfg.source_sets == count;
        let seed = if known { cfg.source_seed } else { rand::random::<u64>() | 1 };
        SourceTable { sets, count, seed }
    }

    /// `cfg` with this table's size and seed, which the program needs to find buckets.
    pub fn configure(&self, cfg: &DatapathConfig) -> DatapathConfig {
        DatapathConfig { source_sets: self.count, source_seed: self.seed, ..*cfg }
    }

    /// Buckets the table holds without evicting any ([`sources::sets_for`]).
    pub fn capacity(&self) -> u32 {
        let slots = u64::from(self.count) * SET_WAYS as u64;
        u32::try_from(slots / 2).unwrap_or(u32::MAX)
    }

    /// The bucket `key` counts against, found as the program finds it.
    pub fn get(&self, key: &BucketKey) -> Result<Option<SourceState>> {
        let place = sources::place(self.seed, self.count, key);
        for set in place.sets {
            let set = self.sets.get(&set, 0).map_err(wrap(names::SOURCES))?;
            if let Some(i) = set.find(place.tag) {
                let slot = set.slots[i];
                return Ok(Some(SourceState {
                    tat_ns: slot.tat_ns,
                    event_stamp: slot.event_stamp,
                }));
            }
        }
        Ok(None)
    }

    /// Forgets every bucket, one write per set: for tests that drive the program themselves.
    #[cfg(any(test, feature = "test-util"))]
    pub fn clear(&mut self) -> Result<()> {
        for i in 0..self.count {
            self.sets.set(i, SourceSet::default(), 0).map_err(wrap(names::SOURCES))?;
        }
        Ok(())
    }
}
