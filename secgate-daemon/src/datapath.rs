//! Loading the XDP program, pinning its maps and links, and attaching it to interfaces.
//!
//! Maps are pinned by name under `<pin_path>/maps` and links under `<pin_path>/links/<if>`.
//! A daemon that starts while pins exist reuses the maps (so bans and counters survive) and
//! swaps its freshly loaded program into the pinned links atomically, so the interface is
//! never without a filter.

use std::{
    io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{MapData, RingBuf},
    programs::{
        ProgramError, Xdp, XdpMode,
        links::{FdLink, LinkError, PinnedLink},
        xdp::XdpLink,
    },
};
use secgate_common::maps as names;
use tracing::{info, warn};

use crate::{
    EBPF_OBJECT,
    config::{AttachMode, DatapathSettings},
    maps::{DatapathMaps, MapsError},
};

const PROGRAM: &str = "secgate";
const BPF_FS_MAGIC: i64 = 0xcafe4a11;
const DEFAULT_BPFFS: &str = "/sys/fs/bpf";

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(
        "{path} is not on a bpffs and cannot hold pins; mount one (`mount -t bpf bpf {path}`) or change datapath.pin_path"
    )]
    NotBpffs { path: PathBuf },
    #[error("mounting bpffs at {path}: {source}")]
    Mount { path: PathBuf, source: nix::Error },
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: io::Error },
    #[error("loading the XDP object: {0}; is the kernel BPF-capable and are you root?")]
    Load(#[from] EbpfError),
    #[error("the kernel rejected the XDP program: {0}")]
    Program(#[from] ProgramError),
    #[error("interface {iface}: {source}")]
    Attach { iface: String, source: ProgramError },
    #[error("interface {iface}: pinned link {path}: {source}")]
    Link { iface: String, path: PathBuf, source: LinkError },
    #[error("interface {iface}: pinning link at {path}: {source}")]
    Pin { iface: String, path: PathBuf, source: aya::pin::PinError },
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error(
        "pinned map {path} has key size, value size and capacity {found:?}, this build needs {want:?}: it was left by another secgate version; remove {dir} and start again (the state file restores dynamic bans)"
    )]
    StalePin { path: PathBuf, dir: PathBuf, found: (u32, u32, u32), want: (u32, u32, u32) },
}

type Result<T> = std::result::Result<T, DatapathError>;

/// How an interface ended up attached.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Attachment {
    pub interface: String,
    /// `native`, `skb`, or `adopted` (program swapped into an existing pinned link).
    pub mode: String,
}

/// The loaded program, its maps and the interfaces it is attached to.
pub struct Datapath {
    bpf: Ebpf,
    pub maps: DatapathMaps,
    /// Each link is held so it stays open while the daemon runs; its pin keeps it after.
    links: Vec<(Attachment, FdLink)>,
    pin_path: PathBuf,
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> DatapathError + 'a {
    move |source| DatapathError::Io { what, path: path.to_owned(), source }
}

fn maps_dir(pin_path: &Path) -> PathBuf {
    pin_path.join("maps")
}

fn links_dir(pin_path: &Path) -> PathBuf {
    pin_path.join("links")
}

impl Datapath {
    /// Loads the program, reusing pinned maps under `pin_path` when they exist.
    pub fn open(settings: &DatapathSettings) -> Result<Datapath> {
        let pin_path = settings.pin_path.clone();
        ensure_bpffs(&pin_path)?;
        for dir in [maps_dir(&pin_path), links_dir(&pin_path)] {
            std::fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        }
        check_pins(&pin_path, settings.max_sources)?;
        let mut loader = EbpfLoader::new();
        for name in names::ALL {
            loader.map_pin_path(name, maps_dir(&pin_path).join(name));
        }
        loader.map_max_entries(names::SOURCES, settings.max_sources);
        let mut bpf = loader.load(EBPF_OBJECT)?;
        program(&mut bpf).load()?;
        let maps = DatapathMaps::take(&mut bpf)?;
        Ok(Datapath { bpf, maps, links: Vec::new(), pin_path })
    }

