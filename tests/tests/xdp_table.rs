//! Table-driven tests of the real XDP program under `BPF_PROG_TEST_RUN`: each crafted frame
//! has an expected action and exactly one verdict counter that must move.

use std::net::IpAddr;

use secgate_common::{
    maps::{
        DatapathConfig, DenyEntry, FLAG_COARSE_CLOCK, FLAG_DROP_FRAGMENTS, FLAG_TRACE, LimitKey,
        MODE_MONITOR, RateRule, STATS_DROPPED, TRACE_BURST,
    },
    model::{self, prefix_mask},
    net::*,
    verdict::Reason,
};
use secgate_tests::{
    frames::{Ext, L4Spec, Spec, non_ip, packet},
    harness::{Kernel, XDP_DROP, XDP_PASS, datapath_ns, monotonic_ns},
    privileged,
};

const RATE_PORT: u16 = 5353;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn v4(l4: L4Spec) -> Spec {
    Spec::new(ip("198.18.1.10"), l4)
}

fn v6(l4: L4Spec) -> Spec {
    Spec::new(ip("fd00:1::10"), l4)
}

fn udp() -> L4Spec {
    L4Spec::Udp { dport: 53 }
}

fn tcp_syn() -> L4Spec {
    L4Spec::Tcp { dport: 443, flags: TCP_FLAG_SYN }
}

fn ext(kind: u8, units: u8) -> Ext {
    Ext { kind, units, frag_offset: 0 }
}

fn frag(offset: u16) -> Ext {
    Ext { kind: IPPROTO_FRAGMENT, units: 0, frag_offset: offset }
}

fn with<F: FnOnce(&mut Spec)>(mut spec: Spec, f: F) -> Vec<u8> {
    f(&mut spec);
    spec.build()
}

fn with_exts(mut spec: Spec, exts: Vec<Ext>) -> Spec {
    spec.v6_exts = exts;
    spec
}

fn cut(mut frame: Vec<u8>, len: usize) -> Vec<u8> {
    frame.truncate(len);
    frame
}

fn poke(mut frame: Vec<u8>, at: usize, value: u8) -> Vec<u8> {
    frame[at] = value;
    frame
}

/// Offsets of the first bytes after Ethernet (untagged).
const L3: usize = ETH_HLEN;
const L4_V4: usize = L3 + IPV4_MIN_HLEN;
const L4_V6: usize = L3 + IPV6_HLEN;

