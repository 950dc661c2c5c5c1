//! Running an interface's NAPI polling in kernel threads (`datapath.napi = "threaded"`).
//!
//! By default the kernel polls receive queues in softirq context, up to
//! `netdev_budget_usecs` (2 ms) at a stretch, and on a kernel without full preemption no
//! thread, real-time or not, runs on that CPU meanwhile. Under a burst of offending
//! connections that is what stands between an offence and its ban (the escalation
//! benchmark's p99 is 2.7 ms softirq, 0.25 ms threaded). In a kernel thread the polling is an
//! ordinary SCHED_OTHER task the escalation worker preempts.
//!
//! The switch is `/sys/class/net/IFACE/threaded`; rtnetlink has no attribute for it. sysfs
//! shows the network namespace of whoever mounted it, not of the reader, and a daemon put in
//! a namespace with `nsenter --net` still sees the host's `/sys`. So the write happens on a
//! short-lived thread in a mount namespace of its own, with a sysfs mounted there for the
//! daemon's network namespace; nothing of it is visible outside that thread.

use std::{io, io::Write as _, path::Path};

use nix::{
    mount::{MsFlags, mount},
    sched::{CloneFlags, unshare},
};

/// Turns threaded NAPI on for `iface` and reads it back; an error says why it could not be.
pub fn make_threaded(iface: &str) -> Result<(), String> {
    match in_own_sysfs(iface, Some("1"))? {
        true => Ok(()),
        false => Err(format!("/sys/class/net/{iface}/threaded reads 0 after writing 1")),
    }
}

/// Whether `iface` polls in threads now, as the kernel says (for `secgate status`).
pub fn threaded(iface: &str) -> Result<bool, String> {
    in_own_sysfs(iface, None)
}

/// Writes `value` (if any) to `iface`'s `threaded` attribute and reads it back, on a thread
/// of its own with a sysfs of the daemon's network namespace.
fn in_own_sysfs(iface: &str, value: Option<&'static str>) -> Result<bool, String> {
    let iface = iface.to_owned();
    let worker = std::thread::Builder::new()
        .name("secgate-napi".into())
        .spawn(move || {
            private_sysfs()?;
            let path = Path::new("/sys/class/net").join(&iface).join("threaded");
            if let Some(value) = value {
                // No O_CREAT: sysfs cannot create, and would answer EACCES instead of ENOENT.
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| describe(&path, &e))?;
                file.write_all(value.as_bytes()).map_err(|e| describe(&path, &e))?;
            }
            let now = std::fs::read_to_string(&path).map_err(|e| describe(&path, &e))?;
            Ok(now.trim() != "0")
        })
        .map_err(|e| format!("starting a thread: {e}"))?;
    worker.join().map_err(|_| "the sysfs worker panicked".to_owned())?
}

fn private_sysfs() -> Result<(), String> {
    let denied = |what: &str, e: nix::Error| match e {
        nix::Error::EPERM => format!(
            "{what}: {e}: the daemon needs CAP_SYS_ADMIN and may create mount namespaces (the packaged unit allows both); set datapath.napi = \"kernel\" to do without"
        ),
        e => format!("{what}: {e}"),
    };
    unshare(CloneFlags::CLONE_NEWNS).map_err(|e| denied("unsharing the mount namespace", e))?;
    // Private first: on a shared root the sysfs mount below would propagate to the host.
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .map_err(|e| denied("making mounts private", e))?;
    mount(Some("sysfs"), "/sys", Some("sysfs"), MsFlags::empty(), None::<&str>)
        .map_err(|e| denied("mounting a sysfs for the daemon's network namespace on /sys", e))
}

fn describe(path: &Path, e: &io::Error) -> String {
    match e.raw_os_error() {
        // The kernel's answer for a device without NAPI instances (ifb; a veth that is down).
        Some(libc::EOPNOTSUPP) => format!(
            "{}: {e}: the interface has no NAPI polling to thread (yet: it is retried while the interface is configured)",
            path.display()
        ),
        Some(libc::ENOENT) => format!(
            "{}: the interface is gone, or the kernel predates threaded NAPI (5.12)",
            path.display()
        ),
        _ => format!("{}: {e}", path.display()),
    }
}
