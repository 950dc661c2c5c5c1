//! The reference model's frame parser against an independent one (etherparse) on random
//! frames: where the model sees an IP packet, etherparse must agree on the family, the
//! source, the final protocol, whether it is a non-first fragment, and the ports and SYN
//! flag; where the model says malformed, etherparse must find the same frame broken, or
//! the frame must break one of the model's own limits (two VLAN tags, headers within 512
//! bytes), which are policy rather than parsing.
//!
//! Runs unprivileged: no kernel is involved.

use etherparse::{LaxNetSlice, LaxSlicedPacket, TransportSlice};
use proptest::prelude::*;
use secgate_common::{
    maps::{FAMILY_V4, FAMILY_V6},
    model::{self, Packet, Parsed},
    net::*,
};
use secgate_tests::frames::{Ext, L4Spec, Spec};

fn l4() -> impl Strategy<Value = L4Spec> {
    prop_oneof![
        (
            any::<u16>(),
            prop::sample::select(vec![
                TCP_FLAG_SYN,
                TCP_FLAG_ACK,
                TCP_FLAG_SYN | TCP_FLAG_ACK,
                0x01,
                0
            ])
        )
            .prop_map(|(dport, flags)| L4Spec::Tcp { dport, flags }),
        any::<u16>().prop_map(|dport| L4Spec::Udp { dport }),
        Just(L4Spec::Icmp),
        prop::sample::select(vec![47u8, 50, 59, 132]).prop_map(L4Spec::Other),
    ]
}

/// IPv6 extension headers in the order RFC 8200 recommends, each kind at most once (what
/// etherparse's parser takes as a chain), mostly short, now and then long.
fn exts() -> impl Strategy<Value = Vec<Ext>> {
    let order = [IPPROTO_HOPOPTS, IPPROTO_DSTOPTS, IPPROTO_ROUTING, IPPROTO_FRAGMENT, IPPROTO_AH];
    (
        prop::collection::vec(any::<bool>(), 5),
        prop::collection::vec(prop_oneof![9 => 0u8..4, 1 => 40u8..=255], 5),
        0u16..3,
    )
        .prop_map(move |(take, units, frag)| {
            order
                .iter()
                .zip(take)
                .zip(units)
                .filter(|((_, take), _)| *take)
                .map(|((&kind, _), units)| Ext {
                    kind,
                    // An AH payload length of 0 is refused by etherparse and allowed by the model.
                    units: if kind == IPPROTO_AH { units.max(1) } else { units },
                    frag_offset: if kind == IPPROTO_FRAGMENT { frag * 7 } else { 0 },
                })
                .collect()
        })
}

fn spec() -> impl Strategy<Value = Spec> {
    let src = prop_oneof![
        any::<[u8; 4]>().prop_map(std::net::IpAddr::from),
        any::<[u8; 16]>().prop_map(std::net::IpAddr::from),
    ];
    let vlans = prop::collection::vec(prop::sample::select(vec![ETH_P_8021Q, ETH_P_8021AD]), 0..=3);
    let v4_frag = prop_oneof![3 => Just(0u16), 1 => Just(0x2000), 1 => 1u16..0x1fff];
    (src, l4(), vlans, 0u8..=10, v4_frag, exts(), 0usize..64).prop_map(
        |(src, l4, vlans, words, v4_frag, exts, payload)| {
            let mut s = Spec::new(src, l4);
            s.vlans = vlans;
            s.payload = payload;
            if src.is_ipv4() {
                s.v4_option_words = words;
                s.v4_frag = v4_frag;
            } else {
                s.v6_exts = exts;
            }
            s
        },
    )
}

/// Where the headers the model needs end: L3, extensions, and the part of L4 it reads.
fn headers_end(spec: &Spec, pkt_l4: bool) -> usize {
    let l3 = ETH_HLEN + VLAN_HLEN * spec.vlans.len();
    let ip = if spec.src.is_ipv4() {
        IPV4_MIN_HLEN + 4 * usize::from(spec.v4_option_words)
    } else {
        IPV6_HLEN
            + spec
                .v6_exts
                .iter()
                .map(|e| match e.kind {
                    IPPROTO_AH => (usize::from(e.units) + 2) * 4,
                    IPPROTO_FRAGMENT => 8,
                    _ => (usize::from(e.units) + 1) * 8,
                })
                .sum::<usize>()
    };
    let l4 = match (&spec.l4, pkt_l4) {
        (_, false) => 0,
        (L4Spec::Tcp { .. }, _) => TCP_MIN_HLEN,
        (L4Spec::Udp { .. }, _) => UDP_HLEN,
        (L4Spec::Icmp, _) => ICMP_MIN_HLEN,
        (L4Spec::Other(_), _) => 0,
    };
    l3 + ip + l4
}

