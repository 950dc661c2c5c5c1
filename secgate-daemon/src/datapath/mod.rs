//! Loading the XDP program, pinning its maps and links, and attaching it to interfaces.
//!
//! Maps are pinned by name under `<pin_path>/maps` and links under `<pin_path>/links/<if>`.
//! A daemon that starts while pins exist reuses the maps (so bans and counters survive) and
//! swaps its freshly loaded program into the pinned links atomically, so the interface is
//! never without a filter. Only the holder of the [`InstanceLock`] may open the datapath.

mod links;
mod napi;
mod pins;

use std::{
    io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{MapData, RingBuf},
    programs::{ProgramError, Xdp, links::LinkError},
};
use secgate_common::maps as names;

pub use links::{Links, kernel_mode};
pub use napi::threaded as napi_threaded;
pub use pins::{detach, prepare};

use crate::{
    EBPF_OBJECT,
    config::DatapathSettings,
    lock::{InstanceLock, LockError},
    maps::{DatapathMaps, MapsError},
};

const PROGRAM: &str = "secgate";

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
    #[error(transparent)]
    Lock(#[from] LockError),
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
    #[error("reading the XDP program's trace log: {0}")]
    Log(#[from] aya_log::Error),
    #[error(
        "pinned map {path} has key size, value size and capacity {found:?}, this build needs {want:?}: it was left by another secgate version; remove {dir} and start again (the state file restores dynamic bans)"
    )]
    StalePin { path: PathBuf, dir: PathBuf, found: (u32, u32, u32), want: (u32, u32, u32) },
}

type Result<T> = std::result::Result<T, DatapathError>;

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> DatapathError + 'a {
    move |source| DatapathError::Io { what, path: path.to_owned(), source }
}

/// The loaded program, its maps and the interfaces it is attached to.
pub struct Datapath {
    bpf: Ebpf,
    pub(crate) maps: DatapathMaps,
    links: Links,
    pin_path: PathBuf,
    /// What the maps reused from pins hold of an earlier run.
    pinned: pins::Pinned,
    /// The program's trace lines (`secgate trace`).
    pub(crate) trace: std::sync::Arc<crate::trace::TraceLog>,
    _lock: InstanceLock,
}

impl Datapath {
    /// Loads the program, reusing pinned maps under `pin_path` when they exist. `lock` must
    /// be the instance lock on that `pin_path`; it is held for as long as the datapath.
    pub fn open(settings: &DatapathSettings, lock: InstanceLock) -> Result<Datapath> {
        let pin_path = settings.pin_path.clone();
        prepare(&pin_path)?;
        let pinned = pins::check(&pin_path, settings.max_sources)?;
        let mut loader = EbpfLoader::new();
        for name in names::ALL {
            loader.map_pin_path(name, pins::maps_dir(&pin_path).join(name));
        }
        loader.map_max_entries(
            names::SOURCES,
            secgate_common::sources::sets_for(settings.max_sources),
        );
        let mut bpf = loader.load(EBPF_OBJECT)?;
        // Before the program is loaded: the logger holds the ring buffer the program's
        // relocations point at, and must stay open for as long as the program may run.
        let trace = std::sync::Arc::new(crate::trace::TraceLog::default());
        let logger =
            aya_log::EbpfLogger::init_with_logger(&mut bpf, crate::trace::Sink(trace.clone()))?;
        program(&mut bpf).load()?;
        crate::trace::spawn_reader(logger)
            .map_err(io_err("starting the trace reader", &pin_path))?;
        let maps = DatapathMaps::take(&mut bpf, Some(&pins::maps_dir(&pin_path)))?;
        let links = Links::new(pins::links_dir(&pin_path));
        Ok(Datapath { bpf, maps, links, pin_path, pinned, trace, _lock: lock })
    }

    /// Whether the maps came from an earlier run's pins.
    pub fn reused(&self) -> bool {
        self.pinned.any
    }

    /// Whether the config map came from an earlier run's pins (and so holds its mode and
    /// default limit), rather than being made anew.
    pub fn config_reused(&self) -> bool {
        self.pinned.config
    }

    pub fn links(&self) -> &Links {
        &self.links
    }

    /// Brings the attachments in line with `want` and the interfaces that exist right now;
    /// returns the interfaces that failed (see [`Links::sync`]).
    pub fn sync_links(
        &mut self,
        want: &[String],
        mode: crate::config::AttachMode,
        threaded_napi: bool,
    ) -> Vec<(String, DatapathError)> {
        self.links.sync(program(&mut self.bpf), want, mode, threaded_napi)
    }

    /// Takes the over-limit event ring buffer (once).
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.bpf.take_map(names::EVENTS).and_then(|m| RingBuf::try_from(m).ok())
    }

    pub fn pin_path(&self) -> &Path {
        &self.pin_path
    }

    /// Read-only handles on the allow tries and deny maps, for judging sources off the policy lock.
    pub fn source_check(&self) -> Result<crate::maps::SourceCheck> {
        Ok(crate::maps::SourceCheck::open(&pins::maps_dir(&self.pin_path))?)
    }

    pub fn first_deny(&self) -> Result<crate::maps::FirstDeny> {
        Ok(crate::maps::FirstDeny::open(&pins::maps_dir(&self.pin_path))?)
    }

    /// Runs one frame through the loaded program (`BPF_PROG_TEST_RUN`) and returns the XDP
    /// action, so tests can check what the kernel does with the maps the service wrote.
    #[cfg(any(test, feature = "test-util"))]
    pub fn test_run(&self, frame: &[u8]) -> u32 {
        use aya::programs::{TestRun, TestRunOptions};
        let prog: &Xdp = self.bpf.program(PROGRAM).expect("program").try_into().expect("xdp");
        let opts = TestRunOptions { data_in: Some(frame), ..Default::default() };
        prog.test_run(opts).expect("BPF_PROG_TEST_RUN").return_value
    }
}

fn program(bpf: &mut Ebpf) -> &mut Xdp {
    bpf.program_mut(PROGRAM)
        .and_then(|p| <&mut Xdp>::try_from(p).ok())
        .expect("the embedded object defines the secgate XDP program")
}
