//! Run-time changes that must survive restarts and reboots: dynamic bans (with expiry and
//! reason), dynamic allow entries, and mode/limit changes made with the CLI.
//!
//! Written atomically through a unique temporary file (write, fsync, rename, fsync of the
//! directory), so a crash leaves either the old or the new file, never a torn one, and two
//! writers can never interleave in one temporary file. Expiries are stored as wall-clock
//! times, because the monotonic clock restarts at boot, and also as monotonic times with
//! the boot they belong to, which a restart within the same boot uses exactly.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::{self, File},
    io::Write as _,
    path::{Path, PathBuf},
    time::SystemTime,
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{
    clock::unix_ms,
    config::{Limits, Mode},
};

const FILE: &str = "state.json";
/// Version 2 added `boot_id` and `expires_mono_ns`; version 1 files load as they are.
const VERSION: u32 = 2;
const READABLE: [u32; 2] = [1, 2];

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Runtime {
    pub version: u32,
    /// The boot the monotonic expiries belong to.
    #[serde(default)]
    pub boot_id: Option<String>,
    /// Set by `secgate mode`; `None` follows the config.
    pub mode: Option<Mode>,
    /// Set by `secgate limit set|del`; `None` follows the config.
    pub limits: Option<Limits>,
    pub bans: BTreeMap<IpNet, StoredBan>,
    pub allow: BTreeSet<IpNet>,
    /// The config's deny and allow entries when this was saved. The next start tells by
    /// them an entry the config dropped meanwhile from one the state file never recorded
    /// (a change applied but not saved), which is kept rather than deleted.
    #[serde(default)]
    pub config_deny: BTreeSet<IpNet>,
    #[serde(default)]
    pub config_allow: BTreeSet<IpNet>,
}

/// Just the version, read first: a newer version may have fields this one does not know.
#[derive(Deserialize)]
struct Version {
    version: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredBan {
    /// Unix time in ms when the ban lapses; `None`: permanent.
    pub expires_unix_ms: Option<u64>,
    /// The same instant on the monotonic clock of boot `Runtime::boot_id`.
    #[serde(default)]
    pub expires_mono_ns: Option<u64>,
    pub reason: std::sync::Arc<str>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "{what} {path}: {source}; fix the file's permissions or the disk and start again (the XDP program keeps enforcing through its pinned links meanwhile)"
    )]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("state file {path} is unusable ({reason}); moved it to {moved_to}")]
    Discarded { path: PathBuf, reason: String, moved_to: PathBuf },
    #[error(
        "not overwriting {path}, which could not be read at start ({reason}); fix it and restart the daemon (changes stay in force meanwhile, and the pinned maps keep them across a restart)"
    )]
    Frozen { path: PathBuf, reason: String },
}

/// What [`StateFile::load`] found.
#[derive(Debug)]
pub enum Loaded {
    /// No state file: a first start, or one after `secgate detach`.
    Missing,
    Saved(Runtime),
    /// Corrupt or of an unknown version; moved aside for inspection.
    Discarded(StateError),
    /// It could not be read (an I/O error). It is left as it is and must not be written
    /// over: it may hold bans that a later, successful read restores.
    Unreadable(StateError),
}

/// The state file in `state_dir`.
#[derive(Clone, Debug)]
pub struct StateFile {
    dir: PathBuf,
}

impl StateFile {
    pub fn new(dir: &Path) -> StateFile {
        StateFile { dir: dir.to_owned() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// Loads the saved state. A corrupt file or one of an unknown version is moved aside and
    /// reported. A file that cannot be read is reported as such and left alone.
    pub fn load(&self) -> Loaded {
        let path = self.path();
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Loaded::Missing,
            Err(source) => {
                return Loaded::Unreadable(StateError::Io { what: "reading", path, source });
            }
        };
        let reason = match serde_json::from_slice::<Version>(&text) {
            Ok(v) if !READABLE.contains(&v.version) => format!("unknown version {}", v.version),
            _ => match serde_json::from_slice::<Runtime>(&text) {
                Ok(r) => return Loaded::Saved(r),
                Err(e) => e.to_string(),
            },
        };
        let moved_to = self.dir.join(format!("{FILE}.corrupt-{}", unix_ms(SystemTime::now())));
        if let Err(source) = fs::rename(&path, &moved_to) {
            return Loaded::Unreadable(StateError::Io {
                what: "moving aside unusable",
                path,
                source,
            });
        }
        Loaded::Discarded(StateError::Discarded { path, reason, moved_to })
    }

    /// The bytes [`StateFile::write`] stores for `runtime`.
    pub fn encode(runtime: &Runtime) -> Vec<u8> {
        let mut data = serde_json::to_vec(&Runtime { version: VERSION, ..runtime.clone() })
            .expect("state serializes");
        data.push(b'\n');
        data
    }

    /// Replaces the state file with `data` atomically and durably.
    pub fn write(&self, data: &[u8]) -> Result<(), StateError> {
        write_atomically(&self.dir, FILE, data)
    }

    /// Removes the state file (for `secgate detach`).
    pub fn remove(&self) -> Result<bool, StateError> {
        match fs::remove_file(self.path()) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(StateError::Io { what: "removing", path: self.path(), source }),
        }
    }
}

