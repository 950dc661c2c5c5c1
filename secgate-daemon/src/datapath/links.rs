//! The program's links to interfaces, kept in line with the interfaces that exist.
//!
//! Interfaces come and go (a veth re-created, a NIC driver reloaded): deleting one severs
//! its XDP link while the link's pin stays. So every sync compares, per configured
//! interface, the interface index the kernel reports for the pinned link with the index the
//! name has now: equal means attached; anything else (a severed link reports 0) is replaced
//! with a fresh link; a missing interface waits, without a pin, until it appears.

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::CString,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use aya::programs::{
    Xdp, XdpMode,
    links::{FdLink, PinnedLink},
    xdp::XdpLink,
};
use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_link_info, bpf_link_type};
use tracing::{info, warn};

use super::{DatapathError, Result, io_err, pins::pinned_interfaces};
use crate::{config::AttachMode, views::Attachment};

struct Held {
    /// Kept open so the link stays while the daemon runs; its pin keeps it after.
    _link: FdLink,
    ifindex: u32,
    mode: &'static str,
    napi: Napi,
}

/// What this daemon did to an attached interface's NAPI polling.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Napi {
    Untouched,
    Threaded,
    /// Why the last try failed; tried again on every sync (a veth has no NAPI to thread
    /// until it is up).
    Failed(String),
}

pub struct Links {
    dir: PathBuf,
    held: BTreeMap<String, Held>,
    want: Vec<String>,
    /// Configured interfaces that do not exist, so each is reported once, not every second.
    waiting: BTreeSet<String>,
    /// Interfaces that exist but would not take the program, with the reason.
    failed: BTreeMap<String, String>,
}

impl Links {
    pub(super) fn new(dir: PathBuf) -> Links {
        Links {
            dir,
            held: BTreeMap::new(),
            want: Vec::new(),
            waiting: BTreeSet::new(),
            failed: BTreeMap::new(),
        }
    }

    /// Every configured interface: attached (and how), failed (and why), or waiting for it
    /// to appear.
    pub fn attachments(&self) -> Vec<Attachment> {
        self.want
            .iter()
            .map(|name| {
                let held = self.held.get(name);
                let (state, mode, error) = match (held, self.failed.get(name)) {
                    (Some(h), _) => ("attached", h.mode, None),
                    (None, Some(e)) => ("failed", "none", Some(e.clone())),
                    (None, None) => ("waiting", "none", None),
                };
                Attachment {
                    interface: name.clone(),
                    state: state.into(),
                    mode: mode.into(),
                    ifindex: self.held.get(name).map(|h| h.ifindex),
                    xdp: "none".into(),
                    napi: match held.map(|h| &h.napi) {
                        Some(Napi::Threaded) => "threaded".into(),
                        Some(Napi::Failed(e)) => format!("failed: {e}"),
                        Some(Napi::Untouched) | None => String::new(),
                    },
                    error,
                }
            })
            .collect()
    }

    /// Attaches to every interface in `want` that exists and is not attached (or whose link
    /// was severed), waits for the missing ones, and detaches from interfaces no longer
    /// wanted, including links pinned by an earlier run. Tries every interface; returns the
    /// ones that failed, with why. With `threaded_napi`, each attached interface's NAPI
    /// polling is moved to kernel threads (see [`super::napi`]); a failure there is reported
    /// in the attachment and the log, and leaves the program attached.
    pub(super) fn sync(
        &mut self,
        prog: &mut Xdp,
        want: &[String],
        mode: AttachMode,
        threaded_napi: bool,
    ) -> Vec<(String, DatapathError)> {
        self.want = want.to_vec();
        let mut failures = Vec::new();
        for name in want {
            match self.sync_one(prog, name, mode) {
                Ok(()) => {
                    self.failed.remove(name);
                    if threaded_napi {
                        self.thread_napi(name);
                    }
                }
                Err(e) => {
                    self.failed.insert(name.clone(), e.to_string());
                    failures.push((name.clone(), e));
                }
            }
        }
        let stale: Vec<String> = self
            .held
            .keys()
            .cloned()
            .chain(pinned_interfaces(&self.dir))
            .filter(|i| !want.contains(i))
            .collect();
        self.waiting.retain(|i| want.contains(i));
        self.failed.retain(|i, _| want.contains(i));
        for name in stale {
            match self.release(&name) {
                Ok(()) => info!(interface = %name, "XDP program detached"),
                Err(e) => failures.push((name, e)),
            }
        }
        failures
    }

