//! The program's maps. Names and capacities come from `secgate_common::maps`; the static
//! names must equal those constants (a test checks every name is present in the object).

use crate::clock::Clock;
use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC},
    macros::map,
    maps::{Array, HashMap, LpmTrie, PerCpuArray, RingBuf, lpm_trie::Key},
};
use secgate_common::{
    maps::{
        AllowEntry, Counter, DEFAULT_MAX_SOURCES, DatapathConfig, DenyEntry, EVENTS_BYTES,
        FAMILY_V4, HOSTS_V4, HOSTS_V6, HostV6Key, LimitKey, MAX_ALLOW, MAX_DENY, MAX_DENY_HOSTS,
        MAX_LIMIT_RULES, RateRule, STATS_SLOTS, host_v6_key,
    },
    model::Packet,
    sources::{CLAIM_LOCKS, ClaimLock, Pick, SourceSet, sets_for},
};

#[map]
pub static SG_CONFIG: Array<DatapathConfig> = Array::with_max_entries(1, 0);
#[map]
pub static SG_LIMITS: HashMap<LimitKey, RateRule> = HashMap::with_max_entries(MAX_LIMIT_RULES, 0);
#[map]
static SG_ALLOW_V4: LpmTrie<[u8; 4], AllowEntry> = LpmTrie::with_max_entries(MAX_ALLOW, 0);
#[map]
static SG_ALLOW_V6: LpmTrie<[u8; 16], AllowEntry> = LpmTrie::with_max_entries(MAX_ALLOW, 0);
#[map]
static SG_DENY_V4: LpmTrie<[u8; 4], DenyEntry> = LpmTrie::with_max_entries(MAX_DENY, 0);
#[map]
static SG_DENY_V6: LpmTrie<[u8; 16], DenyEntry> = LpmTrie::with_max_entries(MAX_DENY, 0);
/// Not preallocated: elements cost memory only once banned (the bucket array, 16 MiB at this
/// capacity, is made with the map).
#[map]
static SG_DENY_HOSTS_V4: HashMap<[u8; 4], DenyEntry> =
    HashMap::with_max_entries(MAX_DENY_HOSTS, BPF_F_NO_PREALLOC);
#[map]
static SG_DENY_HOSTS_V6: HashMap<HostV6Key, DenyEntry> =
    HashMap::with_max_entries(MAX_DENY_HOSTS, BPF_F_NO_PREALLOC);
#[map]
static SG_DENY_HOSTS_EMPTY: Array<u32> = Array::with_max_entries(2, 0);
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
    let hosts = if v4 { HOSTS_V4 } else { HOSTS_V6 };
    if SG_DENY_HOSTS_EMPTY.get(hosts).is_none_or(|empty| *empty == 0) {
        // SAFETY: map values are plain data.
        let host = unsafe {
            if v4 {
                SG_DENY_HOSTS_V4.get([pkt.src[0], pkt.src[1], pkt.src[2], pkt.src[3]])
            } else {
                SG_DENY_HOSTS_V6.get(host_v6_key(&pkt.src))
            }
        };
        if host.is_some_and(|e| in_force(e, clock)) {
            return true;
        }
    }
    let net = if v4 { SG_DENY_V4.get(v4_key(pkt)) } else { SG_DENY_V6.get(Key::new(128, pkt.src)) };
    net.is_some_and(|e| in_force(e, clock))
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
