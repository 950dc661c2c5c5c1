//! The daemon's service layer run in-process over a real, pinned datapath, with a wall clock
//! the test can step. No interface is attached: frames go through the program with
//! `BPF_PROG_TEST_RUN`.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::{Duration, SystemTime},
};

use secgate::{
    audit::Audit,
    clock::Clock,
    config::Config,
    datapath::{self, Datapath},
    lock::InstanceLock,
    service::Service,
    state::StateFile,
};

/// The system clocks with a wall clock that can be stepped, as NTP or an operator would.
#[derive(Default)]
pub struct SteppedClock {
    offset_ms: AtomicI64,
}

impl SteppedClock {
    pub fn step(&self, by: Duration, forward: bool) {
        let ms = by.as_millis() as i64;
        self.offset_ms.fetch_add(if forward { ms } else { -ms }, Ordering::SeqCst);
    }
}

impl Clock for SteppedClock {
    fn wall(&self) -> SystemTime {
        let offset = self.offset_ms.load(Ordering::SeqCst);
        let by = Duration::from_millis(offset.unsigned_abs());
        if offset >= 0 { SystemTime::now() + by } else { SystemTime::now() - by }
    }
}

/// A service over its own pins and state directory, removed on drop.
pub struct Fixture {
    pub service: Option<Arc<Service>>,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub pin_path: PathBuf,
    pub clock: Arc<SteppedClock>,
    pub warnings: Vec<String>,
}

impl Fixture {
    /// Writes a config with `datapath_extra` in `[datapath]` and starts the service.
    pub fn start(tag: &str, datapath_extra: &str) -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let pin_path =
            PathBuf::from(format!("/sys/fs/bpf/secgate-svc-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&pin_path);
        let config_path = dir.path().join("secgate.toml");
        let mut f = Fixture {
            service: None,
            dir,
            config_path,
            pin_path,
            clock: Arc::default(),
            warnings: Vec::new(),
        };
        f.write_config(datapath_extra);
        f.restart();
        f
    }

    pub fn write_config(&self, datapath_extra: &str) {
        let toml = format!(
            "state_dir = \"{}\"\n[datapath]\ninterfaces = [\"sg-absent\"]\npin_path = \"{}\"\n{datapath_extra}\n[audit]\npath = \"{}\"\n",
            self.state_dir().display(),
            self.pin_path.display(),
            self.audit_path().display(),
        );
        std::fs::write(&self.config_path, toml).expect("write config");
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn audit_path(&self) -> PathBuf {
        self.dir.path().join("audit.log")
    }

    pub fn service(&self) -> &Arc<Service> {
        self.service.as_ref().expect("running")
    }

    /// Stops the service (writing what is pending) and starts a new one on the same pins,
    /// state and clock, as a daemon restart would.
    pub fn restart(&mut self) {
        self.stop();
        let config = Config::load(&self.config_path).expect("valid config");
        datapath::prepare(&config.datapath.pin_path).expect("bpffs (cargo xtask setup mounts it)");
        let lock =
            InstanceLock::acquire(&config.datapath.pin_path, &config.state_dir).expect("lock");
        let state = StateFile::new(&config.state_dir);
        let loaded = state.load();
        let datapath = Datapath::open(&config.datapath, lock).expect("open the datapath");
        let audit = std::sync::Arc::new(Audit::open(&config.audit_log).expect("audit log"));
        let clock: Arc<dyn Clock> = self.clock.clone();
        let (service, warnings) =
            Service::start(datapath, &config, &self.config_path, state, loaded, audit, clock)
                .expect("start the service");
        self.service = Some(Arc::new(service));
        self.warnings = warnings;
    }

    fn stop(&mut self) {
        if let Some(service) = self.service.take() {
            service.shutdown();
            assert_eq!(Arc::strong_count(&service), 1, "the test still holds the service");
        }
    }

    /// The XDP action the program takes on `frame` now.
    pub fn run(&self, frame: &[u8]) -> u32 {
        self.service().with_datapath(|d| d.test_run(frame))
    }

    /// The state file as JSON.
    pub fn saved(&self) -> serde_json::Value {
        let text = std::fs::read(StateFile::new(&self.state_dir()).path()).expect("state file");
        serde_json::from_slice(&text).expect("state JSON")
    }

    pub fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.audit_path())
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
            .collect()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.stop();
        if let Ok(lock) = InstanceLock::acquire(&self.pin_path, &self.state_dir()) {
            let _ = datapath::detach(&self.pin_path, &lock);
        }
        let _ = std::fs::remove_file(secgate::lock::pin_lock_file(&self.pin_path));
    }
}
