//! Routes limited fleet-wide (`rate_limit.scope = "fleet"`): one GCRA per key in Redis,
//! advanced by a server-side script on Redis's own clock, so every node counts against the
//! same bucket whatever its clock says.
//!
//! So that a request does not wait on Redis every time, a node takes up to [`batch`]
//! admissions at once (at most 10 ms of the rate and a quarter of the burst) and spends
//! them locally within [`STASH_LIFE`]; what is left then is thrown away. Every admission
//! was granted by Redis's bucket before it was spent, and spent at most `STASH_LIFE` after
//! the node asked for it, so over any `t` seconds the fleet admits at most
//! `burst + rps × (t + 0.1)` requests for a key (from a fresh key: `burst + rps × t`). The
//! bucket's interval is a whole number of µs, rounded up, so a rate whose interval is not is
//! held under its value by at most `rps / 1,000,000` of it, never over (fleet-wide limits
//! are capped at 100,000 rps, so at most 9%).
//! The price is on the other side: a node's unspent stash (fewer than a batch) is lost to
//! the others, so a key may be refused up to `nodes × (batch − 1)` requests early in a
//! stash's life. A refusal is remembered until the bucket's answer says to come back, so a
//! client over its limit costs Redis one round trip per refusal period, not per request.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use redis::Script;

use super::{link::Link, settings::OnUnavailable};

/// How long a node may spend admissions it took from Redis.
pub const STASH_LIFE: Duration = Duration::from_millis(100);
/// How long a request waits for Redis before the route falls back (`on_unavailable`).
const REDIS_WAIT: Duration = Duration::from_millis(250);
/// Stashes kept at most; past it, lapsed ones are dropped (at most once a second; until
/// there is room, a new key keeps no stash and asks Redis each time).
const MAX_STASHES: usize = 100_000;

/// Takes up to `ARGV[3]` admissions from the GCRA bucket at `KEYS[1]` (its theoretical
/// arrival time in µs on Redis's clock), with emission interval `ARGV[1]` µs and tolerance
/// `ARGV[2]` µs. Returns how many it granted and, when none, the µs until one would be.
/// The time is written back formatted whole: Lua would print it in exponent form.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local room = math.floor((now + tolerance - tat) / interval) + 1
local granted = math.max(0, math.min(tonumber(ARGV[3]), room))
if granted == 0 then
  return {0, math.max(0, tat - tolerance - now)}
end
tat = tat + granted * interval
redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
return {granted, 0}
";

/// What the fleet's bucket says about one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Admit,
    /// Over the limit; back after this.
    Limited(Duration),
    /// Redis did not answer: the route falls back as `on_unavailable` says.
    Unavailable(OnUnavailable),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FallbackLabels {
    on_unavailable: &'static str,
}

/// Until `until`: admissions taken from Redis and not yet spent, or a refusal.
enum Stash {
    Left { left: u32, until: Instant },
    Refused { until: Instant },
}

impl Stash {
    fn until(&self) -> Instant {
        match self {
            Stash::Left { until, .. } | Stash::Refused { until } => *until,
        }
    }
}

struct Stashes {
    map: HashMap<String, Stash>,
    /// When lapsed entries were last dropped.
    swept: Instant,
}

pub struct FleetLimits {
    link: Arc<Link>,
    script: Script,
    prefix: String,
    stashes: Mutex<Stashes>,
    fallbacks: Family<FallbackLabels, Counter>,
}

/// A route's limit as the fleet counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    pub rps: u32,
    pub burst: u32,
}

/// Admissions taken from Redis at once: at most 10 ms of the rate and a quarter of the
/// burst, at least one.
pub fn batch(quota: Quota) -> u32 {
    (quota.rps / 100).min(quota.burst / 4).max(1)
}

