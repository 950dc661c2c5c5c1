//! The state the fleet task and the rest of the daemon share: this node's ban changes
//! waiting to reach Redis (coalesced by CIDR, kept through any outage), the connection's
//! health for `status` and the metrics, and the connection itself for the limiter.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::Instant,
};

use ipnet::IpNet;
use prometheus_client::{
    metrics::{counter::Counter, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use redis::aio::MultiplexedConnection;
use tokio::sync::Notify;

use super::settings::FleetSettings;
use crate::{
    service::{Share, SharedBan},
    views::FleetView,
};

/// Changes kept for Redis at most; past it the newest are dropped (they stay in force on
/// this node) and a warning says so. As many as the host tables hold bans.
pub const MAX_PENDING: usize = 1 << 20;

/// A change this node made, not yet in Redis, and when it was made (Unix ms): other
/// nodes measure its propagation from then.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pending {
    Ban { ban: SharedBan, at_ms: u64, version: u64 },
    Lift { at_ms: u64, version: u64 },
}

impl Pending {
    /// The policy version it was applied at here (0: not a change of this run's).
    fn version(&self) -> u64 {
        match self {
            Pending::Ban { version, .. } | Pending::Lift { version, .. } => *version,
        }
    }
}

/// The changes waiting for Redis, and the latest policy version queued per CIDR (kept
/// after the change is taken for sending, so a change applied earlier but handed on later
/// cannot overtake it).
#[derive(Default)]
struct Queue {
    changes: BTreeMap<IpNet, Pending>,
    latest: HashMap<IpNet, u64>,
    /// The highest version seen: entries of `latest` far below it are forgotten.
    top: u64,
}

/// How far behind the highest version a late change may still arrive. Changes reach the
/// queue microseconds after they are applied; this is thousands of changes of slack.
const LATE: u64 = 100_000;

impl Queue {
    /// Whether `change` of `cidr` is newer than any queued for it (and records it).
    fn newer(&mut self, cidr: IpNet, change: &Pending) -> bool {
        let version = change.version();
        if version == 0 {
            return true;
        }
        if self.latest.get(&cidr).is_some_and(|&v| v > version) {
            return false;
        }
        self.latest.insert(cidr, version);
        self.top = self.top.max(version);
        if self.latest.len() > MAX_PENDING {
            let floor = self.top.saturating_sub(LATE);
            self.latest.retain(|_, v| *v >= floor);
        }
        true
    }
}

/// Propagation delays kept for the quantiles in `status`.
const RECENT: usize = 1024;

#[derive(Default)]
struct Health {
    connected: bool,
    last_sync: Option<Instant>,
    bans_shared: usize,
    last_error: Option<String>,
    /// Whether the "dropped changes" warning was given since the queue last had room.
    warned_full: bool,
    /// The latest propagation delays from other nodes, in ms.
    recent: std::collections::VecDeque<f64>,
}

/// The fleet's metrics.
#[derive(Clone)]
pub struct Metrics {
    pub connected: Gauge,
    pub errors: Counter,
    pub sent: Counter,
    pub received: Counter,
    pub propagation: Histogram,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let buckets = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0];
        Metrics {
            connected: Gauge::default(),
            errors: Counter::default(),
            sent: Counter::default(),
            received: Counter::default(),
            propagation: Histogram::new(buckets),
        }
    }
}

