//! Differential test: random frames over random map states through the kernel program and the
//! `secgate_common::model` reference; verdicts and limiter state must agree.
//!
//! The kernel reads its own clock, so each run is bracketed by two `CLOCK_MONOTONIC` reads
//! and the model is evaluated at both ends. GCRA is monotonic in time, so the kernel's state
//! must lie between the two model states and its verdict must be one of the two. The two ends
//! differ only when a deadline falls inside the few microseconds of one run; such frames are
//! counted (and must stay rare) and only their verdict is compared.
//! After each frame the model adopts the kernel's state so that clock jitter never compounds.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};
use secgate_common::{
    maps::{
        DatapathConfig, DenyEntry, FLAG_PASS_MALFORMED, LimitKey, MODE_MONITOR, RateRule,
        SourceState,
    },
    model::{self, Tables},
    net::*,
    verdict::{Action, Reason},
};
use secgate_tests::{
    frames::{Ext, L4Spec, Spec},
    harness::{Kernel, XDP_DROP, XDP_PASS, monotonic_ns, pin_to_cpu0},
    model_tables::ModelTables,
    privileged,
};

const FRAMES_PER_SCENARIO: usize = 500;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn pool(rng: &mut StdRng) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for _ in 0..6 {
        let net = rng.random_range(0..4u8);
        out.push(IpAddr::V4(Ipv4Addr::new(198, 18 + net % 2, net, rng.random_range(1..6))));
        let word = rng.random_range(0..3u16);
        let v6 =
            Ipv6Addr::new(0xfd00, word, 0, 0, 0, 0, rng.random_range(0..3), rng.random_range(1..4));
        out.push(IpAddr::V6(v6));
    }
    out
}

fn random_rule(rng: &mut StdRng) -> RateRule {
    match rng.random_range(0..10) {
        0 => RateRule::UNLIMITED,
        _ => RateRule::from_rate(rng.random_range(1..2000), rng.random_range(1..20)),
    }
}

fn random_limit_key(rng: &mut StdRng) -> LimitKey {
    let proto = *[IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP, IPPROTO_ICMPV6].choose(rng).unwrap();
    let port = if has_ports(proto) { *[0u16, 53, 80, 443].choose(rng).unwrap() } else { 0 };
    let syn_only = u8::from(proto == IPPROTO_TCP && rng.random_bool(0.5));
    LimitKey { port, proto, syn_only }
}

fn prefix_of(addr: IpAddr, len: u8) -> IpNet {
    IpNet::new(addr, len).expect("prefix").trunc()
}

/// Writes a random configuration and map contents into both the kernel and the model.
fn scenario(
    rng: &mut StdRng,
    kernel: &mut Kernel,
    sources: &[IpAddr],
) -> (DatapathConfig, ModelTables) {
    let mut tables = ModelTables::default();
    for (key, _) in kernel.maps.limits().unwrap() {
        kernel.maps.remove_limit(&key).unwrap();
    }
    for (net, _) in kernel.maps.allow().unwrap() {
        kernel.maps.remove_allow(net).unwrap();
    }
    for (net, _) in kernel.maps.deny().unwrap() {
        kernel.maps.remove_deny(net).unwrap();
    }
    kernel.maps.clear_sources().unwrap();
    let mut cfg = DatapathConfig {
        mode: if rng.random_bool(0.1) { MODE_MONITOR } else { 0 },
        flags: if rng.random_bool(0.2) { FLAG_PASS_MALFORMED } else { 0 },
        v4_mask: model::prefix_mask(*[32, 24, 16].choose(rng).unwrap()),
        v6_mask: model::prefix_mask(*[64, 48, 128].choose(rng).unwrap()),
        default_rule: random_rule(rng),
        event_interval_ns: rng.random_range(0..5_000_000),
        event_budget: RateRule::from_rate(rng.random_range(1..5000), rng.random_range(1..10)),
        ..Default::default()
    };
    for _ in 0..rng.random_range(0..6) {
        let (key, rule) = (random_limit_key(rng), random_rule(rng));
        cfg.override_protos |= 1 << key.proto;
        kernel.maps.set_limit(key, rule).unwrap();
        tables.rules.insert(key, rule);
    }
    let now = monotonic_ns();
    for _ in 0..rng.random_range(0..3) {
        let addr = *sources.choose(rng).unwrap();
        let net = prefix_of(
            addr,
            if addr.is_ipv4() {
                *[32, 24].choose(rng).unwrap()
            } else {
                *[128, 64].choose(rng).unwrap()
            },
        );
        kernel.maps.set_allow(net).unwrap();
        tables.allow.push(net);
    }
    for _ in 0..rng.random_range(0..4) {
        let addr = *sources.choose(rng).unwrap();
        let net = prefix_of(
            addr,
            if addr.is_ipv4() {
                *[32, 24, 16].choose(rng).unwrap()
            } else {
                *[128, 64, 32].choose(rng).unwrap()
            },
        );
        let expires_ns = match rng.random_range(0..3) {
            0 => 0,
            1 => now - rng.random_range(1..1_000_000),
            _ => now + rng.random_range(1..30_000_000),
        };
        let entry = DenyEntry { expires_ns };
        kernel.maps.set_deny(net, entry).unwrap();
        tables.deny.retain(|(n, _)| *n != net);
        tables.deny.push((net, entry));
    }
    kernel.maps.set_config(&cfg).unwrap();
    tables.budget = kernel.event_budget_cpu0();
    (cfg, tables)
}

