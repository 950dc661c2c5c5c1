//! Reference frame parser: plain slice indexing, written for clarity rather than for the
//! verifier, so that the kernel parser can be checked against it.

use crate::maps::{FAMILY_V4, FAMILY_V6};
use crate::net::*;

/// What the limiter needs to know about an IP packet. The source address comes first and
/// 8-aligned, so the datapath masks and hashes it as two words rather than 16 bytes.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    /// Source address; IPv4 in the first four bytes.
    pub src: [u8; 16],
    pub family: u8,
    /// Final protocol (after IPv6 extension headers).
    pub proto: u8,
    /// A non-first fragment: it carries no L4 header and is limited in its own bucket.
    pub fragment: bool,
    /// Whether `ports` holds an L4 header's facts (see [`Packet::l4`]).
    has_l4: bool,
    /// Zero without an L4 header. Not an `Option`: the bytes of a `None` are undefined, and
    /// the compiler filled them from whatever register was at hand, once a pointer, which
    /// the verifier refuses to see stored in part.
    ports: L4,
}

const _: () = assert!(core::mem::offset_of!(Packet, src) == 0, "src_words reads it aligned");

impl Packet {
    #[inline(always)]
    pub fn new(family: u8, src: [u8; 16], proto: u8, l4: Option<L4>, fragment: bool) -> Packet {
        let ports = l4.unwrap_or(L4 { sport: 0, dport: 0, syn: false });
        Packet { src, family, proto, fragment, has_l4: l4.is_some(), ports }
    }

    /// L4 facts, absent for non-first fragments and protocols without ports.
    #[inline(always)]
    pub fn l4(&self) -> Option<L4> {
        if self.has_l4 { Some(self.ports) } else { None }
    }

    /// The source address as two words in memory order, read as such: built from bytes, the
    /// compiler for BPF (which has no unaligned loads) would load them one by one.
    #[inline(always)]
    pub fn src_words(&self) -> [u64; 2] {
        // SAFETY: `src` is the first field of an 8-aligned struct (asserted above), and any
        // 16 bytes are a valid `[u64; 2]`.
        unsafe { *self.src.as_ptr().cast::<[u64; 2]>() }
    }

    /// The source's key in the host-ban table of its family ([`crate::hosts`]), from one
    /// word of the address.
    #[inline(always)]
    pub fn host_key(&self) -> u64 {
        let first = self.src_words()[0];
        if self.family == crate::maps::FAMILY_V4 {
            first & crate::hosts::V4_KEY_MASK
        } else {
            first
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L4 {
    /// Source port (0 for ICMP); only `secgate trace` shows it.
    pub sport: u16,
    /// Destination port (0 for ICMP).
    pub dport: u16,
    /// TCP SYN without ACK.
    pub syn: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    NonIp,
    Malformed,
    Ip(Packet),
}

fn be16(frame: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*frame.get(off)?, *frame.get(off + 1)?]))
}

fn need(frame: &[u8], off: usize, len: usize) -> Option<()> {
    (off + len <= frame.len() && off + len <= MAX_HEADER_BYTES).then_some(())
}

/// Parses Ethernet, VLAN tags, IP and the L4 header.
pub fn parse(frame: &[u8]) -> Parsed {
    match parse_inner(frame) {
        Some(p) => p,
        None => Parsed::Malformed,
    }
}

fn parse_inner(frame: &[u8]) -> Option<Parsed> {
    need(frame, 0, ETH_HLEN)?;
    let mut ethertype = be16(frame, 12)?;
    let mut off = ETH_HLEN;
    let mut tags = 0;
    while ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        if tags == MAX_VLAN_TAGS {
            return None;
        }
        need(frame, off, VLAN_HLEN)?;
        ethertype = be16(frame, off + 2)?;
        off += VLAN_HLEN;
        tags += 1;
    }
    match ethertype {
        ETH_P_IPV4 => ipv4(frame, off).map(Parsed::Ip),
        ETH_P_IPV6 => ipv6(frame, off).map(Parsed::Ip),
        _ => Some(Parsed::NonIp),
    }
}

fn ipv4(frame: &[u8], off: usize) -> Option<Packet> {
    need(frame, off, IPV4_MIN_HLEN)?;
    let vihl = frame[off];
    let hlen = usize::from(vihl & 0x0f) * 4;
    if vihl >> 4 != 4 || hlen < IPV4_MIN_HLEN || usize::from(be16(frame, off + 2)?) < hlen {
        return None;
    }
    need(frame, off, hlen)?;
    let mut src = [0u8; 16];
    src[..4].copy_from_slice(&frame[off + 12..off + 16]);
    let proto = frame[off + 9];
    let fragment = be16(frame, off + 6)? & 0x1fff != 0;
    let l4 = if fragment { None } else { l4(frame, off + hlen, proto)? };
    Some(Packet::new(FAMILY_V4, src, proto, l4, fragment))
}

fn ipv6(frame: &[u8], off: usize) -> Option<Packet> {
    need(frame, off, IPV6_HLEN)?;
    if frame[off] >> 4 != 6 {
        return None;
    }
    let mut src = [0u8; 16];
    src.copy_from_slice(&frame[off + 8..off + 24]);
    let mut next = frame[off + 6];
    let mut off = off + IPV6_HLEN;
    // One step per extension header plus one for the header after the last of them.
    for _ in 0..=MAX_IPV6_EXT_HEADERS {
        let hlen = match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                need(frame, off, 8)?;
                (usize::from(frame[off + 1]) + 1) * 8
            }
            IPPROTO_AH => {
                need(frame, off, 8)?;
                (usize::from(frame[off + 1]) + 2) * 4
            }
            IPPROTO_FRAGMENT => {
                need(frame, off, 8)?;
                if be16(frame, off + 2)? >> 3 != 0 {
                    let proto = frame[off];
                    return Some(Packet::new(FAMILY_V6, src, proto, None, true));
                }
                8
            }
            proto => {
                let l4 = l4(frame, off, proto)?;
                return Some(Packet::new(FAMILY_V6, src, proto, l4, false));
            }
        };
        need(frame, off, hlen)?;
        next = frame[off];
        off += hlen;
    }
    None
}

/// `Some(None)`: protocol without ports; `None`: truncated header (malformed).
fn l4(frame: &[u8], off: usize, proto: u8) -> Option<Option<L4>> {
    match proto {
        IPPROTO_TCP => {
            need(frame, off, TCP_MIN_HLEN)?;
            if frame[off + 12] >> 4 < 5 {
                return None;
            }
            let flags = frame[off + 13];
            let syn = flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN;
            Some(Some(L4 { sport: be16(frame, off)?, dport: be16(frame, off + 2)?, syn }))
        }
        IPPROTO_UDP => {
            need(frame, off, UDP_HLEN)?;
            Some(Some(L4 { sport: be16(frame, off)?, dport: be16(frame, off + 2)?, syn: false }))
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            need(frame, off, ICMP_MIN_HLEN)?;
            Some(Some(L4 { sport: 0, dport: 0, syn: false }))
        }
        _ => Some(None),
    }
}
