//! Tiny XDP programs loaded straight through the bpf(2) syscall: the baselines benchmarks
//! divide by (`XDP_DROP`, `XDP_PASS`: `return ACTION`), and the traffic generators run with
//! live frames (`XDP_TX`, and [`RawXdp::spreader`], which writes a random source of N into
//! each frame first). Hand-rolled because each is a dozen instructions at most; shipping them
//! inside the production object just for benchmarks would be dead code there.

use std::{
    ffi::CString,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    path::Path,
};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_PROG_ARRAY: u32 = 3;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_TYPE_XDP: u32 = 6;
/// `expected_attach_type` of XDP programs.
const BPF_XDP: u32 = 37;
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
    /// The map a program reads (the memory ceiling's array), kept open with it.
    _map: Option<OwnedFd>,
}

/// A map with 4-byte keys.
fn create_map(kind: u32, value_size: u32, entries: u32) -> std::io::Result<OwnedFd> {
    let mut attr = Attr::new();
    attr.put_u32(0, kind);
    attr.put_u32(4, 4);
    attr.put_u32(8, value_size);
    attr.put_u32(12, entries);
    let fd = bpf(BPF_MAP_CREATE, &mut attr)?;
    // SAFETY: the kernel returned a new map fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The start of a spreader: `r6 = ctx`, and a random source of the spread written into the
/// frame (unless it is too short to hold one).
fn spread_source(spread: Spread) -> [u64; 10] {
    let (mask, base) = match spread {
        // Little-endian word over [198, 18, A, B]: the draw fills A and B.
        Spread::V4 { sources } => {
            assert!(sources.is_power_of_two() && sources <= 1 << 16, "{sources} sources");
            (((sources - 1) << 16) as i32, 0x12c6)
        }
        Spread::V6 { sources } => {
            assert!(sources.is_power_of_two(), "{sources} sources");
            ((sources - 1) as i32, 0)
        }
    };
    [
        insn(0xbf, 6, 1, 0, 0),                    // r6 = ctx
        insn(0x85, 0, 0, 0, 7),                    // call bpf_get_prandom_u32
        insn(0x61, 2, 6, 0, 0),                    // r2 = ctx->data
        insn(0x61, 3, 6, 4, 0),                    // r3 = ctx->data_end
        insn(0xbf, 4, 2, 0, 0),                    // r4 = r2
        insn(0x07, 4, 0, 0, SOURCE_AT as i32 + 4), // r4 += end of the source bytes
        insn(0x2d, 4, 3, 3, 0),                    // if r4 > r3 skip the write
        insn(0x54, 0, 0, 0, mask),                 // w0 &= mask
        insn(0x44, 0, 0, 0, base),                 // w0 |= base
        insn(0x63, 2, 0, SOURCE_AT, 0),            // *(u32 *)(r2 + 26) = w0
    ]
}

/// One instruction: opcode, registers (dst low nibble, src high), offset, immediate.
const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    code as u64
        | ((dst | src << 4) as u64) << 8
        | (off as u16 as u64) << 16
        | (imm as u32 as u64) << 32
}

/// Where a random source goes: the 4 bytes at frame offset 26, which are the last two octets
/// of an IPv4 source (after 14 bytes of Ethernet and 12 of IPv4) or octets 4–7 of an IPv6
/// source, inside its /64.
const SOURCE_AT: i16 = 26;

/// How a spreader fills the source bytes at [`SOURCE_AT`].
#[derive(Clone, Copy, Debug)]
pub enum Spread {
    /// 198.18.A.B, `sources` (a power of two ≤ 65536) of them.
    V4 { sources: u32 },
    /// A /64 per source under the frame's /32, `sources` (a power of two) of them.
    V6 { sources: u32 },
}

/// Odd multiplier of the memory ceiling's hash: 2^32 over the golden ratio.
const CEILING_MUL: u32 = 0x9e37_79b1;