    /// Makes `name`'s NAPI polling threaded unless this link already has, saying so once
    /// per outcome. Runs under the policy lock, once per link and then only while it fails:
    /// a thread and a mount, about a millisecond.
    fn thread_napi(&mut self, name: &str) {
        let Some(held) = self.held.get_mut(name).filter(|h| h.napi != Napi::Threaded) else {
            return;
        };
        let now = match super::napi::make_threaded(name) {
            Ok(()) => Napi::Threaded,
            Err(e) => Napi::Failed(e),
        };
        if now != held.napi {
            match &now {
                Napi::Threaded => info!(interface = name, "NAPI polling runs in kernel threads"),
                Napi::Failed(e) => {
                    warn!(interface = name, error = %e, "could not make NAPI polling threaded; it stays in softirq, where bans under bursts of offences take milliseconds")
                }
                Napi::Untouched => {}
            }
        }
        held.napi = now;
    }

    fn pin(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn sync_one(&mut self, prog: &mut Xdp, name: &str, mode: AttachMode) -> Result<()> {
        let path = self.pin(name);
        // Any error other than "no such interface" leaves the link as it is: a transient
        // failure (out of descriptors, say) must never take the program off a live interface.
        let pinned = pinned_ifindex(&path).map_err(io_err("reading pinned link", &path))?;
        let index = ifindex(name).map_err(io_err("looking up interface", Path::new(name)))?;
        let Some(ifindex) = index else {
            if self.waiting.insert(name.to_owned()) {
                warn!(
                    interface = name,
                    "interface does not exist; the XDP program is attached when it appears"
                );
            }
            return self.release(name);
        };
        self.waiting.remove(name);
        if pinned == Some(ifindex) && self.held.get(name).is_some_and(|h| h.ifindex == ifindex) {
            return Ok(());
        }
        self.held.remove(name);
        let held = if pinned == Some(ifindex) {
            adopt(prog, name, &path, ifindex)?
        } else {
            if pinned.is_some() {
                warn!(
                    interface = name,
                    "pinned link is severed or on another device; replacing it"
                );
                std::fs::remove_file(&path).map_err(io_err("removing", &path))?;
            }
            // Say so once, not on every retry of an interface that keeps failing.
            let quiet = self.failed.contains_key(name);
            attach_fresh(prog, name, &path, ifindex, mode, quiet)?
        };
        info!(interface = name, mode = held.mode, "XDP program attached");
        self.held.insert(name.to_owned(), held);
        Ok(())
    }

    /// Drops the link to `name` and its pin (which detaches the program if it was attached).
    fn release(&mut self, name: &str) -> Result<()> {
        self.held.remove(name);
        let path = self.pin(name);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("removing", &path)(e)),
            _ => Ok(()),
        }
    }
}

/// Swaps this program into the link pinned at `path` atomically.
fn adopt(prog: &mut Xdp, name: &str, path: &Path, ifindex: u32) -> Result<Held> {
    let link_err =
        |source| DatapathError::Link { iface: name.into(), path: path.to_owned(), source };
    let pinned: FdLink = PinnedLink::from_pin(path).map_err(link_err)?.into();
    let id = prog
        .attach_to_link(XdpLink::try_from(pinned).map_err(link_err)?)
        .map_err(|source| DatapathError::Attach { iface: name.into(), source })?;
    let link = FdLink::try_from(prog.take_link(id)?).map_err(link_err)?;
    Ok(Held { _link: link, ifindex, mode: "adopted", napi: Napi::Untouched })
}

fn attach_fresh(
    prog: &mut Xdp,
    name: &str,
    path: &Path,
    ifindex: u32,
    mode: AttachMode,
    quiet: bool,
) -> Result<Held> {
    let err = |source| DatapathError::Attach { iface: name.into(), source };
    let (id, how) = match mode {
        AttachMode::Native => {
            (prog.attach_to_if_index(ifindex, XdpMode::Driver).map_err(err)?, "native")
        }
        AttachMode::Skb => (prog.attach_to_if_index(ifindex, XdpMode::Skb).map_err(err)?, "skb"),
        AttachMode::Auto => match prog.attach_to_if_index(ifindex, XdpMode::Driver) {
            Ok(id) => (id, "native"),
            Err(e) => {
                if !quiet {
                    warn!(interface = name, error = %e, "native XDP unavailable; falling back to skb (generic) mode, which is slower");
                }
                (prog.attach_to_if_index(ifindex, XdpMode::Skb).map_err(err)?, "skb")
            }
        },
    };
    let link_err =
        |source| DatapathError::Link { iface: name.into(), path: path.to_owned(), source };
    let link = FdLink::try_from(prog.take_link(id)?).map_err(link_err)?;
    let pinned = link.pin(path).map_err(|source| DatapathError::Pin {
        iface: name.into(),
        path: path.to_owned(),
        source,
    })?;
    Ok(Held { _link: pinned.into(), ifindex, mode: how, napi: Napi::Untouched })
}