fn random_spec(rng: &mut StdRng, sources: &[IpAddr]) -> Spec {
    let src = *sources.choose(rng).unwrap();
    let l4 = match rng.random_range(0..10) {
        0..=3 => L4Spec::Tcp {
            dport: *[53u16, 80, 443, 8080].choose(rng).unwrap(),
            flags: *[TCP_FLAG_SYN, TCP_FLAG_ACK, TCP_FLAG_SYN | TCP_FLAG_ACK, 0x01]
                .choose(rng)
                .unwrap(),
        },
        4..=6 => L4Spec::Udp { dport: *[53u16, 443, 123].choose(rng).unwrap() },
        7..=8 => L4Spec::Icmp,
        _ => L4Spec::Other(*[47u8, 50, 59, 132].choose(rng).unwrap()),
    };
    let mut spec = Spec::new(src, l4);
    let tpids = [ETH_P_8021Q, ETH_P_8021AD];
    spec.vlans = (0..*[0, 0, 0, 1, 2, 3].choose(rng).unwrap())
        .map(|_| *tpids.choose(rng).unwrap())
        .collect();
    spec.payload = rng.random_range(0..64);
    if src.is_ipv4() {
        spec.v4_option_words = if rng.random_bool(0.2) { rng.random_range(1..=10) } else { 0 };
        spec.v4_frag = match rng.random_range(0..10) {
            0 => 0x2000,
            1 => rng.random_range(1..0x1fff),
            _ => 0,
        };
    } else if rng.random_bool(0.4) {
        let kinds =
            [IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT, IPPROTO_AH];
        spec.v6_exts = (0..rng.random_range(1..10))
            .map(|_| {
                let kind = *kinds.choose(rng).unwrap();
                let frag_offset = if kind == IPPROTO_FRAGMENT && rng.random_bool(0.5) {
                    rng.random_range(1..100)
                } else {
                    0
                };
                Ext { kind, units: rng.random_range(0..4), frag_offset }
            })
            .collect();
    }
    spec
}

/// A frame biased toward edge cases: valid, truncated at a random point, or with a header
/// byte overwritten.
fn random_frame(rng: &mut StdRng, sources: &[IpAddr]) -> Vec<u8> {
    let mut frame = random_spec(rng, sources).build();
    match rng.random_range(0..10) {
        0..=1 => frame.truncate(rng.random_range(ETH_HLEN..=frame.len())),
        2 => {
            let at = rng.random_range(12..frame.len().min(100));
            frame[at] = rng.random();
        }
        _ => {}
    }
    frame
}

