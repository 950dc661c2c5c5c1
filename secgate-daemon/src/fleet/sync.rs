//! The fleet task: connect, subscribe, load the fleet's bans and bring this node in line
//! with them, send what this node changed meanwhile, then apply other nodes' changes as
//! they are published, until the connection fails; then again, after a pause.
//!
//! Subscribing comes before loading, so no change published between the two is missed;
//! each message carries the change's number in the fleet's order, and those the load
//! already contained are skipped.

use std::{sync::Arc, time::Duration};

use futures::StreamExt as _;
use ipnet::IpNet;
use redis::{AsyncConnectionConfig, aio::MultiplexedConnection};
use tokio::sync::oneshot;

use super::{
    link::{Link, Pending},
    store::{Snapshot, Store},
    wire::{self, Event, Record},
};
use crate::{
    clock::unix_ms,
    escalate::Escalation,
    service::{FleetChange, Service, SharedBan},
};

/// Redis answers within this, or the connection is taken for lost.
const TIMEOUT: Duration = Duration::from_secs(2);
/// How often an idle connection is checked.
const PING_EVERY: Duration = Duration::from_secs(1);
/// Pauses between attempts to reconnect, doubling up to the last.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// The caller named for lifts learnt from the fleet's memory of lifts, whose node it does
/// not keep.
const UNKNOWN_ORIGIN: &str = "fleet";
/// A local ban whose expiry differs from the fleet's by less than this is taken as the same.
const SAME_EXPIRY_MS: u64 = 2000;

pub struct Task {
    pub link: Arc<Link>,
    pub service: Arc<Service>,
    /// Where the strikes of other nodes' escalation bans go.
    pub escalation: Arc<Escalation>,
    pub client: redis::Client,
    pub store: Store,
}

impl Task {
    /// Runs for good; `synced` hears of the first sync (or of the first failure).
    pub async fn run(self, mut synced: Option<oneshot::Sender<()>>) {
        let mut pause = RETRY_FIRST;
        loop {
            let e = self.session(&mut synced).await;
            // A connection that was up retries at once; one that never came up backs off.
            if self.link.is_connected() {
                pause = RETRY_FIRST;
            }
            self.link.down(&e);
            if let Some(tx) = synced.take() {
                let _ = tx.send(());
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RETRY_MAX);
        }
    }

    /// One connection's life; returns why it ended.
    async fn session(&self, synced: &mut Option<oneshot::Sender<()>>) -> String {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(TIMEOUT)
            .set_response_timeout(TIMEOUT);
        let mut conn = match self.client.get_multiplexed_async_connection_with_config(&config).await
        {
            Ok(c) => c,
            Err(e) => return format!("connecting: {}", describe(&e)),
        };
        let mut pubsub = match tokio::time::timeout(TIMEOUT, self.client.get_async_pubsub()).await {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return format!("subscribing: {}", describe(&e)),
            Err(_) => return "subscribing: timed out".into(),
        };
        let channel = self.store.keys().channel.clone();
        match tokio::time::timeout(TIMEOUT, pubsub.subscribe(&channel)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return format!("subscribing: {}", describe(&e)),
            Err(_) => return "subscribing: timed out".into(),
        }
        let snapshot = match self.store.load(&mut conn, unix_ms(std::time::SystemTime::now())).await
        {
            Ok(s) => s,
            Err(e) => return format!("loading the fleet's bans: {}", describe(&e)),
        };
        let seen = snapshot.seq;
        let shared = snapshot.bans.len();
        self.reconcile(snapshot).await;
        if let Err(e) = self.flush(&mut conn).await {
            return e;
        }
        self.link.up(conn.clone(), shared);
        if let Some(tx) = synced.take() {
            let _ = tx.send(());
        }
        self.listen(conn, pubsub.into_on_message(), seen).await
    }