impl FleetLimits {
    pub fn new(link: Arc<Link>) -> Arc<FleetLimits> {
        let prefix = link.settings.prefix.clone();
        Arc::new(FleetLimits {
            link,
            script: Script::new(GCRA),
            prefix,
            stashes: Mutex::new(Stashes { map: HashMap::new(), swept: Instant::now() }),
            fallbacks: Family::default(),
        })
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "secgate_fleet_limit_fallbacks",
            "Requests on fleet-limited routes decided without Redis, by on_unavailable",
            self.fallbacks.clone(),
        );
    }

    pub fn on_unavailable(&self) -> OnUnavailable {
        self.link.settings.on_unavailable
    }

    /// Counts one request on `route` against the fleet's bucket for `key` (who it is
    /// counted by).
    pub async fn check(&self, route: &str, key: &str, quota: Quota) -> Verdict {
        let key = format!("{}:limit:{route}:{key}", self.prefix);
        let asked = Instant::now();
        if let Some(verdict) = self.local(&key, asked) {
            return verdict;
        }
        let Some(mut conn) = self.link.connection() else { return self.unavailable() };
        // Whole µs, rounded up: never over the rate, under it by at most rps / 1,000,000.
        let interval = 1_000_000u64.div_ceil(u64::from(quota.rps.max(1)));
        let tolerance = interval * u64::from(quota.burst.max(1) - 1);
        let mut invocation = self.script.key(&key);
        invocation.arg(interval).arg(tolerance).arg(batch(quota));
        let call = invocation.invoke_async(&mut conn);
        let (granted, wait_us): (u32, u64) = match tokio::time::timeout(REDIS_WAIT, call).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) | Err(_) => {
                self.link.error();
                return self.unavailable();
            }
        };
        if granted == 0 {
            // Refused until then, whoever asks again here: no round trip per refusal.
            let wait = Duration::from_micros(wait_us);
            self.keep(key, Stash::Refused { until: asked + wait });
            return Verdict::Limited(wait);
        }
        if granted > 1 {
            // The stash's life runs from before the grant, so the bound holds whatever the
            // round trip took.
            self.keep(key, Stash::Left { left: granted - 1, until: asked + STASH_LIFE });
        }
        Verdict::Admit
    }

    fn unavailable(&self) -> Verdict {
        let on = self.link.settings.on_unavailable;
        let label = match on {
            OnUnavailable::Local => "local",
            OnUnavailable::Closed => "closed",
        };
        self.fallbacks.get_or_create(&FallbackLabels { on_unavailable: label }).inc();
        Verdict::Unavailable(on)
    }

    /// What this node knows for `key` without Redis: an admission from its stash, a
    /// refusal still running, or nothing.
    fn local(&self, key: &str, now: Instant) -> Option<Verdict> {
        let mut stashes = self.stashes.lock().unwrap_or_else(|p| p.into_inner());
        match stashes.map.get_mut(key).filter(|s| s.until() > now)? {
            Stash::Refused { until } => Some(Verdict::Limited(*until - now)),
            Stash::Left { left: 0, .. } => None,
            Stash::Left { left, .. } => {
                *left -= 1;
                Some(Verdict::Admit)
            }
        }
    }

    fn keep(&self, key: String, stash: Stash) {
        let mut stashes = self.stashes.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if stashes.map.len() >= MAX_STASHES && !stashes.map.contains_key(&key) {
            // At most once a second: a full table of live entries must not cost a scan
            // per request.
            if now.duration_since(stashes.swept) < Duration::from_secs(1) {
                return;
            }
            stashes.swept = now;
            stashes.map.retain(|_, s| s.until() > now);
            if stashes.map.len() >= MAX_STASHES {
                return;
            }
        }
        stashes.map.insert(key, stash);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_stay_small_against_the_rate_and_the_burst() {
        let b = |rps, burst| batch(Quota { rps, burst });
        assert_eq!(b(10, 20), 1, "slow limits ask Redis every time");
        assert_eq!(b(1000, 100), 10, "10 ms of the rate");
        assert_eq!(b(1000, 8), 2, "a quarter of the burst");
        assert_eq!(b(100_000, 1), 1);
    }
}
