//! The per-source limiter table (`secgate_common::sources`): its hash key, lookups the way
//! the program makes them, and emptying it.

use aya::maps::{Array, MapData};
use secgate_common::{
    maps::{self as names, BucketKey, DatapathConfig, SourceState},
    sources::{self, SourceSet},
};

use super::{MapsError, Result, wrap};

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
    ///
    /// The size is the kernel's: a reused pin keeps its own, which the loader's would not
    /// show, and placing buckets past its end would leave their sources unlimited.
    pub fn take(bpf: &mut aya::Ebpf, cfg: &DatapathConfig) -> Result<SourceTable> {
        let map = super::take(bpf, names::SOURCES)?;
        let aya::maps::Map::Array(data) = &map else {
            return Err(MapsError::Missing(names::SOURCES));
        };
        let count = data.info().map_err(wrap(names::SOURCES))?.max_entries();
        let sets = Array::try_from(map).map_err(wrap(names::SOURCES))?;
        let known = cfg.source_seed != 0 && cfg.source_sets == count;
        let seed = if known { cfg.source_seed } else { rand::random::<u64>() | 1 };
        Ok(SourceTable { sets, count, seed })
    }

    /// `cfg` with this table's size and seed, which the program needs to find buckets.
    pub fn configure(&self, cfg: &DatapathConfig) -> DatapathConfig {
        DatapathConfig { source_sets: self.count, source_seed: self.seed, ..*cfg }
    }

    /// Buckets the table holds without evicting any.
    pub fn capacity(&self) -> u32 {
        sources::capacity_of(self.count)
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
