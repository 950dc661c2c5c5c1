//! The fleet task: connect, subscribe, load the fleet's bans and bring this node in line
//! with them, send what this node changed meanwhile, then apply other nodes' changes as
//! they are published, until the connection fails; then again, after a pause.
//!
//! Subscribing comes before loading, so no change published between the two is missed;
//! each message carries the change's number in the fleet's order (the scripts number
//! every change they make), those the load already contained are skipped, and a gap in
//! the numbers means something was missed: the set is loaded again.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures::StreamExt as _;
use ipnet::IpNet;
use redis::{AsyncConnectionConfig, aio::MultiplexedConnection};
use tokio::sync::oneshot;

use super::{
    claim::Claim,
    link::{Link, Pending},
    settings,
    store::Store,
    wire::{self, Event, Record},
};
use crate::{
    clock::unix_ms,
    escalate::Escalation,
    service::{FleetChange, Service},
};

/// Redis answers within this, or the connection is taken for lost.
const TIMEOUT: Duration = Duration::from_secs(2);
/// How often an idle connection is checked.
const PING_EVERY: Duration = Duration::from_secs(1);
/// Pauses between attempts to reconnect, doubling up to the last.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// This node's own writes remembered (to tell older changes of others from newer), at most
/// this many before those the subscription has passed are dropped.
const OWN_WRITES: usize = 4096;

pub struct Task {
    pub link: Arc<Link>,
    pub service: Arc<Service>,
    /// Where the strikes of other nodes' escalation bans go.
    pub escalation: Arc<Escalation>,
    pub client: redis::Client,
    pub store: Store,
    pub claim: Claim,
}

/// Where a session has got in the fleet's order of changes.
#[derive(Default)]
pub(super) struct Cursor {
    /// Every change numbered up to this is applied (or was in the load).
    pub seen: u64,
    /// This node's latest write per CIDR, by number: a change of another node numbered
    /// before it is older, and must not undo it.
    pub own: HashMap<IpNet, u64>,
}