fn cases() -> Vec<(&'static str, Vec<u8>, u32, Reason)> {
    use Reason::*;
    let pass = XDP_PASS;
    let drop = XDP_DROP;
    let nine_exts: Vec<Ext> = (0..9).map(|_| ext(IPPROTO_DSTOPTS, 0)).collect();
    let eight_exts: Vec<Ext> = (0..8).map(|_| ext(IPPROTO_DSTOPTS, 0)).collect();
    let jumbo = |mut spec: Spec, payload: usize| {
        spec.payload = payload;
        spec.build()
    };
    vec![
        ("ipv4 tcp syn", v4(tcp_syn()).build(), pass, Pass),
        ("ipv4 udp", v4(udp()).build(), pass, Pass),
        ("ipv4 icmp", v4(L4Spec::Icmp).build(), pass, Pass),
        ("ipv6 tcp", v6(tcp_syn()).build(), pass, Pass),
        ("ipv6 udp", v6(udp()).build(), pass, Pass),
        ("ipv6 icmpv6", v6(L4Spec::Icmp).build(), pass, Pass),
        ("ipv4 one option word", with(v4(udp()), |s| s.v4_option_words = 1), pass, Pass),
        ("ipv4 max options", with(v4(tcp_syn()), |s| s.v4_option_words = 10), pass, Pass),
        ("ipv4 gre", v4(L4Spec::Other(47)).build(), pass, Pass),
        ("802.1q ipv4", with(v4(udp()), |s| s.vlans = vec![ETH_P_8021Q]), pass, Pass),
        (
            "qinq ipv4",
            with(v4(tcp_syn()), |s| s.vlans = vec![ETH_P_8021AD, ETH_P_8021Q]),
            pass,
            Pass,
        ),
        ("qinq ipv6", with(v6(udp()), |s| s.vlans = vec![ETH_P_8021AD, ETH_P_8021Q]), pass, Pass),
        (
            "three vlan tags",
            with(v4(udp()), |s| s.vlans = vec![ETH_P_8021AD, ETH_P_8021Q, ETH_P_8021Q]),
            drop,
            Malformed,
        ),
        (
            "ipv6 hop-by-hop",
            with(v6(udp()), |s| s.v6_exts = vec![ext(IPPROTO_HOPOPTS, 0)]),
            pass,
            Pass,
        ),
        (
            "ipv6 routing",
            with(v6(tcp_syn()), |s| s.v6_exts = vec![ext(IPPROTO_ROUTING, 2)]),
            pass,
            Pass,
        ),
        (
            "ipv6 destination opts",
            with(v6(L4Spec::Icmp), |s| s.v6_exts = vec![ext(IPPROTO_DSTOPTS, 1)]),
            pass,
            Pass,
        ),
        (
            "ipv6 authentication header",
            with(v6(tcp_syn()), |s| s.v6_exts = vec![ext(IPPROTO_AH, 4)]),
            pass,
            Pass,
        ),
        (
            "ipv6 full chain, first fragment",
            with(v6(udp()), |s| {
                s.v6_exts = vec![
                    ext(IPPROTO_HOPOPTS, 0),
                    ext(IPPROTO_ROUTING, 0),
                    ext(IPPROTO_DSTOPTS, 0),
                    frag(0),
                ]
            }),
            pass,
            Pass,
        ),
        (
            "ipv6 non-first fragment without l4",
            cut(with(v6(udp()), |s| s.v6_exts = vec![frag(100)]), L4_V6 + 8),
            pass,
            Pass,
        ),
        ("ipv6 no next header", v6(L4Spec::Other(59)).build(), pass, Pass),
        (
            "ipv4 non-first fragment without l4",
            cut(with(v4(tcp_syn()), |s| s.v4_frag = 10), L4_V4 + 4),
            pass,
            Pass,
        ),
        (
            "ipv4 first fragment with truncated l4",
            cut(with(v4(tcp_syn()), |s| s.v4_frag = 0x2000), L4_V4 + 10),
            drop,
            Malformed,
        ),
        ("arp", non_ip(0x0806), pass, NonIp),
        ("lldp", non_ip(0x88cc), pass, NonIp),
        (
            "802.1q arp",
            {
                let mut f = non_ip(0x8100);
                f.splice(14..14, [0, 1, 0x08, 0x06]);
                f
            },
            pass,
            NonIp,
        ),
        (
            "truncated 802.1q tag",
            cut(with(v4(udp()), |s| s.vlans = vec![ETH_P_8021Q]), ETH_HLEN + 2),
            drop,
            Malformed,
        ),
        (
            "truncated second vlan tag",
            cut(with(v4(udp()), |s| s.vlans = vec![ETH_P_8021AD, ETH_P_8021Q]), ETH_HLEN + 6),
            drop,
            Malformed,
        ),
        ("ipv4 header cut at 19 bytes", cut(v4(udp()).build(), L3 + 19), drop, Malformed),
        ("ipv4 header cut right after ethertype", cut(v4(udp()).build(), L3), drop, Malformed),
        (
            "ipv4 options cut short",
            cut(with(v4(udp()), |s| s.v4_option_words = 3), L3 + 24),
            drop,
            Malformed,
        ),
        ("ipv4 version 5", poke(v4(udp()).build(), L3, 0x55), drop, Malformed),
        ("ipv4 ihl 4", poke(v4(udp()).build(), L3, 0x44), drop, Malformed),
        (
            "ipv4 total length below header",
            poke(poke(v4(udp()).build(), L3 + 2, 0), L3 + 3, 12),
            drop,
            Malformed,
        ),
        ("ipv4 tcp cut at 10 bytes", cut(v4(tcp_syn()).build(), L4_V4 + 10), drop, Malformed),
        ("ipv4 tcp data offset 4", poke(v4(tcp_syn()).build(), L4_V4 + 12, 0x40), drop, Malformed),
        ("ipv4 udp cut at 4 bytes", cut(v4(udp()).build(), L4_V4 + 4), drop, Malformed),
        ("ipv4 icmp cut at 2 bytes", cut(v4(L4Spec::Icmp).build(), L4_V4 + 2), drop, Malformed),
        ("ipv4 gre without payload", cut(v4(L4Spec::Other(47)).build(), L4_V4), pass, Pass),
        ("ipv6 header cut at 39 bytes", cut(v6(udp()).build(), L3 + 39), drop, Malformed),
        ("ipv6 version 4", poke(v6(udp()).build(), L3, 0x45), drop, Malformed),
        (
            "ipv6 hop-by-hop cut at 4 bytes",
            cut(with(v6(udp()), |s| s.v6_exts = vec![ext(IPPROTO_HOPOPTS, 0)]), L4_V6 + 4),
            drop,
            Malformed,
        ),
        (
            "ipv6 routing longer than frame",
            cut(with(v6(udp()), |s| s.v6_exts = vec![ext(IPPROTO_ROUTING, 4)]), L4_V6 + 16),
            drop,
            Malformed,
        ),
        (
            "ipv6 fragment header cut",
            cut(with(v6(udp()), |s| s.v6_exts = vec![frag(0)]), L4_V6 + 6),
            drop,
            Malformed,
        ),
        (
            "ipv6 tcp cut after chain",
            cut(with(v6(tcp_syn()), |s| s.v6_exts = vec![ext(IPPROTO_HOPOPTS, 0)]), L4_V6 + 8 + 12),
            drop,
            Malformed,
        ),
        (
            "ipv6 nine extension headers",
            with(v6(udp()), |s| s.v6_exts = nine_exts),
            drop,
            Malformed,
        ),
        // Regression: the walk took one step per header including the one after the chain,
        // so eight extension headers (the documented limit) were already malformed.
        ("ipv6 eight extension headers", with(v6(udp()), |s| s.v6_exts = eight_exts), pass, Pass),
        // Regression: `off > 512 - len` wrapped for a 2 KiB header, so this chain, ending in
        // a protocol without ports, passed as well-formed where the model says malformed.
        (
            "ipv6 2 KiB destination options then no next header",
            with(v6(L4Spec::Other(59)), |s| s.v6_exts = vec![ext(IPPROTO_DSTOPTS, 255)]),
            drop,
            Malformed,
        ),
        (
            "ipv6 2 KiB hop-by-hop then esp",
            with(v6(L4Spec::Other(50)), |s| s.v6_exts = vec![ext(IPPROTO_HOPOPTS, 255)]),
            drop,
            Malformed,
        ),
        ("ipv4 udp in a 2 KiB frame", jumbo(v4(udp()), 2048), pass, Pass),
        ("ipv6 tcp in a 4 KiB frame", jumbo(v6(tcp_syn()), 4096), pass, Pass),
        ("ipv4 udp in a 9 KiB frame", jumbo(v4(udp()), 9 * 1024 - 64), pass, Pass),
        (
            "ipv6 routing in a 9 KiB frame",
            jumbo(with_exts(v6(udp()), vec![ext(IPPROTO_ROUTING, 8)]), 9 * 1024 - 200),
            pass,
            Pass,
        ),
        (
            "ipv6 6 KiB chain past 512 bytes in a 9 KiB frame",
            jumbo(with_exts(v6(L4Spec::Other(59)), vec![ext(IPPROTO_DSTOPTS, 255); 3]), 3000),
            drop,
            Malformed,
        ),
        (
            "ipv6 chain past 512 bytes",
            with(v6(udp()), |s| s.v6_exts = vec![ext(IPPROTO_DSTOPTS, 60)]),
            drop,
            Malformed,
        ),
        ("denied ipv4 /24", Spec::new(ip("198.18.66.9"), udp()).build(), drop, Deny),
        (
            "denied ipv4 tcp inside vlan",
            with(Spec::new(ip("198.18.66.200"), tcp_syn()), |s| s.vlans = vec![ETH_P_8021Q]),
            drop,
            Deny,
        ),
        ("denied ipv6 /64", Spec::new(ip("fd00:bad::1234"), L4Spec::Icmp).build(), drop, Deny),
        (
            "denied ipv6 non-first fragment",
            cut(
                with(Spec::new(ip("fd00:bad::77"), udp()), |s| s.v6_exts = vec![frag(9)]),
                L4_V6 + 8,
            ),
            drop,
            Deny,
        ),
        ("allowlist wins over denylist", Spec::new(ip("198.18.66.7"), udp()).build(), pass, Allow),
        ("expired deny entry", Spec::new(ip("198.18.99.1"), udp()).build(), pass, Pass),
    ]
}

