//! L7 rate limits per route (`rate_limit = { per, rps, burst }`): GCRA from the `governor`
//! crate, keyed by principal (`method:id`; a caller without one by source), by source (an
//! IPv4 address or an IPv6 /64), or one bucket for the whole route.
//!
//! Memory is bounded: idle keys are swept at most once a second when the table is full,
//! and past [`MAX_KEYS`] a new key is refused (429) rather than let a flood of distinct
//! sources grow the table without end.

use std::{
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use governor::{
    Quota, RateLimiter,
    clock::{Clock as _, DefaultClock},
    middleware::StateInformationMiddleware,
    state::keyed::DefaultKeyedStateStore,
};

use super::authn::Principal;

/// Keys one route's limiter holds at most.
pub const MAX_KEYS: usize = 100_000;

/// What a limit is counted by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Per {
    Principal,
    Source,
    Route,
}

impl Per {
    pub fn parse(s: &str) -> Result<Per, String> {
        match s {
            "principal" => Ok(Per::Principal),
            "source" => Ok(Per::Source),
            "route" => Ok(Per::Route),
            other => Err(format!(
                "invalid rate_limit.per {other:?}: expected \"principal\", \"source\" or \"route\""
            )),
        }
    }
}

/// The fastest rate a fleet-wide limit may have: its bucket's interval is a whole number
/// of µs, rounded up, which holds a rate under its value by at most `rps / 1,000,000` of it
/// (1% at 10,000 rps, 9% here).
pub const MAX_FLEET_RPS: u64 = 100_000;

/// Where a limit is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// On this gateway alone.
    Node,
    /// Across every gateway sharing `limits` in `[fleet]`, in Redis.
    Fleet,
}

impl Scope {
    pub fn parse(s: &str) -> Result<Scope, String> {
        match s {
            "node" => Ok(Scope::Node),
            "fleet" => Ok(Scope::Fleet),
            other => {
                Err(format!("invalid rate_limit.scope {other:?}: expected \"node\" or \"fleet\""))
            }
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
enum Key {
    Principal(String),
    Source(IpAddr),
    Route,
}

type Limiter =
    RateLimiter<Key, DefaultKeyedStateStore<Key>, DefaultClock, StateInformationMiddleware>;

pub struct RateLimit {
    pub per: Per,
    pub rps: u32,
    pub burst: u32,
    pub scope: Scope,
    limiter: Limiter,
    clock: DefaultClock,
    last_sweep: Mutex<Instant>,
}

impl std::fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RateLimit({:?}, {} rps, burst {})", self.per, self.rps, self.burst)
    }
}

impl PartialEq for RateLimit {
    fn eq(&self, other: &RateLimit) -> bool {
        (self.per, self.rps, self.burst, self.scope)
            == (other.per, other.rps, other.burst, other.scope)
    }
}

impl Eq for RateLimit {}

/// Over the limit: when to come back.
#[derive(Debug, PartialEq, Eq)]
pub struct Limited {
    pub retry_after: Duration,
    /// Whether the client's own requests used up its limit. Not so for a route-wide bucket
    /// (others may have drained it) or a full key table: such 429s never count against the
    /// client.
    pub own: bool,
}

impl RateLimit {
    /// A limit of `rps` per second with bursts of `burst` (both at least 1).
    pub fn new(per: Per, rps: u32, burst: u32) -> RateLimit {
        let nonzero = |n: u32| std::num::NonZeroU32::new(n.max(1)).expect("at least 1");
        let quota = Quota::per_second(nonzero(rps)).allow_burst(nonzero(burst));
        let clock = DefaultClock::default();
        let limiter = RateLimiter::dashmap_with_clock(quota, clock.clone())
            .with_middleware::<StateInformationMiddleware>();
        RateLimit {
            per,
            rps,
            burst,
            scope: Scope::Node,
            limiter,
            clock,
            last_sweep: Mutex::new(Instant::now()),
        }
    }

    /// The same limit, counted in `scope`.
    pub fn in_scope(mut self, scope: Scope) -> RateLimit {
        self.scope = scope;
        self
    }

    fn key(&self, principal: Option<&Principal>, source: IpAddr) -> Key {
        match (self.per, principal) {
            (Per::Route, _) => Key::Route,
            (Per::Principal, Some(p)) => Key::Principal(p.qualified()),
            (Per::Principal | Per::Source, _) => Key::Source(source),
        }
    }