    /// Applies published changes, sends this node's, and checks the connection, until
    /// something fails.
    async fn listen(
        &self,
        mut conn: MultiplexedConnection,
        mut messages: impl futures::Stream<Item = redis::Msg> + Unpin,
        mut seen: u64,
    ) -> String {
        let mut ping = tokio::time::interval(PING_EVERY);
        loop {
            tokio::select! {
                msg = messages.next() => {
                    let Some(first) = msg else { return "the subscription was closed".into() };
                    // What has arrived meanwhile goes in one batch: one state-file write.
                    let mut batch = vec![first];
                    while let Some(Some(m)) = futures::FutureExt::now_or_never(messages.next()) {
                        batch.push(m);
                    }
                    seen = self.receive(&batch, seen).await;
                }
                () = self.link.wake.notified() => {
                    if let Err(e) = self.flush(&mut conn).await {
                        return e;
                    }
                }
                _ = ping.tick() => {
                    let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut conn).await;
                    if let Err(e) = pong {
                        return format!("ping: {}", describe(&e));
                    }
                }
            }
        }
    }

    /// Applies the changes in `batch` numbered after `seen` that other nodes made; returns
    /// the highest number seen.
    async fn receive(&self, batch: &[redis::Msg], mut seen: u64) -> u64 {
        let (mut changes, mut delays) = (Vec::new(), Vec::new());
        for msg in batch {
            let (seq, event) = match wire::decode_message(msg.get_payload_bytes()) {
                Ok(m) => m,
                Err(e) => {
                    self.link.error();
                    tracing::warn!(error = %e, "ignored an unreadable message on the fleet's channel");
                    continue;
                }
            };
            if seq <= seen {
                continue;
            }
            seen = seq;
            if event.origin() == self.link.settings.node {
                continue;
            }
            delays.push(event.at_ms());
            changes.push(match event {
                Event::Ban { cidr, record, shorten } => {
                    self.learn(cidr, &record);
                    (record.origin.clone(), FleetChange::Ban(record.ban(cidr, shorten)))
                }
                Event::Lift { cidr, origin, .. } => (origin, FleetChange::Lift(cidr)),
            });
        }
        self.apply(&changes).await;
        let now = unix_ms(std::time::SystemTime::now());
        for at in delays {
            self.link.propagated(now.saturating_sub(at) as f64);
        }
        seen
    }

    async fn apply(&self, changes: &[(String, FleetChange)]) {
        if changes.is_empty() {
            return;
        }
        let (applied, refused) = self.service.apply_fleet(changes).await;
        self.link.metrics.received.inc_by(applied as u64);
        if let Some(e) = refused {
            tracing::warn!(error = %e, "a ban change from the fleet was not applied here");
        }
    }

    /// Brings this node in line with the fleet: takes every fleet ban it does not hold as
    /// the fleet holds it, lifts those lifted while it was away, and queues the bans it
    /// holds that the fleet does not know. Changes still pending here win over the fleet's.
    async fn reconcile(&self, snapshot: Snapshot) {
        if snapshot.unreadable > 0 {
            self.link.error();
            tracing::warn!(
                count = snapshot.unreadable,
                "skipped unreadable entries among the fleet's bans"
            );
        }
        let now = unix_ms(std::time::SystemTime::now());
        let local: std::collections::BTreeMap<IpNet, (Option<u64>, String)> = self
            .service
            .dynamic_bans()
            .into_iter()
            .map(|b| (b.cidr, (b.expires_in_secs.map(|s| now + (s * 1000.0) as u64), b.reason)))
            .collect();
        let mut changes = Vec::new();
        for (cidr, record) in &snapshot.bans {
            self.learn(*cidr, record);
            if self.link.is_pending(cidr)
                || local.get(cidr).is_some_and(|(held, _)| same(*held, record))
            {
                continue;
            }
            changes.push((record.origin.clone(), FleetChange::Ban(record.ban(*cidr, true))));
        }
        for (cidr, (expires, reason)) in local {
            if snapshot.bans.contains_key(&cidr) || self.link.is_pending(&cidr) {
                continue;
            }
            if snapshot.lifted.contains(&cidr) {
                changes.push((UNKNOWN_ORIGIN.to_owned(), FleetChange::Lift(cidr)));
            } else {
                let ban = SharedBan {
                    cidr,
                    expires_unix_ms: expires,
                    reason,
                    shorten: false,
                    strikes: None,
                };
                self.link.republish(ban);
            }
        }
        self.apply(&changes).await;
    }

    /// Gives the escalation what another node's escalation counted for `cidr`.
    fn learn(&self, cidr: IpNet, record: &Record) {
        if let Some(bans) = record.strikes
            && record.expires_ms != 0
        {
            self.escalation.learn(cidr, bans, record.expires_ms);
        }
    }

    /// Sends every pending change; on a failure the rest stay pending.
    async fn flush(&self, conn: &mut MultiplexedConnection) -> Result<(), String> {
        let taken = self.link.take_pending();
        let lifts = taken.values().any(|p| matches!(p, Pending::Lift { .. }));
        let mut pending = taken.into_iter();
        while let Some((cidr, change)) = pending.next() {
            let now = unix_ms(std::time::SystemTime::now());
            let node = &self.link.settings.node;
            let sent = match &change {
                Pending::Ban { ban, at_ms } => {
                    let record = Record::of(ban, node, *at_ms);
                    self.store.put(conn, cidr, &record, !ban.shorten, now).await.map(|_| ())
                }
                Pending::Lift { at_ms } => self.store.lift(conn, cidr, node, *at_ms).await,
            };
            if let Err(e) = sent {
                self.link.put_back(std::iter::once((cidr, change)).chain(pending));
                return Err(format!("sharing a ban change: {}", describe(&e)));
            }
            self.link.metrics.sent.inc();
        }
        if lifts {
            self.link.save_lifts();
        }
        Ok(())
    }
}

/// Whether a local ban lapsing at `held` (Unix ms; `None`: never) is the fleet's `record`.
fn same(held: Option<u64>, record: &Record) -> bool {
    match (held, record.expires_ms) {
        (None, 0) => true,
        (Some(a), b) if b != 0 => a.abs_diff(b) < SAME_EXPIRY_MS,
        _ => false,
    }
}

/// A Redis error without anything it may quote from the connection details.
fn describe(e: &redis::RedisError) -> String {
    let mut s = e.category().to_owned();
    if let Some(detail) = e.detail() {
        s.push_str(": ");
        s.push_str(detail);
    }
    if e.is_timeout() {
        s.push_str(" (timed out)");
    }
    s
}
