//! Two-instruction XDP programs (`return ACTION`) loaded straight through the bpf(2) syscall:
//! the baselines benchmarks divide by (`XDP_DROP`), the pass-through that lets a veth take
//! frames for nftables to judge (`XDP_PASS`), and the traffic generator (`XDP_TX` run with
//! live frames). Hand-rolled because each is two instructions; shipping them inside the
//! production object just for benchmarks would be dead code there.

use std::{
    ffi::CString,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

/// `union bpf_attr` is larger than any command's fields; the kernel wants the rest zeroed.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Attr {
        Attr([0; 128])
    }

    fn put_u32(&mut self, off: usize, v: u32) {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
    }

    fn put_u64(&mut self, off: usize, v: u64) {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
    }

    fn u32(&self, off: usize) -> u32 {
        u32::from_ne_bytes(self.0[off..off + 4].try_into().expect("4 bytes"))
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> std::io::Result<i64> {
    // SAFETY: `attr` is a valid, zero-padded bpf_attr of the size passed.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut Attr, size_of::<Attr>()) };
    if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(r) }
}

pub struct RawXdp {
    fd: OwnedFd,
}

impl RawXdp {
    /// Loads `r0 = action; exit`.
    pub fn load(action: u32) -> RawXdp {
        let insns: [u64; 2] = [(u64::from(action) << 32) | 0xb7, 0x95];
        let license = c"GPL";
        let mut attr = Attr::new();
        attr.put_u32(0, BPF_PROG_TYPE_XDP);
        attr.put_u32(4, insns.len() as u32);
        attr.put_u64(8, insns.as_ptr() as u64);
        attr.put_u64(16, license.as_ptr() as u64);
        let fd = bpf(BPF_PROG_LOAD, &mut attr).expect("load a two-instruction XDP program");
        // SAFETY: the kernel returned a new program fd that nothing else owns.
        RawXdp { fd: unsafe { OwnedFd::from_raw_fd(fd as i32) } }
    }

    /// Runs `frame` `repeat` times; returns (XDP action, mean ns per run).
    pub fn run(&self, frame: &[u8], repeat: u32) -> (u32, u32) {
        let mut attr = self.test_attr(frame, repeat);
        bpf(BPF_PROG_TEST_RUN, &mut attr).expect("BPF_PROG_TEST_RUN");
        (attr.u32(4), attr.u32(36))
    }

    /// Runs `frame` `repeat` times as live frames received on `ifindex` (of the calling
    /// thread's namespace): with `XDP_TX` each run transmits the frame out of that interface.
    pub fn run_live(&self, frame: &[u8], repeat: u32, ifindex: u32) -> std::io::Result<()> {
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex
        let ctx: [u32; 6] = [0, frame.len() as u32, 0, ifindex, 0, 0];
        let mut attr = self.test_attr(frame, repeat);
        attr.put_u32(40, size_of_val(&ctx) as u32);
        attr.put_u64(48, ctx.as_ptr() as u64);
        attr.put_u32(64, BPF_F_TEST_XDP_LIVE_FRAMES);
        attr.put_u32(72, 64);
        bpf(BPF_PROG_TEST_RUN, &mut attr).map(|_| ())
    }

    fn test_attr(&self, frame: &[u8], repeat: u32) -> Attr {
        let mut attr = Attr::new();
        attr.put_u32(0, self.fd.as_raw_fd() as u32);
        attr.put_u32(8, frame.len() as u32);
        attr.put_u64(16, frame.as_ptr() as u64);
        attr.put_u32(32, repeat);
        attr
    }

    /// Pins the program (for `ip link set … xdp pinned PATH`).
    pub fn pin(&self, path: &Path) -> std::io::Result<()> {
        let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(std::io::Error::other)?;
        let mut attr = Attr::new();
        attr.put_u64(0, c.as_ptr() as u64);
        attr.put_u32(8, self.fd.as_raw_fd() as u32);
        bpf(BPF_OBJ_PIN, &mut attr).map(|_| ())
    }
}