/// The slot of `slots` the memory ceiling reads for the source word `word`, as its program
/// computes it. A multiplicative hash mixes into its high bits, so the slot comes from those
/// (multiply-shift): a modulo kept the low bits, which an IPv4 flood (varying only the
/// word's top half) leaves nearly constant, and the ceiling read 128 cached slots of its
/// 2^23 at 65,536 sources.
pub const fn ceiling_slot(word: u32, slots: u32) -> u32 {
    ((word.wrapping_mul(CEILING_MUL) as u64 * slots as u64) >> 32) as u32
}

impl RawXdp {
    /// Loads `r0 = action; exit`.
    pub fn load(action: u32) -> RawXdp {
        RawXdp::from_insns(&[(u64::from(action) << 32) | 0xb7, 0x95])
    }

    /// A generator: writes a random source (`bpf_get_prandom_u32`, masked to the spread)
    /// into the frame, then `XDP_TX`. Run with live frames, every transmitted frame gets
    /// its own draw.
    pub fn spreader(spread: Spread) -> RawXdp {
        let mut insns = spread_source(spread).to_vec();
        insns.extend([
            insn(0xb7, 0, 0, 0, XDP_TX as i32), // r0 = XDP_TX
            insn(0x95, 0, 0, 0, 0),             // exit
        ]);
        RawXdp::from_insns(&insns)
    }

