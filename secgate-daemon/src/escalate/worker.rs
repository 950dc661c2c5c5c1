//! The worker: counts each offence as it comes, and when a source (or, with `widen`, a
//! prefix) crosses a threshold, writes its ban into the kernel's deny map and hands it to
//! the recorder. A real-time thread that takes no lock a normal-priority thread holds for
//! long, writes nothing to disk and logs nothing, so that the next ban never waits.

use std::{
    sync::{
        Arc,
        mpsc::{Receiver, Sender, SyncSender, TrySendError},
    },
    time::{Duration, Instant, SystemTime},
};

use ipnet::IpNet;
use serde_json::json;
use tracing::warn;

use super::{
    Escalation, Live, Order,
    counts::{Counts, Offence, Trip},
    history::{History, Strikes},
    settings::Kind,
    widen::Neighbours,
};
use crate::{
    clock::unix_ms,
    config::Mode,
    service::{EscalatedBan, Service},
};

/// The worker's copy of the repeat-offender history, where its changes go for the copy
/// that is saved, and what the fleet learnt for it.
pub(super) struct Histories {
    pub own: History,
    pub changes: Sender<(IpNet, Duration, u64)>,
    pub learnt: Receiver<(IpNet, Strikes)>,
}

pub(super) struct Worker {
    escalation: Arc<Escalation>,
    service: Arc<Service>,
    orders: SyncSender<Order>,
    history: Histories,
    counts: Counts,
    neighbours: Neighbours,
    realtime: bool,
}

/// A ban about to be ordered, before its length is known.
struct Proposal {
    rule: &'static str,
    cidr: IpNet,
    reason: String,
    offences: serde_json::Value,
    since: Instant,
}

impl Worker {
    pub(super) fn new(
        escalation: Arc<Escalation>,
        service: Arc<Service>,
        orders: SyncSender<Order>,
        history: Histories,
    ) -> Worker {
        Worker {
            escalation,
            service,
            orders,
            history,
            counts: Counts::default(),
            neighbours: Neighbours::default(),
            realtime: false,
        }
    }

    pub(super) fn run(mut self, offences: Receiver<Offence>) {
        for offence in offences {
            let Some(live) = self.escalation.live.load_full() else { continue };
            // Offences only arrive under an `[escalation]`: only then is the thread raised.
            if !self.realtime {
                realtime();
                self.realtime = true;
            }
            self.offend(&live, offence);
        }
    }

    fn offend(&mut self, live: &Live, offence: Offence) {
        let s = &live.settings;
        let trip = self.counts.offend(offence, s);
        // An address counts toward widening once it is halfway to a threshold (or over
        // one): a single mistake by each of a few users behind one NAT is not an attack.
        // Over-limit events come from packets, whose source addresses can be forged: they
        // may ban the address they name, never its neighbours. Allow-listed ones never count.
        let evident = trip.is_some() || self.counts.closeness(&offence.source, s) >= 500;
        if let Some(w) = &s.widen
            && evident
            && offence.kind != Kind::OverlimitEvent
            && !self.service.allowed(offence.source)
            && let Some(offenders) =
                self.neighbours.offended(offence.source, offence.at, s.window, w)
        {
            let prefix = super::widen::of(offence.source, w);
            if !self.service.refuses(prefix.network()) {
                let reason = format!(
                    "escalation: {} offending sources in {prefix} within {}",
                    offenders.len(),
                    humantime::format_duration(s.window)
                );
                let offences = json!({ "offending_sources": offenders });
                let p =
                    Proposal { rule: "widen", cidr: prefix, reason, offences, since: offence.at };
                self.order(live, p);
            }
        }
        if let Some(trip) = trip {
            self.trip(live, trip);
        }
    }

    fn trip(&mut self, live: &Live, trip: Trip) {
        if self.service.allowed(trip.source) {
            self.escalation.metrics.spared.inc();
            return;
        }
        // Its ban is already in force (offences still queued when it was made).
        if self.service.refuses(trip.source) {
            return;
        }
        let since = trip.offences.last().map_or_else(Instant::now, |o| o.at);
        let reason = format!(
            "escalation: {} {} within {}",
            trip.count,
            trip.kind.key(),
            humantime::format_duration(live.settings.window)
        );
        let offences = listed(&trip.offences);
        let cidr = live.cidr(trip.source);
        self.order(live, Proposal { rule: trip.kind.key(), cidr, reason, offences, since });
    }

    /// Bans in the kernel (unless in monitor mode) and hands the ban to the recorder. If the
    /// recorder is a whole queue behind, the ban is taken back and counted as lost: the
    /// worker never waits for it.
    fn order(&mut self, live: &Live, p: Proposal) {
        let s = &live.settings;
        let now_ms = unix_ms(SystemTime::now());
        for (cidr, theirs) in self.history.learnt.try_iter() {
            self.history.own.learn(cidr, theirs);
        }
        let strikes = self.history.own.strikes(&p.cidr, now_ms, s.max_ttl);
        let ttl = s.ttl(strikes);
        let ban = EscalatedBan {
            rule: p.rule,
            cidr: p.cidr,
            ttl,
            strikes: strikes.saturating_add(1),
            reason: p.reason,
            offences: p.offences,
            since: p.since,
        };
        let monitor = s.mode == Mode::Monitor;
        let first = !monitor && self.service.deny_first(&ban);
        let cidr = ban.cidr;
        match self.orders.try_send(Order { ban, first, monitor, strikes }) {
            Ok(()) if !monitor => {
                self.history.own.banned(cidr, ttl, now_ms, s.max_ttl);
                let _ = self.history.changes.send((cidr, ttl, now_ms));
            }
            Ok(()) => {}
            Err(TrySendError::Full(order) | TrySendError::Disconnected(order)) => {
                if order.first {
                    self.service.undo_first(cidr);
                }
                self.escalation.metrics.orders_lost.inc();
            }
        }
    }
}

/// Puts the calling thread (the worker) in the lowest real-time class, so that it runs as
/// soon as an offence wakes it instead of waiting out the time slices of a gateway busy
/// with an attack. It does a few microseconds of work per offence, blocks on its queue
/// between them, and creates no thread (which would inherit the class). Without the
/// privilege it stays as it is, with a warning.
fn realtime() {
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: plain syscall on the calling thread with a valid parameter.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } != 0 {
        let e = std::io::Error::last_os_error();
        warn!(error = %e, "escalation runs without real-time priority: bans may wait behind a busy gateway");
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
                "kind": o.kind.key(),
                "what": o.what,
                "at": humantime::format_rfc3339_millis(at).to_string(),
            })
        })
        .collect();
    serde_json::Value::Array(list)
}
