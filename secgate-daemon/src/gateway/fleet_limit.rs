//! A route's rate limit, counted on this node or across the fleet (`scope = "fleet"`):
//! the fleet's bucket in Redis decides, and without Redis the route falls back as
//! `fleet.on_unavailable` says (this node's own bucket, or 503).

use std::net::IpAddr;

use super::{
    Gateway,
    authn::Principal,
    ratelimit::{Limited, Per, RateLimit, Scope},
    respond::Rejection,
};
use crate::fleet::{
    limits::{Quota, Verdict},
    settings::OnUnavailable,
};

impl Gateway {
    /// Counts one request on `route`; refuses it over the limit.
    pub(super) async fn limit(
        &self,
        route: &str,
        limit: &RateLimit,
        principal: Option<&Principal>,
        source: IpAddr,
    ) -> Result<(), Rejection> {
        let local = || {
            limit.check(principal, source).map_err(|l| Rejection::rate_limited(route, limit, &l))
        };
        let fleet = match (&self.fleet, limit.scope) {
            (Some(fleet), Scope::Fleet) => fleet,
            _ => return local(),
        };
        let key = limit.key_text(principal, source);
        let quota = Quota { rps: limit.rps, burst: limit.burst };
        match fleet.check(route, &key, quota).await {
            Verdict::Admit => Ok(()),
            Verdict::Limited(retry_after) => {
                let limited = Limited { retry_after, own: limit.per != Per::Route };
                Err(Rejection::rate_limited(route, limit, &limited))
            }
            Verdict::Unavailable(OnUnavailable::Local) => local(),
            Verdict::Unavailable(OnUnavailable::Closed) => Err(Rejection::fleet_unavailable()),
        }
    }
}
