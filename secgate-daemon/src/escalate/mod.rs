//! Escalation: offences per source within a window → ban orders to the service layer, so a
//! source that keeps failing authentication, sending bad requests, hitting rate limits,
//! failing TLS handshakes or flooding past its packet limit ends up in the XDP deny map,
//! where its packets cost nothing.
//!
//! Reporting an offence costs a non-blocking send to one worker thread, which counts,
//! decides, and writes the ban into the kernel's deny map ([`Service::deny_first`]) before
//! it moves on. A second thread, the recorder, then makes it a ban of the policy
//! ([`Service::ban_escalated`]: audited, listed, swept, saved), so that neither the policy
//! lock nor a disk write ever stands between an offence and the next ban. The worker is a
//! real-time thread of its own, not a task, so that a gateway busy with thousands of
//! handshakes cannot keep it waiting for a turn: the latency to the ban is the point of it.
//! A full offence queue drops the offence and counts it: an attack must never slow the
//! requests that report it.

pub mod counts;
pub mod history;
mod recorder;
pub mod settings;
mod widen;
mod worker;

use std::{
    net::IpAddr,
    sync::{
        Arc, Mutex, MutexGuard,
        mpsc::{Receiver, SyncSender, TrySendError, channel, sync_channel},
    },
    time::{Duration, Instant, SystemTime},
};

use arc_swap::ArcSwapOption;
use ipnet::IpNet;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use tracing::warn;

pub use self::settings::{EscalationSettings, Kind};
use self::{
    counts::Offence,
    history::{History, Strikes},
    recorder::Recorder,
    worker::Worker,
};
use crate::{
    clock::unix_ms,
    config::Config,
    service::{EscalatedBan, Reloadable, Service},
};

/// Offences waiting for the worker at most.
const QUEUE: usize = 65_536;
/// Strikes learnt from the fleet waiting for the worker at most.
const LEARNED: usize = 65_536;
/// Bans waiting for the recorder at most; past it they are dropped (and counted).
const ORDERS: usize = 65_536;
/// How often a changed repeat-offender history is written.
const SAVE_EVERY: Duration = Duration::from_secs(1);

/// The settings in force, with the datapath's source prefixes (a ban covers a source as the
/// datapath keys it).
struct Live {
    settings: EscalationSettings,
    v4_prefix: u8,
    v6_prefix: u8,
}

impl Live {
    fn of(config: &Config) -> Option<Live> {
        config.escalation.clone().map(|settings| Live {
            settings,
            v4_prefix: config.datapath.ipv4_prefix,
            v6_prefix: config.datapath.ipv6_prefix,
        })
    }

    fn cidr(&self, source: IpAddr) -> IpNet {
        let len = if source.is_ipv4() { self.v4_prefix } else { self.v6_prefix };
        IpNet::new(source, len).expect("prefix lengths are validated").trunc()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
    what: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    rule: &'static str,
}

#[derive(Default)]
struct Metrics {
    offences: Family<KindLabels, Counter>,
    bans: Family<RuleLabels, Counter>,
    would_ban: Family<RuleLabels, Counter>,
    spared: Counter,
    lost: Counter,
    orders_lost: Counter,
}

/// A ban for the recorder: in the kernel already if `first`; only to be reported if
/// `monitor`.
struct Order {
    ban: EscalatedBan<'static>,
    first: bool,
    monitor: bool,
    strikes: u32,
}

pub struct Escalation {
    tx: SyncSender<Offence>,
    live: ArcSwapOption<Live>,
    /// The copy of the repeat-offender history that is saved, and the worker's changes to
    /// it not yet applied. The worker keeps its own copy and never takes this lock.
    saved: Mutex<Saved>,
    /// Strikes the fleet reports, for the worker's copy of the history (bounded: past
    /// [`LEARNED`] waiting, the worker's copy misses some until the next start; the saved
    /// copy has them all).
    learned: SyncSender<(IpNet, Strikes)>,
    metrics: Metrics,
}

struct Saved {
    history: History,
    /// Bans the worker made: (prefix, length, unix ms).
    changes: Receiver<(IpNet, Duration, u64)>,
}

impl Escalation {
    /// Starts the worker and the recorder for `config`'s `[escalation]` (idle without one:
    /// a reload may add it). Returns a warning for the log when the repeat-offender history
    /// was unusable.
    pub fn start(config: &Config, service: Arc<Service>) -> (Arc<Escalation>, Option<String>) {
        let (history, warning) = History::load(&config.state_dir);
        let (tx, rx) = sync_channel(QUEUE);
        let (strikes, changes) = channel();
        let (learned, learnt) = sync_channel(LEARNED);
        let escalation = Arc::new(Escalation {
            tx,
            live: ArcSwapOption::from(Live::of(config).map(Arc::new)),
            saved: Mutex::new(Saved { history: history.clone(), changes }),
            learned,
            metrics: Metrics::default(),
        });
        let (orders, pending) = sync_channel(ORDERS);
        let history = worker::Histories { own: history, changes: strikes, learnt };
        let worker = Worker::new(escalation.clone(), service.clone(), orders, history);
        std::thread::Builder::new()
            .name("secgate-escalate".into())
            .spawn(move || worker.run(rx))
            .expect("spawn the escalation thread");
        let recorder =
            Recorder::new(escalation.clone(), service, tokio::runtime::Handle::current());
        std::thread::Builder::new()
            .name("secgate-escalate-record".into())
            .spawn(move || recorder.run(pending))
            .expect("spawn the escalation recorder thread");
        (escalation, warning)
    }