fn setup(kernel: &mut Kernel) {
    let cfg = DatapathConfig {
        v4_mask: prefix_mask(32),
        v6_mask: prefix_mask(64),
        override_protos: 1 << IPPROTO_UDP,
        ..Default::default()
    };
    kernel.maps.set_config(&cfg).expect("config");
    let past = datapath_ns() - 1;
    kernel.maps.set_deny("198.18.66.0/24".parse().unwrap(), DenyEntry { expires_ns: 0 }).unwrap();
    kernel.maps.set_deny("fd00:bad::/64".parse().unwrap(), DenyEntry { expires_ns: 0 }).unwrap();
    kernel
        .maps
        .set_deny("198.18.99.0/24".parse().unwrap(), DenyEntry { expires_ns: past })
        .unwrap();
    kernel.maps.set_allow("198.18.66.7/32".parse().unwrap()).unwrap();
    let key = LimitKey { port: RATE_PORT, proto: IPPROTO_UDP, syn_only: 0 };
    kernel.maps.set_limit(key, RateRule::from_rate(1, 1)).unwrap();
}

/// Bytes of `frame` the program sees. `BPF_PROG_TEST_RUN` keeps one page linear (less the
/// 256-byte XDP headroom and 320 bytes for `skb_shared_info`) and hands the rest over as
/// fragments, which a program loaded without `xdp.frags` does not see; on a real interface
/// the kernel only attaches such a program where every frame fits one buffer.
fn seen_len(frame: &[u8]) -> u64 {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    let skb_shared_info = if cfg!(target_arch = "x86_64") { 320 } else { 0 };
    assert!(skb_shared_info > 0, "the size of skb_shared_info on this architecture is not known");
    frame.len().min(page - 256 - skb_shared_info) as u64
}

/// Runs `frame` and asserts the action, that exactly `reason`'s counter moved by one, and
/// that the dropped counter moved exactly when the frame was dropped.
fn expect(kernel: &Kernel, name: &str, frame: &[u8], action: u32, reason: Reason) {
    let before = kernel.counters();
    let got = kernel.run(frame);
    let after = kernel.counters();
    assert_eq!(got, action, "{name}: action");
    let dropped = STATS_DROPPED as usize;
    let dropped_moved = after[dropped].packets - before[dropped].packets;
    assert_eq!(dropped_moved, u64::from(action == XDP_DROP), "{name}: dropped counter");
    let dropped_bytes = after[dropped].bytes - before[dropped].bytes;
    assert_eq!(dropped_bytes, dropped_moved * seen_len(frame), "{name}: dropped bytes");
    for r in Reason::ALL {
        let moved = after[r as usize].packets - before[r as usize].packets;
        let want = u64::from(r == reason);
        assert_eq!(moved, want, "{name}: counter {} moved by {moved}", r.name());
        if r == reason {
            let bytes = after[r as usize].bytes - before[r as usize].bytes;
            assert_eq!(bytes, seen_len(frame), "{name}: bytes of {}", r.name());
        }
    }
}

