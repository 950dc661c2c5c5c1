//! Escalation: offences per source within a window → ban orders to the service layer, so a
//! source that keeps failing authentication, sending bad requests, hitting rate limits,
//! failing TLS handshakes or flooding past its packet limit ends up in the XDP deny map,
//! where its packets cost nothing.
//!
//! Reporting an offence costs a non-blocking send to one worker task, which counts, decides,
//! and bans through [`Service::ban_escalated`]: the ban is in the kernel map before the
//! worker moves on (the state file is written afterwards, off its path). A full queue drops
//! the offence and counts it: an attack must never slow the requests that report it.

pub mod counts;
pub mod history;
pub mod settings;
mod widen;

use std::{
    net::IpAddr,
    sync::{Arc, Mutex, MutexGuard},
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
use tokio::sync::mpsc;
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

pub struct Escalation {
    tx: mpsc::Sender<Offence>,
    live: ArcSwapOption<Live>,
    history: Mutex<History>,
    metrics: Metrics,
}

impl Escalation {
    /// Starts the worker for `config`'s `[escalation]` (idle without one: a reload may add
    /// it). Returns a warning for the log when the repeat-offender history was unusable.
    pub fn start(config: &Config, service: Arc<Service>) -> (Arc<Escalation>, Option<String>) {
        let (history, warning) = History::load(&config.state_dir);
        let (tx, rx) = mpsc::channel(QUEUE);
        let escalation = Arc::new(Escalation {
            tx,
            live: ArcSwapOption::from(Live::of(config).map(Arc::new)),
            history: Mutex::new(history),
            metrics: Metrics::default(),
        });
        tokio::spawn(escalation.clone().run(rx, service));
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
        if self.tx.try_send(offence).is_err() {
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

    /// Writes the repeat-offender history if it changed (also at shutdown).
    pub fn save(&self) {
        let Some(live) = self.live.load_full() else { return };
        let memory = live.settings.max_ttl;
        let now = unix_ms(SystemTime::now());
        if let Err(e) = self.history().save(now, memory) {
            warn!(error = %e, "saving the repeat-offender history failed; retrying in a second");
        }
    }

    fn history(&self) -> MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn run(self: Arc<Self>, mut rx: mpsc::Receiver<Offence>, service: Arc<Service>) {
        let mut counts = Counts::default();
        let mut neighbours = Neighbours::default();
        let mut save = tokio::time::interval(SAVE_EVERY);
        loop {
            tokio::select! {
                offence = rx.recv() => {
                    let Some(offence) = offence else { return };
                    let Some(live) = self.live.load_full() else { continue };
                    if let Some(trip) = counts.offend(offence, &live.settings) {
                        self.trip(&service, &live, trip, &mut neighbours);
                    }
                }
                _ = save.tick() => {
                    let this = self.clone();
                    let _ = tokio::task::spawn_blocking(move || this.save()).await;
                }
            }
        }
    }

    fn trip(&self, service: &Arc<Service>, live: &Live, trip: Trip, neighbours: &mut Neighbours) {
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
        let Some(ttl) = self.order(service, s, trip.kind.key(), cidr, reason, offences, since)
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
        self.order(
            service,
            s,
            "widen",
            prefix,
            reason,
            json!({ "banned_sources": members }),
            since,
        );
    }

    /// Bans `cidr` (or, in monitor mode, reports that it would); returns the ban's length.
    #[allow(clippy::too_many_arguments)]
    fn order(
        &self,
        service: &Arc<Service>,
        s: &EscalationSettings,
        rule: &'static str,
        cidr: IpNet,
        reason: String,
        offences: serde_json::Value,
        since: Instant,
    ) -> Option<Duration> {
        let now_ms = unix_ms(SystemTime::now());
        let strikes = self.history().strikes(&cidr, now_ms, s.max_ttl);
        let ttl = s.ttl(strikes);
        let ban = EscalatedBan { rule, cidr, ttl, reason, offences, since };
        if s.mode == Mode::Monitor {
            service.would_ban(&ban);
            self.metrics.would_ban.get_or_create(&RuleLabels { rule }).inc();
            info!(%cidr, rule, ttl = ?ttl, reason = %ban.reason, "escalation would ban (monitor mode)");
            return Some(ttl);
        }
        match service.ban_escalated(&ban) {
            Ok((_, version)) => {
                self.history().banned(cidr, ttl, now_ms, s.max_ttl);
                self.metrics.bans.get_or_create(&RuleLabels { rule }).inc();
                warn!(%cidr, rule, ttl = ?ttl, strikes, reason = %ban.reason, "escalation banned a source");
                let service = service.clone();
                tokio::spawn(async move {
                    if let Err(e) = service.saved(version).await {
                        warn!(%cidr, error = %e, "escalation ban is in force but not saved");
                    }
                });
                Some(ttl)
            }
            Err(e) => {
                warn!(%cidr, rule, error = %e, "escalation could not ban a source");
                None
            }
        }
    }
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
