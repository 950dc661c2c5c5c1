//! Map names, capacities and the key/value layouts both sides read and write.
//!
//! Every type is `#[repr(C)]`, `Copy` and free of implicit padding (padding bytes would be
//! uninitialised in the kernel and break hash-map key equality).

/// Name of the single-entry `Array<DatapathConfig>`.
pub const CONFIG: &str = "SG_CONFIG";
/// Name of the `HashMap<LimitKey, RateRule>` of per-protocol/port overrides.
pub const LIMITS: &str = "SG_LIMITS";
/// Name of the `Array<u64>` bitmap of the TCP and UDP ports `SG_LIMITS` holds keys for
/// ([`crate::limit::override_port_bit`]), which the daemon derives from `SG_LIMITS`.
pub const OVERRIDE_PORTS: &str = "SG_OVERRIDE_PORTS";
/// Words of `SG_OVERRIDE_PORTS`: a bit per port (port 0: any port), TCP's then UDP's.
pub const OVERRIDE_PORT_WORDS: u32 = 2 * 65_536 / 64;
/// Names of the allowlist LPM tries (`Key<[u8; 4]>` / `Key<[u8; 16]>` → [`AllowEntry`]).
pub const ALLOW_V4: &str = "SG_ALLOW_V4";
pub const ALLOW_V6: &str = "SG_ALLOW_V6";
/// Names of the denylist LPM tries (→ [`DenyEntry`]): every ban that is not a single host.
pub const DENY_V4: &str = "SG_DENY_V4";
pub const DENY_V6: &str = "SG_DENY_V6";
/// Names of the tables of single-host bans, IPv4 /32 and IPv6 /[`HOST_V6_PREFIX`]
/// (`Array<crate::hosts::HostSet>`, [`crate::hosts::HOST_SETS`] sets each): a botnet banned
/// source by source puts hundreds of thousands of entries in them, which a trie walk would
/// miss the cache on at every level, and a hash map at two dependent lines.
pub const HOST_BANS_V4: &str = "SG_HOST_BANS_V4";
pub const HOST_BANS_V6: &str = "SG_HOST_BANS_V6";
/// Name of the `Array<crate::hosts::HostInfo>`: per family, the host table's hash key and
/// how many hosts it holds (the program skips a table that holds none).
pub const HOST_INFO: &str = "SG_HOST_INFO";
/// `SG_HOST_INFO` index of the IPv4 and of the IPv6 host table.
pub const HOSTS_V4: u32 = 0;
pub const HOSTS_V6: u32 = 1;

/// The IPv6 prefix a host ban covers: one subscriber's network, the default source key.
pub const HOST_V6_PREFIX: u8 = 64;
/// Name of the `Array<SourceSet>` of per-source limiter state (`crate::sources`).
pub const SOURCES: &str = "SG_SOURCES";
/// Name of the `PerCpuArray<Counter>`: one slot per [`crate::verdict::Reason`], then
/// [`STATS_DROPPED`], [`STATS_NEW_BUCKETS`] and [`STATS_EVICTED_BUCKETS`].
pub const STATS: &str = "SG_STATS";
/// `SG_STATS` slot of packets actually dropped. The reason slots count would-be drops in
/// monitor mode too, so drops cannot be derived from them and the current mode.
pub const STATS_DROPPED: u32 = crate::verdict::REASON_COUNT;
/// `SG_STATS` slot of packets that created a limiter bucket (`packets` only; `bytes` stays
/// 0). Counting claims lets the daemon report how many sources it tracks without walking
/// the limiter table, which costs a syscall per set.
pub const STATS_NEW_BUCKETS: u32 = STATS_DROPPED + 1;
/// `SG_STATS` slot of new buckets that evicted a live one (`packets` only): both of the
/// source's sets were full of buckets still ahead of their rate, so the table holds fewer
/// sources than the flood has, and each evicted source starts afresh when it returns. A
/// slot whose bucket had lapsed is reused without counting here: nothing is lost.
pub const STATS_EVICTED_BUCKETS: u32 = STATS_NEW_BUCKETS + 1;
/// Number of `SG_STATS` slots.
pub const STATS_SLOTS: u32 = STATS_EVICTED_BUCKETS + 1;
/// Name of the ring buffer of [`OverLimitEvent`]s.
pub const EVENTS: &str = "SG_EVENTS";
/// Name of the `PerCpuArray<u64>` holding each CPU's event-budget GCRA state.
pub const EVENT_BUDGET: &str = "SG_EVT_BUDGET";
/// Name of the `PerCpuArray<sources::Pick>` through which the limiter passes the slot it
/// chose to the code that uses it (not pinned: it holds one packet's choice).
pub const PICK: &str = "SG_PICK";
/// Name of the `Array<sources::ClaimLock>` that makes CPUs seeing one new source at once
/// agree on one bucket for it (not pinned: a claim is held only while a packet runs).
pub const CLAIMS: &str = "SG_CLAIMS";

