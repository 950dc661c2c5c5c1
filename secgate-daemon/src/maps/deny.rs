//! The denylist as the XDP program reads it: single hosts (IPv4 /32, IPv6
//! /[`HOST_V6_PREFIX`]) in the host tables ([`super::hosts`]), every other prefix in the LPM
//! tries. Escalation bans sources one by one, so under a botnet nearly every entry is a host;
//! a host lookup costs the same however many there are, where a trie walk over that many
//! nodes misses the cache at every level.

use std::{net::IpAddr, path::Path};

use aya::maps::{Array, Map, MapData, lpm_trie::Key};
use ipnet::IpNet;
use secgate_common::{
    hosts::{host_key_v4, host_key_v6, host_v6_prefix},
    maps::{self as names, DenyEntry, HOST_V6_PREFIX, HOSTS_V4, HOSTS_V6},
};

use super::{Result, Tries, found, hosts::HostTables, legacy::Legacy, take, wrap};

/// Handles on the deny tries and host tables.
pub struct DenyMaps {
    nets: Tries<DenyEntry>,
    hosts: HostTables,
    /// Where earlier builds kept host bans, written as well until this build's program is on
    /// every interface. See [`DenyMaps::retire_legacy_hosts`].
    legacy: Legacy,
}

/// Where a ban on one prefix lives.
enum Slot {
    /// `SG_HOST_INFO` index of the family and the host's key.
    Host(u32, u64),
    Net(IpNet),
}

fn slot(net: IpNet) -> Slot {
    match net.trunc() {
        IpNet::V4(n) if n.prefix_len() == 32 => {
            Slot::Host(HOSTS_V4, host_key_v4(n.addr().octets()))
        }
        IpNet::V6(n) if n.prefix_len() == HOST_V6_PREFIX => {
            Slot::Host(HOSTS_V6, host_key_v6(&n.addr().octets()))
        }
        other => Slot::Net(other),
    }
}

/// How many deny maps there are.
pub const DENY_MAPS: usize = 4;

/// The deny map a ban on a prefix goes into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Holder {
    /// Below [`DENY_MAPS`], one per map.
    pub index: usize,
    pub name: &'static str,
    pub capacity: u32,
}

/// The map that holds a ban on `net`.
pub fn holder(net: &IpNet) -> Holder {
    let (index, name, capacity) = match (slot(*net), net) {
        (Slot::Host(HOSTS_V4, _), _) => (0, names::HOST_BANS_V4, names::MAX_DENY_HOSTS),
        (Slot::Host(_, _), _) => (1, names::HOST_BANS_V6, names::MAX_DENY_HOSTS),
        (Slot::Net(_), IpNet::V4(_)) => (2, names::DENY_V4, names::MAX_DENY),
        (Slot::Net(_), IpNet::V6(_)) => (3, names::DENY_V6, names::MAX_DENY),
    };
    Holder { index, name, capacity }
}

/// The prefix a host key of `family` stands for.
pub(super) fn host_net(family: u32, key: u64) -> IpNet {
    if family == HOSTS_V4 {
        let b = key.to_ne_bytes();
        return IpNet::from(IpAddr::from([b[0], b[1], b[2], b[3]]));
    }
    let mut addr = [0u8; 16];
    addr[..8].copy_from_slice(&host_v6_prefix(key));
    IpNet::new(IpAddr::from(addr), HOST_V6_PREFIX).expect("the host prefix is a valid length")
}