fn moved_reason(
    before: &[secgate_common::maps::Counter],
    after: &[secgate_common::maps::Counter],
) -> Reason {
    let moved: Vec<Reason> = Reason::ALL
        .into_iter()
        .filter(|r| after[*r as usize].packets != before[*r as usize].packets)
        .collect();
    assert_eq!(moved.len(), 1, "exactly one counter moves per packet, got {moved:?}");
    moved[0]
}

fn between(lo: &SourceState, hi: &SourceState, k: &SourceState) -> bool {
    let within = |a: u64, b: u64, x: u64| a.min(b) <= x && x <= a.max(b);
    within(lo.tat_ns, hi.tat_ns, k.tat_ns)
        && within(lo.last_event_ns, hi.last_event_ns, k.last_event_ns)
}

#[test]
fn kernel_matches_model() {
    if !privileged("kernel_matches_model") {
        return;
    }
    pin_to_cpu0();
    let seed = env_or("SECGATE_DIFF_SEED", rand::random());
    let total = env_or("SECGATE_DIFF_FRAMES", 200_000) as usize;
    eprintln!("differential test: {total} frames, SECGATE_DIFF_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut kernel = Kernel::load();
    let (mut frames, mut ambiguous, mut limited, mut reasons) =
        (0usize, 0usize, 0usize, [0usize; 6]);
    while frames < total {
        let sources = pool(&mut rng);
        let (cfg, mut tables) = scenario(&mut rng, &mut kernel, &sources);
        for _ in 0..FRAMES_PER_SCENARIO.min(total - frames) {
            let frame = random_frame(&mut rng, &sources);
            let before = kernel.counters();
            let t0 = monotonic_ns();
            let action = kernel.run(&frame);
            let t1 = monotonic_ns();
            let reason = moved_reason(&before, &kernel.counters());
            let (mut m0, mut m1) = (tables.clone(), tables.clone());
            let (o0, o1) = (
                model::decide(&cfg, &mut m0, &frame, t0),
                model::decide(&cfg, &mut m1, &frame, t1),
            );
            let to_xdp = |a: Action| {
                if a == Action::Pass { XDP_PASS } else { XDP_DROP }
            };
            let ctx = || format!("seed {seed}, frame #{frames} {frame:02x?}, cfg {cfg:?}");
            if o0.verdict != o1.verdict {
                ambiguous += 1;
            }
            assert!(
                [o0.verdict, o1.verdict]
                    .iter()
                    .any(|v| v.reason == reason && to_xdp(v.action) == action),
                "verdict mismatch: kernel {reason:?}/{action}, model {:?} .. {:?}; {}",
                o0.verdict,
                o1.verdict,
                ctx()
            );
            if let Some(key) = o0.bucket.or(o1.bucket) {
                limited += 1;
                let k = kernel.maps.source(&key).unwrap();
                let (s0, s1) = (m0.source(&key), m1.source(&key));
                match (s0, s1, k) {
                    // At a clock boundary the two ends took different branches; only the
                    // verdict (checked above) is comparable then.
                    _ if o0.verdict != o1.verdict => {}
                    (Some(a), Some(b), Some(k)) => assert!(
                        between(&a, &b, &k),
                        "limiter state {k:?} outside {a:?} .. {b:?}; {}",
                        ctx()
                    ),
                    (None, None, None) => {}
                    other => panic!("limiter state presence differs {other:?}; {}", ctx()),
                }
                if let Some(k) = k {
                    tables.sources.insert(key, k);
                }
            }
            tables.budget = kernel.event_budget_cpu0();
            reasons[reason as usize] += 1;
            frames += 1;
        }
    }
    eprintln!(
        "{frames} frames, {limited} through the limiter, {ambiguous} at a clock boundary; by reason {reasons:?}"
    );
    assert!(
        ambiguous * 1000 <= frames,
        "too many clock-boundary frames ({ambiguous}) for a meaningful comparison"
    );
    for r in
        [Reason::Pass, Reason::Rate, Reason::Deny, Reason::Allow, Reason::Malformed, Reason::NonIp]
    {
        assert!(reasons[r as usize] > 0, "the generator never produced a {} verdict", r.name());
    }
}
