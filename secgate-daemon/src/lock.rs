//! One daemon per `pin_path` and per `state_dir`: an exclusive `flock` on each, taken before
//! any map, link or state file is touched. Two daemons on one set of pins would each swap
//! their program into the links and overwrite each other's state file; `secgate detach`
//! under a running daemon would pull the filter out from under it.
//!
//! The locks are advisory and held by open descriptors, so the kernel drops them when the
//! process dies, `kill -9` included: there is never a stale lock to clean up.

use std::{
    fs::File,
    path::{Path, PathBuf},
};

use nix::fcntl::{Flock, FlockArg};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "{path} is locked by another secgate daemon (pid {holder}); stop it first, or give this one its own datapath.pin_path and state_dir"
    )]
    Held { path: PathBuf, holder: String },
    #[error("locking {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// Held for the daemon's lifetime (or for the duration of `secgate detach`).
#[derive(Debug)]
pub struct InstanceLock {
    _locks: Vec<Flock<File>>,
}

impl InstanceLock {
    /// Locks the pin directory and the state directory, creating both if needed.
    pub fn acquire(pin_path: &Path, state_dir: &Path) -> Result<InstanceLock, LockError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| LockError::Io { path, source }
        };
        let mut locks = Vec::new();
        for dir in [pin_path, state_dir] {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
            let file = File::open(dir).map_err(io(dir))?;
            let lock =
                Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
                    if errno == nix::errno::Errno::EWOULDBLOCK {
                        LockError::Held { path: dir.to_owned(), holder: holder(dir) }
                    } else {
                        LockError::Io { path: dir.to_owned(), source: errno.into() }
                    }
                })?;
            locks.push(lock);
        }
        Ok(InstanceLock { _locks: locks })
    }
}

/// The pid holding the lock on `dir`, from `/proc/locks` (by inode), for the error message.
fn holder(dir: &Path) -> String {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(meta) = std::fs::metadata(dir) else { return "unknown".into() };
    let inode = format!(":{}", meta.ino());
    std::fs::read_to_string("/proc/locks")
        .ok()
        .and_then(|locks| {
            locks.lines().find_map(|l| {
                let fields: Vec<&str> = l.split_whitespace().collect();
                (fields.get(1) == Some(&"FLOCK")
                    && fields.get(5).is_some_and(|f| f.ends_with(&inode)))
                .then(|| fields[4].to_string())
            })
        })
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let (pins, state) = (dir.path().join("pins"), dir.path().join("state"));
        let held = InstanceLock::acquire(&pins, &state).expect("first lock");
        let err = InstanceLock::acquire(&pins, &state).expect_err("second lock");
        let msg = err.to_string();
        assert!(msg.contains("locked by another secgate daemon"), "{msg}");
        assert!(msg.contains(&format!("pid {}", std::process::id())), "{msg}");
        drop(held);
        InstanceLock::acquire(&pins, &state).expect("free again once dropped");
    }
}