#[test]
fn crafted_frames() {
    if !privileged("crafted_frames") {
        return;
    }
    let mut kernel = Kernel::load();
    setup(&mut kernel);
    let cases = cases();
    assert!(cases.len() >= 40, "the table must cover at least 40 frames");
    assert!(cases.iter().any(|(_, f, ..)| f.len() > 9000), "frames up to 9 KiB are covered");
    for (name, frame, action, reason) in &cases {
        expect(&kernel, name, frame, *action, *reason);
    }
}

#[test]
fn override_limit_then_rate_drop() {
    if !privileged("override_limit_then_rate_drop") {
        return;
    }
    let mut kernel = Kernel::load();
    setup(&mut kernel);
    let frame = Spec::new(ip("198.18.5.5"), L4Spec::Udp { dport: RATE_PORT }).build();
    expect(&kernel, "first packet within burst", &frame, XDP_PASS, Reason::Pass);
    expect(&kernel, "second packet over 1 pps", &frame, XDP_DROP, Reason::Rate);
    let other_port = Spec::new(ip("198.18.5.5"), L4Spec::Udp { dport: 53 }).build();
    expect(&kernel, "default limit is unlimited", &other_port, XDP_PASS, Reason::Pass);
}

/// The program looks a TCP or UDP override up only where `SG_OVERRIDE_PORTS` holds its
/// port's bit, so the daemon must keep that bit while any rule for the port, SYN-only or
/// not, is held, and may clear it only once none is.
#[test]
fn override_ports_follow_the_rules() {
    if !privileged("override_ports_follow_the_rules") {
        return;
    }
    let mut kernel = Kernel::load();
    setup(&mut kernel);
    let mut cfg = kernel.maps.config().unwrap();
    cfg.override_protos |= 1 << IPPROTO_TCP;
    kernel.maps.set_config(&cfg).unwrap();
    let tight = RateRule::from_rate(1, 1);
    let rule = |syn_only| LimitKey { port: 443, proto: IPPROTO_TCP, syn_only };
    let send = |src: &str, flags| Spec::new(ip(src), L4Spec::Tcp { dport: 443, flags }).build();
    let limited = |kernel: &Kernel, name: &str, frame: &[u8]| {
        expect(kernel, name, frame, XDP_PASS, Reason::Pass);
        expect(kernel, name, frame, XDP_DROP, Reason::Rate);
    };
    kernel.maps.set_limit(rule(1), tight).unwrap();
    kernel.maps.set_limit(rule(0), tight).unwrap();
    limited(&kernel, "a SYN to 443", &send("198.18.6.1", TCP_FLAG_SYN));
    limited(&kernel, "an ACK to 443", &send("198.18.6.2", TCP_FLAG_ACK));
    kernel.maps.remove_limit(&rule(1)).unwrap();
    limited(&kernel, "a SYN to 443, its port rule left", &send("198.18.6.3", TCP_FLAG_SYN));
    kernel.maps.remove_limit(&rule(0)).unwrap();
    let free = send("198.18.6.4", TCP_FLAG_SYN);
    expect(&kernel, "443 without rules", &free, XDP_PASS, Reason::Pass);
    expect(&kernel, "443 without rules, again", &free, XDP_PASS, Reason::Pass);
    kernel.maps.set_limit(rule(1), tight).unwrap();
    kernel.maps.set_limit(rule(0), tight).unwrap();
    kernel.maps.remove_limit(&rule(0)).unwrap();
    limited(&kernel, "a SYN to 443, its SYN-only rule left", &send("198.18.6.5", TCP_FLAG_SYN));
    // A full rule map refuses a second rule on the port, and the first keeps its bit.
    let filler = |n: u16| LimitKey { port: 10_000 + n, proto: IPPROTO_UDP, syn_only: 0 };
    let mut n = 0;
    while kernel.maps.limits().unwrap().len() < secgate_common::maps::MAX_LIMIT_RULES as usize {
        kernel.maps.set_limit(filler(n), tight).unwrap();
        n += 1;
    }
    assert!(kernel.maps.set_limit(rule(0), tight).is_err(), "a full rule map refuses");
    limited(&kernel, "a SYN to 443 after a refused rule", &send("198.18.6.6", TCP_FLAG_SYN));
    kernel.maps.remove_limit(&filler(0)).unwrap();
    kernel.maps.set_limit(LimitKey { port: 0, ..rule(0) }, tight).unwrap();
    limited(&kernel, "any port's rule", &send("198.18.6.7", TCP_FLAG_ACK));
}

#[test]
fn monitor_mode_passes_but_counts() {
    if !privileged("monitor_mode_passes_but_counts") {
        return;
    }
    let mut kernel = Kernel::load();
    setup(&mut kernel);
    let mut cfg = kernel.maps.config().unwrap();
    cfg.mode = MODE_MONITOR;
    kernel.maps.set_config(&cfg).unwrap();
    let denied = Spec::new(ip("198.18.66.9"), udp()).build();
    expect(&kernel, "monitored deny", &denied, XDP_PASS, Reason::Deny);
    expect(
        &kernel,
        "monitored malformed",
        &cut(v4(udp()).build(), L3 + 10),
        XDP_PASS,
        Reason::Malformed,
    );
}