/// How the kernel runs XDP on `ifindex` (`IFLA_XDP_ATTACHED` from rtnetlink): `native`,
/// `skb`, `hw` or `multiple`; `None` if it could not be asked. A link adopted from a pin does
/// not say the mode it was attached in; the interface does.
pub fn kernel_mode(ifindex: u32) -> Option<&'static str> {
    use rtnetlink::{
        packet_core::{NLM_F_REQUEST, NetlinkMessage, NetlinkPayload},
        packet_route::{
            RouteNetlinkMessage,
            link::{LinkAttribute, LinkMessage, LinkXdp, XdpAttached},
        },
        sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE},
    };
    let mut link = LinkMessage::default();
    link.header.index = ifindex;
    let mut request = NetlinkMessage::from(RouteNetlinkMessage::GetLink(link));
    request.header.flags = NLM_F_REQUEST;
    request.finalize();
    let mut out = vec![0; request.header.length as usize];
    request.serialize(&mut out);
    let socket = Socket::new(NETLINK_ROUTE).ok()?;
    socket.connect(&SocketAddr::new(0, 0)).ok()?;
    socket.send(&out, 0).ok()?;
    let mut reply = Vec::with_capacity(64 * 1024);
    socket.recv(&mut reply, 0).ok()?;
    let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) =
        NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply).ok()?.payload
    else {
        return None;
    };
    link.attributes.into_iter().find_map(|a| match a {
        LinkAttribute::Xdp(xdp) => xdp.into_iter().find_map(|x| match x {
            LinkXdp::Attached(XdpAttached::Driver) => Some("native"),
            LinkXdp::Attached(XdpAttached::SocketBuffer) => Some("skb"),
            LinkXdp::Attached(XdpAttached::Hardware) => Some("hw"),
            LinkXdp::Attached(XdpAttached::Multiple) => Some("multiple"),
            _ => None,
        }),
        _ => None,
    })
}

/// The interface's index now, `None` if there is no such interface.
fn ifindex(name: &str) -> io::Result<Option<u32>> {
    match nix::net::if_::if_nametoindex(name) {
        Ok(0) | Err(nix::errno::Errno::ENODEV | nix::errno::Errno::ENXIO) => Ok(None),
        Ok(i) => Ok(Some(i)),
        Err(e) => Err(e.into()),
    }
}

/// The interface index the kernel reports for the XDP link pinned at `path`: `Some(0)` for a
/// severed link (its interface was deleted) or a pin that is not an XDP link, `None` when
/// nothing is pinned there; an error when the kernel could not be asked.
///
/// Hand-rolled `BPF_OBJ_GET` and `BPF_OBJ_GET_INFO_BY_FD`: aya's `LinkInfo` does not expose
/// the XDP part of `bpf_link_info`.
fn pinned_ifindex(path: &Path) -> io::Result<Option<u32>> {
    use std::os::unix::ffi::OsStrExt as _;
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: an all-zero bpf_attr is the documented starting point for every command.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.__bindgen_anon_4.pathname = c_path.as_ptr() as u64;
    let fd = match bpf(bpf_cmd::BPF_OBJ_GET, &mut attr) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    // SAFETY: BPF_OBJ_GET returned a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: plain data; the kernel fills what it knows.
    let mut info: bpf_link_info = unsafe { std::mem::zeroed() };
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.info.bpf_fd = fd.as_raw_fd() as u32;
    attr.info.info = std::ptr::from_mut(&mut info) as u64;
    attr.info.info_len = size_of::<bpf_link_info>() as u32;
    bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    if info.type_ != bpf_link_type::BPF_LINK_TYPE_XDP as u32 {
        return Ok(Some(0));
    }
    // SAFETY: the kernel filled the XDP member for an XDP link.
    Ok(Some(unsafe { info.__bindgen_anon_1.xdp.ifindex }))
}

fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<i64> {
    // SAFETY: `attr` is a valid, zero-initialised bpf_attr of the size passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            std::ptr::from_mut(attr),
            size_of::<bpf_attr>(),
        )
    };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}
