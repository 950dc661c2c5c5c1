//! What the daemon reports: plain data that the service returns, the control protocol
//! carries and the CLI renders. Nothing here reaches into the policy or the maps.

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::config::Mode;

/// A ban as `ban list` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BanView {
    pub cidr: IpNet,
    /// Seconds until the ban lapses; `None` for a permanent ban.
    pub expires_in_secs: Option<f64>,
    pub reason: String,
}

/// The limits in force, as `limit show` reports them.
pub use crate::config::Limits as LimitsView;

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StatsView {
    pub mode: Mode,
    /// Counters per verdict reason (`pass`, `non_ip`, `allow`, `deny`, `rate`, `malformed`,
    /// `fragment`, `contended`).
    pub reasons: BTreeMap<String, Traffic>,
    /// Packets actually dropped (none while in monitor mode).
    pub dropped: Traffic,
}

/// A configured interface and whether the program is on it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Attachment {
    pub interface: String,
    /// `attached`; `waiting` for the interface to appear; or `failed`: it exists but the
    /// program could not be attached (retried on every link event and every second).
    pub state: String,
    /// How this daemon attached: `native`, `skb`, or `adopted` (program swapped into a link
    /// pinned by an earlier run); `none` when not attached.
    pub mode: String,
    /// The interface's index when attached.
    #[serde(default)]
    pub ifindex: Option<u32>,
    /// How the kernel runs XDP on the interface: `native`, `skb`, `hw`, `multiple`, `none`,
    /// or `unknown` when rtnetlink could not be asked.
    #[serde(default)]
    pub xdp: String,
    /// How the interface's NAPI polling runs, as the kernel says: `threaded`, `softirq`
    /// (with why threading it failed, under `datapath.napi = "threaded"`), or `unknown`.
    #[serde(default)]
    pub napi: String,
    /// Why the attach failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StatusView {
    pub mode: Mode,
    /// Every configured interface, attached or waiting.
    pub attachments: Vec<Attachment>,
    pub pin_path: String,
    pub bans: usize,
    pub allow: usize,
    pub overrides: usize,
    /// Limiter buckets in use, as an upper bound: the buckets the program created, capped at
    /// `max_sources`. Buckets lapse and their slots are reused without telling, so once that
    /// many sources have been seen this reads `max_sources`.
    pub sources: u64,
    /// Limiter buckets created since the maps were made.
    pub buckets_created: u64,
    /// New buckets that pushed out a live one since the maps were made: above zero, the
    /// flood has more sources than `max_sources`, and evicted sources start afresh.
    #[serde(default)]
    pub buckets_evicted: u64,
    pub uptime_secs: u64,
    /// Escalation bans and how fast they reached the kernel.
    #[serde(default)]
    pub enforcement: EnforcementView,
    /// The fleet link; `None` without `[fleet]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetView>,
}

/// The link to the fleet's Redis, as `status` shows it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct FleetView {
    /// Where Redis is (never with a password).
    pub redis: String,
    pub node: String,
    /// What is shared: `bans`, `limits`.
    pub shares: Vec<String>,
    pub connected: bool,
    /// Seconds since this node last loaded the fleet's bans; `None`: not yet.
    pub last_sync_secs_ago: Option<f64>,
    /// Bans and lifts this node made that are not in Redis yet.
    pub pending: usize,
    /// Bans in Redis at the last sync.
    pub bans_shared: usize,
    /// Redis errors since start.
    pub errors: u64,
    /// The last error, while disconnected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// From a ban change on another node to its being in force here, over the latest ones
    /// (wall clocks: skew between the nodes' clocks adds to it).
    pub propagation_p50_ms: Option<f64>,
    pub propagation_p99_ms: Option<f64>,
}

/// The escalation's bans: how many, the time from the offence to the ban being in the
/// kernel's deny map (over the last few thousand bans), and, in `monitor` mode, who would
/// have been banned.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct EnforcementView {
    pub bans: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub would_ban_total: u64,
    /// The latest would-be bans, newest first.
    pub would_ban: Vec<WouldBanView>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WouldBanView {
    pub cidr: IpNet,
    pub rule: String,
    pub ttl_secs: f64,
    pub reason: String,
    pub at: String,
}

/// One packet's verdict, as `secgate trace` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TraceLine {
    /// Position in the daemon's trace log, from 1.
    pub seq: u64,
    /// When the daemon read it (Unix milliseconds).
    pub at_ms: u64,
    pub src: std::net::IpAddr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub syn: bool,
    pub fragment: bool,
    /// The verdict reason (`pass`, `deny`, `rate`…).
    pub verdict: String,
    /// Which limit applied: `none`, `default`, `fragments`, or an override as `limit show`
    /// names it (`udp port 53`, `tcp port 443 (SYN only)`).
    pub limit: String,
    pub pps: u64,
    pub burst: u64,
}

/// A `trace_read` reply.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TraceView {
    pub lines: Vec<TraceLine>,
    /// Ask from here next time.
    pub cursor: u64,
    /// Lines this read left out: beyond what one read returns, or gone from the daemon's
    /// log before they were read.
    pub skipped: u64,
    /// Lines the kernel held back to its budget since the daemon started (all traces).
    pub suppressed: u64,
    /// Whether the trace is still running.
    pub running: bool,
}
