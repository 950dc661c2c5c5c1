//! Run-time changes that must survive restarts and reboots: dynamic bans (with expiry and
//! reason), dynamic allow entries, and mode/limit changes made with the CLI.
//!
//! Written atomically (temp file, fsync, rename, fsync of the directory) after every change,
//! so a crash leaves either the old or the new file, never a torn one. Expiries are stored as
//! wall-clock times because the monotonic clock restarts at boot.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::{self, File},
    io::Write as _,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{config::Mode, policy::LimitsView};

const FILE: &str = "state.json";
const VERSION: u32 = 1;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Runtime {
    pub version: u32,
    /// Set by `secgate mode`; `None` follows the config.
    pub mode: Option<Mode>,
    /// Set by `secgate limit set|del`; `None` follows the config.
    pub limits: Option<LimitsView>,
    pub bans: BTreeMap<IpNet, StoredBan>,
    pub allow: BTreeSet<IpNet>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredBan {
    /// Unix time in ms when the ban lapses; `None`: permanent.
    pub expires_unix_ms: Option<u64>,
    pub reason: String,
}

impl StoredBan {
    /// Time left at `now`; `Some(ZERO)` once expired, `None` for a permanent ban.
    pub fn remaining(&self, now: SystemTime) -> Option<Duration> {
        self.expires_unix_ms.map(|ms| {
            (UNIX_EPOCH + Duration::from_millis(ms)).duration_since(now).unwrap_or_default()
        })
    }

    pub fn expired(&self, now: SystemTime) -> bool {
        self.remaining(now).is_some_and(|d| d.is_zero())
    }
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error(
        "state file {path} is corrupt ({reason}); moved it to {moved_to} and started from the config alone"
    )]
    Corrupt { path: PathBuf, reason: String, moved_to: PathBuf },
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

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// Loads the saved state. A missing file is an empty state; a corrupt one is moved aside
    /// (so it can be inspected) and reported, and the daemon goes on with an empty state.
    pub fn load(&self) -> (Runtime, Option<StateError>) {
        let path = self.path();
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return (Runtime::default(), None);
            }
            Err(source) => {
                return (
                    Runtime::default(),
                    Some(StateError::Io { what: "reading", path, source }),
                );
            }
        };
        match serde_json::from_slice::<Runtime>(&text) {
            Ok(r) if r.version == VERSION => (r, None),
            Ok(r) => (
                Runtime::default(),
                Some(self.move_aside(format!("unknown version {}", r.version))),
            ),
            Err(e) => (Runtime::default(), Some(self.move_aside(e.to_string()))),
        }
    }

    fn move_aside(&self, reason: String) -> StateError {
        let path = self.path();
        let moved_to = self.dir.join(format!("{FILE}.corrupt-{}", unix_ms(SystemTime::now())));
        if let Err(source) = fs::rename(&path, &moved_to) {
            return StateError::Io { what: "moving aside corrupt", path, source };
        }
        StateError::Corrupt { path, reason, moved_to }
    }

    /// Writes `runtime` atomically.
    pub fn save(&self, runtime: &Runtime) -> Result<(), StateError> {
        let io = |what, path: &Path| {
            let path = path.to_owned();
            move |source| StateError::Io { what, path, source }
        };
        fs::create_dir_all(&self.dir).map_err(io("creating", &self.dir))?;
        let tmp = self.dir.join(format!("{FILE}.tmp"));
        let mut data = serde_json::to_vec_pretty(&Runtime { version: VERSION, ..runtime.clone() })
            .expect("state serializes");
        data.push(b'\n');
        let mut f = File::create(&tmp).map_err(io("creating", &tmp))?;
        f.write_all(&data).map_err(io("writing", &tmp))?;
        f.sync_all().map_err(io("syncing", &tmp))?;
        fs::rename(&tmp, self.path()).map_err(io("replacing", &self.path()))?;
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io("syncing", &self.dir))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Runtime {
        let mut r = Runtime { mode: Some(Mode::Monitor), ..Default::default() };
        r.bans.insert(
            "198.18.0.0/24".parse().unwrap(),
            StoredBan {
                expires_unix_ms: Some(unix_ms(SystemTime::now()) + 60_000),
                reason: "auth".into(),
            },
        );
        r.allow.insert("fd00::/64".parse().unwrap());
        r
    }

    #[test]
    fn save_then_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateFile::new(dir.path());
        assert_eq!(state.load().0, Runtime::default(), "no file is an empty state");
        let r = sample();
        state.save(&r).unwrap();
        let (loaded, err) = state.load();
        assert!(err.is_none());
        assert_eq!(loaded, Runtime { version: VERSION, ..r });
        assert!(!dir.path().join("state.json.tmp").exists());
    }

    #[test]
    fn corrupt_file_is_moved_aside_with_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateFile::new(dir.path());
        fs::write(state.path(), b"{\"version\":1,\"bans\":{\"1.2.3.0/24\":").unwrap();
        let (loaded, err) = state.load();
        assert_eq!(loaded, Runtime::default());
        let msg = err.expect("reported").to_string();
        assert!(msg.contains("corrupt") && msg.contains("moved it to"), "{msg}");
        assert!(!state.path().exists());
        let kept = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().contains("corrupt"));
        assert!(kept, "the corrupt file is kept for inspection");
    }

    #[test]
    fn expiry_is_wall_clock() {
        let now = SystemTime::now();
        let ban = StoredBan { expires_unix_ms: Some(unix_ms(now) + 5_000), reason: String::new() };
        assert!(!ban.expired(now));
        assert!(ban.expired(now + Duration::from_secs(6)));
        assert_eq!(StoredBan { expires_unix_ms: None, reason: String::new() }.remaining(now), None);
    }

    proptest::proptest! {
        /// Arbitrary bytes in the state file never panic the loader and never yield state.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let dir = tempfile::tempdir().unwrap();
            let state = StateFile::new(dir.path());
            fs::write(state.path(), &bytes).unwrap();
            let (loaded, _) = state.load();
            proptest::prop_assert!(loaded.bans.is_empty() || serde_json::from_slice::<Runtime>(&bytes).is_ok());
        }
    }
}