/// Names of the LPM tries of sources `secgate trace` follows (`Key<[u8; 4]>` /
/// `Key<[u8; 16]>` → 1). Not pinned: a trace ends with the daemon that started it.
pub const TRACE_V4: &str = "SG_TRACE_V4";
pub const TRACE_V6: &str = "SG_TRACE_V6";
/// Name of the `PerCpuArray<TraceBudget>` that holds trace lines to
/// [`TRACE_LINES_PER_SEC`] per CPU (not pinned).
pub const TRACE_BUDGET: &str = "SG_TRACE_BUDGET";
/// Traced prefixes at once, across every `secgate trace` running.
pub const MAX_TRACES: u32 = 64;
/// Trace lines each CPU may emit per second, and in a burst: a flood from a traced source
/// must not flood the daemon or the operator's terminal.
pub const TRACE_LINES_PER_SEC: u64 = 50;
pub const TRACE_BURST: u64 = 20;

/// The program's own maps the daemon does not pin.
pub const UNPINNED: [&str; 5] = [TRACE_V4, TRACE_V6, TRACE_BUDGET, PICK, CLAIMS];
/// aya-log's ring buffer of log records (the trace lines), made by `aya-log-ebpf`.
pub const LOGS: &str = "AYA_LOGS";

/// Every map the program defines that the daemon pins (the trace maps are not).
pub const ALL: [&str; 14] = [
    CONFIG,
    LIMITS,
    OVERRIDE_PORTS,
    ALLOW_V4,
    ALLOW_V6,
    DENY_V4,
    DENY_V6,
    HOST_BANS_V4,
    HOST_BANS_V6,
    HOST_INFO,
    SOURCES,
    STATS,
    EVENTS,
    EVENT_BUDGET,
];

/// Override rules: protocol × port × SYN-only combinations an operator can configure.
pub const MAX_LIMIT_RULES: u32 = 256;
/// Allowlist entries per address family.
pub const MAX_ALLOW: u32 = 16 * 1024;
/// Prefix bans (not single hosts) per address family.
pub const MAX_DENY: u32 = 256 * 1024;
/// Host bans per address family: a botnet's worth, banned source by source. Each table is
/// made whole with the map: 32 MiB (two 16-byte slots per host).
pub const MAX_DENY_HOSTS: u32 = 1 << 20;
/// Default number of sources the limiter table holds (`max_sources` overrides it at load;
/// the table then has [`crate::sources::sets_for`] sets).
pub const DEFAULT_MAX_SOURCES: u32 = 256 * 1024;
/// Ring buffer size in bytes (power of two, multiple of the page size).
pub const EVENTS_BYTES: u32 = 256 * 1024;

/// `DatapathConfig::mode`: drop what the policy says to drop.
pub const MODE_ENFORCE: u32 = 0;
/// `DatapathConfig::mode`: count would-be drops, pass everything.
pub const MODE_MONITOR: u32 = 1;

/// `DatapathConfig::flags`: pass (but count) malformed packets instead of dropping them.
pub const FLAG_PASS_MALFORMED: u32 = 1;
/// `DatapathConfig::flags`: drop non-first IP fragments (reason `fragment`) instead of
/// limiting them with `fragment_rule`.
pub const FLAG_DROP_FRAGMENTS: u32 = 2;
/// `DatapathConfig::flags`: some `secgate trace` is running, so packets are looked up in the
/// trace tries. Without it tracing costs one test of this bit.
pub const FLAG_TRACE: u32 = 4;
/// `DatapathConfig::flags`: the allowlist is empty, so the program skips its lookup (a trie
/// walk on every packet). Set only by a daemon that knows; all-zero flags look it up.
pub const FLAG_NO_ALLOW: u32 = 8;
/// `DatapathConfig::flags`: every rule tolerates the coarse clock
/// ([`crate::limit::coarse_clock_fits`]), so the program reads that one, a load, instead of
/// the fine one, which costs 40–70 ns a read on a virtual machine.
pub const FLAG_COARSE_CLOCK: u32 = 16;

/// Address family tags used in keys and events.
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// A GCRA limit: one packet per `interval_ns`, bursts of up to `tolerance_ns / interval_ns + 1`.
/// `interval_ns == 0` means "no limit".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RateRule {
    pub interval_ns: u64,
    pub tolerance_ns: u64,
}