pub struct Link {
    pub settings: FleetSettings,
    pending: Mutex<Queue>,
    /// The state directory, where pending lifts are kept ([`super::lifts`]); held while
    /// the file is written, so writes land in the order their contents were taken.
    lifts_dir: Mutex<PathBuf>,
    /// Wakes the fleet task when a change is queued.
    pub wake: Notify,
    health: Mutex<Health>,
    /// The live connection, for the fleet-wide limiter; `None` while disconnected.
    conn: Mutex<Option<MultiplexedConnection>>,
    pub metrics: Metrics,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Link {
    /// The link for `settings`, with the lifts a previous run left pending in `dir`.
    pub fn new(settings: FleetSettings, dir: &Path) -> Arc<Link> {
        let (lifts, warning) = super::lifts::load(dir);
        if let Some(w) = warning {
            tracing::error!("{w}");
        }
        let changes =
            lifts.into_iter().map(|(cidr, at_ms)| (cidr, Pending::Lift { at_ms, version: 0 }));
        Arc::new(Link {
            settings,
            pending: Mutex::new(Queue { changes: changes.collect(), ..Queue::default() }),
            lifts_dir: Mutex::new(dir.to_owned()),
            wake: Notify::new(),
            health: Mutex::default(),
            conn: Mutex::default(),
            metrics: Metrics::default(),
        })
    }

    pub fn register(&self, registry: &mut Registry) {
        let m = &self.metrics;
        registry.register(
            "secgate_fleet_connected",
            "Whether the fleet's Redis is reachable (1) or not (0)",
            m.connected.clone(),
        );
        registry.register(
            "secgate_fleet_redis_errors",
            "Redis commands or connections that failed",
            m.errors.clone(),
        );
        registry.register(
            "secgate_fleet_bans_sent",
            "Ban changes this node wrote to the fleet",
            m.sent.clone(),
        );
        registry.register(
            "secgate_fleet_bans_received",
            "Ban changes from other nodes applied here",
            m.received.clone(),
        );
        registry.register(
            "secgate_fleet_propagation_seconds",
            "From a ban change on another node to its being applied here (wall clocks)",
            m.propagation.clone(),
        );
    }

    fn queue(&self, cidr: IpNet, change: Pending) {
        {
            let mut pending = lock(&self.pending);
            if pending.changes.len() >= MAX_PENDING && !pending.changes.contains_key(&cidr) {
                drop(pending);
                let mut health = lock(&self.health);
                if !std::mem::replace(&mut health.warned_full, true) {
                    tracing::warn!(
                        max = MAX_PENDING,
                        "the fleet's Redis has been away for so many ban changes that new ones are kept on this node only"
                    );
                }
                return;
            }
            // Changes of one CIDR can arrive here out of the order they were applied in.
            if !pending.newer(cidr, &change) {
                return;
            }
            let lift = matches!(change, Pending::Lift { .. });
            let was_lift =
                matches!(pending.changes.insert(cidr, change), Some(Pending::Lift { .. }));
            drop(pending);
            if lift || was_lift {
                self.save_lifts();
            }
        }
        self.wake.notify_one();
    }

    /// Writes the pending lifts to the state directory.
    pub fn save_lifts(&self) {
        let dir = lock(&self.lifts_dir);
        let lifts: Vec<(IpNet, u64)> = lock(&self.pending)
            .changes
            .iter()
            .filter_map(|(cidr, p)| match p {
                Pending::Lift { at_ms, .. } => Some((*cidr, *at_ms)),
                Pending::Ban { .. } => None,
            })
            .collect();
        if let Err(e) = super::lifts::save(&dir, lifts) {
            tracing::warn!(error = %e, "could not save the lifts waiting for the fleet; a restart before Redis is back would lose them");
        }
    }

    /// Takes every pending change, in CIDR order.
    pub fn take_pending(&self) -> BTreeMap<IpNet, Pending> {
        lock(&self.health).warned_full = false;
        std::mem::take(&mut lock(&self.pending).changes)
    }

    /// Puts back changes that did not reach Redis, unless a newer one for the same CIDR
    /// was queued meanwhile.
    pub fn put_back(&self, changes: impl IntoIterator<Item = (IpNet, Pending)>) {
        {
            let mut pending = lock(&self.pending);
            for (cidr, change) in changes {
                let held = pending.changes.get(&cidr).map(Pending::version);
                if held.is_none_or(|v| v < change.version()) {
                    pending.changes.insert(cidr, change);
                }
            }
        }
        // A lift queued during the failed send rewrote the file without those in flight.
        self.save_lifts();
    }

    pub fn is_pending(&self, cidr: &IpNet) -> bool {
        lock(&self.pending).changes.contains_key(cidr)
    }

    /// Queues a ban the node holds that the fleet does not know (a Redis that came back
    /// empty, or bans from before `[fleet]`). When it was made is not known: it goes out as
    /// made at time 0, so that any lift or ban the fleet knows the time of wins over it.
    pub fn republish(&self, ban: SharedBan) {
        let mut pending = lock(&self.pending);
        pending.changes.entry(ban.cidr).or_insert(Pending::Ban { ban, at_ms: 0, version: 0 });
    }

    /// Records how long a change from another node took to be applied here.
    pub fn propagated(&self, delay_ms: f64) {
        self.metrics.propagation.observe(delay_ms / 1000.0);
        let mut health = lock(&self.health);
        if health.recent.len() == RECENT {
            health.recent.pop_front();
        }
        health.recent.push_back(delay_ms);
    }

    pub fn connection(&self) -> Option<MultiplexedConnection> {
        lock(&self.conn).clone()
    }

    /// Connected and in sync; logs the change of state.
    pub fn up(&self, conn: MultiplexedConnection, bans_shared: usize) {
        *lock(&self.conn) = Some(conn);
        let mut health = lock(&self.health);
        if !health.connected {
            tracing::info!(redis = %self.settings.redis, node = %self.settings.node, bans = bans_shared, "fleet connected and in sync");
        }
        health.connected = true;
        health.last_sync = Some(Instant::now());
        health.bans_shared = bans_shared;
        health.last_error = None;
        self.metrics.connected.set(1);
    }

    /// Lost Redis (or never reached it): `error` says why. Logged once per change of state.
    pub fn down(&self, error: &str) {
        *lock(&self.conn) = None;
        self.metrics.errors.inc();
        let mut health = lock(&self.health);
        if health.connected || health.last_error.is_none() {
            tracing::error!(redis = %self.settings.redis, error, "fleet Redis unavailable: bans stay in force here and are shared once it is back");
        }
        health.connected = false;
        health.last_error = Some(error.to_owned());
        self.metrics.connected.set(0);
    }

    pub fn is_connected(&self) -> bool {
        lock(&self.health).connected
    }

    /// Counts a Redis error that did not break the connection.
    pub fn error(&self) {
        self.metrics.errors.inc();
    }
}

impl Share for Link {
    fn banned(&self, ban: SharedBan, version: u64) {
        if self.settings.share_bans {
            let at_ms = crate::clock::unix_ms(std::time::SystemTime::now());
            self.queue(ban.cidr, Pending::Ban { ban, at_ms, version });
        }
    }

