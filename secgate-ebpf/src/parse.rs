//! Header parsing over a bounds-checked [`Frame`]. Each step returns the next protocol and
//! offset; a failed bounds check anywhere means a malformed frame.

use secgate_common::{
    maps::{FAMILY_V4, FAMILY_V6},
    model::{L4, Packet, Parsed},
    net::*,
};

use crate::frame::Frame;

#[inline(always)]
pub fn parse(frame: &Frame) -> Parsed {
    match ethernet(frame) {
        Some(p) => p,
        None => Parsed::Malformed,
    }
}

#[inline(always)]
fn ethernet(frame: &Frame) -> Option<Parsed> {
    let mut ethertype = frame.be16(12)?;
    let mut off = ETH_HLEN;
    let mut tags = 0;
    while ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        if tags == MAX_VLAN_TAGS {
            return None;
        }
        ethertype = frame.be16(off + 2)?;
        off += VLAN_HLEN;
        tags += 1;
    }
    match ethertype {
        ETH_P_IPV4 => ipv4(frame, off).map(Parsed::Ip),
        ETH_P_IPV6 => ipv6(frame, off).map(Parsed::Ip),
        _ => Some(Parsed::NonIp),
    }
}

#[inline(always)]
fn ipv4(frame: &Frame, off: usize) -> Option<Packet> {
    frame.need(off, IPV4_MIN_HLEN)?;
    let vihl = frame.u8(off)?;
    let hlen = ((vihl & 0x0f) as usize) * 4;
    if vihl >> 4 != 4 || hlen < IPV4_MIN_HLEN || (frame.be16(off + 2)? as usize) < hlen {
        return None;
    }
    frame.need(off, hlen)?;
    let mut src = [0u8; 16];
    let v4: [u8; 4] = frame.bytes(off + 12)?;
    src[0] = v4[0];
    src[1] = v4[1];
    src[2] = v4[2];
    src[3] = v4[3];
    let proto = frame.u8(off + 9)?;
    let fragment = frame.be16(off + 6)? & 0x1fff != 0;
    let l4 = if fragment { None } else { l4(frame, off + hlen, proto)? };
    Some(Packet::new(FAMILY_V4, src, proto, l4, fragment))
}

#[inline(always)]
fn ipv6(frame: &Frame, off: usize) -> Option<Packet> {
    frame.need(off, IPV6_HLEN)?;
    if frame.u8(off)? >> 4 != 6 {
        return None;
    }
    let src: [u8; 16] = frame.bytes(off + 8)?;
    let mut next = frame.u8(off + 6)?;
    let mut off = off + IPV6_HLEN;
    // One step per extension header plus one for the header after the last of them.
    for _ in 0..=MAX_IPV6_EXT_HEADERS {
        let hlen = match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                ((frame.u8(off + 1)? as usize) + 1) * 8
            }
            IPPROTO_AH => ((frame.u8(off + 1)? as usize) + 2) * 4,
            IPPROTO_FRAGMENT => {
                frame.need(off, 8)?;
                if frame.be16(off + 2)? >> 3 != 0 {
                    let proto = frame.u8(off)?;
                    return Some(Packet::new(FAMILY_V6, src, proto, None, true));
                }
                8
            }
            proto => {
                let l4 = l4(frame, off, proto)?;
                return Some(Packet::new(FAMILY_V6, src, proto, l4, false));
            }
        };
        frame.need(off, 8)?;
        frame.need(off, hlen)?;
        next = frame.u8(off)?;
        off += hlen;
    }
    None
}

/// `Some(None)`: a protocol without ports; `None`: a truncated header.
#[inline(always)]
fn l4(frame: &Frame, off: usize, proto: u8) -> Option<Option<L4>> {
    match proto {
        IPPROTO_TCP => {
            frame.need(off, TCP_MIN_HLEN)?;
            if frame.u8(off + 12)? >> 4 < 5 {
                return None;
            }
            let flags = frame.u8(off + 13)?;
            let syn = flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN;
            Some(Some(L4 { sport: frame.be16(off)?, dport: frame.be16(off + 2)?, syn }))
        }
        IPPROTO_UDP => {
            frame.need(off, UDP_HLEN)?;
            Some(Some(L4 { sport: frame.be16(off)?, dport: frame.be16(off + 2)?, syn: false }))
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            frame.need(off, ICMP_MIN_HLEN)?;
            Some(Some(L4 { sport: 0, dport: 0, syn: false }))
        }
        _ => Some(None),
    }
}
