//! The journal thread: writes the state file for every batch of changes (group commit),
//! then writes their audit lines and tells the waiting callers.
//!
//! It takes the policy lock only to serialise a snapshot; the write and fsync happen
//! outside it, while further changes are applied and queue up for the next write. One
//! writer also keeps the audit log in commit order and off every caller's path.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::watch;
use tracing::{error, info};

use super::{Caller, Core, Durable};
use crate::{audit::Audit, state::StateFile};

/// After a failed write, wait this long before trying again (new changes do not hurry it:
/// a full disk stays full).
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// An audited change, waiting for its state to be written.
pub(super) struct Record {
    caller: Caller,
    action: &'static str,
    request: serde_json::Value,
    /// `None` for refused changes, which have nothing to write.
    version: Option<u64>,
    outcome: Result<(), String>,
}

impl Record {
    pub(super) fn new(
        caller: Caller,
        action: &'static str,
        request: serde_json::Value,
        version: Option<u64>,
        outcome: Result<(), String>,
    ) -> Record {
        Record { caller, action, request, version, outcome }
    }
}

/// What the journal has done.
#[derive(Default)]
pub struct JournalStats {
    /// State-file writes that succeeded.
    pub commits: AtomicU64,
    /// Changes those writes carried.
    pub committed_changes: AtomicU64,
    /// State-file writes that failed.
    pub failures: AtomicU64,
    changes: Mutex<BTreeMap<(&'static str, &'static str, bool), u64>>,
}

impl JournalStats {
    pub(super) fn changes(&self) -> BTreeMap<(&'static str, &'static str, bool), u64> {
        self.changes.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Where the journal writes.
pub(super) struct Sinks {
    pub state: StateFile,
    /// Set when the state file could not be read at start: it is never written over.
    pub frozen: Option<String>,
    pub audit: Arc<Audit>,
}

pub(super) fn spawn(
    core: Arc<Core>,
    sinks: Sinks,
    durable: watch::Sender<Durable>,
    stats: Arc<JournalStats>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("secgate-journal".into())
        .spawn(move || Journal { core, sinks, durable, stats, written: 0, last_error: None }.run())
        .expect("spawn the journal thread")
}

struct Journal {
    core: Arc<Core>,
    sinks: Sinks,
    durable: watch::Sender<Durable>,
    stats: Arc<JournalStats>,
    /// Every change up to this version is on disk.
    written: u64,
    /// The last write error, so a lasting failure is logged once rather than every second.
    last_error: Option<String>,
}

/// One round's work, taken under the lock.
struct Batch {
    snapshot: Option<crate::state::Runtime>,
    upto: u64,
    records: Vec<Record>,
    stop: bool,
}

impl Journal {
    fn run(mut self) {
        let mut retry_at: Option<Instant> = None;
        loop {
            let batch = self.next_batch(retry_at);
            let result = batch.snapshot.as_ref().map(|r| self.write(r));
            let failed = result.as_ref().and_then(|r| r.as_ref().err()).map(|e| e.to_string());
            // Audit lines first, so that no change is acknowledged before it is audited.
            let audited = !batch.records.is_empty();
            for r in batch.records {
                self.record(r, failed.as_deref());
            }
            if audited {
                self.sinks.audit.sync();
            }
            match (result, failed) {
                (Some(Ok(())), _) => {
                    if retry_at.take().is_some() {
                        info!(path = %self.sinks.state.path().display(), "state file written again");
                    }
                    self.last_error = None;
                    self.stats.commits.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .committed_changes
                        .fetch_add(batch.upto - self.written, Ordering::Relaxed);
                    self.written = batch.upto;
                    self.durable.send_modify(|d| d.written = batch.upto);
                }
                (Some(Err(_)), Some(e)) => {
                    if self.last_error.as_ref() != Some(&e) {
                        error!(error = %e, "saving the state failed; changes stay in force and are saved once a write succeeds");
                    }
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    retry_at = Some(Instant::now() + RETRY_AFTER);
                    let message: Arc<str> = e.as_str().into();
                    self.last_error = Some(e);
                    self.durable.send_modify(|d| {
                        d.failed_through = batch.upto;
                        d.error = Some(message);
                    });
                }
                _ => {}
            }
            if batch.stop {
                return;
            }
        }
    }

    fn write(&self, runtime: &crate::state::Runtime) -> Result<(), crate::state::StateError> {
        if let Some(reason) = &self.sinks.frozen {
            let path = self.sinks.state.path();
            return Err(crate::state::StateError::Frozen { path, reason: reason.clone() });
        }
        self.sinks.state.write(&StateFile::encode(runtime))
    }

    /// Waits for work: changes to write (unless a failed write is still backing off), or a
    /// stop (which writes what is pending at once, one last time). Audit records of changes
    /// not yet written stay queued.
    fn next_batch(&self, retry_at: Option<Instant>) -> Batch {
        let mut inner = self.core.lock();
        loop {
            let stop = inner.stop;
            let may_write = stop || retry_at.is_none_or(|t| Instant::now() >= t);
            let write = inner.version > self.written && may_write;
            if write || stop {
                let upto = if write { inner.version } else { self.written };
                // Only the copy is taken under the lock; encoding and writing happen outside.
                let snapshot = write.then(|| inner.policy.runtime());
                let (records, rest) = std::mem::take(&mut inner.queue)
                    .into_iter()
                    .partition(|r| r.version.is_some_and(|v| v <= upto));
                inner.queue = rest;
                return Batch { snapshot, upto, records, stop };
            }
            let wait = retry_at
                .map_or(Duration::from_secs(3600), |t| t.saturating_duration_since(Instant::now()));
            inner = self.core.wake.wait_timeout(inner, wait).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    fn record(&self, r: Record, failed: Option<&str>) {
        record(&self.sinks.audit, &self.stats, r, failed);
    }
}

/// Writes `r`'s audit line (saying it was not saved if the write of its change `failed`) and
/// counts it.
pub(super) fn record(audit: &Audit, stats: &JournalStats, r: Record, failed: Option<&str>) {
    let not_saved;
    let outcome = match (&r.outcome, failed) {
        (Ok(()), Some(e)) if r.version.is_some() => {
            not_saved = format!("in force but not saved: {e}");
            Err(not_saved.as_str())
        }
        (Ok(()), _) => Ok(()),
        (Err(e), _) => Err(e.as_str()),
    };
    audit.record(&r.caller, r.action, &r.request, outcome);
    let key = (r.action, r.caller.kind(), outcome.is_ok());
    *stats.changes.lock().unwrap_or_else(|p| p.into_inner()).entry(key).or_default() += 1;
}
