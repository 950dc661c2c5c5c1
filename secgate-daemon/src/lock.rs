//! One daemon per `pin_path` and per `state_dir`, in directories only root can change.
//!
//! An exclusive `flock` on each is taken before any map, link or state file is touched. Two
//! daemons on one set of pins would each swap their program into the links and overwrite
//! each other's state file; `secgate detach` under a running daemon would pull the filter out
//! from under it. The locks are held by open descriptors, so the kernel drops them when the
//! process dies, `kill -9` included: there is never a stale lock to clean up.
//!
//! The locks are files of mode 0600 in directories only root can write: `state_dir/.lock`,
//! and for the pins (bpffs holds no plain files) a file named after `pin_path` in
//! [`LOCK_DIR`]. No other user can open them, so none can take a lock first to keep the daemon
//! from starting.
//!
//! Every directory secgate keeps things in must be root's and closed to other users'
//! writes, and so must every directory above it (a sticky, root-owned `/tmp` or bpffs root
//! is fine): a user who could write there could unlink a pinned link (detaching XDP),
//! replace the state file, or plant a file where a pin must go. Directories secgate creates
//! get mode 0700; existing ones are checked, never changed.

use std::{
    fs::File,
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use nix::fcntl::{Flock, FlockArg};

/// Where the pin locks live.
pub const LOCK_DIR: &str = "/run/secgate/locks";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "{path} is locked by another secgate daemon (pid {holder}); stop it first, or give this one its own datapath.pin_path and state_dir"
    )]
    Held { path: PathBuf, holder: String },
    #[error(
        "{path} is {why}: another user could change what secgate keeps there; make it root's and not writable by others (or remove it), then start again"
    )]
    Unsafe { path: PathBuf, why: String },
    #[error("{path}: {source}")]
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
    /// Locks the pins and the state directory, creating the directories (mode 0700) if needed.
    pub fn acquire(pin_path: &Path, state_dir: &Path) -> Result<InstanceLock, LockError> {
        Self::acquire_in(Path::new(LOCK_DIR), pin_path, state_dir)
    }

    fn acquire_in(
        lock_dir: &Path,
        pin_path: &Path,
        state_dir: &Path,
    ) -> Result<InstanceLock, LockError> {
        private_dir(pin_path)?;
        private_dir(state_dir)?;
        private_dir(lock_dir)?;
        let pins = lock_dir.join(lock_name(pin_path));
        let locks = [(pins, pin_path), (state_dir.join(".lock"), state_dir)]
            .into_iter()
            .map(|(file, shown)| lock(&file, shown))
            .collect::<Result<_, _>>()?;
        Ok(InstanceLock { _locks: locks })
    }
}

/// The lock file of `pin_path` (left in place: removing a lock file while another process may
/// be opening it would let two processes hold "the" lock).
pub fn pin_lock_file(pin_path: &Path) -> PathBuf {
    Path::new(LOCK_DIR).join(lock_name(pin_path))
}

/// The lock file's name for `pin_path`: the path with `%` and `/` escaped, so that no two
/// paths share one.
fn lock_name(pin_path: &Path) -> String {
    let path = pin_path.to_string_lossy().replace('%', "%25").replace('/', "%2F");
    format!("pins{path}.lock")
}

fn lock(file: &Path, shown: &Path) -> Result<Flock<File>, LockError> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(file)
        .map_err(io(file))?;
    Flock::lock(f, FlockArg::LockExclusiveNonblock).map_err(|(f, errno)| {
        if errno == nix::errno::Errno::EWOULDBLOCK {
            LockError::Held { path: shown.to_owned(), holder: holder(&f) }
        } else {
            LockError::Io { path: shown.to_owned(), source: errno.into() }
        }
    })
}

/// Creates `dir` (and what is missing above it, mode 0700) and refuses it if, after symlinks
/// are resolved, it or a directory above it is not root's or can be written by other users.
pub fn private_dir(dir: &Path) -> Result<(), LockError> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io(dir))?;
    let real = dir.canonicalize().map_err(io(dir))?;
    let me = nix::unistd::geteuid().as_raw();
    for (depth, path) in real.ancestors().enumerate() {
        let meta = std::fs::metadata(path).map_err(io(path))?;
        if meta.uid() != 0 && meta.uid() != me {
            return Err(LockError::Unsafe {
                path: path.to_owned(),
                why: format!("owned by uid {}", meta.uid()),
            });
        }
        // Above the directory a sticky bit keeps others from replacing what is ours; in the
        // directory itself they could still add entries.
        let sticky = depth > 0 && meta.mode() & 0o1000 != 0;
        if meta.mode() & 0o022 != 0 && !sticky {
            let why = "writable by other users".to_string();
            return Err(LockError::Unsafe { path: path.to_owned(), why });
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
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn lock_in(dir: &Path, pins: &Path, state: &Path) -> Result<InstanceLock, LockError> {
        InstanceLock::acquire_in(&dir.join("locks"), pins, state)
    }

    #[test]
    fn a_second_lock_is_refused_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let (pins, state) = (dir.path().join("pins"), dir.path().join("state"));
        let held = lock_in(dir.path(), &pins, &state).expect("first lock");
        let err = lock_in(dir.path(), &pins, &dir.path().join("other")).expect_err("same pins");
        let msg = err.to_string();
        assert!(msg.contains("locked by another secgate daemon"), "{msg}");
        assert!(msg.contains(&format!("pid {}", std::process::id())), "{msg}");
        let err = lock_in(dir.path(), &dir.path().join("pins2"), &state).expect_err("same state");
        assert!(err.to_string().contains(&state.display().to_string()), "{err}");
        drop(held);
        lock_in(dir.path(), &pins, &state).expect("free again once dropped");
    }

    #[test]
    fn directories_other_users_can_change_are_refused_and_left_alone() {
        // Regression: the lock was a flock on the state directory, which any user who could
        // read it could take first, and nothing checked who could write there.
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = lock_in(dir.path(), &open.join("pins"), &dir.path().join("state")).unwrap_err();
        assert!(err.to_string().contains("writable by other users"), "{err}");
        let err = lock_in(dir.path(), &dir.path().join("pins"), &open).unwrap_err();
        assert!(err.to_string().contains("writable by other users"), "{err}");
        assert_eq!(std::fs::metadata(&open).unwrap().mode() & 0o777, 0o777, "left as it was");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&open, &link).unwrap();
        let err = lock_in(dir.path(), &dir.path().join("pins"), &link).unwrap_err();
        assert!(
            err.to_string().contains("writable by other users"),
            "through a symlink too: {err}"
        );
        let readable = dir.path().join("readable");
        std::fs::create_dir(&readable).unwrap();
        std::fs::set_permissions(&readable, std::fs::Permissions::from_mode(0o755)).unwrap();
        lock_in(dir.path(), &dir.path().join("pins"), &readable)
            .expect("readable by others is fine");
        assert_eq!(std::fs::metadata(&readable).unwrap().mode() & 0o777, 0o755, "left as it was");
    }
}