/// The model's packet seen by etherparse: source, final protocol, non-first fragment.
fn theirs(frame: &[u8]) -> Result<(u8, [u8; 16], u8, bool), String> {
    let p = LaxSlicedPacket::from_ethernet(frame).map_err(|e| format!("{e:?}"))?;
    match &p.net {
        Some(LaxNetSlice::Ipv4(ip)) => {
            let h = ip.header();
            let mut src = [0u8; 16];
            src[..4].copy_from_slice(&h.source());
            Ok((FAMILY_V4, src, h.protocol().0, h.fragments_offset().value() != 0))
        }
        Some(LaxNetSlice::Ipv6(ip)) => {
            // The extensions are parsed again with etherparse's owned parser: iterating the
            // lax slice's extensions reads past its end in etherparse 0.18.2 when the chain
            // was cut (the iterator follows the last header's next-header field into the
            // header that failed to parse).
            let header = ip.header();
            let start = header.slice().as_ptr() as usize - frame.as_ptr() as usize + IPV6_HLEN;
            let (exts, next, _, err) =
                etherparse::Ipv6Extensions::from_slice_lax(header.next_header(), &frame[start..]);
            // The model stops at a non-first fragment, whose next header is then the packet's
            // protocol; what follows belongs to the fragmented payload.
            match exts.fragment.filter(|f| f.fragment_offset.value() != 0) {
                Some(f) => Ok((FAMILY_V6, header.source(), f.next_header.0, true)),
                None if err.is_some() => Err(format!("extension header: {err:?}")),
                None => Ok((FAMILY_V6, header.source(), next.0, false)),
            }
        }
        _ => Err(format!("no IP layer: {:?}", p.stop_err)),
    }
}

/// Destination port and SYN-without-ACK, as etherparse reads them.
fn their_l4(frame: &[u8]) -> Option<(u16, bool)> {
    let p = LaxSlicedPacket::from_ethernet(frame).ok()?;
    match p.transport? {
        TransportSlice::Tcp(t) => Some((t.destination_port(), t.syn() && !t.ack())),
        TransportSlice::Udp(u) => Some((u.destination_port(), false)),
        TransportSlice::Icmpv4(_) | TransportSlice::Icmpv6(_) => Some((0, false)),
    }
}

/// A header field overwritten with an arbitrary value.
#[derive(Clone, Copy, Debug)]
enum Corrupt {
    /// The IP version nibble (and, for IPv4, the header length).
    IpFirstByte(u8),
    /// The IPv4 total length.
    Ipv4TotalLen(u16),
    /// The TCP data offset nibble.
    TcpDataOffset(u8),
}

fn corrupt() -> impl Strategy<Value = Option<Corrupt>> {
    prop::option::weighted(
        0.3,
        prop_oneof![
            any::<u8>().prop_map(Corrupt::IpFirstByte),
            any::<u16>().prop_map(Corrupt::Ipv4TotalLen),
            (0u8..16).prop_map(Corrupt::TcpDataOffset),
        ],
    )
}

/// Applies `c` to `frame` built from `spec` where the field exists; returns whether it did.
fn apply(spec: &Spec, frame: &mut [u8], c: Corrupt) -> bool {
    let l3 = ETH_HLEN + VLAN_HLEN * spec.vlans.len();
    let l4 = headers_end(spec, false);
    let mut put = |at: usize, bytes: &[u8]| match frame.get_mut(at..at + bytes.len()) {
        Some(dst) => {
            dst.copy_from_slice(bytes);
            true
        }
        None => false,
    };
    match c {
        Corrupt::IpFirstByte(b) => put(l3, &[b]),
        Corrupt::Ipv4TotalLen(len) if spec.src.is_ipv4() => put(l3 + 2, &len.to_be_bytes()),
        Corrupt::TcpDataOffset(doff) if matches!(spec.l4, L4Spec::Tcp { .. }) => {
            put(l4 + 12, &[doff << 4])
        }
        _ => false,
    }
}