#[test]
fn host_bans_sit_beside_the_prefixes() {
    // Hosts (IPv4 /32, IPv6 /64) live in the host tables, everything else in the tries: a host
    // entry in force drops alone, one that lapsed leaves the decision to the tries.
    if !privileged("host_bans_sit_beside_the_prefixes") {
        return;
    }
    let mut kernel = Kernel::load();
    setup(&mut kernel);
    let past = DenyEntry { expires_ns: datapath_ns() - 1 };
    let forever = DenyEntry { expires_ns: 0 };
    let deny = |k: &mut Kernel, net: &str, e: DenyEntry| k.maps.set_deny(net.parse().unwrap(), e);
    deny(&mut kernel, "198.18.7.7/32", forever).unwrap();
    deny(&mut kernel, "fd00:7:0:7::/64", forever).unwrap();
    deny(&mut kernel, "fd00:8:0:8::/64", past).unwrap();
    deny(&mut kernel, "fd00:8:0:8::9/128", forever).unwrap();
    deny(&mut kernel, "198.18.66.66/32", past).unwrap();
    let frame = |a: &str| Spec::new(ip(a), udp()).build();
    let (drop, pass) = (XDP_DROP, XDP_PASS);
    expect(&kernel, "banned v4 host", &frame("198.18.7.7"), drop, Reason::Deny);
    expect(&kernel, "its neighbour", &frame("198.18.7.8"), pass, Reason::Pass);
    expect(
        &kernel,
        "any address of a banned /64",
        &frame("fd00:7:0:7:1:2:3:4"),
        drop,
        Reason::Deny,
    );
    expect(&kernel, "the next /64", &frame("fd00:7:0:8::1"), pass, Reason::Pass);
    expect(&kernel, "a /128 inside a lapsed /64", &frame("fd00:8:0:8::9"), drop, Reason::Deny);
    expect(&kernel, "the rest of the lapsed /64", &frame("fd00:8:0:8::a"), pass, Reason::Pass);
    expect(&kernel, "a lapsed host in a banned /24", &frame("198.18.66.66"), drop, Reason::Deny);
    deny(&mut kernel, "198.18.99.5/32", forever).unwrap();
    expect(&kernel, "a banned host in a lapsed /24", &frame("198.18.99.5"), drop, Reason::Deny);
    expect(&kernel, "the rest of the lapsed /24", &frame("198.18.99.6"), pass, Reason::Pass);
    let listed: Vec<String> =
        kernel.maps.deny().unwrap().iter().map(|(n, _)| n.to_string()).collect();
    for net in ["198.18.7.7/32", "fd00:7:0:7::/64", "fd00:8:0:8::9/128", "198.18.66.0/24"] {
        assert!(listed.contains(&net.to_string()), "{net} listed in {listed:?}");
    }
    assert!(kernel.maps.remove_deny("198.18.7.7/32".parse().unwrap()).unwrap());
    assert!(!kernel.maps.remove_deny("198.18.7.7/32".parse().unwrap()).unwrap(), "gone");
    assert!(kernel.maps.remove_deny("fd00:7:0:7::/64".parse().unwrap()).unwrap());
    expect(&kernel, "an unbanned v4 host", &frame("198.18.7.7"), pass, Reason::Pass);
    expect(&kernel, "an unbanned /64", &frame("fd00:7:0:7:1:2:3:4"), pass, Reason::Pass);
    // The last host of each family gone, the program skips those maps; a new ban ends that.
    for net in ["198.18.66.66/32", "fd00:8:0:8::/64"] {
        assert!(kernel.maps.remove_deny(net.parse().unwrap()).unwrap());
    }
    deny(&mut kernel, "198.18.7.7/32", forever).unwrap();
    deny(&mut kernel, "fd00:7:0:7::/64", forever).unwrap();
    expect(&kernel, "a v4 host banned again", &frame("198.18.7.7"), drop, Reason::Deny);
    expect(&kernel, "a /64 banned again", &frame("fd00:7:0:7::1"), drop, Reason::Deny);
}

#[test]
fn every_shared_map_name_is_in_the_object() {
    if !privileged("every_shared_map_name_is_in_the_object") {
        return;
    }
    let bpf = aya::Ebpf::load(secgate::EBPF_OBJECT).expect("object");
    let names = secgate_common::maps::ALL.iter().chain(&secgate_common::maps::UNPINNED);
    for name in names.clone() {
        assert!(
            bpf.map(name).is_some(),
            "secgate_common::maps names {name}, which the program does not define"
        );
    }
    // aya-log's own: its ring buffer, and the section holding its level.
    let logs = |name: &str| name == secgate_common::maps::LOGS || name.starts_with('.');
    for (name, map) in bpf.maps().filter(|(name, _)| !logs(name)) {
        let info = map_info(map);
        let (key, value, capacity) = secgate::maps::layout(name).expect("layout known");
        let found = (info.key_size(), info.value_size(), info.max_entries());
        assert_eq!(found, (key, value, capacity.unwrap_or(found.2)), "layout of {name}");
    }
    assert_eq!(
        bpf.maps().filter(|(name, _)| !logs(name)).count(),
        names.count(),
        "the program defines maps the shared lists lack"
    );
    assert!(bpf.map(secgate_common::maps::LOGS).is_some(), "the trace lines' ring buffer");
}