    /// A spreader that hands each frame, its source drawn, to `target` (a tail call), so
    /// that `BPF_PROG_TEST_RUN` with `repeat` measures `target` over many sources rather
    /// than one. Returns `XDP_ABORTED` should the tail call fail, which no target here does.
    pub fn spread_into(spread: Spread, target: BorrowedFd<'_>) -> RawXdp {
        let map = create_map(BPF_MAP_TYPE_PROG_ARRAY, 4, 1).expect("create the tail-call map");
        let fd = map.as_raw_fd();
        let mut insns = spread_source(spread).to_vec();
        insns.extend([
            insn(0xbf, 1, 6, 0, 0),  // r1 = ctx
            insn(0x18, 2, 1, 0, fd), // r2 = map (ld_imm64, pseudo map fd)
            insn(0, 0, 0, 0, 0),
            insn(0xb7, 3, 0, 0, 0),  // r3 = 0
            insn(0x85, 0, 0, 0, 12), // call bpf_tail_call
            insn(0xb7, 0, 0, 0, 0),  // r0 = XDP_ABORTED
            insn(0x95, 0, 0, 0, 0),  // exit
        ]);
        let mut prog = RawXdp::from_insns(&insns);
        let mut attr = Attr::new();
        let (key, value) = (0u32, target.as_raw_fd() as u32);
        attr.put_u32(0, fd as u32);
        attr.put_u64(8, &key as *const u32 as u64);
        attr.put_u64(16, &value as *const u32 as u64);
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr).expect("put the target in the tail-call map");
        prog._map = Some(map);
        prog
    }

    /// The memory-latency ceiling of a per-source table of `bytes`: reads one 8-byte slot of
    /// an array that large, chosen by a hash of the source bytes the spreader writes, then
    /// drops. No real limiter can beat it once its state no longer fits in cache.
    pub fn memory_ceiling(bytes: u64) -> RawXdp {
        let slots = i32::try_from(bytes / 8).expect("slots fit in an immediate").max(1) as u32;
        let map = create_map(BPF_MAP_TYPE_ARRAY, 8, slots).expect("create the ceiling's array");
        let fd = map.as_raw_fd();
        let mut prog = RawXdp::from_insns(&[
            insn(0x61, 2, 1, 0, 0),                    // r2 = ctx->data
            insn(0x61, 3, 1, 4, 0),                    // r3 = ctx->data_end
            insn(0xbf, 4, 2, 0, 0),                    // r4 = r2
            insn(0x07, 4, 0, 0, SOURCE_AT as i32 + 4), // r4 += end of the source bytes
            insn(0x2d, 4, 3, 12, 0),                   // if r4 > r3 goto drop
            insn(0x61, 5, 2, SOURCE_AT, 0),            // w5 = the source bytes
            insn(0x24, 5, 0, 0, CEILING_MUL as i32),   // w5 *= CEILING_MUL (hash)
            insn(0x27, 5, 0, 0, slots as i32),         // r5 *= slots
            insn(0x77, 5, 0, 0, 32),                   // r5 >>= 32: ceiling_slot
            insn(0x63, 10, 5, -4, 0),                  // *(u32 *)(fp - 4) = w5
            insn(0xbf, 2, 10, 0, 0),                   // r2 = fp
            insn(0x07, 2, 0, 0, -4),                   // r2 += -4
            insn(0x18, 1, 1, 0, fd),                   // r1 = map (ld_imm64, pseudo map fd)
            insn(0, 0, 0, 0, 0),
            insn(0x85, 0, 0, 0, 1),               // call bpf_map_lookup_elem
            insn(0x15, 0, 0, 1, 0),               // if r0 == 0 goto drop
            insn(0x79, 0, 0, 0, 0),               // r0 = *(u64 *)(r0 + 0)
            insn(0xb7, 0, 0, 0, XDP_DROP as i32), // drop: r0 = XDP_DROP
            insn(0x95, 0, 0, 0, 0),               // exit
        ]);
        prog._map = Some(map);
        prog
    }

    fn from_insns(insns: &[u64]) -> RawXdp {
        let license = c"GPL";
        let mut attr = Attr::new();
        attr.put_u32(0, BPF_PROG_TYPE_XDP);
        attr.put_u32(4, insns.len() as u32);
        attr.put_u64(8, insns.as_ptr() as u64);
        attr.put_u64(16, license.as_ptr() as u64);
        // As aya loads secgate's program: a tail call needs both sides to agree on it.
        attr.put_u32(68, BPF_XDP);
        let fd = bpf(BPF_PROG_LOAD, &mut attr).expect("load a benchmark's tiny XDP program");
        // SAFETY: the kernel returned a new program fd that nothing else owns.
        RawXdp { fd: unsafe { OwnedFd::from_raw_fd(fd as i32) }, _map: None }
    }

    /// The program, for a spreader to tail-call.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// The source word a spreader writes for draw `i` (see [`spread_source`]).
    fn word(spread: Spread, i: u32) -> u32 {
        match spread {
            Spread::V4 { .. } => 0x12c6 | i << 16,
            Spread::V6 { .. } => i,
        }
    }

    /// The ceiling's arithmetic must miss the cache as a per-source table does: a line per
    /// source while the array has lines to spare, and as many as random placement fills
    /// when it has not. At the bench's
    /// size (the limiter table for a million sources, 64 MiB) and one smaller.
    #[test]
    fn the_memory_ceiling_reads_a_line_per_source() {
        for slots in [1 << 23, 1 << 22] {
            reads_a_line_per_source(slots);
        }
    }

    fn reads_a_line_per_source(slots: u32) {
        let lines = slots / 8;
        for spread in [1 << 10, 1 << 16]
            .map(|n| Spread::V4 { sources: n })
            .into_iter()
            .chain([Spread::V6 { sources: 1 << 20 }])
        {
            let n = match spread {
                Spread::V4 { sources } | Spread::V6 { sources } => sources,
            };
            let read: HashSet<u32> =
                (0..n).map(|i| ceiling_slot(word(spread, i), slots) / 8).collect();
            // As many lines as sources placed at random would fill, as a table's are.
            let random = f64::from(lines) * (1.0 - (-f64::from(n) / f64::from(lines)).exp());
            let got = read.len() as f64;
            assert!(got >= 0.95 * random, "{spread:?}: {got} lines, {random:.0} at random");
            assert!(read.iter().all(|&l| l < lines));
        }
    }
}
