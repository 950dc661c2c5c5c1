//! The pin directory: a bpffs (mounted if the standard one is missing), the layout check of
//! pinned maps, and removing every pin for `secgate detach`.

use std::path::{Path, PathBuf};

use secgate_common::maps as names;
use tracing::{info, warn};

use super::{DatapathError, Result, io_err};
use crate::lock::InstanceLock;

const BPF_FS_MAGIC: i64 = 0xcafe4a11;
const DEFAULT_BPFFS: &str = "/sys/fs/bpf";

pub fn maps_dir(pin_path: &Path) -> PathBuf {
    pin_path.join("maps")
}

pub fn links_dir(pin_path: &Path) -> PathBuf {
    pin_path.join("links")
}

/// Makes sure `pin_path` lives on a bpffs (mounting the standard one if it is missing) and
/// that its directories exist, are root's and closed to other users. Touches no pin.
pub fn prepare(pin_path: &Path) -> Result<()> {
    ensure_bpffs(pin_path)?;
    for dir in [maps_dir(pin_path), links_dir(pin_path)] {
        crate::lock::private_dir(&dir)?;
    }
    Ok(())
}

/// What an earlier run left pinned, once [`check`] has removed what it replaces.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pinned {
    /// Some map is pinned already, and may hold entries of an earlier run.
    pub any: bool,
    /// The config map is among them (not replaced), holding the mode and default limit that
    /// run left.
    pub config: bool,
}

/// Refuses pinned maps whose layout differs from this build's, except those it can rebuild
/// ([`crate::maps::replaceable`]), whose pins it removes so that new ones are made: the
/// config of another build, a limiter table of another build or of a size other than
/// `max_sources` needs (so a changed `max_sources` applies at the restart; every source
/// starts a fresh bucket), and counters of another layout. Replaced counters take the
/// limiter table with them: the sources `status` reports are counted from the buckets made,
/// which fresh counters would put at 0 beside a table still full.
pub fn check(pin_path: &Path, max_sources: u32) -> Result<Pinned> {
    let sets = secgate_common::sources::sets_for(max_sources);
    drop_table_without_counters(pin_path)?;
    let mut pinned = Pinned::default();
    for name in names::ALL {
        let path = maps_dir(pin_path).join(name);
        let (Ok(info), Some((key, value, capacity))) =
            (aya::maps::MapInfo::from_pin(&path), crate::maps::layout(name))
        else {
            continue;
        };
        pinned.any = true;
        let capacity = if name == names::SOURCES { Some(sets) } else { capacity };
        let found = (info.key_size(), info.value_size(), info.max_entries());
        let want = (key, value, capacity.unwrap_or(found.2));
        if found != want && crate::maps::replaceable(name) {
            warn!(map = name, ?found, ?want, "replacing a pinned map of another layout or size");
            std::fs::remove_file(&path).map_err(io_err("removing", &path))?;
            continue;
        }
        if found != want {
            return Err(DatapathError::StalePin { path, dir: maps_dir(pin_path), found, want });
        }
        pinned.config |= name == names::CONFIG;
    }
    Ok(pinned)
}

/// Removes the limiter table's pin when the counters' pin is of another layout or gone (a
/// start killed between the two removals): the table goes first, so no start finds fresh
/// counters beside a full table.
fn drop_table_without_counters(pin_path: &Path) -> Result<()> {
    let dir = maps_dir(pin_path);
    let counters = aya::maps::MapInfo::from_pin(dir.join(names::STATS)).ok();
    let (key, value, capacity) = crate::maps::layout(names::STATS).expect("a known map");
    let layout = |i: aya::maps::MapInfo| (i.key_size(), i.value_size(), Some(i.max_entries()));
    let kept = counters.is_some_and(|i| layout(i) == (key, value, capacity));
    let table = dir.join(names::SOURCES);
    if kept || !table.exists() {
        return Ok(());
    }
    std::fs::remove_file(&table).map_err(io_err("removing", &table))?;
    warn!(map = names::SOURCES, "replacing the limiter table with the counters");
    Ok(())
}

fn ensure_bpffs(pin_path: &Path) -> Result<()> {
    let mut probe = pin_path.to_path_buf();
    while !probe.exists() {
        if !probe.pop() {
            break;
        }
    }
    if is_bpffs(&probe) {
        return Ok(());
    }
    let standard = Path::new(DEFAULT_BPFFS);
    if pin_path.starts_with(standard) && !is_bpffs(standard) {
        std::fs::create_dir_all(standard).map_err(io_err("creating", standard))?;
        nix::mount::mount(
            Some("bpf"),
            standard,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            Some("mode=0700"),
        )
        .map_err(|source| DatapathError::Mount { path: standard.into(), source })?;
        info!(path = DEFAULT_BPFFS, "mounted bpffs");
        return Ok(());
    }
    Err(DatapathError::NotBpffs { path: pin_path.into() })
}

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
}

pub fn pinned_interfaces(links_dir: &Path) -> Vec<String> {
    std::fs::read_dir(links_dir)
        .map(|entries| {
            entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()
        })
        .unwrap_or_default()
}

/// Removes every pin under `pin_path`: links (which detaches the program) and maps. The
/// caller holds the instance lock, so no daemon is using them.
pub fn detach(pin_path: &Path, _lock: &InstanceLock) -> Result<Vec<String>> {
    let detached = pinned_interfaces(&links_dir(pin_path));
    for dir in [links_dir(pin_path), maps_dir(pin_path)] {
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io_err("removing", &dir))?;
        }
    }
    if pin_path.exists() {
        std::fs::remove_dir(pin_path).map_err(io_err("removing", pin_path))?;
    }
    Ok(detached)
}
