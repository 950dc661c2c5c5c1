//! Wire constants of the headers the datapath parses.

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const VLAN_HLEN: usize = 4;
/// 802.1Q inside 802.1ad (QinQ) is the deepest stacking the datapath accepts.
pub const MAX_VLAN_TAGS: usize = 2;

pub const IPV4_MIN_HLEN: usize = 20;
pub const IPV6_HLEN: usize = 40;
/// Extension headers walked before an IPv6 packet counts as malformed.
pub const MAX_IPV6_EXT_HEADERS: usize = 8;

pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_AH: u8 = 51;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_DSTOPTS: u8 = 60;

pub const TCP_MIN_HLEN: usize = 20;
pub const UDP_HLEN: usize = 8;
/// Type, code and checksum: what ICMP and ICMPv6 have in common.
pub const ICMP_MIN_HLEN: usize = 4;
pub const TCP_FLAG_SYN: u8 = 0x02;
pub const TCP_FLAG_ACK: u8 = 0x10;

/// Whether the limiter may look up per-port overrides for `proto`.
pub const fn has_ports(proto: u8) -> bool {
    proto == IPPROTO_TCP || proto == IPPROTO_UDP
}

/// Headers must end within this many bytes of the frame start. Deeper header chains (long
/// IPv6 extension chains) are treated as malformed: the bound keeps every packet read
/// provably in range for the verifier, and no legitimate traffic needs more.
pub const MAX_HEADER_BYTES: usize = 512;
