//! The gateway's validated settings, as config validation builds them: certificates, keys and
//! JWKS already loaded and checked, routes parsed, so nothing can fail later for a reason
//! the config could have named.

use std::{net::SocketAddr, time::Duration};

use super::{
    authn::Authenticator, proxy::UpstreamSettings, routes::Route, slots::SourceKey,
    tls::TlsSettings,
};

#[derive(Clone, Debug)]
pub struct GatewaySettings {
    pub listen: Vec<SocketAddr>,
    pub tls: TlsSettings,
    pub upstream: UpstreamSettings,
    pub timeouts: Timeouts,
    pub limits: ConnLimits,
    pub request_limits: RequestLimits,
    /// How sources are counted: as the datapath keys them.
    pub sources: SourceKey,
    pub routes: Vec<Route>,
    pub auth: Authenticator,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub handshake: Duration,
    pub header: Duration,
    pub idle: Duration,
}

/// Bounds on what one connection may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnLimits {
    pub max_header_bytes: u32,
    pub max_concurrent_streams: u32,
    pub max_connections: u32,
    pub max_connections_per_source: u32,
}

/// Bounds on one request (`[gateway.limits]`; routes may set their own body limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestLimits {
    pub max_headers: u32,
    pub max_uri_bytes: u32,
    pub max_body_bytes: u64,
}

/// The most header fields `max_headers` may allow.
pub const MAX_HEADERS_ACCEPTED: usize = 1000;

pub const DEFAULT_REQUEST_LIMITS: RequestLimits =
    RequestLimits { max_headers: 100, max_uri_bytes: 8 * 1024, max_body_bytes: 1 << 20 };

pub const DEFAULT_TIMEOUTS: Timeouts = Timeouts {
    handshake: Duration::from_secs(10),
    header: Duration::from_secs(10),
    idle: Duration::from_secs(60),
};
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_LIMITS: ConnLimits = ConnLimits {
    max_header_bytes: 16 * 1024,
    max_concurrent_streams: 100,
    max_connections: 10_000,
    max_connections_per_source: 256,
};
