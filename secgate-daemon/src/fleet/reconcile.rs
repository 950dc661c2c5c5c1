//! Bringing a node in line with the fleet after it connects: every fleet ban it lacks is
//! taken as the fleet holds it, bans lifted while it was away are lifted, and bans it holds
//! that the fleet does not know are queued to be shared. Changes still pending here win.

use std::collections::BTreeMap;

use ipnet::IpNet;

use super::{store::Snapshot, sync::Task, wire::Record};
use crate::{
    clock::unix_ms,
    service::{FleetChange, SharedBan},
};

/// The caller named for lifts learnt from the fleet's memory of lifts, whose node it does
/// not keep.
const UNKNOWN_ORIGIN: &str = "fleet";
/// A local ban whose expiry differs from the fleet's by less than this is taken as the same.
const SAME_EXPIRY_MS: u64 = 2000;

impl Task {
    pub(super) async fn reconcile(&self, snapshot: Snapshot) {
        if snapshot.unreadable > 0 {
            self.link.error();
            tracing::warn!(
                count = snapshot.unreadable,
                "skipped unreadable entries among the fleet's bans"
            );
        }
        let now = unix_ms(std::time::SystemTime::now());
        let local: BTreeMap<IpNet, (Option<u64>, String)> = self
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
}

/// Whether a local ban lapsing at `held` (Unix ms; `None`: never) is the fleet's `record`.
fn same(held: Option<u64>, record: &Record) -> bool {
    match (held, record.expires_ms) {
        (None, 0) => true,
        (Some(a), b) if b != 0 => a.abs_diff(b) < SAME_EXPIRY_MS,
        _ => false,
    }
}