    /// Attaches to `iface`, or swaps this program into its pinned link if one exists.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<()> {
        let path = links_dir(&self.pin_path).join(iface);
        let link_err =
            |source| DatapathError::Link { iface: iface.into(), path: path.clone(), source };
        let prog = program(&mut self.bpf);
        let (link, how) = if path.exists() {
            let pinned: FdLink = PinnedLink::from_pin(&path).map_err(link_err)?.into();
            let id = prog
                .attach_to_link(XdpLink::try_from(pinned).map_err(link_err)?)
                .map_err(|source| DatapathError::Attach { iface: iface.into(), source })?;
            (FdLink::try_from(prog.take_link(id)?).map_err(link_err)?, "adopted")
        } else {
            let (id, how) = attach_fresh(prog, iface, mode)?;
            let link = FdLink::try_from(prog.take_link(id)?).map_err(link_err)?;
            let pinned = link.pin(&path).map_err(|source| DatapathError::Pin {
                iface: iface.into(),
                path: path.clone(),
                source,
            })?;
            (pinned.into(), how)
        };
        info!(interface = iface, mode = how, "XDP program attached");
        self.links.push((Attachment { interface: iface.into(), mode: how.into() }, link));
        Ok(())
    }

    /// Detaches from `iface`: removes its link pin and closes the link.
    pub fn detach(&mut self, iface: &str) -> Result<()> {
        let path = links_dir(&self.pin_path).join(iface);
        if path.exists() {
            std::fs::remove_file(&path).map_err(io_err("removing", &path))?;
        }
        self.links.retain(|(a, _)| a.interface != iface);
        info!(interface = iface, "XDP program detached");
        Ok(())
    }

    /// The interfaces this process attached to, and how.
    pub fn attachments(&self) -> Vec<Attachment> {
        self.links.iter().map(|(a, _)| a.clone()).collect()
    }

    /// Interfaces with a pinned link, whether or not this process attached them.
    pub fn pinned_interfaces(&self) -> Vec<String> {
        pinned_interfaces(&self.pin_path)
    }

    /// The over-limit event ring buffer.
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.bpf.take_map(names::EVENTS).and_then(|m| RingBuf::try_from(m).ok())
    }

    pub fn pin_path(&self) -> &Path {
        &self.pin_path
    }
}

/// Refuses pinned maps whose layout differs from this build's; warns when the limiter map
/// keeps a capacity other than `max_sources` (it is reused, so the change waits for new pins).
fn check_pins(pin_path: &Path, max_sources: u32) -> Result<()> {
    for name in names::ALL {
        let path = maps_dir(pin_path).join(name);
        let (Ok(info), Some((key, value, capacity))) =
            (aya::maps::MapInfo::from_pin(&path), crate::maps::layout(name))
        else {
            continue;
        };
        let found = (info.key_size(), info.value_size(), info.max_entries());
        let want = (key, value, capacity.unwrap_or(found.2));
        if found != want {
            return Err(DatapathError::StalePin { path, dir: maps_dir(pin_path), found, want });
        }
        if name == names::SOURCES && found.2 != max_sources {
            warn!(
                pinned = found.2,
                configured = max_sources,
                "the pinned limiter map keeps its capacity; remove the pins to apply max_sources"
            );
        }
    }
    Ok(())
}

fn program(bpf: &mut Ebpf) -> &mut Xdp {
    bpf.program_mut(PROGRAM)
        .and_then(|p| <&mut Xdp>::try_from(p).ok())
        .expect("the embedded object defines the secgate XDP program")
}

fn attach_fresh(
    prog: &mut Xdp,
    iface: &str,
    mode: AttachMode,
) -> Result<(aya::programs::xdp::XdpLinkId, &'static str)> {
    let err = |source| DatapathError::Attach { iface: iface.into(), source };
    match mode {
        AttachMode::Native => {
            prog.attach(iface, XdpMode::Driver).map(|id| (id, "native")).map_err(err)
        }
        AttachMode::Skb => prog.attach(iface, XdpMode::Skb).map(|id| (id, "skb")).map_err(err),
        AttachMode::Auto => match prog.attach(iface, XdpMode::Driver) {
            Ok(id) => Ok((id, "native")),
            Err(e) => {
                warn!(interface = iface, error = %e, "native XDP unavailable; falling back to skb (generic) mode, which is slower");
                prog.attach(iface, XdpMode::Skb).map(|id| (id, "skb")).map_err(err)
            }
        },
    }
}

/// Makes sure `pin_path` lives on a bpffs, mounting the standard one if it is missing.
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
            None::<&str>,
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

fn pinned_interfaces(pin_path: &Path) -> Vec<String> {
    std::fs::read_dir(links_dir(pin_path))
        .map(|entries| {
            entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()
        })
        .unwrap_or_default()
}

/// Removes every pin under `pin_path`: links (which detaches the program) and maps.
pub fn detach(pin_path: &Path) -> Result<Vec<String>> {
    let detached = pinned_interfaces(pin_path);
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
