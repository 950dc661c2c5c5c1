//! The denylist as the XDP program reads it: single hosts (IPv4 /32, IPv6
//! /[`HOST_V6_PREFIX`]) in hash maps, every other prefix in the LPM tries. Escalation bans
//! sources one by one, so under a botnet nearly every entry is a host; a hashed lookup costs
//! the same however many there are, where a trie walk over that many nodes misses the cache
//! at every level.

use std::net::IpAddr;

use aya::maps::{Array, HashMap, Map, MapData, lpm_trie::Key};
use ipnet::IpNet;
use secgate_common::maps::{self as names, DenyEntry, HOST_V6_PREFIX, HostV6Key, host_v6_key};

use super::{Result, Tries, found, is_not_found, take, wrap};

/// Handles on the four deny maps.
pub struct DenyMaps {
    nets: Tries<DenyEntry>,
    hosts_v4: HashMap<MapData, [u8; 4], DenyEntry>,
    hosts_v6: HashMap<MapData, HostV6Key, DenyEntry>,
    /// `SG_DENY_HOSTS_EMPTY`: lets the program skip a host map while it is empty.
    empty: Array<MapData, u32>,
    /// An earlier build left host bans in the tries, and its program may still be attached
    /// (it reads only the tries) until this build's replaces it: until then every host write
    /// goes to the trie as well. See [`DenyMaps::retire_trie_hosts`].
    twins: bool,
}

/// Where a ban on one prefix lives.
enum Slot {
    HostV4([u8; 4]),
    HostV6(HostV6Key),
    Net(IpNet),
}

fn slot(net: IpNet) -> Slot {
    match net.trunc() {
        IpNet::V4(n) if n.prefix_len() == 32 => Slot::HostV4(n.addr().octets()),
        IpNet::V6(n) if n.prefix_len() == HOST_V6_PREFIX => {
            Slot::HostV6(host_v6_key(&n.addr().octets()))
        }
        other => Slot::Net(other),
    }
}

fn is_errno(err: &aya::maps::MapError, errno: i32) -> bool {
    matches!(err, aya::maps::MapError::SyscallError(e) if e.io_error.raw_os_error() == Some(errno))
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
        (Slot::HostV4(_), _) => (0, names::DENY_HOSTS_V4, names::MAX_DENY_HOSTS),
        (Slot::HostV6(_), _) => (1, names::DENY_HOSTS_V6, names::MAX_DENY_HOSTS),
        (Slot::Net(_), IpNet::V4(_)) => (2, names::DENY_V4, names::MAX_DENY),
        (Slot::Net(_), IpNet::V6(_)) => (3, names::DENY_V6, names::MAX_DENY),
    };
    Holder { index, name, capacity }
}

fn host_v6_net(key: &HostV6Key) -> IpNet {
    let mut addr = [0u8; 16];
    addr[..key.len()].copy_from_slice(key);
    IpNet::new(IpAddr::from(addr), HOST_V6_PREFIX).expect("the host prefix is a valid length")
}

/// Turns a pinned map's data into the kind of map `name` is.
type Kind = fn(MapData) -> Map;

impl DenyMaps {
    /// Takes the deny maps out of a loaded object, copying host bans that an earlier build
    /// kept in the tries into the hash maps (this build's program reads those first).
    pub(super) fn from_object(bpf: &mut aya::Ebpf) -> Result<DenyMaps> {
        let mut maps = DenyMaps::build(|name, _| take(bpf, name))?;
        maps.copy_hosts_out_of_the_tries()?;
        // Whatever a daemon killed between the two writes of `mark_if_empty` left: this one
        // holds the pin lock, and no other handle is open yet.
        for hosts in [names::HOSTS_V4, names::HOSTS_V6] {
            let empty = !maps.any_host(hosts)?;
            maps.set_empty(hosts, empty)?;
        }
        Ok(maps)
    }

    /// Opens the deny maps pinned in `dir`.
    pub(super) fn from_pins(dir: &std::path::Path) -> Result<DenyMaps> {
        DenyMaps::build(|name, kind| {
            Ok(kind(MapData::from_pin(dir.join(name)).map_err(wrap(name))?))
        })
    }