#[test]
fn full_map_is_a_clear_error() {
    if !privileged("full_map_is_a_clear_error") {
        return;
    }
    let mut kernel = Kernel::load();
    let rule = RateRule::from_rate(10, 1);
    for port in 1..=secgate_common::maps::MAX_LIMIT_RULES as u16 {
        kernel
            .maps
            .set_limit(LimitKey { port, proto: IPPROTO_UDP, syn_only: 0 }, rule)
            .expect("within capacity");
    }
    let err = kernel
        .maps
        .set_limit(LimitKey { port: 9999, proto: IPPROTO_UDP, syn_only: 0 }, rule)
        .expect_err("one past capacity");
    let msg = err.to_string();
    assert!(msg.contains("SG_LIMITS is full") && msg.contains("256"), "{msg}");
    assert_eq!(kernel.maps.limits().unwrap().len(), 256, "existing entries are intact");
}

#[test]
fn a_full_host_table_is_a_clear_error() {
    if !privileged("a_full_host_table_is_a_clear_error") {
        return;
    }
    let mut kernel = Kernel::load();
    let forever = DenyEntry { expires_ns: 0 };
    let cap = secgate_common::maps::MAX_DENY_HOSTS;
    let host = |i: u32| {
        let [_, b, c, d] = i.to_be_bytes();
        IpAddr::from(std::net::Ipv4Addr::new(10 + b / 64, b % 64, c, d))
    };
    for i in 0..cap {
        kernel.maps.set_deny(host(i).into(), forever).expect("within capacity");
    }
    let err = kernel.maps.set_deny("198.18.0.1/32".parse().unwrap(), forever).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("SG_HOST_BANS_V4 is full") && msg.contains(&cap.to_string()), "{msg}");
    kernel.maps.set_deny("198.18.0.0/24".parse().unwrap(), forever).expect("prefixes have room");
    kernel.maps.set_deny("fd00:1:2:3::/64".parse().unwrap(), forever).expect("IPv6 has room");
    // A full table holds some hosts in their second sets, placed or moved there: the
    // program finds every one it samples, and bans no host that was never banned.
    for i in (0..cap).step_by(4093) {
        let frame = Spec::new(host(i), udp()).build();
        expect(&kernel, &format!("host {i} of a full table"), &frame, XDP_DROP, Reason::Deny);
    }
    for last in [1u8, 77, 254] {
        let frame = Spec::new(ip(&format!("10.{}.0.{last}", 16 + last % 3)), udp()).build();
        expect(&kernel, "a host never banned", &frame, XDP_PASS, Reason::Pass);
    }
    let frame = Spec::new(ip("fd00:1:2:3::9"), udp()).build();
    expect(&kernel, "an IPv6 host beside a full IPv4 table", &frame, XDP_DROP, Reason::Deny);
    let lifted = host(12_345);
    assert!(kernel.maps.remove_deny(lifted.into()).unwrap());
    let frame = Spec::new(lifted, udp()).build();
    expect(&kernel, "a lifted ban", &frame, XDP_PASS, Reason::Pass);
    kernel.maps.set_deny("198.18.0.1/32".parse().unwrap(), forever).expect("room again");
}

fn map_info(map: &aya::maps::Map) -> aya::maps::MapInfo {
    use aya::maps::Map;
    let data = match map {
        Map::Array(m)
        | Map::HashMap(m)
        | Map::LpmTrie(m)
        | Map::PerCpuArray(m)
        | Map::RingBuf(m) => m,
        other => panic!("unexpected map kind {other:?}"),
    };
    data.info().expect("map info")
}

#[test]
fn fragments_count_against_their_own_bucket_or_drop() {
    // Regression: non-first fragments have no ports, so where only port overrides were set
    // they passed unlimited.
    if !privileged("fragments_count_against_their_own_bucket_or_drop") {
        return;
    }
    let mut kernel = Kernel::load();
    setup(&mut kernel);
    let mut cfg = kernel.maps.config().unwrap();
    cfg.fragment_rule = RateRule::from_rate(1, 1);
    kernel.maps.set_config(&cfg).unwrap();
    let v4_frag = cut(with(Spec::new(ip("198.18.7.7"), udp()), |s| s.v4_frag = 10), L4_V4 + 4);
    let v6_frag =
        cut(with(Spec::new(ip("fd00:7::7"), udp()), |s| s.v6_exts = vec![frag(3)]), L4_V6 + 8);
    for (name, frame) in [("ipv4", &v4_frag), ("ipv6", &v6_frag)] {
        expect(
            &kernel,
            &format!("{name} first fragment in its bucket"),
            frame,
            XDP_PASS,
            Reason::Pass,
        );
        expect(
            &kernel,
            &format!("{name} second fragment over the limit"),
            frame,
            XDP_DROP,
            Reason::Rate,
        );
    }
    let key = model::bucket_key(&cfg, &packet(&v4_frag), LimitKey::FRAGMENTS);
    assert!(kernel.maps.source(&key).unwrap().is_some(), "fragments have their own bucket");
    cfg.flags |= FLAG_DROP_FRAGMENTS;
    kernel.maps.set_config(&cfg).unwrap();
    let fresh = cut(with(Spec::new(ip("198.18.8.8"), udp()), |s| s.v4_frag = 10), L4_V4 + 4);
    expect(&kernel, "fragment dropped by policy", &fresh, XDP_DROP, Reason::Fragment);
    let first = Spec::new(ip("198.18.8.8"), udp()).build();
    expect(&kernel, "unfragmented traffic is unaffected", &first, XDP_PASS, Reason::Pass);
}