impl Task {
    /// Runs for good; `synced` hears of the first sync.
    pub async fn run(self, mut synced: Option<oneshot::Sender<()>>) {
        let mut pause = RETRY_FIRST;
        loop {
            let e = self.session(&mut synced).await;
            // A connection that was up retries at once; one that never came up backs off.
            if self.link.is_connected() {
                pause = RETRY_FIRST;
            }
            self.link.down(&e);
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RETRY_MAX);
        }
    }

    /// One connection's life; returns why it ended.
    async fn session(&self, synced: &mut Option<oneshot::Sender<()>>) -> String {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(TIMEOUT)
            .set_response_timeout(TIMEOUT);
        let conn = self.client.get_multiplexed_async_connection_with_config(&config).await;
        let mut conn = match conn {
            Ok(c) => c,
            Err(e) => return format!("connecting: {}", describe(&e)),
        };
        if let Err(e) = self.claim(&mut conn, true).await {
            return e;
        }
        if !self.link.settings.share_bans {
            // Limits only: the connection is all the limiter needs.
            self.link.up(conn.clone(), 0);
            ready(synced);
            return self.listen(conn, futures::stream::pending(), Cursor::default()).await;
        }
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
        let mut cursor = Cursor::default();
        let shared = match self.sync(&mut conn, &mut cursor).await {
            Ok(n) => n,
            Err(e) => return e,
        };
        self.link.up(conn.clone(), shared);
        ready(synced);
        self.listen(conn, pubsub.into_on_message(), cursor).await
    }

    /// Loads the fleet's bans, brings this node in line and sends what it has pending;
    /// again while the fleet refuses a change as older than its own (this node then takes
    /// the fleet's), ending with a load. Returns how many bans the fleet holds then.
    async fn sync(
        &self,
        conn: &mut MultiplexedConnection,
        cursor: &mut Cursor,
    ) -> Result<usize, String> {
        // At most two sends; a last round only takes the fleet's.
        for round in 0..3 {
            let now = unix_ms(std::time::SystemTime::now());
            let snapshot = self
                .store
                .load(conn, now)
                .await
                .map_err(|e| format!("loading the fleet's bans: {}", describe(&e)))?;
            cursor.seen = snapshot.seq;
            self.reconcile(snapshot).await;
            if round == 2 || !self.flush(conn, cursor).await? {
                break;
            }
        }
        self.store
            .count(conn)
            .await
            .map_err(|e| format!("counting the fleet's bans: {}", describe(&e)))
    }

    /// [`Task::sync`] on a live session, and the count it found for `status`.
    async fn resync(
        &self,
        conn: &mut MultiplexedConnection,
        cursor: &mut Cursor,
    ) -> Result<(), String> {
        let shared = self.sync(conn, cursor).await?;
        self.link.up(conn.clone(), shared);
        Ok(())
    }

    /// Applies published changes, sends this node's, and checks the connection, until
    /// something fails.
    async fn listen(
        &self,
        mut conn: MultiplexedConnection,
        mut messages: impl futures::Stream<Item = redis::Msg> + Unpin,
        mut cursor: Cursor,
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
                    if !self.receive(&batch, &mut cursor).await
                        && let Err(e) = self.resync(&mut conn, &mut cursor).await
                    {
                        return e;
                    }
                }
                () = self.link.wake.notified() => {
                    match self.flush(&mut conn, &mut cursor).await {
                        Ok(false) => {}
                        Ok(true) => if let Err(e) = self.resync(&mut conn, &mut cursor).await {
                            return e;
                        },
                        Err(e) => return e,
                    }
                }
                _ = ping.tick() => {
                    if let Err(e) = self.claim(&mut conn, false).await {
                        return e;
                    }
                }
            }
        }
    }

    /// Renews this node's claim on its name (which also checks the connection); reports
    /// another gateway holding it, on the first claim of a session.
    async fn claim(&self, conn: &mut MultiplexedConnection, first: bool) -> Result<(), String> {
        match self.claim.renew(conn).await {
            Ok(Some(other)) => {
                self.link.error();
                if first {
                    tracing::error!(node = %self.link.settings.node, other, "another gateway uses this fleet.node name; give each its own: the bans either makes are ignored by the other");
                }
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => Err(format!("ping: {}", describe(&e))),
        }
    }

    /// Applies the changes in `batch` that other nodes made after `cursor`; whether the
    /// numbers ran on without a gap (else the caller loads the set again).
    async fn receive(&self, batch: &[redis::Msg], cursor: &mut Cursor) -> bool {
        let (mut changes, mut delays, mut in_order) = (Vec::new(), Vec::new(), true);
        for msg in batch {
            let (seq, event) = match wire::decode_message(msg.get_payload_bytes()) {
                Ok(m) if settings::node(m.1.origin()).is_ok() => m,
                Ok(_) | Err(_) => {
                    self.link.error();
                    tracing::warn!("ignored an unreadable message on the fleet's channel");
                    continue;
                }
            };
            if seq <= cursor.seen {
                continue;
            }
            if seq != cursor.seen + 1 {
                tracing::warn!(
                    expected = cursor.seen + 1,
                    got = seq,
                    "a gap in the fleet's changes; loading its bans again"
                );
                in_order = false;
                break;
            }
            cursor.seen = seq;
            let cidr = event.cidr();
            let newer_here =
                self.link.is_pending(&cidr) || cursor.own.get(&cidr).is_some_and(|&own| own > seq);
            if event.origin() == self.link.settings.node || newer_here {
                continue;
            }
            if event.at_ms() > 0 {
                delays.push(event.at_ms());
            }
            changes.push(match event {
                Event::Ban { cidr, record, shorten } => {
                    self.learn(cidr, &record);
                    (record.origin.clone(), FleetChange::Ban(record.ban(cidr, shorten)))
                }
                Event::Lift { cidr, origin, .. } => (origin, FleetChange::Lift(cidr)),
            });
        }
        if cursor.own.len() > OWN_WRITES {
            let seen = cursor.seen;
            cursor.own.retain(|_, &mut own| own > seen);
        }
        self.apply(&changes).await;
        let now = unix_ms(std::time::SystemTime::now());
        for at in delays {
            self.link.propagated(now.saturating_sub(at) as f64);
        }
        in_order
    }

    pub(super) async fn apply(&self, changes: &[(String, FleetChange)]) {
        if changes.is_empty() {
            return;
        }
        let (applied, refused) = self.service.apply_fleet(changes).await;
        self.link.metrics.received.inc_by(applied as u64);
        if let Some(e) = refused {
            tracing::warn!(error = %e, "a ban change from the fleet was not applied here");
        }
    }

    /// Gives the escalation what another node's escalation counted for `cidr`.
    pub(super) fn learn(&self, cidr: IpNet, record: &Record) {
        if let Some(bans) = record.strikes
            && record.expires_ms != 0
        {
            self.escalation.learn(cidr, bans, record.expires_ms);
        }
    }

    /// Sends every pending change (a ban that has lapsed meanwhile is dropped); on a failure
    /// the rest stay pending. Whether the fleet refused one as older than what it holds.
    async fn flush(
        &self,
        conn: &mut MultiplexedConnection,
        cursor: &mut Cursor,
    ) -> Result<bool, String> {
        let taken = self.link.take_pending();
        let lifts = taken.values().any(|p| matches!(p, Pending::Lift { .. }));
        let (mut pending, mut refused) = (taken.into_iter(), false);
        let node = &self.link.settings.node;
        while let Some((cidr, change)) = pending.next() {
            let now = unix_ms(std::time::SystemTime::now());
            let sent = match &change {
                Pending::Ban { ban, .. } if ban.expires_unix_ms.is_some_and(|e| e <= now) => {
                    continue;
                }
                Pending::Ban { ban, at_ms, .. } => {
                    let record = Record::of(ban, node, *at_ms);
                    self.store.put(conn, cidr, &record, !ban.shorten, now).await
                }
                Pending::Lift { at_ms, .. } => self.store.lift(conn, cidr, node, *at_ms).await,
            };
            match sent {
                Ok(0) => refused = true,
                Ok(seq) if seq > 0 => {
                    cursor.own.insert(cidr, seq as u64);
                    self.link.metrics.sent.inc();
                }
                Ok(_) => {}
                Err(e) => {
                    self.link.put_back(std::iter::once((cidr, change)).chain(pending));
                    return Err(format!("sharing a ban change: {}", describe(&e)));
                }
            }
        }
        if lifts {
            self.link.save_lifts();
        }
        Ok(refused)
    }
}

fn ready(synced: &mut Option<oneshot::Sender<()>>) {
    if let Some(tx) = synced.take() {
        let _ = tx.send(());
    }
}

/// A Redis error without anything it may quote from the connection details.
pub(super) fn describe(e: &redis::RedisError) -> String {
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
