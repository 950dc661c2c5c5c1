//! What `[escalation]` sets: how many offences of each kind within a window ban a source,
//! for how long, and whether bans are made or only reported.

use std::time::Duration;

use crate::config::Mode;

/// What a source did that counts against it. Only the client's faults are offences: an
/// upstream 5xx, a gateway bug or an overloaded gateway never bans anyone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Bad credentials, or refused by an ACL.
    AuthFailure,
    /// A request that breaks a limit, a type, a schema or the HTTP framing, or a head not
    /// sent within the header timeout.
    ValidationFailure,
    /// A request over its route's rate limit (429).
    RateLimited,
    /// A TLS handshake that failed for the client's part.
    TlsFailure,
    /// The datapath reported the source over its packet rate limit.
    OverlimitEvent,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::AuthFailure,
        Kind::ValidationFailure,
        Kind::RateLimited,
        Kind::TlsFailure,
        Kind::OverlimitEvent,
    ];

    /// The config key of its threshold, which is also the escalation rule's name.
    pub fn key(self) -> &'static str {
        match self {
            Kind::AuthFailure => "auth_failures",
            Kind::ValidationFailure => "validation_failures",
            Kind::RateLimited => "rate_limited",
            Kind::TlsFailure => "tls_failures",
            Kind::OverlimitEvent => "overlimit_events",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// A source's neighbours that are banned together once enough of them are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Widen {
    pub v4_prefix: u8,
    pub v6_prefix: u8,
    /// Banned sources in one prefix that ban the prefix.
    pub sources: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct EscalationSettings {
    pub window: Duration,
    /// Offences of each kind (by [`Kind::index`]) in the window that ban; 0: never.
    pub thresholds: [u32; 5],
    pub ban_ttl: Duration,
    pub ttl_factor: f64,
    pub max_ttl: Duration,
    pub mode: Mode,
    pub widen: Option<Widen>,
}

impl EscalationSettings {
    pub fn threshold(&self, kind: Kind) -> u32 {
        self.thresholds[kind.index()]
    }

    /// The length of a source's ban after `strikes` earlier ones: `ban_ttl × factor^strikes`,
    /// never more than `max_ttl`.
    pub fn ttl(&self, strikes: u32) -> Duration {
        let factor = self.ttl_factor.powi(strikes.min(64) as i32);
        let secs = self.ban_ttl.as_secs_f64() * factor;
        if !secs.is_finite() || secs >= self.max_ttl.as_secs_f64() {
            self.max_ttl
        } else {
            Duration::from_secs_f64(secs).min(self.max_ttl)
        }
    }
}

pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);
/// By [`Kind::index`]. Over-limit events are off unless asked for: they come from packets,
/// whose source addresses can be forged where the network does not filter them.
pub const DEFAULT_THRESHOLDS: [u32; 5] = [10, 20, 100, 20, 0];
pub const DEFAULT_BAN_TTL: Duration = Duration::from_secs(600);
pub const DEFAULT_TTL_FACTOR: f64 = 2.0;
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(86_400);
pub const DEFAULT_WIDEN_V4: u8 = 24;
pub const DEFAULT_WIDEN_V6: u8 = 48;
/// Offences of one kind a window may need at most: each one is remembered until it leaves
/// the window.
pub const MAX_THRESHOLD: u64 = 10_000;
/// Distinct offending sources that widen to their prefix, at most.
pub const MAX_WIDEN_SOURCES: u64 = 1024;
