//! The pinned host-ban tables read and written from outside the daemon, as a test sees a
//! restart or an upgrade: through the kernel's own map syscalls, not the daemon's code.

use std::{net::Ipv4Addr, os::fd::AsRawFd, path::Path};

use aya::maps::{Array, Map, MapData};
use secgate_common::{
    hosts::{HOST_SETS, HostInfo, HostSet, HostSlot, host_key_v4, host_sets, lookup},
    maps::{DenyEntry, HOST_BANS_V4, HOST_INFO, HOSTS_V4},
};

fn array<V: aya::Pod>(maps_dir: &Path, name: &str) -> Array<MapData, V> {
    let data = MapData::from_pin(maps_dir.join(name)).expect("pinned map");
    Array::try_from(Map::Array(data)).expect("an array map")
}

/// The IPv4 host table's info: its hash key and host count.
pub fn info_v4(maps_dir: &Path) -> HostInfo {
    array::<HostInfo>(maps_dir, HOST_INFO).get(&HOSTS_V4, 0).expect("host info")
}

/// The ban the pinned IPv4 table holds for `host`, found as the program finds it.
pub fn ban_v4(maps_dir: &Path, host: Ipv4Addr) -> Option<DenyEntry> {
    let sets = array::<HostSet>(maps_dir, HOST_BANS_V4);
    let key = host_key_v4(host.octets());
    let info = info_v4(maps_dir);
    let [a, b] = host_sets(info.seed, HOST_SETS, key);
    let (a, b) = (sets.get(&a, 0).expect("set"), sets.get(&b, 0).expect("set"));
    lookup([&a, &b], key, info.spill_counted())
}

/// Writes a ban on `host` into the pinned table without counting it, as a daemon killed
/// between the two writes leaves it.
pub fn plant_uncounted_v4(maps_dir: &Path, host: Ipv4Addr, entry: DenyEntry) {
    let mut sets = array::<HostSet>(maps_dir, HOST_BANS_V4);
    let key = host_key_v4(host.octets());
    let [a, _] = host_sets(info_v4(maps_dir).seed, HOST_SETS, key);
    let mut set = sets.get(&a, 0).expect("set");
    let way = set.free_slot().expect("a free slot");
    set.slots[way] = HostSlot::holding(key, entry);
    sets.set(a, set, 0).expect("write the set");
}

/// Pins, in `maps_dir`, the hash maps and flags the previous build kept host bans in
/// (`SG_DENY_HOSTS_V4/V6`, `SG_DENY_HOSTS_EMPTY`), holding `v4` as its daemon wrote them.
/// Made with raw `BPF_MAP_CREATE`: aya makes maps only from an object's definitions, and this
/// build's object no longer has these.
pub fn pin_previous_build_hosts(maps_dir: &Path, v4: &[(Ipv4Addr, DenyEntry)]) {
    let v4_map = create(BPF_MAP_TYPE_HASH, 4, 8, 1 << 20, BPF_F_NO_PREALLOC);
    let v6_map = create(BPF_MAP_TYPE_HASH, 8, 8, 1 << 20, BPF_F_NO_PREALLOC);
    let empty = create(BPF_MAP_TYPE_ARRAY, 4, 4, 2, 0);
    for (host, entry) in v4 {
        update(&v4_map, &host.octets(), &entry.expires_ns.to_ne_bytes());
    }
    update(&empty, &1u32.to_ne_bytes(), &1u32.to_ne_bytes());
    for (fd, name) in
        [(v4_map, "SG_DENY_HOSTS_V4"), (v6_map, "SG_DENY_HOSTS_V6"), (empty, "SG_DENY_HOSTS_EMPTY")]
    {
        pin(&fd, &maps_dir.join(name));
    }
}

/// `bpf(2)` commands, map types and flags (uapi `linux/bpf.h`).
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_F_NO_PREALLOC: u32 = 1;

/// The first fields of `union bpf_attr` each command below reads; the rest stays zero.
#[repr(C)]
#[derive(Default)]
struct Attr {
    words: [u64; 16],
}

fn bpf(cmd: libc::c_long, attr: &Attr) -> i64 {
    // SAFETY: `attr` is as large as every command here reads, and lives across the call.
    let ret =
        unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *const Attr, size_of::<Attr>() as u32) };
    assert!(ret >= 0, "bpf({cmd}): {}", std::io::Error::last_os_error());
    ret
}

fn create(kind: u32, key: u32, value: u32, entries: u32, flags: u32) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    let mut attr = Attr::default();
    attr.words[0] = u64::from(kind) | u64::from(key) << 32;
    attr.words[1] = u64::from(value) | u64::from(entries) << 32;
    attr.words[2] = u64::from(flags);
    let fd = bpf(BPF_MAP_CREATE, &attr);
    // SAFETY: a new descriptor the kernel just returned, owned by nothing else.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) }
}

fn update(map: &std::os::fd::OwnedFd, key: &[u8], value: &[u8]) {
    let mut attr = Attr::default();
    attr.words[0] = map.as_raw_fd() as u64;
    attr.words[1] = key.as_ptr() as u64;
    attr.words[2] = value.as_ptr() as u64;
    bpf(BPF_MAP_UPDATE_ELEM, &attr);
}

fn pin(map: &std::os::fd::OwnedFd, path: &Path) {
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    let mut attr = Attr::default();
    attr.words[0] = path.as_ptr() as u64;
    attr.words[1] = map.as_raw_fd() as u64;
    bpf(BPF_OBJ_PIN, &attr);
}
