//! Host bans where earlier builds kept them: in the deny tries (before host maps existed) and
//! in the hash maps `SG_DENY_HOSTS_V4`/`_V6` (before the host tables). A daemon of this build
//! moves them into the host tables at start. Until its program is on every interface, an
//! earlier build's may still be attached somewhere, reading only its own maps; so every host
//! ban is written there as well until then, and only then are the old copies removed.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use aya::maps::{Array, HashMap, Map, MapData};
use ipnet::IpNet;
use secgate_common::{
    hosts::{host_key_v6, host_v6_prefix},
    maps::{DenyEntry, HOSTS_V6},
};

use super::{
    Result, Tries,
    deny::{host_net, is_host},
    is_not_found, wrap,
};

/// Pin names of the previous build's host maps and of its "map is empty" flags.
const OLD_HOSTS_V4: &str = "SG_DENY_HOSTS_V4";
const OLD_HOSTS_V6: &str = "SG_DENY_HOSTS_V6";
const OLD_EMPTY: &str = "SG_DENY_HOSTS_EMPTY";

/// Where host bans are written besides the host tables.
#[derive(Default)]
pub(super) struct Legacy {
    /// The deny tries held host bans.
    in_tries: bool,
    hashes: Option<Hashes>,
    /// Some old ban found no room in the host tables: the old copies stay, so it is not
    /// lost, and the next start tries again.
    kept: bool,
}

/// The previous build's host hash maps, open on their pins; each may be missing alone (a
/// daemon killed while removing the pins).
struct Hashes {
    v4: Option<HashMap<MapData, [u8; 4], DenyEntry>>,
    v6: Option<HashMap<MapData, [u8; 8], DenyEntry>>,
    dir: PathBuf,
}

impl Legacy {
    /// What earlier builds left in `nets` and pinned in `maps_dir`, and the host bans found
    /// there: one ban per host, the one that outlasts where both stores held it.
    pub(super) fn find(
        nets: &Tries<DenyEntry>,
        maps_dir: Option<&Path>,
    ) -> Result<(Legacy, BTreeMap<IpNet, DenyEntry>)> {
        let mut found: Vec<_> = nets.list()?.into_iter().filter(|(n, _)| is_host(*n)).collect();
        let in_tries = !found.is_empty();
        let hashes = maps_dir.map(Hashes::open).transpose()?.flatten();
        if let Some(h) = &hashes {
            found.extend(h.list()?);
        }
        let mut hosts = BTreeMap::new();
        for (net, entry) in found {
            let kept = hosts.get(&net).map_or(entry, |e: &DenyEntry| e.outlasting(entry));
            hosts.insert(net, kept);
        }
        Ok((Legacy { in_tries, hashes, kept: false }, hosts))
    }

    /// Keeps every old copy past [`Legacy::retire`]: a ban in them was not moved.
    pub(super) fn keep(&mut self) {
        self.kept = true;
    }

    /// Whether [`Legacy::retire`] has anything to remove.
    pub(super) fn pending(&self) -> bool {
        !self.kept && (self.in_tries || self.hashes.is_some())
    }

    pub(super) fn insert(
        &mut self,
        nets: &mut Tries<DenyEntry>,
        net: IpNet,
        entry: DenyEntry,
    ) -> Result<()> {
        if self.in_tries {
            nets.insert(net, entry)?;
        }
        if let Some(h) = &mut self.hashes {
            h.insert(net, entry)?;
        }
        Ok(())
    }

    /// Removes the copies of the ban on host `net`; whether there was one.
    pub(super) fn remove(&mut self, nets: &mut Tries<DenyEntry>, net: IpNet) -> Result<bool> {
        let in_trie = self.in_tries && nets.remove(net)?;
        let in_hash = match &mut self.hashes {
            Some(h) => h.remove(net)?,
            None => false,
        };
        Ok(in_trie || in_hash)
    }

    /// Removes every old copy, unless told to keep them; returns how many host bans they
    /// held.
    pub(super) fn retire(&mut self, nets: &mut Tries<DenyEntry>) -> Result<usize> {
        if self.kept {
            return Ok(0);
        }
        let mut moved = 0;
        if self.in_tries {
            let hosts: Vec<_> = nets.list()?.into_iter().filter(|(n, _)| is_host(*n)).collect();
            for (net, _) in &hosts {
                nets.remove(*net)?;
            }
            moved += hosts.len();
            self.in_tries = false;
        }
        if let Some(h) = self.hashes.take() {
            moved += h.list()?.len();
            h.unpin()?;
        }
        Ok(moved)
    }
}

