//! The config file as written: serde-shaped, every field documented with its unit and
//! default. Numbers are `i64` and choices are strings so that out-of-range values and typos
//! reach validation, which reports all of them with their lines, instead of stopping serde at
//! the first one.

use serde::Deserialize;
use toml::Spanned;

pub type S<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
pub struct RawConfig {
    /// Directory for runtime state. Default `/var/lib/secgate`.
    pub state_dir: Option<S<String>>,
    pub datapath: RawDatapath,
    #[serde(default)]
    pub control: RawControl,
    #[serde(default)]
    pub metrics: RawMetrics,
    #[serde(default)]
    pub audit: RawAudit,
}

#[derive(Debug, Deserialize)]
pub struct RawDatapath {
    /// Interfaces to attach the XDP program to. Required, at least one.
    pub interfaces: S<Vec<S<String>>>,
    /// `auto` (native, falling back to skb with a warning), `native` or `skb`. Default `auto`.
    pub attach: Option<S<String>>,
    /// `enforce` or `monitor`. Default `enforce`.
    pub mode: Option<S<String>>,
    /// Prefix length an IPv4 source is grouped by for rate limiting, 1–32. Default 32.
    pub ipv4_prefix: Option<S<i64>>,
    /// Prefix length an IPv6 source is grouped by for rate limiting, 1–128. Default 64.
    pub ipv6_prefix: Option<S<i64>>,
    /// Capacity of the per-source limiter table (entries); LRU beyond. Default 262144.
    pub max_sources: Option<S<i64>>,
    /// `drop` or `pass` malformed IP packets (always counted). Default `drop`.
    pub malformed: Option<S<String>>,
    /// Limit for packets no override matches. Default: none (unlimited).
    pub default_limit: Option<S<RawRate>>,
    /// `limit` or `drop` non-first IP fragments (they carry no ports, so no port override
    /// can match them). Default `limit`.
    pub fragments: Option<S<String>>,
    /// Limit for non-first fragments, in a bucket of their own per source. Default: the
    /// default limit.
    pub fragment_limit: Option<S<RawRate>>,
    /// Per-protocol/port overrides.
    #[serde(default)]
    pub limits: Vec<S<RawOverride>>,
    /// Sources never limited or denied (CIDR or bare address).
    #[serde(default)]
    pub allow: Vec<S<String>>,
    /// Sources always dropped (CIDR or bare address).
    #[serde(default)]
    pub deny: Vec<S<String>>,
    /// bpffs directory for the pinned link and maps. Default `/sys/fs/bpf/secgate`.
    pub pin_path: Option<S<String>>,
    /// Minimum gap between over-limit events for one source, e.g. `"1s"`. Default `1s`.
    pub event_interval: Option<S<String>>,
    /// Over-limit events per second per CPU at most. Default 1000.
    pub events_per_sec: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
pub struct RawRate {
    /// Packets per second, 1–1000000000.
    pub pps: S<i64>,
    /// Packets allowed back to back, 1–16777216.
    pub burst: S<i64>,
}

#[derive(Debug, Deserialize)]
pub struct RawOverride {
    /// `tcp`, `udp` or `icmp` (ICMP and ICMPv6).
    pub protocol: S<String>,
    /// Destination port, 1–65535 (TCP and UDP only). Default: any port.
    pub port: Option<S<i64>>,
    /// Only TCP SYNs (connection attempts). Default false.
    #[serde(default)]
    pub syn_only: bool,
    pub pps: S<i64>,
    pub burst: S<i64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawControl {
    /// Control socket path. Default `/run/secgate/control.sock`.
    pub socket: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawMetrics {
    /// Address of the Prometheus text endpoint (`/metrics`). Default `127.0.0.1:9477`.
    pub listen: Option<S<String>>,
    /// Serve metrics at all. Default true.
    pub enabled: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawAudit {
    /// JSON-lines audit log of every control change. Default `/var/log/secgate/audit.log`.
    pub path: Option<S<String>>,
}