    fn build(mut get: impl FnMut(&'static str, Kind) -> Result<Map>) -> Result<DenyMaps> {
        use aya::maps::LpmTrie;
        let (v4, v6) = (names::DENY_V4, names::DENY_V6);
        let (h4, h6) = (names::DENY_HOSTS_V4, names::DENY_HOSTS_V6);
        let empty = names::DENY_HOSTS_EMPTY;
        Ok(DenyMaps {
            nets: Tries {
                v4: LpmTrie::try_from(get(v4, Map::LpmTrie)?).map_err(wrap(v4))?,
                v6: LpmTrie::try_from(get(v6, Map::LpmTrie)?).map_err(wrap(v6))?,
                names: [v4, v6],
                capacity: names::MAX_DENY,
            },
            hosts_v4: HashMap::try_from(get(h4, Map::HashMap)?).map_err(wrap(h4))?,
            hosts_v6: HashMap::try_from(get(h6, Map::HashMap)?).map_err(wrap(h6))?,
            empty: Array::try_from(get(empty, Map::Array)?).map_err(wrap(empty))?,
            twins: false,
        })
    }

    fn trie_hosts(&self) -> Result<Vec<(IpNet, DenyEntry)>> {
        Ok(self
            .nets
            .list()?
            .into_iter()
            .filter(|(n, _)| !matches!(slot(*n), Slot::Net(_)))
            .collect())
    }

    fn copy_hosts_out_of_the_tries(&mut self) -> Result<()> {
        let hosts = self.trie_hosts()?;
        self.twins = !hosts.is_empty();
        for (net, entry) in hosts {
            self.insert(net, entry)?;
        }
        Ok(())
    }

    /// Once this build's program is on every interface, removes the host bans an earlier
    /// build left in the tries; returns how many.
    pub fn retire_trie_hosts(&mut self) -> Result<usize> {
        if !self.twins {
            return Ok(0);
        }
        let hosts = self.trie_hosts()?;
        for (net, _) in &hosts {
            self.nets.remove(*net)?;
        }
        self.twins = false;
        Ok(hosts.len())
    }

    pub fn insert(&mut self, net: IpNet, entry: DenyEntry) -> Result<()> {
        let (res, name, hosts) = match slot(net) {
            Slot::HostV4(k) => {
                (self.hosts_v4.insert(k, entry, 0), names::DENY_HOSTS_V4, names::HOSTS_V4)
            }
            Slot::HostV6(k) => {
                (self.hosts_v6.insert(k, entry, 0), names::DENY_HOSTS_V6, names::HOSTS_V6)
            }
            Slot::Net(net) => return self.nets.insert(net, entry),
        };
        res.map_err(|e| {
            // Not ENOMEM, unlike `is_full`: these maps allocate each element as it is banned,
            // so ENOMEM means the kernel is short of memory, whatever the map holds.
            if is_errno(&e, libc::E2BIG) {
                super::MapsError::Full { name, capacity: names::MAX_DENY_HOSTS }
            } else {
                wrap(name)(e)
            }
        })?;
        if self.twins {
            self.nets.insert(net, entry)?;
        }
        // After the entry: a program that sees "not empty" finds it.
        self.set_empty(hosts, false)
    }

    fn set_empty(&mut self, hosts: u32, empty: bool) -> Result<()> {
        self.empty.set(hosts, u32::from(empty), 0).map_err(wrap(names::DENY_HOSTS_EMPTY))
    }

    /// Lets the program skip the `hosts` map if it is empty: marks it empty first, then
    /// looks, so a host another handle (`FirstDeny`) inserts meanwhile is either seen here or
    /// marks the map non-empty itself after this. A map that still has hosts is left as its
    /// writers marked it.
    fn mark_if_empty(&mut self, hosts: u32) -> Result<()> {
        if self.any_host(hosts)? {
            return Ok(());
        }
        self.set_empty(hosts, true)?;
        if self.any_host(hosts)? {
            self.set_empty(hosts, false)?;
        }
        Ok(())
    }

    fn any_host(&self, hosts: u32) -> Result<bool> {
        let (first, name) = if hosts == names::HOSTS_V4 {
            (self.hosts_v4.keys().next().map(|k| k.map(drop)), names::DENY_HOSTS_V4)
        } else {
            (self.hosts_v6.keys().next().map(|k| k.map(drop)), names::DENY_HOSTS_V6)
        };
        first.transpose().map(|k| k.is_some()).map_err(wrap(name))
    }

    /// Removes the ban on exactly `net`; `Ok(false)` if there was none.
    pub fn remove(&mut self, net: IpNet) -> Result<bool> {
        let (res, name, hosts) = match slot(net) {
            Slot::HostV4(k) => (self.hosts_v4.remove(&k), names::DENY_HOSTS_V4, names::HOSTS_V4),
            Slot::HostV6(k) => (self.hosts_v6.remove(&k), names::DENY_HOSTS_V6, names::HOSTS_V6),
            Slot::Net(net) => return self.nets.remove(net),
        };
        let twin = self.twins && self.nets.remove(net)?;
        match res {
            Ok(()) => {
                self.mark_if_empty(hosts)?;
                Ok(true)
            }
            Err(e) if is_not_found(&e) => Ok(twin),
            Err(e) => Err(wrap(name)(e)),
        }
    }

    /// Every entry, hosts and prefixes.
    pub fn list(&self) -> Result<Vec<(IpNet, DenyEntry)>> {
        let mut out = self.nets.list()?;
        for item in self.hosts_v4.iter() {
            let (k, v) = item.map_err(wrap(names::DENY_HOSTS_V4))?;
            out.push((IpNet::from(IpAddr::from(k)), v));
        }
        for item in self.hosts_v6.iter() {
            let (k, v) = item.map_err(wrap(names::DENY_HOSTS_V6))?;
            out.push((host_v6_net(&k), v));
        }
        Ok(out)
    }

    /// Whether `ip` is banned at monotonic time `now_ns`, read as the XDP program reads it:
    /// its host entry if that is in force, else the longest prefix covering it.
    pub fn in_force(&self, ip: IpAddr, now_ns: u64) -> Result<bool> {
        let (host, net) = match ip {
            IpAddr::V4(a) => (
                found(self.hosts_v4.get(&a.octets(), 0), names::DENY_HOSTS_V4)?,
                Lookup::V4(Key::new(32, a.octets())),
            ),
            IpAddr::V6(a) => (
                found(self.hosts_v6.get(&host_v6_key(&a.octets()), 0), names::DENY_HOSTS_V6)?,
                Lookup::V6(Key::new(128, a.octets())),
            ),
        };
        if host.is_some_and(|e| e.active(now_ns)) {
            return Ok(true);
        }
        let net = match net {
            Lookup::V4(key) => found(self.nets.v4.get(&key, 0), names::DENY_V4)?,
            Lookup::V6(key) => found(self.nets.v6.get(&key, 0), names::DENY_V6)?,
        };
        Ok(net.is_some_and(|e| e.active(now_ns)))
    }
}

enum Lookup {
    V4(Key<[u8; 4]>),
    V6(Key<[u8; 16]>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_go_to_the_hash_maps_and_everything_else_to_the_tries() {
        let host = |s: &str| !matches!(slot(s.parse().unwrap()), Slot::Net(_));
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
        assert_eq!(all[0].name, names::DENY_HOSTS_V4);
        assert_eq!(all[1].name, names::DENY_HOSTS_V6);
        assert_eq!((all[2].name, all[2].capacity), (names::DENY_V4, names::MAX_DENY));
        assert_eq!((all[3].name, all[0].capacity), (names::DENY_V6, names::MAX_DENY_HOSTS));
    }

    #[test]
    fn a_v6_host_key_names_its_own_prefix() {
        let net: IpNet = "fd00:1:2:3::/64".parse().unwrap();
        let Slot::HostV6(key) = slot(net) else { panic!("a host") };
        assert_eq!(host_v6_net(&key), net);
    }
}