impl Hashes {
    /// The previous build's host maps, if pinned in `dir`. Their "empty" flags are cleared,
    /// so its program looks up the hosts written to them from now on.
    fn open(dir: &Path) -> Result<Option<Hashes>> {
        let pinned = |name: &str| dir.join(name).exists();
        if ![OLD_HOSTS_V4, OLD_HOSTS_V6, OLD_EMPTY].into_iter().any(pinned) {
            return Ok(None);
        }
        let pin = |name: &'static str| MapData::from_pin(dir.join(name)).map_err(wrap(name));
        let hashes = Hashes {
            v4: hash(dir, OLD_HOSTS_V4)?,
            v6: hash(dir, OLD_HOSTS_V6)?,
            dir: dir.to_owned(),
        };
        if pinned(OLD_EMPTY) {
            let mut empty: Array<MapData, u32> =
                Array::try_from(Map::Array(pin(OLD_EMPTY)?)).map_err(wrap(OLD_EMPTY))?;
            for family in 0..2 {
                empty.set(family, 0, 0).map_err(wrap(OLD_EMPTY))?;
            }
        }
        Ok(Some(hashes))
    }

    fn list(&self) -> Result<Vec<(IpNet, DenyEntry)>> {
        let mut out = Vec::new();
        for item in self.v4.iter().flat_map(|m| m.iter()) {
            let (k, v) = item.map_err(wrap(OLD_HOSTS_V4))?;
            out.push((IpNet::from(std::net::IpAddr::from(k)), v));
        }
        for item in self.v6.iter().flat_map(|m| m.iter()) {
            let (k, v) = item.map_err(wrap(OLD_HOSTS_V6))?;
            out.push((host_net(HOSTS_V6, u64::from_ne_bytes(k)), v));
        }
        Ok(out)
    }

    fn insert(&mut self, net: IpNet, entry: DenyEntry) -> Result<()> {
        match (net, &mut self.v4, &mut self.v6) {
            (IpNet::V4(n), Some(m), _) => {
                m.insert(n.addr().octets(), entry, 0).map_err(wrap(OLD_HOSTS_V4))
            }
            (IpNet::V6(n), _, Some(m)) => {
                m.insert(v6_key(&n), entry, 0).map_err(wrap(OLD_HOSTS_V6))
            }
            _ => Ok(()),
        }
    }

    fn remove(&mut self, net: IpNet) -> Result<bool> {
        let (res, name) = match (net, &mut self.v4, &mut self.v6) {
            (IpNet::V4(n), Some(m), _) => (m.remove(&n.addr().octets()), OLD_HOSTS_V4),
            (IpNet::V6(n), _, Some(m)) => (m.remove(&v6_key(&n)), OLD_HOSTS_V6),
            _ => return Ok(false),
        };
        match res {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(wrap(name)(e)),
        }
    }

    /// Removes the pins; the maps go once no program holds them.
    fn unpin(self) -> Result<()> {
        for name in [OLD_HOSTS_V4, OLD_HOSTS_V6, OLD_EMPTY] {
            let path = self.dir.join(name);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(super::MapsError::Unpin { path, source }),
            }
        }
        Ok(())
    }
}

/// The old hash map pinned in `dir` as `name`, if it is.
fn hash<K: aya::Pod>(
    dir: &Path,
    name: &'static str,
) -> Result<Option<HashMap<MapData, K, DenyEntry>>> {
    let path = dir.join(name);
    if !path.exists() {
        return Ok(None);
    }
    let data = MapData::from_pin(path).map_err(wrap(name))?;
    Ok(Some(HashMap::try_from(Map::HashMap(data)).map_err(wrap(name))?))
}

/// The old v6 map's key: the bytes of the host tables' key.
fn v6_key(net: &ipnet::Ipv6Net) -> [u8; 8] {
    host_v6_prefix(host_key_v6(&net.addr().octets()))
}
