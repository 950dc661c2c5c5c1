//! Lifts this node made that have not reached Redis yet, kept in the state directory: a
//! lift made while Redis is away must outlive a restart, or the fleet's copy of the ban
//! would come back with the next sync. Bans need no such file: they are in the state file,
//! and a reconnecting node republishes those the fleet does not know.

use std::path::Path;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::state::{StateError, write_atomically};

pub const FILE: &str = "fleet-lifts.json";
const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Saved {
    version: u32,
    /// Each lift's CIDR and when it was made (Unix ms).
    lifts: Vec<(IpNet, u64)>,
}

/// The lifts saved in `dir`; a file that cannot be used is reported and ignored (the
/// lifts in it are then lost to the fleet, not to this node).
pub fn load(dir: &Path) -> (Vec<(IpNet, u64)>, Option<String>) {
    let path = dir.join(FILE);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (Vec::new(), None),
        Err(e) => return (Vec::new(), Some(format!("cannot read {}: {e}", path.display()))),
    };
    match serde_json::from_slice::<Saved>(&text) {
        Ok(saved) if saved.version == VERSION => (saved.lifts, None),
        Ok(saved) => (
            Vec::new(),
            Some(format!("{} has unknown version {}; ignored", path.display(), saved.version)),
        ),
        Err(e) => (
            Vec::new(),
            Some(format!("{} is unusable ({e}); its lifts are not shared", path.display())),
        ),
    }
}

/// Replaces the file in `dir` with `lifts`.
pub fn save(dir: &Path, lifts: Vec<(IpNet, u64)>) -> Result<(), StateError> {
    let mut data = serde_json::to_vec(&Saved { version: VERSION, lifts }).expect("lifts serialize");
    data.push(b'\n');
    write_atomically(dir, FILE, &data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifts_survive_the_trip_and_a_bad_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()), (Vec::new(), None));
        let lifts =
            vec![("198.18.0.9/32".parse().unwrap(), 5), ("fd00:1::/64".parse().unwrap(), 6)];
        save(dir.path(), lifts.clone()).unwrap();
        assert_eq!(load(dir.path()), (lifts, None));
        std::fs::write(dir.path().join(FILE), b"{\"version\":1}").unwrap();
        let (none, warning) = load(dir.path());
        assert!(none.is_empty() && warning.unwrap().contains("unusable"));
    }
}