    /// What a request is counted by, as text (the fleet's Redis key ends with it).
    pub fn key_text(&self, principal: Option<&Principal>, source: IpAddr) -> String {
        match self.key(principal, source) {
            Key::Route => "route".into(),
            Key::Principal(p) => format!("principal:{p}"),
            Key::Source(ip) => format!("source:{ip}"),
        }
    }

    /// Counts one request from `source` (keyed by [`super::slots::SourceKey`]), by
    /// `principal` if it has one and the limit is per principal.
    pub fn check(&self, principal: Option<&Principal>, source: IpAddr) -> Result<(), Limited> {
        let key = self.key(principal, source);
        if self.limiter.len() >= MAX_KEYS && !self.sweep() {
            return Err(Limited { retry_after: Duration::from_secs(1), own: false });
        }
        self.limiter.check_key(&key).map(|_| ()).map_err(|not_until| Limited {
            retry_after: not_until.wait_time_from(self.clock.now()),
            own: self.per != Per::Route,
        })
    }

    /// Drops idle keys, at most once a second; whether there is room now.
    fn sweep(&self) -> bool {
        let mut last = self.last_sweep.lock().expect("never poisoned: no panics inside");
        if last.elapsed() >= Duration::from_secs(1) {
            *last = Instant::now();
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        self.limiter.len() < MAX_KEYS
    }

    /// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers): over a window as long as
    /// the bucket takes to refill (at least a second), the requests the rate allows in it.
    pub fn policy(&self, name: &str) -> String {
        let window = self.window_secs();
        format!("\"{name}\";q={};w={window}", u64::from(self.rps.max(1)) * window)
    }

    /// `RateLimit` for a refused request: nothing left, back after `retry_after`.
    pub fn state(&self, name: &str, limited: &Limited) -> String {
        format!("\"{name}\";r=0;t={}", ceil_secs(limited.retry_after))
    }

    fn window_secs(&self) -> u64 {
        u64::from(self.burst).div_ceil(u64::from(self.rps.max(1))).max(1)
    }
}

/// Whole seconds, rounded up, at least 1 (`Retry-After` has no fractions).
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::gateway::authn::Method;

    fn who(id: &str) -> Principal {
        Principal { id: id.into(), roles: BTreeSet::new(), via: Method::ApiKey }
    }

    #[test]
    fn each_key_has_its_own_bucket() {
        let rl = RateLimit::new(Per::Principal, 1, 3);
        let src: IpAddr = "198.18.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(rl.check(Some(&who("a")), src).is_ok());
        }
        let limited = rl.check(Some(&who("a")), src).unwrap_err();
        assert!(
            limited.retry_after > Duration::ZERO && limited.retry_after <= Duration::from_secs(1)
        );
        assert!(rl.check(Some(&who("b")), src).is_ok(), "another principal is unaffected");
        assert_eq!(rl.policy("r"), "\"r\";q=3;w=3");
        assert_eq!(RateLimit::new(Per::Route, 100, 1).policy("r"), "\"r\";q=100;w=1");
        assert_eq!(RateLimit::new(Per::Route, 2, 3).policy("r"), "\"r\";q=4;w=2");
        assert_eq!(rl.state("r", &limited), "\"r\";r=0;t=1");
    }

    #[test]
    fn sources_are_counted_by_their_key_and_routes_as_one() {
        let key = crate::gateway::slots::SourceKey::new(32, 64);
        let of = |s: &str| key.of(s.parse().unwrap());
        let rl = RateLimit::new(Per::Source, 1, 1);
        assert!(rl.check(None, of("fd00:18::1")).is_ok());
        assert!(rl.check(None, of("fd00:18::2")).is_err(), "the same /64");
        assert!(rl.check(None, of("fd00:18:0:1::1")).is_ok());
        let route = RateLimit::new(Per::Route, 1, 1);
        assert!(route.check(None, "198.18.0.2".parse().unwrap()).is_ok());
        assert!(route.check(Some(&who("x")), "198.18.0.3".parse().unwrap()).is_err());
    }

    proptest::proptest! {
        /// Back to back, exactly `burst` requests pass, whatever the rate.
        #[test]
        fn a_burst_passes_then_stops(rps in 1u32..1000, burst in 1u32..200) {
            let rl = RateLimit::new(Per::Route, rps, burst);
            let src: IpAddr = "198.18.0.2".parse().unwrap();
            let passed = (0..burst + 50).take_while(|_| rl.check(None, src).is_ok()).count() as u32;
            // A fast rate may refill one cell while the loop runs.
            proptest::prop_assert!(passed >= burst && passed <= burst + 1 + rps / 100, "{} of burst {}", passed, burst);
        }
    }
}