    /// Counts an offence of `source` (as the datapath keys it). Never waits.
    pub fn report(&self, source: IpAddr, kind: Kind, what: &'static str) {
        let counted = self.live.load().as_ref().is_some_and(|l| l.settings.threshold(kind) > 0);
        if !counted {
            return;
        }
        self.metrics.offences.get_or_create(&KindLabels { kind: kind.key(), what }).inc();
        let offence = Offence { source, kind, what, at: Instant::now() };
        if let Err(TrySendError::Full(_)) = self.tx.try_send(offence) {
            self.metrics.lost.inc();
        }
    }

    pub fn register(&self, registry: &mut Registry) {
        let m = &self.metrics;
        registry.register(
            "secgate_escalation_offences",
            "Offences counted toward escalation, by kind and what the source did",
            m.offences.clone(),
        );
        registry.register(
            "secgate_escalation_bans",
            "Bans the escalation made, by rule",
            m.bans.clone(),
        );
        registry.register(
            "secgate_escalation_would_ban",
            "Bans monitor mode reported without making them, by rule",
            m.would_ban.clone(),
        );
        registry.register(
            "secgate_escalation_spared",
            "Allow-listed sources that crossed a threshold and were not banned",
            m.spared.clone(),
        );
        registry.register(
            "secgate_escalation_lost",
            "Offences dropped because the escalation fell behind",
            m.lost.clone(),
        );
        registry.register(
            "secgate_escalation_orders_lost",
            "Bans dropped (and taken back from the kernel) because the recorder fell behind",
            m.orders_lost.clone(),
        );
    }

    /// Takes the strikes another gateway of the fleet counted for `cidr` (its bans of it so
    /// far, and when the last lapses), so that the next ban here lasts as long as the
    /// fleet's history says. Saved with the rest; never lowers a count.
    pub fn learn(&self, cidr: IpNet, bans: u32, until_unix_ms: u64) {
        let strikes = Strikes { bans, until_unix_ms };
        self.saved().history.learn(cidr, strikes);
        let _ = self.learned.try_send((cidr, strikes));
    }

    /// Writes the repeat-offender history if it changed: by the recorder about once a
    /// second, and at shutdown. One write at a time (under the lock, which the worker never
    /// takes).
    pub fn save(&self) {
        let Some(live) = self.live.load_full() else { return };
        let now = unix_ms(SystemTime::now());
        let memory = live.settings.max_ttl;
        let mut saved = self.saved();
        let Saved { history, changes } = &mut *saved;
        for (cidr, ttl, at) in changes.try_iter() {
            history.banned(cidr, ttl, at, memory);
        }
        let Some(data) = history.changes(now, memory) else { return };
        if let Err(e) = history::save(history.dir(), &data) {
            warn!(error = %e, "saving the repeat-offender history failed; retrying in a second");
            history.unsaved();
        }
    }

    fn saved(&self) -> MutexGuard<'_, Saved> {
        self.saved.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Takes `[escalation]` from every reload (added, changed or removed with the rest).
pub struct EscalationReload(pub Arc<Escalation>);

impl Reloadable for EscalationReload {
    fn prepare(&self, config: &Config) -> Result<Box<dyn FnOnce() + Send>, String> {
        let escalation = self.0.clone();
        let live = Live::of(config).map(Arc::new);
        Ok(Box::new(move || escalation.live.store(live)))
    }
}
