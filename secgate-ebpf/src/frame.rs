//! One bounds-checked accessor for every packet read.

use aya_ebpf::programs::XdpContext;
use secgate_common::net::MAX_HEADER_BYTES;

pub struct Frame {
    start: usize,
    end: usize,
}

impl Frame {
    #[inline(always)]
    pub fn new(ctx: &XdpContext) -> Frame {
        Frame { start: ctx.data(), end: ctx.data_end() }
    }

    #[inline(always)]
    pub fn len(&self) -> u64 {
        (self.end - self.start) as u64
    }

    /// A pointer to `len` readable bytes at `off`, or `None` past the frame or past
    /// `MAX_HEADER_BYTES` (the bound also tells the verifier `off` is small).
    ///
    /// `off` is bounded before it is subtracted from, so neither comparison can wrap whatever
    /// `len` is. (`off > MAX_HEADER_BYTES - len` wrapped for an IPv6 extension header longer
    /// than 512 bytes and let a 2 KiB chain ending in a protocol without ports through as
    /// well-formed.)
    #[inline(always)]
    fn at(&self, off: usize, len: usize) -> Option<*const u8> {
        if off > MAX_HEADER_BYTES || len > MAX_HEADER_BYTES - off {
            return None;
        }
        // The barrier stops LLVM from re-deriving the read address from another base (say
        // `(start + 8) + off`), which the verifier could not tie to this bounds check.
        let p = core::hint::black_box(self.start + off);
        if p + len > self.end {
            return None;
        }
        Some(p as *const u8)
    }

    /// Checks that `len` bytes at `off` are inside the frame.
    #[inline(always)]
    pub fn need(&self, off: usize, len: usize) -> Option<()> {
        self.at(off, len).map(|_| ())
    }

    #[inline(always)]
    pub fn u8(&self, off: usize) -> Option<u8> {
        // SAFETY: `at` checked the byte is inside the packet.
        self.at(off, 1).map(|p| unsafe { *p })
    }

    #[inline(always)]
    pub fn be16(&self, off: usize) -> Option<u16> {
        // SAFETY: `at` checked both bytes are inside the packet; packet reads may be unaligned.
        self.at(off, 2).map(|p| u16::from_be(unsafe { core::ptr::read_unaligned(p as *const u16) }))
    }

    #[inline(always)]
    pub fn bytes<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        // SAFETY: `at` checked all N bytes are inside the packet.
        self.at(off, N).map(|p| unsafe { core::ptr::read_unaligned(p as *const [u8; N]) })
    }
}