#[test]
fn a_changed_rule_binds_on_the_next_packet() {
    // Regression: a source that spent a large burst under the old rule kept its TAT far in
    // the future and was held back for minutes after the rule was raised.
    if !privileged("a_changed_rule_binds_on_the_next_packet") {
        return;
    }
    let mut kernel = Kernel::load();
    setup(&mut kernel);
    let mut cfg = kernel.maps.config().unwrap();
    cfg.default_rule = RateRule::from_rate(1, 500);
    kernel.maps.set_config(&cfg).unwrap();
    let frame = Spec::new(ip("198.18.9.9"), udp()).build();
    for _ in 0..500 {
        assert_eq!(kernel.run(&frame), XDP_PASS, "within the old burst");
    }
    expect(&kernel, "over the old limit", &frame, XDP_DROP, Reason::Rate);
    cfg.default_rule = RateRule::from_rate(1000, 5);
    kernel.maps.set_config(&cfg).unwrap();
    expect(&kernel, "judged by the new rule at once", &frame, XDP_DROP, Reason::Rate);
    std::thread::sleep(std::time::Duration::from_millis(3));
    expect(&kernel, "one new interval later it passes", &frame, XDP_PASS, Reason::Pass);
}

#[test]
fn a_short_ban_inside_a_longer_one_keeps_dropping() {
    // Regression: the kernel reads only the longest match, so a /32 ban that expired inside
    // a permanent /25 let the host through until the sweep.
    if !privileged("a_short_ban_inside_a_longer_one_keeps_dropping") {
        return;
    }
    let mut kernel = Kernel::load();
    setup(&mut kernel);
    let mut bans = secgate::bans::Bans::default();
    let host = "198.18.44.7/32".parse().unwrap();
    kernel.maps.write_deny(&bans.set_config(&["198.18.44.0/25".parse().unwrap()].into())).unwrap();
    let ban =
        secgate::bans::Ban { expires_ns: Some(monotonic_ns() + 1_000_000), reason: "1 ms".into() };
    kernel.maps.write_deny(&bans.ban(host, ban)).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    let frame = Spec::new(ip("198.18.44.7"), udp()).build();
    expect(&kernel, "host after its own ban expired", &frame, XDP_DROP, Reason::Deny);
    let (lifted, writes) = bans.expire(monotonic_ns());
    assert_eq!(lifted, vec![host]);
    kernel.maps.write_deny(&writes).unwrap();
    expect(&kernel, "host after the sweep", &frame, XDP_DROP, Reason::Deny);
    let outside = Spec::new(ip("198.18.44.200"), udp()).build();
    expect(&kernel, "outside the /25", &outside, XDP_PASS, Reason::Pass);
}

/// `secgate trace` in the kernel: only packets from a traced prefix, and only while the flag
/// is set, spend the trace budget (each spends a line or counts as held back); verdicts are
/// the same traced or not.
#[test]
fn only_traced_sources_reach_the_trace_path() {
    if !privileged("only_traced_sources_reach_the_trace_path") {
        return;
    }
    let mut kernel = Kernel::load();
    let cfg = DatapathConfig {
        v4_mask: prefix_mask(32),
        v6_mask: prefix_mask(64),
        default_rule: RateRule::from_rate(1, 1),
        ..Default::default()
    };
    kernel.maps.set_config(&cfg).unwrap();
    let traced = ["198.18.9.0/24".parse().unwrap()].into_iter().collect();
    kernel.maps.trace.set(&traced).unwrap();
    let frame = |src: &str| Spec::new(ip(src), udp()).build();
    let runs = 200;
    // Every run counts (for the budget); the verdict is the last one's.
    let run = |kernel: &Kernel, src: &str| {
        let mut last = None;
        for _ in 0..runs {
            last = Some(kernel.run(&frame(src)));
        }
        last
    };

    // The flag off: nothing is traced, traced prefix or not.
    assert_eq!(run(&kernel, "198.18.9.9"), Some(XDP_DROP));
    assert_eq!(kernel.maps.trace.suppressed().unwrap(), 0, "no trace without the flag");

    kernel.maps.set_config(&DatapathConfig { flags: FLAG_TRACE, ..cfg }).unwrap();
    assert_eq!(run(&kernel, "198.18.1.1"), Some(XDP_DROP), "the same verdict");
    assert_eq!(kernel.maps.trace.suppressed().unwrap(), 0, "an untraced source spends nothing");
    assert_eq!(run(&kernel, "198.18.9.10"), Some(XDP_DROP), "the same verdict traced");
    let held = kernel.maps.trace.suppressed().unwrap();
    let budget = TRACE_BURST + 1;
    assert!(
        (runs - budget - 5..=runs - TRACE_BURST + 5).contains(&held),
        "a traced flood gets its burst of lines, the rest held back: {held} of {runs}"
    );
}