/// Replaces `dir/name` with `data` atomically and durably: a crash leaves the old file or
/// the new one, never a torn one.
pub fn write_atomically(dir: &Path, name: &str, data: &[u8]) -> Result<(), StateError> {
    let io = |what, path: &Path| {
        let path = path.to_owned();
        move |source| StateError::Io { what, path, source }
    };
    let path = dir.join(name);
    fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .tempfile_in(dir)
        .map_err(io("creating a temporary file in", dir))?;
    tmp.write_all(data).map_err(io("writing", tmp.path()))?;
    tmp.as_file().sync_all().map_err(io("syncing", tmp.path()))?;
    tmp.persist(&path).map_err(|e| StateError::Io { what: "replacing", path, source: e.error })?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io("syncing", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Runtime {
        let mut r = Runtime { mode: Some(Mode::Monitor), ..Default::default() };
        r.bans.insert(
            "198.18.0.0/24".parse().unwrap(),
            StoredBan {
                expires_unix_ms: Some(unix_ms(SystemTime::now()) + 60_000),
                expires_mono_ns: Some(123),
                reason: "auth".into(),
            },
        );
        r.allow.insert("fd00::/64".parse().unwrap());
        r
    }

    fn saved(state: &StateFile) -> Runtime {
        match state.load() {
            Loaded::Saved(r) => r,
            other => panic!("expected a saved state, got {other:?}"),
        }
    }

    #[test]
    fn save_then_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateFile::new(dir.path());
        assert!(matches!(state.load(), Loaded::Missing), "no file is a first start");
        let r = sample();
        state.write(&StateFile::encode(&r)).unwrap();
        assert_eq!(saved(&state), Runtime { version: VERSION, ..r });
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec![FILE.to_string()], "no temporary file is left behind");
    }

    #[test]
    fn version_1_files_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateFile::new(dir.path());
        fs::write(
            state.path(),
            br#"{"version":1,"mode":null,"limits":null,"allow":[],
                "bans":{"198.18.0.0/24":{"expires_unix_ms":5,"reason":"r"}}}"#,
        )
        .unwrap();
        let r = saved(&state);
        assert_eq!(r.bans.len(), 1);
        assert_eq!(r.bans.values().next().unwrap().expires_mono_ns, None);
    }

    #[test]
    fn corrupt_or_future_files_are_moved_aside_with_an_error() {
        for (bytes, why) in [
            (&b"{\"version\":1,\"bans\":{\"1.2.3.0/24\":"[..], "EOF"),
            (br#"{"version":9,"future_field":true}"#, "unknown version 9"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let state = StateFile::new(dir.path());
            fs::write(state.path(), bytes).unwrap();
            let Loaded::Discarded(err) = state.load() else { panic!("must be discarded") };
            assert!(
                err.to_string().contains("moved it to") && err.to_string().contains(why),
                "{err}"
            );
            assert!(!state.path().exists());
            let kept = fs::read_dir(dir.path())
                .unwrap()
                .flatten()
                .any(|e| e.file_name().to_string_lossy().contains("corrupt"));
            assert!(kept, "the file is kept for inspection");
        }
    }

    #[test]
    fn an_unreadable_file_is_reported_and_stays() {
        // Regression: an I/O error while reading was treated as an empty state, and the next
        // change overwrote the file.
        let dir = tempfile::tempdir().unwrap();
        let state = StateFile::new(dir.path());
        fs::create_dir(state.path()).unwrap();
        let Loaded::Unreadable(err) = state.load() else { panic!("a directory cannot be read") };
        assert!(err.to_string().contains("reading"), "{err}");
        assert!(state.path().is_dir(), "nothing was moved or replaced");
    }

    proptest::proptest! {
        /// Arbitrary bytes in the state file never panic the loader, and only valid JSON of a
        /// known version is taken as state.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let dir = tempfile::tempdir().unwrap();
            let state = StateFile::new(dir.path());
            fs::write(state.path(), &bytes).unwrap();
            if let Loaded::Saved(_) = state.load() {
                proptest::prop_assert!(serde_json::from_slice::<Runtime>(&bytes).is_ok());
            }
        }
    }
}
