//! Repeat offenders: how many times each banned prefix was banned before, so that its next
//! ban lasts `ttl_factor` times longer. Kept in `escalation.json` in the state directory,
//! written atomically like the state file, so a restart (or a reboot) does not wipe the
//! slate clean for an attacker. A prefix is forgotten once `max_ttl` has passed since its
//! last ban lapsed: by then it has served the longest ban there is.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::state::{StateError, write_atomically};

pub const FILE: &str = "escalation.json";
const VERSION: u32 = 1;
/// Prefixes remembered at most; past it the ones whose bans lapsed longest ago go first.
pub const MAX_OFFENDERS: usize = 100_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Strikes {
    /// Bans so far.
    pub bans: u32,
    /// Unix time in ms when the last one lapses.
    pub until_unix_ms: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Saved {
    version: u32,
    offenders: Vec<(IpNet, Strikes)>,
}

#[derive(Clone, Debug)]
pub struct History {
    dir: PathBuf,
    offenders: HashMap<IpNet, Strikes>,
    dirty: bool,
}

impl History {
    /// Loads the saved history; a file that cannot be used is moved aside and reported, and
    /// the history starts empty.
    pub fn load(dir: &Path) -> (History, Option<String>) {
        let mut history = History { dir: dir.to_owned(), offenders: HashMap::new(), dirty: false };
        let path = history.path();
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (history, None),
            Err(e) => {
                return (
                    history,
                    Some(format!(
                        "cannot read {}: {e}; repeat offenders start afresh",
                        path.display()
                    )),
                );
            }
        };
        match serde_json::from_slice::<Saved>(&text) {
            Ok(saved) if saved.version == VERSION => {
                history.offenders = saved.offenders.into_iter().collect();
                (history, None)
            }
            Ok(saved) => (
                history,
                Some(format!("{} has unknown version {}; ignored", path.display(), saved.version)),
            ),
            Err(e) => {
                let aside = path.with_extension(format!(
                    "json.corrupt-{}",
                    crate::clock::unix_ms(std::time::SystemTime::now())
                ));
                let moved = fs::rename(&path, &aside).map_or_else(
                    |m| format!("could not move it aside: {m}"),
                    |()| format!("moved it to {}", aside.display()),
                );
                (
                    history,
                    Some(format!(
                        "{} is unusable ({e}); {moved}; repeat offenders start afresh",
                        path.display()
                    )),
                )
            }
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// Earlier bans of `cidr` that still count at `now_ms`.
    pub fn strikes(&self, cidr: &IpNet, now_ms: u64, memory: Duration) -> u32 {
        self.offenders.get(cidr).filter(|s| !forgotten(s, now_ms, memory)).map_or(0, |s| s.bans)
    }

    /// Records a ban of `cidr` lasting `ttl` from `now_ms`.
    pub fn banned(&mut self, cidr: IpNet, ttl: Duration, now_ms: u64, memory: Duration) {
        let before = self.strikes(&cidr, now_ms, memory);
        let until_unix_ms = now_ms.saturating_add(ttl.as_millis() as u64);
        self.offenders.insert(cidr, Strikes { bans: before.saturating_add(1), until_unix_ms });
        if self.offenders.len() > MAX_OFFENDERS {
            self.forget(now_ms, memory);
        }
        self.dirty = true;
    }

    /// Takes what another gateway of the fleet knows of `cidr`: the more bans and the later
    /// lapse of the two.
    pub fn learn(&mut self, cidr: IpNet, theirs: Strikes) {
        let held = self.offenders.entry(cidr).or_insert(Strikes { bans: 0, until_unix_ms: 0 });
        let merged = Strikes {
            bans: held.bans.max(theirs.bans),
            until_unix_ms: held.until_unix_ms.max(theirs.until_unix_ms),
        };
        if merged != *held {
            *held = merged;
            self.dirty = true;
        }
    }

    /// Drops what no longer counts, then, if still over the cap, the longest-lapsed tenth.
    fn forget(&mut self, now_ms: u64, memory: Duration) {
        self.offenders.retain(|_, s| !forgotten(s, now_ms, memory));
        if self.offenders.len() > MAX_OFFENDERS {
            let mut until: Vec<u64> = self.offenders.values().map(|s| s.until_unix_ms).collect();
            let cut = *until.select_nth_unstable(MAX_OFFENDERS / 10).1;
            self.offenders.retain(|_, s| s.until_unix_ms > cut);
        }
    }

    /// The file's new contents if the history changed since the last call, to be written
    /// with [`save`] (outside whatever lock guards the history).
    pub fn changes(&mut self, now_ms: u64, memory: Duration) -> Option<Vec<u8>> {
        if !std::mem::take(&mut self.dirty) {
            return None;
        }
        self.offenders.retain(|_, s| !forgotten(s, now_ms, memory));
        let saved = Saved {
            version: VERSION,
            offenders: self.offenders.iter().map(|(k, v)| (*k, *v)).collect(),
        };
        let mut data = serde_json::to_vec(&saved).expect("history serializes");
        data.push(b'\n');
        Some(data)
    }

    /// Marks the history changed again (after a failed save).
    pub fn unsaved(&mut self) {
        self.dirty = true;
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Replaces the history file in `dir` with `data` (from [`History::changes`]).
pub fn save(dir: &Path, data: &[u8]) -> Result<(), StateError> {
    write_atomically(dir, FILE, data)
}

fn forgotten(s: &Strikes, now_ms: u64, memory: Duration) -> bool {
    now_ms > s.until_unix_ms.saturating_add(memory.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn strikes_survive_a_reload_from_disk_and_lapse_after_the_memory() {
        let dir = tempfile::tempdir().unwrap();
        let cidr: IpNet = "198.18.0.7/32".parse().unwrap();
        let (mut h, warning) = History::load(dir.path());
        assert!(warning.is_none());
        h.banned(cidr, Duration::from_secs(60), 1_000, DAY);
        h.banned(cidr, Duration::from_secs(120), 2_000, DAY);
        save(dir.path(), &h.changes(2_000, DAY).unwrap()).unwrap();
        assert!(h.changes(2_000, DAY).is_none(), "nothing new to write");
        let (h, warning) = History::load(dir.path());
        assert!(warning.is_none());
        assert_eq!(h.strikes(&cidr, 3_000, DAY), 2);
        let lapsed = 2_000 + 120_000 + DAY.as_millis() as u64 + 1;
        assert_eq!(h.strikes(&cidr, lapsed, DAY), 0);
    }

    #[test]
    fn learnt_strikes_only_ever_raise_the_count() {
        let dir = tempfile::tempdir().unwrap();
        let cidr: IpNet = "198.18.0.7/32".parse().unwrap();
        let (mut h, _) = History::load(dir.path());
        h.banned(cidr, Duration::from_secs(60), 1_000, DAY);
        h.learn(cidr, Strikes { bans: 3, until_unix_ms: 500 });
        assert_eq!(h.offenders[&cidr], Strikes { bans: 3, until_unix_ms: 61_000 });
        h.changes(1_000, DAY);
        h.learn(cidr, Strikes { bans: 1, until_unix_ms: 10 });
        assert!(h.changes(1_000, DAY).is_none(), "a smaller count changes nothing");
        assert_eq!(h.strikes(&cidr, 2_000, DAY), 3);
    }

    #[test]
    fn a_corrupt_file_is_moved_aside_and_named() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(FILE), b"{not json").unwrap();
        let (h, warning) = History::load(dir.path());
        assert!(warning.unwrap().contains("unusable"));
        assert_eq!(h.offenders.len(), 0);
        assert!(!dir.path().join(FILE).exists());
    }

    #[test]
    fn the_history_stays_under_its_cap() {
        let dir = tempfile::tempdir().unwrap();
        let (mut h, _) = History::load(dir.path());
        for i in 0..(MAX_OFFENDERS as u32 + 10) {
            let net = IpNet::from(std::net::IpAddr::from(i.to_be_bytes()));
            h.banned(net, Duration::from_secs(60), u64::from(i), DAY);
        }
        assert!(h.offenders.len() <= MAX_OFFENDERS);
    }
}
