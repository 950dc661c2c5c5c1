//! Frame builder for tests: well-formed frames from a short description, which tests then
//! truncate or corrupt as they need.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use secgate_common::net::*;

/// L4 header to put after the IP header(s).
#[derive(Clone, Debug)]
pub enum L4Spec {
    Tcp {
        dport: u16,
        flags: u8,
    },
    Udp {
        dport: u16,
    },
    Icmp,
    /// Any other protocol number with a few payload bytes.
    Other(u8),
}

/// An IPv6 extension header: `kind` is its protocol number, `units` its length field.
#[derive(Clone, Debug)]
pub struct Ext {
    pub kind: u8,
    pub units: u8,
    /// Fragment offset in 8-byte units (only for `IPPROTO_FRAGMENT`).
    pub frag_offset: u16,
}

#[derive(Clone, Debug)]
pub struct Spec {
    /// VLAN TPIDs, outermost first.
    pub vlans: Vec<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IPv4 option words (each 4 bytes of NOPs).
    pub v4_option_words: u8,
    /// IPv4 flags + fragment offset field.
    pub v4_frag: u16,
    pub v6_exts: Vec<Ext>,
    pub l4: L4Spec,
    pub payload: usize,
}

impl Spec {
    pub fn new(src: IpAddr, l4: L4Spec) -> Spec {
        let dst = match src {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
            IpAddr::V6(_) => IpAddr::V6("fd00::1".parse::<Ipv6Addr>().expect("addr")),
        };
        Spec {
            vlans: vec![],
            src,
            dst,
            v4_option_words: 0,
            v4_frag: 0,
            v6_exts: vec![],
            l4,
            payload: 0,
        }
    }

    pub fn build(&self) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01];
        for tpid in &self.vlans {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&[0, 0x0a]);
        }
        let (ethertype, ip) = match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => (ETH_P_IPV4, self.ipv4(s, d)),
            (IpAddr::V6(s), IpAddr::V6(d)) => (ETH_P_IPV6, self.ipv6(s, d)),
            _ => panic!("mixed address families"),
        };
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(&ip);
        f
    }

    fn proto(&self) -> u8 {
        match (&self.l4, self.src) {
            (L4Spec::Tcp { .. }, _) => IPPROTO_TCP,
            (L4Spec::Udp { .. }, _) => IPPROTO_UDP,
            (L4Spec::Icmp, IpAddr::V4(_)) => IPPROTO_ICMP,
            (L4Spec::Icmp, IpAddr::V6(_)) => IPPROTO_ICMPV6,
            (L4Spec::Other(p), _) => *p,
        }
    }

    fn l4(&self) -> Vec<u8> {
        let mut h = match self.l4 {
            L4Spec::Tcp { dport, flags } => {
                let mut h = vec![0u8; TCP_MIN_HLEN];
                h[0..2].copy_from_slice(&40000u16.to_be_bytes());
                h[2..4].copy_from_slice(&dport.to_be_bytes());
                h[12] = 5 << 4;
                h[13] = flags;
                h
            }
            L4Spec::Udp { dport } => {
                let mut h = vec![0u8; UDP_HLEN];
                h[0..2].copy_from_slice(&40000u16.to_be_bytes());
                h[2..4].copy_from_slice(&dport.to_be_bytes());
                h[4..6].copy_from_slice(&((UDP_HLEN + self.payload) as u16).to_be_bytes());
                h
            }
            L4Spec::Icmp => vec![8, 0, 0, 0, 0, 1, 0, 1],
            L4Spec::Other(_) => vec![0xab; 8],
        };
        h.resize(h.len() + self.payload, 0x5a);
        h
    }

    fn ipv4(&self, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
        let hlen = IPV4_MIN_HLEN + 4 * usize::from(self.v4_option_words);
        let l4 = self.l4();
        let mut h = vec![0u8; hlen];
        h[0] = 0x40 | (hlen / 4) as u8;
        h[2..4].copy_from_slice(&((hlen + l4.len()) as u16).to_be_bytes());
        h[6..8].copy_from_slice(&self.v4_frag.to_be_bytes());
        h[8] = 64;
        h[9] = self.proto();
        h[12..16].copy_from_slice(&src.octets());
        h[16..20].copy_from_slice(&dst.octets());
        for b in &mut h[IPV4_MIN_HLEN..] {
            *b = 1; // NOP options
        }
        let sum = checksum(&h);
        h[10..12].copy_from_slice(&sum.to_be_bytes());
        h.extend_from_slice(&l4);
        h
    }

    fn ipv6(&self, src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
        let mut chain = Vec::new();
        let kinds: Vec<u8> = self.v6_exts.iter().map(|e| e.kind).chain([self.proto()]).collect();
        for (i, ext) in self.v6_exts.iter().enumerate() {
            let next = kinds[i + 1];
            let len = match ext.kind {
                IPPROTO_AH => (usize::from(ext.units) + 2) * 4,
                IPPROTO_FRAGMENT => 8,
                _ => (usize::from(ext.units) + 1) * 8,
            };
            let mut h = vec![0u8; len];
            h[0] = next;
            h[1] = if ext.kind == IPPROTO_FRAGMENT { 0 } else { ext.units };
            if ext.kind == IPPROTO_FRAGMENT {
                h[2..4].copy_from_slice(&(ext.frag_offset << 3).to_be_bytes());
            }
            chain.extend_from_slice(&h);
        }
        chain.extend_from_slice(&self.l4());
        let mut h = vec![0u8; IPV6_HLEN];
        h[0] = 0x60;
        h[4..6].copy_from_slice(&(chain.len() as u16).to_be_bytes());
        h[6] = kinds[0];
        h[7] = 64;
        h[8..24].copy_from_slice(&src.octets());
        h[24..40].copy_from_slice(&dst.octets());
        h.extend_from_slice(&chain);
        h
    }
}

/// Internet checksum (RFC 1071).
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The model's reading of an IP frame (panics on any other).
pub fn packet(frame: &[u8]) -> secgate_common::model::Packet {
    match secgate_common::model::parse(frame) {
        secgate_common::model::Parsed::Ip(p) => p,
        other => panic!("not an IP frame: {other:?}"),
    }
}

/// A frame with an arbitrary ethertype and a few payload bytes.
pub fn non_ip(ethertype: u16) -> Vec<u8> {
    let mut f = vec![0xff; 12];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(&[0u8; 28]);
    f
}