    fn lifted(&self, cidr: IpNet, version: u64) {
        if self.settings.share_bans {
            let at_ms = crate::clock::unix_ms(std::time::SystemTime::now());
            self.queue(cidr, Pending::Lift { at_ms, version });
        }
    }

    fn view(&self) -> FleetView {
        let health = lock(&self.health);
        let s = &self.settings;
        let shares = [(s.share_bans, "bans"), (s.share_limits, "limits")];
        FleetView {
            redis: s.redis.to_string(),
            node: s.node.clone(),
            shares: shares.iter().filter(|(on, _)| *on).map(|(_, n)| (*n).to_owned()).collect(),
            connected: health.connected,
            last_sync_secs_ago: health.last_sync.map(|t| t.elapsed().as_secs_f64()),
            pending: lock(&self.pending).changes.len(),
            bans_shared: health.bans_shared,
            errors: self.metrics.errors.get(),
            last_error: health.last_error.clone(),
            propagation_p50_ms: quantile(&health.recent, 0.5),
            propagation_p99_ms: quantile(&health.recent, 0.99),
        }
    }
}

/// The `q` quantile of `samples` (nearest rank); `None` without samples.
fn quantile(samples: &std::collections::VecDeque<f64>, q: f64) -> Option<f64> {
    let mut sorted: Vec<f64> = samples.iter().copied().collect();
    sorted.sort_by(f64::total_cmp);
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len().max(1));
    sorted.get(rank - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::settings::{OnUnavailable, Target};

    fn link(dir: &Path) -> Arc<Link> {
        let settings = FleetSettings {
            redis: Target::parse("redis://127.0.0.1/0").unwrap(),
            node: "a".into(),
            prefix: "secgate".into(),
            share_bans: true,
            share_limits: false,
            on_unavailable: OnUnavailable::Local,
            password: None,
            ca: None,
        };
        Link::new(settings, dir)
    }

    fn ban(cidr: IpNet) -> SharedBan {
        SharedBan { cidr, expires_unix_ms: None, reason: "r".into(), shorten: true, strikes: None }
    }

    #[test]
    fn a_change_handed_on_late_never_overtakes_a_later_one() {
        let dir = tempfile::tempdir().unwrap();
        let l = link(dir.path());
        let cidr: IpNet = "198.18.0.9/32".parse().unwrap();
        l.lifted(cidr, 2);
        let sending = l.take_pending();
        l.banned(ban(cidr), 1);
        assert!(!l.is_pending(&cidr), "the ban was applied before the lift being sent");
        l.put_back(sending);
        assert!(matches!(l.take_pending()[&cidr], Pending::Lift { .. }));
        l.banned(ban(cidr), 3);
        let newer = l.take_pending();
        l.lifted(cidr, 4);
        l.put_back(newer);
        assert!(
            matches!(l.take_pending()[&cidr], Pending::Lift { version: 4, .. }),
            "put_back keeps the newer"
        );
    }

    #[test]
    fn pending_lifts_outlive_a_restart_and_a_failed_send() {
        let dir = tempfile::tempdir().unwrap();
        let (x, y): (IpNet, IpNet) =
            ("198.18.0.1/32".parse().unwrap(), "198.18.0.2/32".parse().unwrap());
        let l = link(dir.path());
        l.lifted(x, 1);
        let sending = l.take_pending();
        l.lifted(y, 2);
        l.put_back(sending);
        drop(l);
        let again = link(dir.path());
        let pending = again.take_pending();
        assert_eq!(pending.keys().copied().collect::<Vec<_>>(), vec![x, y]);
    }
}
