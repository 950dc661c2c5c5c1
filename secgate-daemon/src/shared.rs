//! What the daemon's tasks share: the policy, the audit log, where the config lives (for
//! reload) and counters that only exist in userspace (events, control actions).

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    path::PathBuf,
    sync::{Mutex, MutexGuard},
};

use serde::{Deserialize, Serialize};

use crate::{audit::Audit, config::Config, policy::Policy};

/// Sources tracked for "top offenders"; beyond this the least active are forgotten.
const MAX_TRACKED_SOURCES: usize = 4096;

#[derive(Default)]
pub struct EventCounts {
    pub total: u64,
    pub by_source: HashMap<IpAddr, u64>,
}

impl EventCounts {
    pub fn record(&mut self, source: IpAddr) {
        self.total += 1;
        *self.by_source.entry(source).or_default() += 1;
        if self.by_source.len() > MAX_TRACKED_SOURCES {
            self.forget_least_active();
        }
    }

    /// Keeps the more active half, so a flood of new sources costs amortised O(1) per event
    /// rather than a scan of every tracked source per event.
    fn forget_least_active(&mut self) {
        let mut counts: Vec<u64> = self.by_source.values().copied().collect();
        let middle = counts.len() / 2;
        let (_, threshold, _) = counts.select_nth_unstable(middle);
        let threshold = *threshold;
        self.by_source.retain(|_, n| *n > threshold);
    }

    pub fn top(&self, n: usize) -> Vec<SourceEvents> {
        let mut all: Vec<SourceEvents> = self
            .by_source
            .iter()
            .map(|(source, events)| SourceEvents { source: *source, events: *events })
            .collect();
        all.sort_by(|a, b| b.events.cmp(&a.events).then(a.source.cmp(&b.source)));
        all.truncate(n);
        all
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SourceEvents {
    pub source: IpAddr,
    pub events: u64,
}

pub struct Shared {
    pub policy: Mutex<Policy>,
    pub audit: Audit,
    pub config_path: PathBuf,
    pub events: Mutex<EventCounts>,
    /// Control actions by (action, ok).
    pub actions: Mutex<BTreeMap<(String, bool), u64>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    pub fn policy(&self) -> MutexGuard<'_, Policy> {
        lock(&self.policy)
    }

    pub fn events(&self) -> MutexGuard<'_, EventCounts> {
        lock(&self.events)
    }

    pub fn count_action(&self, action: &str, ok: bool) {
        *lock(&self.actions).entry((action.to_string(), ok)).or_default() += 1;
    }

    pub fn actions(&self) -> BTreeMap<(String, bool), u64> {
        lock(&self.actions).clone()
    }

    /// Re-reads the config file and applies it; on any problem the running policy stays and
    /// the error lists every problem.
    pub fn reload(&self, policy: &mut Policy) -> Result<(), String> {
        let config = Config::load(&self.config_path).map_err(|e| e.to_string())?;
        policy.reload(config.datapath).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracking_stays_bounded_and_keeps_the_most_active() {
        let mut counts = EventCounts::default();
        let heavy: IpAddr = "198.19.0.1".parse().unwrap();
        for i in 0..20_000u32 {
            counts.record(IpAddr::from((0xc612_0000u32 | i).to_be_bytes()));
            if i % 10 == 0 {
                counts.record(heavy);
            }
        }
        assert!(counts.by_source.len() <= MAX_TRACKED_SOURCES);
        assert_eq!(counts.total, 22_000);
        assert_eq!(counts.top(1), vec![SourceEvents { source: heavy, events: 2_000 }]);
    }
}
