//! Typed access to the datapath's maps: the only place userspace reads or writes them.

use std::net::IpAddr;

use aya::{
    Ebpf,
    maps::{Array, LpmTrie, Map, MapData, MapError, PerCpuArray, lpm_trie::Key},
};
use ipnet::IpNet;
use secgate_common::{
    hosts::HostSet,
    maps::{
        self as names, AllowEntry, BucketKey, Counter, DatapathConfig, DenyEntry, LimitKey,
        RateRule, SourceState, TraceBudget,
    },
    sources::SourceSet,
};

use crate::bans::Write;

mod deny;
mod hosts;
mod legacy;
mod limits;
mod sources;
use deny::DenyMaps;
pub use deny::{DENY_MAPS, Holder, holder};
use sources::SourceTable;

/// Why a map operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error("the XDP object has no map named {0}; the daemon and program were built apart")]
    Missing(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("map {name} is full ({capacity} entries); remove entries or raise the limit")]
    Full { name: &'static str, capacity: u32 },
    #[error("mapping {name} into memory: {source}")]
    Mmap {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "pinned {name} has {found} sets where this build has {expected}: it was pinned by \
         another build of the daemon; restart the daemon with this build"
    )]
    Size { name: &'static str, found: u32, expected: u32 },
    #[error("{0} has no hash key yet: the daemon that loaded the program has not set it up")]
    Uninitialised(&'static str),
    #[error("removing {path}: {source}")]
    Unpin {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, MapsError>;

/// Key size, value size and, where fixed, capacity of each map as this build defines them,
/// to recognise pinned maps left by a build with another layout before the program is
/// loaded against them. `SG_SOURCES` has no fixed capacity: `max_sources` sets it.
/// `SG_CONFIG` and `SG_SOURCES` hold nothing the daemon cannot rebuild (see
/// [`replaceable`]).
pub fn layout(name: &str) -> Option<(u32, u32, Option<u32>)> {
    use std::mem::size_of;
    let map = |k: usize, v: usize, cap: Option<u32>| Some((k as u32, v as u32, cap));
    let lpm = |data: usize| size_of::<u32>() + data;
    let index = size_of::<u32>();
    match name {
        names::CONFIG => map(index, size_of::<DatapathConfig>(), Some(1)),
        names::LIMITS => {
            map(size_of::<LimitKey>(), size_of::<RateRule>(), Some(names::MAX_LIMIT_RULES))
        }
        names::OVERRIDE_PORTS => map(index, size_of::<u64>(), Some(names::OVERRIDE_PORT_WORDS)),
        names::ALLOW_V4 => map(lpm(4), size_of::<AllowEntry>(), Some(names::MAX_ALLOW)),
        names::ALLOW_V6 => map(lpm(16), size_of::<AllowEntry>(), Some(names::MAX_ALLOW)),
        names::DENY_V4 => map(lpm(4), size_of::<DenyEntry>(), Some(names::MAX_DENY)),
        names::DENY_V6 => map(lpm(16), size_of::<DenyEntry>(), Some(names::MAX_DENY)),
        names::HOST_BANS_V4 | names::HOST_BANS_V6 => {
            map(index, size_of::<HostSet>(), Some(secgate_common::hosts::HOST_SETS))
        }
        names::HOST_INFO => map(index, size_of::<secgate_common::hosts::HostInfo>(), Some(2)),
        names::SOURCES => map(index, size_of::<SourceSet>(), None),
        names::STATS => map(index, size_of::<Counter>(), Some(names::STATS_SLOTS)),
        names::EVENTS => map(0, 0, Some(names::EVENTS_BYTES)),
        names::EVENT_BUDGET => map(index, size_of::<u64>(), Some(1)),
        names::PICK => map(index, size_of::<secgate_common::sources::Pick>(), Some(1)),
        names::CLAIMS => {
            let lock = size_of::<secgate_common::sources::ClaimLock>();
            map(index, lock, Some(secgate_common::sources::CLAIM_LOCKS))
        }
        names::TRACE_V4 => map(lpm(4), size_of::<u8>(), Some(names::MAX_TRACES)),
        names::TRACE_V6 => map(lpm(16), size_of::<u8>(), Some(names::MAX_TRACES)),
        names::TRACE_BUDGET => map(index, size_of::<secgate_common::maps::TraceBudget>(), Some(1)),
        _ => None,
    }
}

/// Whether a pinned map left by a build with another layout may simply be replaced: the
/// config is rewritten at every start, the limiter table holds only soft state (a source
/// it forgets gets a fresh bucket), the counters restart from zero as any counter does
/// when its process restarts, and the override ports are rebuilt from the rules at every
/// start, while the bans and rules in the others must not be lost.
pub fn replaceable(name: &str) -> bool {
    matches!(name, names::CONFIG | names::SOURCES | names::STATS | names::OVERRIDE_PORTS)
}

/// One LPM trie per address family.
struct Tries<V: aya::Pod> {
    v4: LpmTrie<MapData, [u8; 4], V>,
    v6: LpmTrie<MapData, [u8; 16], V>,
    names: [&'static str; 2],
    capacity: u32,
}

/// Handles on every map the daemon writes or reads.
pub struct DatapathMaps {
    config: Array<MapData, DatapathConfig>,
    limits: limits::Limits,
    allow: Tries<AllowEntry>,
    deny: DenyMaps,
    sources: SourceTable,
    stats: PerCpuArray<MapData, Counter>,
    pub trace: TraceMaps,
}

/// The tries of traced sources and the trace budget (`secgate trace`; not pinned).
pub struct TraceMaps {
    tries: Tries<u8>,
    budget: PerCpuArray<MapData, TraceBudget>,
}

impl TraceMaps {
    /// Makes the tries hold exactly `nets`.
    pub fn set(&mut self, nets: &std::collections::BTreeSet<IpNet>) -> Result<()> {
        for (net, _) in self.tries.list()? {
            if !nets.contains(&net) {
                self.tries.remove(net)?;
            }
        }
        for net in nets {
            self.tries.insert(*net, 1)?;
        }
        Ok(())
    }

    /// Trace lines the kernel held back to its budget, over every CPU.
    pub fn suppressed(&self) -> Result<u64> {
        let per_cpu = self.budget.get(&0, 0).map_err(wrap(names::TRACE_BUDGET))?;
        Ok(per_cpu.iter().map(|b| b.suppressed).sum())
    }
}

fn take(bpf: &mut Ebpf, name: &'static str) -> Result<Map> {
    bpf.take_map(name).ok_or(MapsError::Missing(name))
}

fn wrap(name: &'static str) -> impl Fn(MapError) -> MapsError {
    move |source| MapsError::Map { name, source }
}

fn convert<T: TryFrom<Map, Error = MapError>>(bpf: &mut Ebpf, name: &'static str) -> Result<T> {
    T::try_from(take(bpf, name)?).map_err(wrap(name))
}

/// A write failing with E2BIG/ENOMEM/ENOSPC means the map is at capacity.
fn is_full(err: &MapError) -> bool {
    matches!(err, MapError::SyscallError(e)
        if matches!(e.io_error.raw_os_error(), Some(libc::E2BIG | libc::ENOSPC | libc::ENOMEM)))
}

impl DatapathMaps {
    /// Takes the maps out of a loaded object (the program keeps its own references);
    /// `maps_dir` is where they are pinned, beside what earlier builds left there (none for
    /// maps that are not pinned).
    pub fn take(bpf: &mut Ebpf, maps_dir: Option<&std::path::Path>) -> Result<DatapathMaps> {
        let config: Array<MapData, DatapathConfig> = convert(bpf, names::CONFIG)?;
        let stored = config.get(&0, 0).map_err(wrap(names::CONFIG))?;
        let sources = SourceTable::take(bpf, &stored)?;
        Ok(DatapathMaps {
            config,
            limits: limits::Limits::take(bpf)?,
            allow: Tries {
                v4: convert(bpf, names::ALLOW_V4)?,
                v6: convert(bpf, names::ALLOW_V6)?,
                names: [names::ALLOW_V4, names::ALLOW_V6],
                capacity: names::MAX_ALLOW,
            },
            deny: DenyMaps::from_object(bpf, maps_dir)?,
            sources,
            stats: convert(bpf, names::STATS)?,
            trace: TraceMaps {
                tries: Tries {
                    v4: convert(bpf, names::TRACE_V4)?,
                    v6: convert(bpf, names::TRACE_V6)?,
                    names: [names::TRACE_V4, names::TRACE_V6],
                    capacity: names::MAX_TRACES,
                },
                budget: convert(bpf, names::TRACE_BUDGET)?,
            },
        })
    }

    pub fn config(&self) -> Result<DatapathConfig> {
        self.config.get(&0, 0).map_err(wrap(names::CONFIG))
    }

    /// Writes `cfg` with the limiter table's geometry, which only this layer knows.
    pub fn set_config(&mut self, cfg: &DatapathConfig) -> Result<()> {
        self.config.set(0, self.sources.configure(cfg), 0).map_err(wrap(names::CONFIG))
    }

    pub fn limits(&self) -> Result<Vec<(LimitKey, RateRule)>> {
        self.limits.list()
    }

    pub fn set_limit(&mut self, key: LimitKey, rule: RateRule) -> Result<()> {
        self.limits.set(key, rule)
    }

    pub fn remove_limit(&mut self, key: &LimitKey) -> Result<()> {
        self.limits.remove(key)
    }

    pub fn allow(&self) -> Result<Vec<(IpNet, AllowEntry)>> {
        self.allow.list()
    }

    pub fn set_allow(&mut self, net: IpNet) -> Result<()> {
        self.allow.insert(net, AllowEntry::default())
    }

    /// Removes an allow entry; `Ok(false)` if there was none.
    pub fn remove_allow(&mut self, net: IpNet) -> Result<bool> {
        self.allow.remove(net)
    }

    pub fn deny(&self) -> Result<Vec<(IpNet, DenyEntry)>> {
        self.deny.list()
    }

    pub fn set_deny(&mut self, net: IpNet, entry: DenyEntry) -> Result<()> {
        self.deny.insert(net, entry)
    }

    /// Removes a deny entry; `Ok(false)` if there was none.
    pub fn remove_deny(&mut self, net: IpNet) -> Result<bool> {
        self.deny.remove(net)
    }

    /// See [`DenyMaps::retire_legacy_hosts`].
    pub fn retire_legacy_hosts(&mut self) -> Result<usize> {
        self.deny.retire_legacy_hosts()
    }

    /// See [`DenyMaps::legacy_hosts_pending`].
    pub fn legacy_hosts_pending(&self) -> bool {
        self.deny.legacy_hosts_pending()
    }

    /// Applies the deny-map writes of a [`crate::bans::Bans`] change, in order.
    pub fn write_deny(&mut self, writes: &[Write]) -> Result<()> {
        for w in writes {
            match *w {
                Write::Set(net, entry) => self.set_deny(net, entry)?,
                Write::Remove(net) => {
                    self.remove_deny(net)?;
                }
            }
        }
        Ok(())
    }

    pub fn source(&self, key: &BucketKey) -> Result<Option<SourceState>> {
        self.sources.get(key)
    }

    /// Buckets the limiter table holds without evicting any.
    pub fn sources_capacity(&self) -> u32 {
        self.sources.capacity()
    }

    /// Empties the limiter table: for tests that drive the program themselves.
    #[cfg(any(test, feature = "test-util"))]
    pub fn clear_sources(&mut self) -> Result<()> {
        self.sources.clear()
    }

    /// `SG_STATS` summed over CPUs: indexed by `Reason as usize`, then `STATS_DROPPED`.
    pub fn stats(&self) -> Result<[Counter; names::STATS_SLOTS as usize]> {
        let mut out = [Counter::default(); names::STATS_SLOTS as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            let per_cpu = self.stats.get(&(i as u32), 0).map_err(wrap(names::STATS))?;
            for c in per_cpu.iter() {
                slot.packets += c.packets;
                slot.bytes += c.bytes;
            }
        }
        Ok(out)
    }
}

/// Read-only lookups in the allow tries and the deny maps, on handles of their own, so that the
/// gateway can judge a connection without the policy lock: a flood of connections must not
/// queue behind policy changes, nor they behind it.
pub struct SourceCheck {
    allow_v4: LpmTrie<MapData, [u8; 4], AllowEntry>,
    allow_v6: LpmTrie<MapData, [u8; 16], AllowEntry>,
    deny: DenyMaps,
}

/// A handle of its own on the deny maps, for the escalation's first write of a ban: made
/// without the policy lock, which a thread that an attack keeps off the CPU (the journal
/// copying the table, a sweep) may be holding. See `Service::deny_first`.
pub struct FirstDeny(DenyMaps);

impl FirstDeny {
    pub fn open(maps_dir: &std::path::Path) -> Result<FirstDeny> {
        Ok(FirstDeny(DenyMaps::from_pins(maps_dir)?))
    }

    pub fn insert(&mut self, net: IpNet, expires_ns: u64) -> Result<()> {
        self.0.insert(net, DenyEntry { expires_ns })
    }

    pub fn remove(&mut self, net: IpNet) -> Result<bool> {
        self.0.remove(net)
    }
}

/// What the datapath's tries say about a source, as the XDP program reads them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceVerdict {
    Allowed,
    Denied,
    Neither,
}

impl SourceCheck {
    /// Opens the maps pinned in `maps_dir`.
    pub fn open(maps_dir: &std::path::Path) -> Result<SourceCheck> {
        fn trie<K: aya::Pod, V: aya::Pod>(
            dir: &std::path::Path,
            name: &'static str,
        ) -> Result<LpmTrie<MapData, K, V>> {
            let data = MapData::from_pin(dir.join(name)).map_err(wrap(name))?;
            LpmTrie::try_from(Map::LpmTrie(data)).map_err(wrap(name))
        }
        Ok(SourceCheck {
            allow_v4: trie(maps_dir, names::ALLOW_V4)?,
            allow_v6: trie(maps_dir, names::ALLOW_V6)?,
            deny: DenyMaps::from_pins(maps_dir)?,
        })
    }

    /// The verdict for `ip` at monotonic time `now_ns`: allowed first, then an unexpired
    /// ban in force, in the XDP program's order and as it reads the deny maps.
    pub fn verdict(&self, ip: IpAddr, now_ns: u64) -> Result<SourceVerdict> {
        let allowed = match ip {
            IpAddr::V4(a) => {
                found(self.allow_v4.get(&Key::new(32, a.octets()), 0), names::ALLOW_V4)?
            }
            IpAddr::V6(a) => {
                found(self.allow_v6.get(&Key::new(128, a.octets()), 0), names::ALLOW_V6)?
            }
        };
        Ok(if allowed.is_some() {
            SourceVerdict::Allowed
        } else if self.deny.in_force(ip, now_ns)? {
            SourceVerdict::Denied
        } else {
            SourceVerdict::Neither
        })
    }
}

/// A lookup's value, `None` when there is none.
fn found<V>(r: std::result::Result<V, MapError>, name: &'static str) -> Result<Option<V>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(wrap(name)(e)),
    }
}

fn is_not_found(err: &MapError) -> bool {
    match err {
        MapError::KeyNotFound => true,
        MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

fn ignore_missing(r: std::result::Result<(), MapError>) -> std::result::Result<(), MapError> {
    match r {
        Err(e) if is_not_found(&e) => Ok(()),
        other => other,
    }
}

impl<V: aya::Pod> Tries<V> {
    fn insert(&mut self, net: IpNet, value: V) -> Result<()> {
        let (res, name) = match net.trunc() {
            IpNet::V4(n) => {
                let key = Key::new(u32::from(n.prefix_len()), n.addr().octets());
                (self.v4.insert(&key, value, 0), self.names[0])
            }
            IpNet::V6(n) => {
                let key = Key::new(u32::from(n.prefix_len()), n.addr().octets());
                (self.v6.insert(&key, value, 0), self.names[1])
            }
        };
        res.map_err(|e| {
            if is_full(&e) {
                MapsError::Full { name, capacity: self.capacity }
            } else {
                wrap(name)(e)
            }
        })
    }

    fn remove(&mut self, net: IpNet) -> Result<bool> {
        let (res, name) = match net.trunc() {
            IpNet::V4(n) => {
                let key = Key::new(u32::from(n.prefix_len()), n.addr().octets());
                (self.v4.remove(&key), self.names[0])
            }
            IpNet::V6(n) => {
                let key = Key::new(u32::from(n.prefix_len()), n.addr().octets());
                (self.v6.remove(&key), self.names[1])
            }
        };
        match res {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(wrap(name)(e)),
        }
    }

    fn list(&self) -> Result<Vec<(IpNet, V)>> {
        let mut out = Vec::new();
        for item in self.v4.iter() {
            let (k, v) = item.map_err(wrap(self.names[0]))?;
            let net = IpNet::new(IpAddr::from(k.data()), k.prefix_len() as u8);
            out.extend(net.ok().map(|n| (n, v)));
        }
        for item in self.v6.iter() {
            let (k, v) = item.map_err(wrap(self.names[1]))?;
            let net = IpNet::new(IpAddr::from(k.data()), k.prefix_len() as u8);
            out.extend(net.ok().map(|n| (n, v)));
        }
        Ok(out)
    }
}