/// `corrupted`: a header field was overwritten with `corrupt`.
fn check(spec: &Spec, frame: &[u8], corrupted: Option<Corrupt>) -> Result<(), TestCaseError> {
    // The IPv4 header length was overwritten: the spec no longer says where headers end.
    let resized = spec.src.is_ipv4() && matches!(corrupted, Some(Corrupt::IpFirstByte(_)));
    // etherparse's lax mode takes an IPv4 total length below the header length as "up to the
    // end of the slice" (TSO captures carry 0); its strict parser refuses it, as the model
    // does on the wire.
    let l3 = ETH_HLEN + VLAN_HLEN * spec.vlans.len();
    let header_refused = matches!(corrupted, Some(Corrupt::Ipv4TotalLen(_)))
        && frame.get(l3..).is_some_and(|ip| etherparse::Ipv4Slice::from_slice(ip).is_err());
    let doff_changed = matches!(corrupted, Some(Corrupt::TcpDataOffset(_)));
    let tags = spec.vlans.len();
    match model::parse(frame) {
        Parsed::NonIp => prop_assert!(false, "every generated frame is IP"),
        Parsed::Malformed => {
            // The model's own limits are policy, not parsing; anything else it refuses,
            // etherparse must find broken too.
            let policy =
                tags > MAX_VLAN_TAGS || (!resized && headers_end(spec, true) > MAX_HEADER_BYTES);
            if !policy {
                // etherparse goes by the version nibble where the model goes by the ether
                // type: a version that contradicts the ether type is broken for both.
                let mismatch =
                    theirs(frame).is_ok_and(|(f, ..)| (f == FAMILY_V4) != spec.src.is_ipv4());
                let broken = mismatch
                    || header_refused
                    || theirs(frame).is_err()
                    || (matches!(spec.l4, L4Spec::Tcp { .. } | L4Spec::Udp { .. } | L4Spec::Icmp)
                        && their_l4(frame).is_none());
                prop_assert!(broken, "etherparse parses a frame the model calls malformed");
            }
        }
        Parsed::Ip(pkt) => {
            let Packet { family, src, proto, fragment, .. } = pkt;
            let l4 = pkt.l4();
            prop_assert!(tags <= MAX_VLAN_TAGS, "{} VLAN tags accepted", tags);
            if !fragment && !resized {
                let end = headers_end(spec, l4.is_some());
                prop_assert!(end <= MAX_HEADER_BYTES, "headers ending at {end} accepted");
            }
            let (f, s, p, frag) =
                theirs(frame).map_err(|e| TestCaseError::fail(format!("etherparse: {e}")))?;
            prop_assert_eq!((family, src, proto, fragment), (f, s, p, frag));
            if let Some(l4) = l4 {
                // etherparse wants 8 bytes of ICMP where the model reads 4, and a TCP header
                // with all its options (and a data offset of at least 5) where the model
                // reads the first 20 bytes; a resized IPv4 header puts the TCP header among
                // the options or the payload, so its data offset is whatever lies there.
                // Beyond that, and for first fragments (whose L4 etherparse leaves alone), it
                // must agree.
                let icmp_short = proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6;
                let tcp_options = (doff_changed || resized) && proto == IPPROTO_TCP;
                let first_fragment = spec.src.is_ipv4() && spec.v4_frag == 0x2000;
                match their_l4(frame) {
                    Some(theirs) => prop_assert_eq!((l4.dport, l4.syn), theirs),
                    None => prop_assert!(
                        icmp_short || tcp_options || first_fragment,
                        "etherparse finds no L4 where the model read {l4:?}"
                    ),
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    #[test]
    fn model_parser_agrees_with_etherparse(
        spec in spec(),
        corrupt in corrupt(),
        cut in prop::option::weighted(0.4, any::<prop::sample::Index>()),
    ) {
        let mut frame = spec.build();
        let corrupted = corrupt.filter(|c| apply(&spec, &mut frame, *c));
        if let Some(cut) = cut {
            frame.truncate(ETH_HLEN + cut.index(frame.len() - ETH_HLEN + 1));
        }
        check(&spec, &frame, corrupted)?;
    }
}
