//! A bare "return XDP_DROP" program, loaded straight through the bpf(2) syscall: the
//! baseline the benchmarks divide by. Hand-rolled because it is two instructions, and
//! shipping it inside the production object just for benchmarks would be dead code there.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_TYPE_XDP: u32 = 6;

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
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

pub struct BareDrop {
    fd: OwnedFd,
}

impl BareDrop {
    pub fn load() -> BareDrop {
        // r0 = XDP_DROP (1); exit
        let insns: [u64; 2] = [0x0000_0001_0000_00b7, 0x0000_0000_0000_0095];
        let license = c"GPL";
        let mut attr = Attr::new();
        attr.put_u32(0, BPF_PROG_TYPE_XDP);
        attr.put_u32(4, insns.len() as u32);
        attr.put_u64(8, insns.as_ptr() as u64);
        attr.put_u64(16, license.as_ptr() as u64);
        let fd = bpf(BPF_PROG_LOAD, &mut attr).expect("load bare XDP drop program");
        // SAFETY: the kernel returned a new program fd that nothing else owns.
        BareDrop {
            fd: unsafe { OwnedFd::from_raw_fd(fd as i32) },
        }
    }

    /// Runs `frame` `repeat` times; returns (XDP action, mean ns per run).
    pub fn run(&self, frame: &[u8], repeat: u32) -> (u32, u32) {
        let mut attr = Attr::new();
        attr.put_u32(0, self.fd.as_raw_fd() as u32);
        attr.put_u32(8, frame.len() as u32);
        attr.put_u64(16, frame.as_ptr() as u64);
        attr.put_u32(32, repeat);
        bpf(BPF_PROG_TEST_RUN, &mut attr).expect("BPF_PROG_TEST_RUN");
        (attr.u32(4), attr.u32(36))
    }
}
