//! The program's maps. Names and capacities come from `secgate_common::maps`; the static
//! names must equal those constants (a test checks every name is present in the object).

use crate::clock::Clock;
use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, HashMap, LpmTrie, PerCpuArray, RingBuf, lpm_trie::Key},
};
use secgate_common::{
    hosts::{HOST_SETS, HostInfo, HostSet, host_sets, lookup},
    limit::override_port_bit,
    maps::{
        AllowEntry, Counter, DEFAULT_MAX_SOURCES, DatapathConfig, DenyEntry, EVENTS_BYTES,
        FAMILY_V4, HOSTS_V4, HOSTS_V6, LimitKey, MAX_ALLOW, MAX_DENY, MAX_LIMIT_RULES,
        OVERRIDE_PORT_WORDS, RateRule, STATS_SLOTS,
    },
    model::Packet,
    sources::{CLAIM_LOCKS, ClaimLock, Pick, SourceSet, sets_for},
};

#[map]
pub static SG_CONFIG: Array<DatapathConfig> = Array::with_max_entries(1, 0);
#[map]
static SG_LIMITS: HashMap<LimitKey, RateRule> = HashMap::with_max_entries(MAX_LIMIT_RULES, 0);
#[map]
static SG_OVERRIDE_PORTS: Array<u64> = Array::with_max_entries(OVERRIDE_PORT_WORDS, 0);
#[map]
static SG_ALLOW_V4: LpmTrie<[u8; 4], AllowEntry> = LpmTrie::with_max_entries(MAX_ALLOW, 0);
#[map]
static SG_ALLOW_V6: LpmTrie<[u8; 16], AllowEntry> = LpmTrie::with_max_entries(MAX_ALLOW, 0);
#[map]
static SG_DENY_V4: LpmTrie<[u8; 4], DenyEntry> = LpmTrie::with_max_entries(MAX_DENY, 0);
#[map]
static SG_DENY_V6: LpmTrie<[u8; 16], DenyEntry> = LpmTrie::with_max_entries(MAX_DENY, 0);
/// Mmapable for the page-aligned values that makes (each set is then one cache line), and so
/// the daemon writes slots with single stores (`secgate_common::hosts`).
#[map]
static SG_HOST_BANS_V4: Array<HostSet> = Array::with_max_entries(HOST_SETS, BPF_F_MMAPABLE);
#[map]
static SG_HOST_BANS_V6: Array<HostSet> = Array::with_max_entries(HOST_SETS, BPF_F_MMAPABLE);
#[map]
static SG_HOST_INFO: Array<HostInfo> = Array::with_max_entries(2, 0);
/// Sets for the default `max_sources`; the daemon sizes it at load time. Mmapable only for
/// the page-aligned values that makes: each set is then exactly one cache line.
#[map]
pub static SG_SOURCES: Array<SourceSet> =
    Array::with_max_entries(sets_for(DEFAULT_MAX_SOURCES), BPF_F_MMAPABLE);
#[map]
static SG_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(STATS_SLOTS, 0);
#[map]
pub static SG_EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);
#[map]
pub static SG_EVT_BUDGET: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);
#[map]
pub static SG_PICK: PerCpuArray<Pick> = PerCpuArray::with_max_entries(1, 0);
/// Mmapable for the page-aligned values: each lock is then exactly one cache line.
#[map]
pub static SG_CLAIMS: Array<ClaimLock> = Array::with_max_entries(CLAIM_LOCKS, BPF_F_MMAPABLE);

fn v4_key(pkt: &Packet) -> Key<[u8; 4]> {
    Key::new(32, [pkt.src[0], pkt.src[1], pkt.src[2], pkt.src[3]])
}

#[inline(always)]
pub fn allowed(pkt: &Packet) -> bool {
    if pkt.family == FAMILY_V4 {
        SG_ALLOW_V4.get(v4_key(pkt)).is_some()
    } else {
        SG_ALLOW_V6.get(Key::new(128, pkt.src)).is_some()
    }
}

/// Whether the source's host ban, or else the longest denylist prefix covering it, is in
/// force; the clock is read only for entries that expire. A host ban in force decides alone,
/// and one that lapsed leaves it to the trie: the daemon writes every entry with the longest
/// expiry among itself and the prefixes covering it, so no prefix outlasts a host entry.
#[inline(always)]
pub fn denied(pkt: &Packet, clock: &mut Clock) -> bool {
    let in_force = |e: &DenyEntry, clock: &mut Clock| e.permanent() || e.active(clock.now());
    let v4 = pkt.family == FAMILY_V4;
    if host_ban(pkt).is_some_and(|e| in_force(&e, clock)) {
        return true;
    }
    let net = if v4 { SG_DENY_V4.get(v4_key(pkt)) } else { SG_DENY_V6.get(Key::new(128, pkt.src)) };
    net.is_some_and(|e| in_force(e, clock))
}

/// The source's host ban, if its family's table holds any hosts: its first set read, and
/// its second only if the first does not hold it and spilled.
#[inline(always)]
fn host_ban(pkt: &Packet) -> Option<DenyEntry> {
    let v4 = pkt.family == FAMILY_V4;
    let info = SG_HOST_INFO.get(if v4 { HOSTS_V4 } else { HOSTS_V6 })?;
    if info.hosts() == 0 {
        return None;
    }
    let key = pkt.host_key();
    let [a, b] = host_sets(info.seed, HOST_SETS, key);
    let (a, b) = if v4 {
        (SG_HOST_BANS_V4.get(a)?, SG_HOST_BANS_V4.get(b)?)
    } else {
        (SG_HOST_BANS_V6.get(a)?, SG_HOST_BANS_V6.get(b)?)
    };
    lookup([a, b], key, info.spill_counted())
}

/// The override `key` names, if `SG_LIMITS` holds it: a hash lookup only where the key's
/// port bit says it may (`override_port_bit`), so TCP and UDP packets to ports without
/// overrides skip the misses.
#[inline(always)]
pub fn override_rule(key: &LimitKey) -> Option<RateRule> {
    if let Some((word, bit)) = override_port_bit(key.proto, key.port)
        && SG_OVERRIDE_PORTS.get(word).is_none_or(|w| w & bit == 0)
    {
        return None;
    }
    // SAFETY: map values are plain data.
    unsafe { SG_LIMITS.get(key) }.copied()
}

#[inline(always)]
/// Counts a packet of `len` bytes in `SG_STATS` slot `slot`.
pub fn count(slot: u32, len: u64) {
    if let Some(c) = SG_STATS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += len;
        }
    }
}
