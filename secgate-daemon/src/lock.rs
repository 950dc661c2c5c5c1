//! One daemon per `pin_path` and per `state_dir`, in directories only root can change.
//!
//! An exclusive `flock` on each is taken before any map, link or state file is touched. Two
//! daemons on one set of pins would each swap their program into the links and overwrite
//! each other's state file; `secgate detach` under a running daemon would pull the filter out
//! from under it. The locks are held by open descriptors, so the kernel drops them when the
//! process dies, `kill -9` included: there is never a stale lock to clean up.
//!
//! Both directories and every directory above them must be root's and closed to other
//! users' writes (a sticky, root-owned `/tmp` or bpffs root is fine): a user who could write
//! there could unlink a pinned link (detaching XDP), replace the state file, or hold the lock
//! to keep the daemon from starting. The lock is taken on the pin directory itself (mode
//! 0700) and on `state_dir/.lock` (mode 0600), which no other user can open.

use std::{
    fs::File,
    os::unix::fs::{
        DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _,
    },
    path::{Path, PathBuf},
};

use nix::fcntl::{Flock, FlockArg};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "{path} is locked by another secgate daemon (pid {holder}); stop it first, or give this one its own datapath.pin_path and state_dir"
    )]
    Held { path: PathBuf, holder: String },
    #[error(
        "{path} is {why}: another user could change what secgate keeps there; make it root's and mode 0700 (or remove it), then start again"
    )]
    Unsafe { path: PathBuf, why: String },
    #[error("locking {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// Held for the daemon's lifetime (or for the duration of `secgate detach`).
#[derive(Debug)]
pub struct InstanceLock {
    _locks: Vec<Flock<File>>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LockError + '_ {
    move |source| LockError::Io { path: path.to_owned(), source }
}

impl InstanceLock {
    /// Locks the pin directory and the state directory, creating both (mode 0700) if needed.
    pub fn acquire(pin_path: &Path, state_dir: &Path) -> Result<InstanceLock, LockError> {
        private_dir(pin_path)?;
        private_dir(state_dir)?;
        let pins = File::open(pin_path).map_err(io(pin_path))?;
        let state_lock = state_dir.join(".lock");
        let state = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&state_lock)
            .map_err(io(&state_lock))?;
        let locks = [(pins, pin_path), (state, state_dir)]
            .into_iter()
            .map(|(file, shown)| {
                Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(file, errno)| {
                    if errno == nix::errno::Errno::EWOULDBLOCK {
                        LockError::Held { path: shown.to_owned(), holder: holder(&file) }
                    } else {
                        LockError::Io { path: shown.to_owned(), source: errno.into() }
                    }
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(InstanceLock { _locks: locks })
    }
}

/// Creates `dir` (mode 0700) if needed, closes it to other users if it is root's, and refuses
/// it if it or a directory above it is not root's or is writable by other users.
pub fn private_dir(dir: &Path) -> Result<(), LockError> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io(dir))?;
    let meta = std::fs::metadata(dir).map_err(io(dir))?;
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(LockError::Unsafe {
            path: dir.to_owned(),
            why: format!("owned by uid {}", meta.uid()),
        });
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
    }
    for above in dir.ancestors().skip(1) {
        let meta = std::fs::metadata(above).map_err(io(above))?;
        let sticky = meta.mode() & 0o1000 != 0;
        if meta.uid() != 0 && meta.uid() != nix::unistd::geteuid().as_raw() {
            return Err(LockError::Unsafe {
                path: above.to_owned(),
                why: format!("owned by uid {}", meta.uid()),
            });
        }
        if meta.mode() & 0o022 != 0 && !sticky {
            return Err(LockError::Unsafe {
                path: above.to_owned(),
                why: "writable by other users".into(),
            });
        }
    }
    Ok(())
}

/// The pid holding the lock on `file`, from `/proc/locks` (by device and inode), for the
/// error message.
fn holder(file: &File) -> String {
    let Ok(meta) = file.metadata() else { return "unknown".into() };
    let (major, minor) = (nix::sys::stat::major(meta.dev()), nix::sys::stat::minor(meta.dev()));
    let id = format!("{major:02x}:{minor:02x}:{}", meta.ino());
    std::fs::read_to_string("/proc/locks")
        .ok()
        .and_then(|locks| {
            locks.lines().find_map(|l| {
                let fields: Vec<&str> = l.split_whitespace().collect();
                (fields.get(1) == Some(&"FLOCK") && fields.get(5) == Some(&id.as_str()))
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

    #[test]
    fn directories_other_users_can_change_are_refused() {
        // Regression: the lock was a flock on the state directory, which any user who could
        // read it (0755) could take first, and nothing checked who could write there.
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = InstanceLock::acquire(&open.join("pins"), &dir.path().join("state")).unwrap_err();
        assert!(err.to_string().contains("writable by other users"), "{err}");
        let mine = dir.path().join("mine");
        std::fs::create_dir(&mine).unwrap();
        std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o755)).unwrap();
        InstanceLock::acquire(&dir.path().join("pins"), &mine)
            .expect("an open dir of ours is closed");
        assert_eq!(std::fs::metadata(&mine).unwrap().mode() & 0o777, 0o700);
    }
}
