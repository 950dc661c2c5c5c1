//! Host bans where earlier builds kept them: in the deny tries (before host maps existed) and
//! in the hash maps `SG_DENY_HOSTS_V4`/`_V6` (before the host tables). A daemon of this build
//! moves them into the host tables at start. Until its program is on every interface, an
//! earlier build's may still be attached somewhere, reading only its own maps; so every host
//! ban is written there as well until then, and only then are the old copies removed.

use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, Map, MapData};
use ipnet::IpNet;
use secgate_common::maps::{DenyEntry, HOST_V6_PREFIX};

use super::{Result, Tries, deny::is_host, is_not_found, wrap};

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
}

/// The previous build's host hash maps, open on their pins.
struct Hashes {
    v4: HashMap<MapData, [u8; 4], DenyEntry>,
    v6: HashMap<MapData, [u8; 8], DenyEntry>,
    dir: PathBuf,
}

impl Legacy {
    /// What earlier builds left in `nets` and pinned in `maps_dir`, and the host bans found
    /// there.
    pub(super) fn find(
        nets: &Tries<DenyEntry>,
        maps_dir: Option<&Path>,
    ) -> Result<(Legacy, Vec<(IpNet, DenyEntry)>)> {
        let mut hosts: Vec<_> = nets.list()?.into_iter().filter(|(n, _)| is_host(*n)).collect();
        let in_tries = !hosts.is_empty();
        let hashes = maps_dir.map(Hashes::open).transpose()?.flatten();
        if let Some(h) = &hashes {
            hosts.extend(h.list()?);
        }
        Ok((Legacy { in_tries, hashes }, hosts))
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

    /// Removes every old copy; returns how many host bans they held.
    pub(super) fn retire(&mut self, nets: &mut Tries<DenyEntry>) -> Result<usize> {
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
        if !dir.join(OLD_HOSTS_V4).exists() || !dir.join(OLD_HOSTS_V6).exists() {
            return Ok(None);
        }
        let pin = |name: &'static str| MapData::from_pin(dir.join(name)).map_err(wrap(name));
        let hashes = Hashes {
            v4: HashMap::try_from(Map::HashMap(pin(OLD_HOSTS_V4)?)).map_err(wrap(OLD_HOSTS_V4))?,
            v6: HashMap::try_from(Map::HashMap(pin(OLD_HOSTS_V6)?)).map_err(wrap(OLD_HOSTS_V6))?,
            dir: dir.to_owned(),
        };
        if dir.join(OLD_EMPTY).exists() {
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
        for item in self.v4.iter() {
            let (k, v) = item.map_err(wrap(OLD_HOSTS_V4))?;
            out.push((IpNet::from(std::net::IpAddr::from(k)), v));
        }
        for item in self.v6.iter() {
            let (k, v) = item.map_err(wrap(OLD_HOSTS_V6))?;
            let mut addr = [0u8; 16];
            addr[..8].copy_from_slice(&k);
            let net = IpNet::new(std::net::IpAddr::from(addr), HOST_V6_PREFIX)
                .expect("the host prefix is a valid length");
            out.push((net, v));
        }
        Ok(out)
    }

    fn insert(&mut self, net: IpNet, entry: DenyEntry) -> Result<()> {
        match net {
            IpNet::V4(n) => self.v4.insert(n.addr().octets(), entry, 0).map_err(wrap(OLD_HOSTS_V4)),
            IpNet::V6(n) => self.v6.insert(v6_key(&n), entry, 0).map_err(wrap(OLD_HOSTS_V6)),
        }
    }

    fn remove(&mut self, net: IpNet) -> Result<bool> {
        let (res, name) = match net {
            IpNet::V4(n) => (self.v4.remove(&n.addr().octets()), OLD_HOSTS_V4),
            IpNet::V6(n) => (self.v6.remove(&v6_key(&n)), OLD_HOSTS_V6),
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

fn v6_key(net: &ipnet::Ipv6Net) -> [u8; 8] {
    let a = net.addr().octets();
    [a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]
}