impl DenyMaps {
    /// Takes the deny maps out of a loaded object and readies the host tables, moving into
    /// them the host bans earlier builds left pinned in `maps_dir` elsewhere.
    pub(super) fn from_object(bpf: &mut aya::Ebpf, maps_dir: Option<&Path>) -> Result<DenyMaps> {
        let array = |bpf: &mut aya::Ebpf, name: &'static str| match take(bpf, name)? {
            Map::Array(data) => Ok(data),
            _ => Err(super::MapsError::Missing(name)),
        };
        let (v4, v6) = (array(bpf, names::HOST_BANS_V4)?, array(bpf, names::HOST_BANS_V6)?);
        let mut info =
            Array::try_from(take(bpf, names::HOST_INFO)?).map_err(wrap(names::HOST_INFO))?;
        HostTables::init(&v4, &v6, &mut info)?;
        let mut maps = DenyMaps {
            nets: Tries::deny(|name| take(bpf, name))?,
            hosts: HostTables::open(&v4, &v6, info)?,
            legacy: Legacy::default(),
        };
        let (mut legacy, hosts) = Legacy::find(&maps.nets, maps_dir)?;
        let mut unmoved = 0;
        for (net, entry) in hosts {
            if let Err(e) = maps.insert(net, entry) {
                tracing::warn!(%net, error = %e, "an earlier build's host ban was not moved");
                unmoved += 1;
            }
        }
        if unmoved > 0 {
            tracing::warn!(
                unmoved,
                "host bans stay in the earlier build's maps too; the next start moves them"
            );
            legacy.keep();
        }
        maps.legacy = legacy;
        Ok(maps)
    }

    /// Opens the deny maps pinned in `dir`, once a daemon's [`DenyMaps::from_object`] has
    /// readied them.
    pub(super) fn from_pins(dir: &Path) -> Result<DenyMaps> {
        let pin = |name: &'static str| MapData::from_pin(dir.join(name)).map_err(wrap(name));
        let info =
            Array::try_from(Map::Array(pin(names::HOST_INFO)?)).map_err(wrap(names::HOST_INFO))?;
        Ok(DenyMaps {
            nets: Tries::deny(|name| Ok(Map::LpmTrie(pin(name)?)))?,
            hosts: HostTables::open(&pin(names::HOST_BANS_V4)?, &pin(names::HOST_BANS_V6)?, info)?,
            legacy: Legacy::default(),
        })
    }

    /// Once this build's program is on every interface, removes the host bans earlier builds
    /// kept elsewhere; returns how many.
    pub fn retire_legacy_hosts(&mut self) -> Result<usize> {
        self.legacy.retire(&mut self.nets)
    }

    /// Whether [`DenyMaps::retire_legacy_hosts`] has anything to remove.
    pub fn legacy_hosts_pending(&self) -> bool {
        self.legacy.pending()
    }

    pub fn insert(&mut self, net: IpNet, entry: DenyEntry) -> Result<()> {
        match slot(net) {
            Slot::Host(family, key) => self.hosts.insert(family, key, entry)?,
            Slot::Net(net) => return self.nets.insert(net, entry),
        }
        self.legacy.insert(&mut self.nets, net, entry)
    }

    /// Removes the ban on exactly `net`; `Ok(false)` if there was none.
    pub fn remove(&mut self, net: IpNet) -> Result<bool> {
        match slot(net) {
            Slot::Host(family, key) => {
                let removed = self.hosts.remove(family, key)?;
                Ok(self.legacy.remove(&mut self.nets, net)? || removed)
            }
            Slot::Net(net) => self.nets.remove(net),
        }
    }

    /// Every entry, hosts and prefixes.
    pub fn list(&self) -> Result<Vec<(IpNet, DenyEntry)>> {
        let mut out = self.nets.list()?;
        for family in [HOSTS_V4, HOSTS_V6] {
            let hosts = self.hosts.entries(family);
            out.extend(hosts.into_iter().map(|(key, entry)| (host_net(family, key), entry)));
        }
        Ok(out)
    }

    /// Whether `ip` is banned at monotonic time `now_ns`, read as the XDP program reads it:
    /// its host entry if that is in force, else the longest prefix covering it.
    pub fn in_force(&self, ip: IpAddr, now_ns: u64) -> Result<bool> {
        let host = match ip {
            IpAddr::V4(a) => self.hosts.get(HOSTS_V4, host_key_v4(a.octets())),
            IpAddr::V6(a) => self.hosts.get(HOSTS_V6, host_key_v6(&a.octets())),
        };
        if host.is_some_and(|e| e.active(now_ns)) {
            return Ok(true);
        }
        let net = match ip {
            IpAddr::V4(a) => found(self.nets.v4.get(&Key::new(32, a.octets()), 0), names::DENY_V4)?,
            IpAddr::V6(a) => {
                found(self.nets.v6.get(&Key::new(128, a.octets()), 0), names::DENY_V6)?
            }
        };
        Ok(net.is_some_and(|e| e.active(now_ns)))
    }
}

/// Whether `net` is a single host, which the host tables hold.
pub(super) fn is_host(net: IpNet) -> bool {
    matches!(slot(net), Slot::Host(..))
}

fn convert_trie<K: aya::Pod>(
    map: Map,
    name: &'static str,
) -> Result<aya::maps::LpmTrie<MapData, K, DenyEntry>> {
    aya::maps::LpmTrie::try_from(map).map_err(wrap(name))
}

impl Tries<DenyEntry> {
    fn deny(mut get: impl FnMut(&'static str) -> Result<Map>) -> Result<Tries<DenyEntry>> {
        let (v4, v6) = (names::DENY_V4, names::DENY_V6);
        Ok(Tries {
            v4: convert_trie(get(v4)?, v4)?,
            v6: convert_trie(get(v6)?, v6)?,
            names: [v4, v6],
            capacity: names::MAX_DENY,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_go_to_the_host_tables_and_everything_else_to_the_tries() {
        let host = |s: &str| is_host(s.parse().unwrap());
        assert!(host("198.18.0.1/32"));
        assert!(host("fd00:1:2:3::/64"));
        assert!(!host("198.18.0.0/31"));
        assert!(!host("fd00:1:2:3::1/128"));
        assert!(!host("fd00:1:2::/48"));
    }

    #[test]
    fn each_map_has_its_own_index_name_and_room() {
        let h = |s: &str| holder(&s.parse().unwrap());
        let all = [h("198.18.0.1/32"), h("fd00:1::/64"), h("198.18.0.0/24"), h("fd00::/48")];
        let index: Vec<usize> = all.iter().map(|h| h.index).collect();
        assert_eq!(index, [0, 1, 2, 3]);
        assert_eq!(all[0].name, names::HOST_BANS_V4);
        assert_eq!(all[1].name, names::HOST_BANS_V6);
        assert_eq!((all[2].name, all[2].capacity), (names::DENY_V4, names::MAX_DENY));
        assert_eq!((all[3].name, all[3].capacity), (names::DENY_V6, names::MAX_DENY));
        assert_eq!((all[1].name, all[1].capacity), (names::HOST_BANS_V6, names::MAX_DENY_HOSTS));
    }

    #[test]
    fn a_host_key_names_its_own_prefix() {
        for net in ["fd00:1:2:3::/64", "198.18.7.9/32"] {
            let net: IpNet = net.parse().unwrap();
            let Slot::Host(family, key) = slot(net) else { panic!("a host") };
            assert_eq!(host_net(family, key), net);
        }
    }
}
