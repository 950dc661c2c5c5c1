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
pub mod settings;
mod widen;

use std::{
    net::IpAddr,
    sync::{
        Arc, Mutex, MutexGuard,
        mpsc::{
            Receiver, RecvTimeoutError, Sender, SyncSender, TrySendError, channel, sync_channel,
        },
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
use serde_json::json;
use tracing::{info, warn};

pub use self::settings::{EscalationSettings, Kind};
use self::{
    counts::{Counts, Offence, Trip},
    history::History,
    widen::Neighbours,
};
use crate::{
    clock::unix_ms,
    config::{Config, Mode},
    service::{EscalatedBan, Reloadable, Service},
};

/// Offences waiting for the worker at most.
const QUEUE: usize = 65_536;
/// Bans waiting for the recorder at most; past it the worker records them itself.
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
    /// it not yet applied. The worker keeps its own copy, so that it never waits for a lock
    /// a saving thread holds.
    saved: Mutex<Saved>,
    metrics: Metrics,
}

struct Saved {
    history: History,
    /// Bans the worker made: (prefix, length, unix ms).
    changes: Receiver<(IpNet, Duration, u64)>,
}

impl Escalation {
    /// Starts the worker for `config`'s `[escalation]` (idle without one: a reload may add
    /// it). Returns a warning for the log when the repeat-offender history was unusable.
    pub fn start(config: &Config, service: Arc<Service>) -> (Arc<Escalation>, Option<String>) {
        let (history, warning) = History::load(&config.state_dir);
        let (tx, rx) = sync_channel(QUEUE);
        let (strikes, changes) = channel();
        let escalation = Arc::new(Escalation {
            tx,
            live: ArcSwapOption::from(Live::of(config).map(Arc::new)),
            saved: Mutex::new(Saved { history: history.clone(), changes }),
            metrics: Metrics::default(),
        });
        let runtime = tokio::runtime::Handle::current();
        let (orders, pending) = sync_channel(ORDERS);
        let recorder = Recorder { service, runtime };
        let worker = Worker { recorder: recorder.clone(), orders, history, strikes };
        let this = escalation.clone();
        std::thread::Builder::new()
            .name("secgate-escalate".into())
            .spawn(move || this.run(rx, worker))
            .expect("spawn the escalation thread");
        let this = escalation.clone();
        std::thread::Builder::new()
            .name("secgate-escalate-record".into())
            .spawn(move || {
                for order in pending {
                    this.record(&recorder, order);
                }
            })
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
        registry.register(
            "secgate_escalation_offences",
            "Offences counted toward escalation, by kind and what the source did",
            self.metrics.offences.clone(),
        );
        registry.register(
            "secgate_escalation_bans",
            "Bans the escalation made, by rule",
            self.metrics.bans.clone(),
        );
        registry.register(
            "secgate_escalation_would_ban",
            "Bans monitor mode reported without making them, by rule",
            self.metrics.would_ban.clone(),
        );
        registry.register(
            "secgate_escalation_spared",
            "Allow-listed sources that crossed a threshold and were not banned",
            self.metrics.spared.clone(),
        );
        registry.register(
            "secgate_escalation_lost",
            "Offences dropped because the escalation fell behind",
            self.metrics.lost.clone(),
        );
    }

    /// Writes the repeat-offender history if it changed (also at shutdown). Only taking the
    /// copy holds the history up; the write and fsync happen outside its lock.
    pub fn save(&self) {
        let Some(live) = self.live.load_full() else { return };
        let now = unix_ms(SystemTime::now());
        let memory = live.settings.max_ttl;
        let (dir, data) = {
            let mut saved = self.saved();
            let Saved { history, changes } = &mut *saved;
            for (cidr, ttl, at) in changes.try_iter() {
                history.banned(cidr, ttl, at, memory);
            }
            (history.dir().to_owned(), history.changes(now, memory))
        };
        let Some(data) = data else { return };
        if let Err(e) = history::save(&dir, &data) {
            warn!(error = %e, "saving the repeat-offender history failed; retrying in a second");
            self.saved().history.unsaved();
        }
    }

    fn saved(&self) -> MutexGuard<'_, Saved> {
        self.saved.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The worker: counts offences as they come; hands the history to a blocking task to
    /// save about once a second, so no write ever stands between an offence and its ban.
    fn run(self: Arc<Self>, rx: Receiver<Offence>, mut worker: Worker) {
        realtime();
        let mut counts = Counts::default();
        let mut neighbours = Neighbours::default();
        let mut next_save = Instant::now() + SAVE_EVERY;
        loop {
            match rx.recv_timeout(next_save.saturating_duration_since(Instant::now())) {
                Ok(offence) => {
                    let Some(live) = self.live.load_full() else { continue };
                    if let Some(trip) = counts.offend(offence, &live.settings) {
                        self.trip(&mut worker, &live, trip, &mut neighbours);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            if Instant::now() >= next_save {
                let this = self.clone();
                worker.recorder.runtime.spawn_blocking(move || this.save());
                next_save = Instant::now() + SAVE_EVERY;
            }
        }
    }

    fn trip(&self, worker: &mut Worker, live: &Live, trip: Trip, neighbours: &mut Neighbours) {
        let service = worker.recorder.service.clone();
        let s = &live.settings;
        if service.allowed(trip.source) {
            self.metrics.spared.inc();
            info!(source = %trip.source, rule = trip.kind.key(), "allow-listed source crossed an escalation threshold; not banned");
            return;
        }
        // Its ban is already in force (offences still queued when it was made).
        if service.refuses(trip.source) {
            return;
        }
        let since = trip.offences.last().map_or_else(Instant::now, |o| o.at);
        let reason = format!(
            "escalation: {} {} within {}",
            trip.count,
            trip.kind.key(),
            humantime::format_duration(s.window)
        );
        let offences = listed(&trip.offences);
        let cidr = live.cidr(trip.source);
        let Some(ttl) = self.order(worker, s, trip.kind.key(), cidr, reason, offences, since)
        else {
            return;
        };
        let Some(w) = &s.widen else { return };
        let now = Instant::now();
        let Some((prefix, members)) = neighbours.banned(trip.source, now + ttl, now, w) else {
            return;
        };
        if service.refuses(prefix.network()) {
            return;
        }
        let reason = format!("escalation: {} banned sources in {prefix}", members.len());
        self.order(worker, s, "widen", prefix, reason, json!({ "banned_sources": members }), since);
    }

    /// Bans `cidr` in the kernel (or, in monitor mode, does not) and hands the ban to the
    /// recorder; returns the ban's length.
    #[allow(clippy::too_many_arguments)]
    fn order(
        &self,
        worker: &mut Worker,
        s: &EscalationSettings,
        rule: &'static str,
        cidr: IpNet,
        reason: String,
        offences: serde_json::Value,
        since: Instant,
    ) -> Option<Duration> {
        let now_ms = unix_ms(SystemTime::now());
        let strikes = worker.history.strikes(&cidr, now_ms, s.max_ttl);
        let ttl = s.ttl(strikes);
        let ban = EscalatedBan { rule, cidr, ttl, reason, offences, since };
        let monitor = s.mode == Mode::Monitor;
        let first = !monitor && worker.recorder.service.deny_first(&ban);
        if !monitor {
            worker.history.banned(cidr, ttl, now_ms, s.max_ttl);
            let _ = worker.strikes.send((cidr, ttl, now_ms));
        }
        let order = Order { ban, first, monitor, strikes };
        match worker.orders.try_send(order) {
            Ok(()) => Some(ttl),
            // The recorder is behind by a whole queue: record it here, waiting as it must.
            Err(TrySendError::Full(order)) => self.record(&worker.recorder, order).then_some(ttl),
            Err(TrySendError::Disconnected(_)) => None,
        }
    }

    /// Makes an order a ban of the policy (audited, listed, saved) or, in monitor mode,
    /// reports it; whether it holds.
    fn record(&self, worker: &Recorder, order: Order) -> bool {
        let Order { ban, first, monitor, strikes } = order;
        let (cidr, rule, ttl) = (ban.cidr, ban.rule, ban.ttl);
        if monitor {
            worker.service.would_ban(&ban);
            self.metrics.would_ban.get_or_create(&RuleLabels { rule }).inc();
            info!(%cidr, rule, ?ttl, reason = %ban.reason, "escalation would ban (monitor mode)");
            return true;
        }
        match worker.service.ban_escalated(&ban, first) {
            Ok((_, version)) => {
                self.metrics.bans.get_or_create(&RuleLabels { rule }).inc();
                warn!(%cidr, rule, ?ttl, strikes, reason = %ban.reason, "escalation banned a source");
                let service = worker.service.clone();
                worker.runtime.spawn(async move {
                    if let Err(e) = service.saved(version).await {
                        warn!(%cidr, error = %e, "escalation ban is in force but not saved");
                    }
                });
                true
            }
            Err(e) => {
                warn!(%cidr, rule, error = %e, "escalation could not ban a source");
                false
            }
        }
    }
}

/// Puts the calling thread (the worker) in the lowest real-time class, so that it runs as
/// soon as an offence wakes it instead of waiting out the time slices of a gateway busy
/// with an attack. Its work per offence is a few microseconds and bounded by the queue, so
/// it cannot starve the host. Without the privilege it stays as it is, with a warning.
fn realtime() {
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: plain syscall on the calling thread with a valid parameter.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } != 0 {
        let e = std::io::Error::last_os_error();
        warn!(error = %e, "escalation runs without real-time priority: bans may wait behind a busy gateway");
    }
}

/// What the recorder bans through, and where it waits for bans to be saved.
#[derive(Clone)]
struct Recorder {
    service: Arc<Service>,
    runtime: tokio::runtime::Handle,
}

/// The worker's way to the recorder, its own copy of the repeat-offender history, and the
/// way its changes reach the saved one.
struct Worker {
    recorder: Recorder,
    orders: SyncSender<Order>,
    history: History,
    strikes: Sender<(IpNet, Duration, u64)>,
}

/// The offences as the ban's audit record lists them, with their wall-clock times.
fn listed(offences: &[Offence]) -> serde_json::Value {
    let (now, wall) = (Instant::now(), SystemTime::now());
    let list: Vec<_> = offences
        .iter()
        .map(|o| {
            let at = wall - now.saturating_duration_since(o.at);
            json!({
                "kind": o.kind,
                "what": o.what,
                "at": humantime::format_rfc3339_millis(at).to_string(),
            })
        })
        .collect();
    serde_json::Value::Array(list)
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
