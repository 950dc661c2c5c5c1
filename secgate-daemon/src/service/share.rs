//! Bans shared with a fleet of gateways: what this node's operators and escalation ban or
//! lift goes out through a [`Share`] (the fleet), and what other nodes decided comes back
//! in through [`Service::apply_fleet`], to this node's own maps, state file and audit, with
//! the node it came from as the caller. Bans from the config are not shared: every node has
//! its own file. Bans the fleet brings are not sent out again as changes (a node does
//! republish the bans it holds that the fleet lost, when it reconnects).
//!
//! Changes are handed on with the policy version they got, so that two changes of one
//! CIDR made at once (an operator's lift, an escalation ban) reach the fleet in the order
//! they were applied here.

use std::{sync::Arc, time::Duration};

use ipnet::IpNet;
use serde_json::json;

use super::{Caller, Result, Service, ServiceError, valid, validate};
use crate::{
    clock::unix_ms,
    views::{BanView, FleetView},
};

/// A ban as the fleet carries it: its expiry on the wall clock, which every node shares
/// (their monotonic clocks do not).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedBan {
    pub cidr: IpNet,
    /// Unix time in ms; `None`: permanent.
    pub expires_unix_ms: Option<u64>,
    pub reason: String,
    /// Whether it replaces a longer ban (an operator's decision) rather than only
    /// extending a shorter one (the escalation's).
    pub shorten: bool,
    /// For an escalation ban: the source's bans so far, this one included, so that every
    /// node lengthens the next one alike.
    pub strikes: Option<u32>,
}

/// A change to this node's bans that another node made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FleetChange {
    Ban(SharedBan),
    Lift(IpNet),
}

/// Where this node's ban changes go to be shared.
pub trait Share: Send + Sync {
    /// `ban` is in force on this node since policy version `version`.
    fn banned(&self, ban: SharedBan, version: u64);
    /// The ban on exactly `cidr` was lifted on this node at policy version `version`.
    fn lifted(&self, cidr: IpNet, version: u64);
    /// The fleet connection, for `status`.
    fn view(&self) -> FleetView;
}

impl Service {
    /// Sends this node's ban changes to `share` from now on.
    pub fn share_with(&self, share: Arc<dyn Share>) {
        if self.share.set(share).is_err() {
            tracing::warn!("the fleet link was set twice; the first stays");
        }
    }

    pub(super) fn fleet_view(&self) -> Option<FleetView> {
        self.share.get().map(|s| s.view())
    }

    /// Shares a ban `caller` made (at policy `version`, with the source's strikes if it is
    /// the escalation's), as this node now holds it.
    pub(super) fn share_ban(
        &self,
        caller: &Caller,
        view: &BanView,
        (version, strikes): (u64, Option<u32>),
    ) {
        let Some(share) = self.share.get().filter(|_| shared(caller)) else { return };
        let now = unix_ms(self.clock.wall());
        let ban = SharedBan {
            cidr: view.cidr,
            expires_unix_ms: view.expires_in_secs.map(|s| now + (s * 1000.0).ceil() as u64),
            reason: view.reason.clone(),
            shorten: caller.may_shorten(),
            strikes,
        };
        share.banned(ban, version);
    }

    pub(super) fn share_lift(&self, caller: &Caller, cidr: IpNet, version: u64) {
        if let Some(share) = self.share.get().filter(|_| shared(caller)) {
            share.lifted(cidr, version);
        }
    }

    /// Dynamic bans in force on this node (config denies aside), as the fleet compares them.
    pub fn dynamic_bans(&self) -> Vec<BanView> {
        self.core.lock().policy.dynamic_bans()
    }

    /// Applies what other nodes changed (each change with the node that made it), without
    /// sharing it again; returns once it is on disk. A ban already lapsed by the wall clock, or a lift of a ban this node does not
    /// hold, changes nothing. The count of changes applied, and the first refusal.
    pub async fn apply_fleet(
        &self,
        changes: &[(String, FleetChange)],
    ) -> (usize, Option<ServiceError>) {
        let (mut applied, mut last, mut refused) = (0, 0, None);
        for (origin, change) in changes {
            let caller = Caller::Fleet { node: origin.clone() };
            match self.apply_one(&caller, change) {
                Ok(Some(version)) => {
                    applied += 1;
                    last = version;
                }
                Ok(None) => {}
                Err(e) => {
                    refused.get_or_insert(e);
                }
            }
        }
        if last > 0
            && let Err(e) = self.durable(last).await
        {
            refused.get_or_insert(e);
        }
        (applied, refused)
    }

    fn apply_one(&self, caller: &Caller, change: &FleetChange) -> Result<Option<u64>> {
        match change {
            FleetChange::Ban(ban) => {
                let ttl = match ban.expires_unix_ms {
                    None => None,
                    Some(at) => match at.checked_sub(unix_ms(self.clock.wall())) {
                        Some(left) if left > 0 => Some(Duration::from_millis(left)),
                        _ => return Ok(None),
                    },
                };
                let (cidr, reason, shorten) = (ban.cidr, ban.reason.clone(), ban.shorten);
                let request = json!({
                    "cidr": cidr,
                    "ttl_secs": ttl.map(|t| t.as_secs_f64()),
                    "reason": reason,
                });
                let ((), version) = self.apply(caller, "ban_add", request, |p| {
                    valid(
                        validate::cidr(&cidr)
                            .and(validate::ttl(ttl))
                            .and(validate::reason(&reason)),
                    )?;
                    p.ban_add(cidr, ttl, reason, shorten).map(|_| ()).map_err(Into::into)
                })?;
                Ok(Some(version))
            }
            FleetChange::Lift(cidr) => {
                if !self.core.lock().policy.holds_dynamic(cidr) {
                    return Ok(None);
                }
                let cidr = *cidr;
                let (lifted, version) =
                    self.apply(caller, "ban_del", json!({ "cidr": cidr }), |p| {
                        Ok(p.ban_del(cidr)?)
                    })?;
                Ok(lifted.then_some(version))
            }
        }
    }
}

/// Whether a change by `caller` goes to the fleet: an operator's or the escalation's.
fn shared(caller: &Caller) -> bool {
    matches!(caller, Caller::Operator { .. } | Caller::Escalation { .. })
}