#[test]
fn the_coarse_clock_is_read_only_under_its_flag() {
    // A ban that lapsed between the coarse clock's last tick and now: the fine clock lets the
    // source through, the coarse one (which stands at that tick) still drops it.
    if !privileged("the_coarse_clock_is_read_only_under_its_flag") {
        return;
    }
    let mut kernel = Kernel::load();
    setup(&mut kernel);
    let fine = kernel.maps.config().unwrap();
    let coarse = DatapathConfig { flags: fine.flags | FLAG_COARSE_CLOCK, ..fine };
    let net: ipnet::IpNet = "198.18.77.0/24".parse().unwrap();
    let frame = Spec::new(ip("198.18.77.7"), udp()).build();
    let mut coarse_drops = 0;
    for _ in 0..2000 {
        let (tick, now) = (datapath_ns(), monotonic_ns());
        if now - tick < 100_000 {
            std::thread::sleep(std::time::Duration::from_micros(300));
            continue;
        }
        kernel.maps.set_deny(net, DenyEntry { expires_ns: tick + (now - tick) / 2 }).unwrap();
        kernel.maps.set_config(&fine).unwrap();
        expect(&kernel, "lapsed on the fine clock", &frame, XDP_PASS, Reason::Pass);
        kernel.maps.set_config(&coarse).unwrap();
        let action = kernel.run(&frame);
        // Only a run within the same tick says anything about the coarse clock.
        if datapath_ns() == tick {
            assert_eq!(action, XDP_DROP, "in force on the coarse clock, which stands at {tick}");
            coarse_drops += 1;
        }
        if coarse_drops == 20 {
            break;
        }
    }
    assert_eq!(coarse_drops, 20, "too few runs fell within one tick to tell the clocks apart");
}

/// A flood with more sources than the limiter table holds evicts live buckets, and each
/// eviction is counted: under an hour-long limit no bucket lapses, so every new bucket took a
/// slot never used or pushed out a live one, and the evictions are the buckets made less
/// those still held. A flood the table holds evicts none.
#[test]
fn a_full_limiter_table_counts_each_eviction() {
    if !privileged("a_full_limiter_table_counts_each_eviction") {
        return;
    }
    use secgate_common::{
        maps::{STATS_EVICTED_BUCKETS, STATS_NEW_BUCKETS},
        sources::{SET_WAYS, sets_for},
    };
    let hour = 3_600_000_000_000;
    let cfg = DatapathConfig {
        v4_mask: prefix_mask(32),
        v6_mask: prefix_mask(64),
        default_rule: RateRule { interval_ns: hour, tolerance_ns: 0 },
        ..Default::default()
    };
    let capacity = 16;
    let slots = u64::from(sets_for(capacity)) * SET_WAYS as u64;
    for (sources, full) in [(200u16, true), (4, false)] {
        let mut kernel = Kernel::with_sources(capacity);
        kernel.maps.set_config(&cfg).expect("config");
        let frames: Vec<Vec<u8>> = (0..sources)
            .map(|i| {
                let [hi, lo] = i.to_be_bytes();
                Spec::new(IpAddr::from([198, 18, hi, lo]), udp()).build()
            })
            .collect();
        let before = kernel.counters();
        for (i, frame) in frames.iter().enumerate() {
            expect(&kernel, &format!("source {i}'s first packet"), frame, XDP_PASS, Reason::Pass);
        }
        let after = kernel.counters();
        let moved = |slot: u32| after[slot as usize].packets - before[slot as usize].packets;
        let (created, evicted) = (moved(STATS_NEW_BUCKETS), moved(STATS_EVICTED_BUCKETS));
        assert_eq!(created, u64::from(sources), "every source made a bucket");
        let cfg = kernel.maps.config().expect("config");
        let held = frames
            .iter()
            .filter(|f| {
                let key = model::bucket_key(&cfg, &packet(f), LimitKey::DEFAULT);
                kernel.maps.source(&key).expect("read the table").is_some()
            })
            .count() as u64;
        assert_eq!(evicted, created - held, "{sources} sources: each bucket lost is counted");
        if full {
            assert_eq!(held, slots, "a full table holds a bucket in every slot");
            assert!(evicted >= created - slots, "{evicted} evictions");
        } else {
            assert_eq!(evicted, 0, "a table with room evicts nothing");
        }
    }
}

/// A slot whose bucket has lapsed is reused for a new source without counting an eviction:
/// nothing is lost. The table is filled under a 1 ms limit, every bucket lapses, and new
/// sources (too few to fill any two sets again) take their slots.
#[test]
fn a_lapsed_bucket_is_reused_without_an_eviction() {
    if !privileged("a_lapsed_bucket_is_reused_without_an_eviction") {
        return;
    }
    use secgate_common::maps::{STATS_EVICTED_BUCKETS, STATS_NEW_BUCKETS};
    let mut kernel = Kernel::with_sources(16);
    let cfg = DatapathConfig {
        v4_mask: prefix_mask(32),
        v6_mask: prefix_mask(64),
        default_rule: RateRule { interval_ns: 1_000_000, tolerance_ns: 0 },
        ..Default::default()
    };
    kernel.maps.set_config(&cfg).expect("config");
    let frame = |hi: u8, lo: u8| Spec::new(IpAddr::from([198, 18, hi, lo]), udp()).build();
    for i in 0..200u8 {
        kernel.run(&frame(1, i));
    }
    std::thread::sleep(std::time::Duration::from_millis(20));
    let before = kernel.counters();
    for i in 0..4u8 {
        expect(&kernel, &format!("new source {i}"), &frame(2, i), XDP_PASS, Reason::Pass);
    }
    let after = kernel.counters();
    let moved = |slot: u32| after[slot as usize].packets - before[slot as usize].packets;
    assert_eq!(moved(STATS_NEW_BUCKETS), 4);
    assert_eq!(moved(STATS_EVICTED_BUCKETS), 0, "lapsed buckets are not evicted ones");
}