/// Runtime configuration of the XDP program, slot 0 of `SG_CONFIG`.
///
/// An all-zero value (before the daemon writes it) enforces nothing but malformed drops.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatapathConfig {
    /// [`MODE_ENFORCE`] or [`MODE_MONITOR`].
    pub mode: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Mask applied to an IPv4 source before it keys a limiter bucket (network order).
    pub v4_mask: [u8; 4],
    /// Sets in `SG_SOURCES` as the daemon made it (`crate::sources::place` reduces onto it).
    pub source_sets: u32,
    /// Mask applied to an IPv6 source before it keys a limiter bucket (network order).
    pub v6_mask: [u8; 16],
    /// Bit `p` set: `SG_LIMITS` holds overrides for IP protocol `p` (`p < 64`), so the
    /// program only pays for override lookups on protocols that have any.
    pub override_protos: u64,
    /// Limit for packets no override matches.
    pub default_rule: RateRule,
    /// Minimum gap between two over-limit events for the same bucket.
    pub event_interval_ns: u64,
    /// Per-CPU budget for over-limit events, so a flood of sources cannot flood the daemon.
    pub event_budget: RateRule,
    /// Limit for non-first fragments, counted in their own bucket per source: they carry no
    /// ports, so no port override can match them, and without a bucket of their own a
    /// fragment flood would pass wherever only overrides are set.
    pub fragment_rule: RateRule,
    /// Random key of the limiter table's hash, kept with the table for as long as it lives.
    pub source_seed: u64,
}

/// Which limit applies: protocol, destination port (0 = any) and SYN-only.
/// `LimitKey::DEFAULT` (all zero) is the default limit's bucket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LimitKey {
    /// Destination port in host order; 0 matches any port.
    pub port: u16,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6).
    pub proto: u8,
    /// 1: only TCP segments with SYN set and ACK clear.
    pub syn_only: u8,
}

impl LimitKey {
    pub const DEFAULT: LimitKey = LimitKey { port: 0, proto: 0, syn_only: 0 };
    /// The bucket of non-first fragments. Overrides only name TCP, UDP and ICMP, so the
    /// fragment header's protocol number cannot collide with one.
    pub const FRAGMENTS: LimitKey =
        LimitKey { port: 0, proto: crate::net::IPPROTO_FRAGMENT, syn_only: 0 };
}

/// Key of a per-source limiter bucket: the masked source plus the limit it is counted against.
/// Aligned to 8 so the program can hash it as three words off its stack.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BucketKey {
    /// Masked source address; IPv4 uses the first four bytes, the rest stay zero.
    pub addr: [u8; 16],
    pub family: u8,
    pub _pad: [u8; 3],
    pub limit: LimitKey,
}

impl BucketKey {
    /// The key as the three words [`crate::sources::place`] hashes.
    #[inline(always)]
    pub fn words(&self) -> [u64; 3] {
        let a = &self.addr;
        let l = &self.limit;
        let port = l.port.to_ne_bytes();
        let last = [self.family, 0, 0, 0, port[0], port[1], l.proto, l.syn_only];
        [
            u64::from_ne_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]),
            u64::from_ne_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]),
            u64::from_ne_bytes(last),
        ]
    }
}

/// Limiter state of one bucket, as the model keeps it and the daemon reads it back from its
/// slot (`crate::sources::SourceSlot`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceState {
    /// GCRA theoretical arrival time (ns, the datapath clock).
    pub tat_ns: u64,
    /// `crate::sources::event_stamp` of the bucket's last over-limit event (0: never).
    pub event_stamp: u32,
}

/// Value of an allowlist entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllowEntry {
    /// Reserved for flags; keeps the value non-empty as the kernel requires.
    pub flags: u32,
}

/// Value of a denylist entry.
///
/// The kernel reads the source's host entry and, unless that one is in force, the longest
/// prefix that matches it; so the daemon writes each entry with the expiry of the
/// longest-lasting ban among itself and every prefix covering it
/// ([`DenyEntry::outlasting`]): a short ban inside a longer one never hides the longer one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DenyEntry {
    /// `CLOCK_MONOTONIC` ns after which the entry no longer drops; 0 = permanent.
    pub expires_ns: u64,
}

impl DenyEntry {
    /// A permanent entry drops without the clock being read.
    pub const fn permanent(&self) -> bool {
        self.expires_ns == 0
    }

    /// Whether the entry still drops at `now_ns`.
    pub const fn active(&self, now_ns: u64) -> bool {
        self.permanent() || now_ns < self.expires_ns
    }

    /// Whichever of the two drops for longer (a permanent entry outlasts any other).
    pub const fn outlasting(self, other: DenyEntry) -> DenyEntry {
        if self.permanent() || other.permanent() {
            DenyEntry { expires_ns: 0 }
        } else if self.expires_ns >= other.expires_ns {
            self
        } else {
            other
        }
    }
}

/// Per-reason traffic counter (one per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// A source went over its limit (sampled: at most one per bucket per `event_interval_ns`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OverLimitEvent {
    pub addr: [u8; 16],
    pub family: u8,
    pub _pad: [u8; 3],
    pub limit: LimitKey,
    pub ts_ns: u64,
}

/// One CPU's trace budget (`SG_TRACE_BUDGET`): the GCRA state of its lines, and the lines it
/// held back, which `secgate trace` reports.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceBudget {
    pub tat_ns: u64,
    pub suppressed: u64,
}
