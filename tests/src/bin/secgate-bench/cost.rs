//! Per-packet cost of the secgate XDP program on each verdict path under
//! `BPF_PROG_TEST_RUN`, against a bare `XDP_DROP` program: first for one source, then over
//! the live bench's floods of up to a million sources, each frame's source drawn by a
//! spreader that tail-calls the program under test.

use std::net::IpAddr;

use crate::{
    live::{self, Case, FLOODS, WARM_DRAWS, config},
    median,
};
use secgate_common::{
    maps::{DatapathConfig, DenyEntry, FLAG_COARSE_CLOCK, LimitKey, RateRule},
    net::{IPPROTO_TCP, TCP_FLAG_ACK, TCP_FLAG_SYN},
};
use secgate_tests::{
    bare::{RawXdp, XDP_DROP},
    frames::{L4Spec, Spec},
    harness::{Kernel, monotonic_ns, pin_to_cpu},
};

const REPEAT: u32 = 200_000;
const ROUNDS: usize = 9;

/// Runs per round of the event row: fewer than the ring buffer holds, so every event is
/// really written (a full ring fails the reservation, which costs less).
const EVENT_REPEAT: u32 = 2_000;

pub fn run() {
    pin_to_cpu(0);
    let mut kernel = Kernel::load();
    let bare = RawXdp::load(XDP_DROP);
    let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
    let within_rule = RateRule::from_rate(1_000_000_000, 1 << 24);
    let cfg = config(within_rule);
    kernel.maps.set_config(&cfg).expect("config");
    let ban = |kernel: &mut Kernel, net: &str, expires_ns| {
        kernel.maps.set_deny(net.parse().expect("net"), DenyEntry { expires_ns }).expect("ban")
    };
    ban(&mut kernel, "198.18.66.0/24", 0);
    ban(&mut kernel, "198.18.68.0/24", monotonic_ns() + 3_600_000_000_000);
    let syn = L4Spec::Tcp { dport: 443, flags: TCP_FLAG_SYN };
    let udp = L4Spec::Udp { dport: 53 };
    let frame = |src: &str, l4: &L4Spec| Spec::new(ip(src), l4.clone()).build();
    println!(
        "datapath per-packet cost (BPF_PROG_TEST_RUN, {REPEAT} runs x {ROUNDS} rounds, medians)"
    );
    println!("{:<40} {:>10} {:>10} {:>8}", "case", "secgate ns", "bare ns", "ratio");
    let within =
        row(&mut kernel, &bare, "ipv4 syn, within limit (CAS)", REPEAT, &frame("198.18.1.1", &syn));
    row(&mut kernel, &bare, "ipv6 udp, within limit (CAS)", REPEAT, &frame("fd00:1::1", &udp));
    let prefix = row(&mut kernel, &bare, "ipv4 denied /24", REPEAT, &frame("198.18.66.6", &syn));
    // Only while this row runs, lest every other row pay a look in the host table.
    ban(&mut kernel, "198.18.67.7/32", 0);
    let host = row(
        &mut kernel,
        &bare,
        "ipv4 host banned (host table)",
        REPEAT,
        &frame("198.18.67.7", &syn),
    );
    kernel.maps.remove_deny("198.18.67.7/32".parse().expect("net")).expect("lift");
    let expiring =
        row(&mut kernel, &bare, "ipv4 denied /24, expiring", REPEAT, &frame("198.18.68.6", &syn));
    kernel
        .maps
        .set_config(&DatapathConfig { flags: cfg.flags & !FLAG_COARSE_CLOCK, ..cfg })
        .unwrap();
    let fine = row(
        &mut kernel,
        &bare,
        "ipv4 denied /24, expiring, fine clock",
        REPEAT,
        &frame("198.18.68.6", &syn),
    );
    kernel.maps.set_config(&cfg).unwrap();
    let malformed = frame("198.18.1.1", &syn)[..30].to_vec();
    let parse_only = row(&mut kernel, &bare, "malformed ipv4", REPEAT, &malformed);
    // With an allowlist in use, every packet also walks its trie.
    kernel.maps.set_config(&DatapathConfig { flags: 0, ..cfg }).unwrap();
    kernel.maps.set_allow("203.0.113.0/24".parse().unwrap()).unwrap();
    let allow = row(
        &mut kernel,
        &bare,
        "ipv4 denied /24, allowlist used",
        REPEAT,
        &frame("198.18.66.6", &syn),
    );
    kernel.maps.remove_allow("203.0.113.0/24".parse().unwrap()).unwrap();
    // Over-limit path: a 1 pps limit keeps every run after the first two over the limit.
    let mut cfg = config(RateRule::from_rate(1, 2));
    kernel.maps.set_config(&cfg).unwrap();
    let over =
        row(&mut kernel, &bare, "ipv4 udp, over limit (drop)", REPEAT, &frame("198.18.7.7", &udp));
    // The same with an event for every packet: no per-bucket gap, an ample budget.
    cfg.event_interval_ns = 0;
    cfg.event_budget = RateRule::from_rate(1_000_000_000, 1 << 24);
    kernel.maps.set_config(&cfg).unwrap();
    let name = "ipv4 udp, over limit, an event each";
    let event = row(&mut kernel, &bare, name, EVENT_REPEAT, &frame("198.18.7.7", &udp));
    println!("\nwhat each step costs (differences of the rows above, ns)");
    let steps = [
        ("parse, config, count, exit (malformed)", parse_only.0),
        ("allowlist trie walk (one entry)", allow.0 - prefix.0),
        ("clock read, coarse (bpf_ktime_get_coarse_ns)", expiring.0 - prefix.0),
        ("clock read, fine (bpf_ktime_get_ns)", fine.0 - prefix.0),
        ("host-table hit instead of the empty-table skip and trie walk", host.0 - prefix.0),
        ("limiter, within (key, lookup, clock, CAS) over deny", within.0 - prefix.0),
        ("limiter, over (key, lookup, clock, gate) over deny", over.0 - prefix.0),
        ("ring-buffer event", event.0 - over.0),
    ];
    for (name, ns) in steps {
        println!("{name:<52} {ns:>8.1}");
    }
    overrides(&mut kernel, &bare, &config(within_rule));
}

/// What port overrides cost a packet to port 443 within its limit, in four variants whose
/// rounds interleave (so the machine's drift stays out of their differences, which rows
/// measured minutes apart do not escape): a SYN with no TCP override and with TCP
/// overrides on other ports only (four port-bit tests, nothing looked up); an ACK with no
/// TCP override and beside SYN-only rules on its port and on any port (two bit tests and
/// two hash misses: what every ACK paid beside any TCP override before the bitmap, and half
/// of what a SYN paid).
fn overrides(kernel: &mut Kernel, bare: &RawXdp, cfg: &DatapathConfig) {
    let rule = |port, syn_only| LimitKey { port, proto: IPPROTO_TCP, syn_only };
    let tcp = DatapathConfig { override_protos: 1 << IPPROTO_TCP, ..*cfg };
    let generous = cfg.default_rule;
    kernel.maps.set_limit(rule(22, 1), generous).unwrap();
    let syn_only_here = |kernel: &mut Kernel, on: bool| {
        for key in [rule(443, 1), rule(0, 1)] {
            match on {
                true => kernel.maps.set_limit(key, generous).unwrap(),
                false => kernel.maps.remove_limit(&key).unwrap(),
            }
        }
    };
    let packet = |flags| {
        let l4 = L4Spec::Tcp { dport: 443, flags };
        Spec::new("198.18.1.1".parse().expect("ip"), l4).build()
    };
    let (syn, ack) = (packet(TCP_FLAG_SYN), packet(TCP_FLAG_ACK));
    let variants = [
        ("syn, no TCP override", cfg, &syn, false),
        ("syn, TCP overrides elsewhere", &tcp, &syn, false),
        ("ack, no TCP override", cfg, &ack, false),
        ("ack, SYN-only rules on 443, any", &tcp, &ack, true),
    ];
    let (mut ns, mut base) = (vec![Vec::new(); variants.len()], Vec::new());
    for _ in 0..ROUNDS {
        for (i, (_, cfg, frame, rules)) in variants.iter().enumerate() {
            kernel.maps.set_config(cfg).unwrap();
            syn_only_here(kernel, *rules);
            ns[i].push(kernel.cost(frame, REPEAT).as_nanos() as f64);
        }
        base.push(f64::from(bare.run(&syn, REPEAT).1));
    }
    syn_only_here(kernel, false);
    kernel.maps.remove_limit(&rule(22, 1)).unwrap();
    kernel.maps.set_config(cfg).unwrap();
    let bare = median(base);
    println!("\nport overrides, rounds interleaved (tcp to 443, within its limit)");
    let ns: Vec<f64> = ns.into_iter().map(median).collect();
    for ((name, ..), ns) in variants.iter().zip(&ns) {
        print_row(name, *ns, bare);
    }
    println!("{:<52} {:>8.1}", "four port-bit tests, nothing looked up", ns[1] - ns[0]);
    println!("{:<52} {:>8.1}", "two port-bit tests and two hash misses", ns[3] - ns[2]);
}

/// Medians of `frame`'s cost under secgate and under the bare drop, rounds interleaved, with
/// `repeat` runs a round and the ring buffer drained before each.
fn row(kernel: &mut Kernel, bare: &RawXdp, name: &str, repeat: u32, frame: &[u8]) -> (f64, f64) {
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        kernel.events();
        ours.push(kernel.cost(frame, repeat).as_nanos() as f64);
        base.push(f64::from(bare.run(frame, repeat).1));
    }
    print_row(name, median(ours), median(base))
}

fn print_row(name: &str, ours: f64, bare: f64) -> (f64, f64) {
    println!("{name:<40} {ours:>10.1} {bare:>10.1} {:>8.2}", ours / bare);
    (ours, bare)
}

/// Draws per measured run over many sources: every source of the largest flood about once.
const MANY_REPEAT: u32 = 1 << 20;
const MANY_ROUNDS: usize = 3;

/// Per-packet cost over each live flood's sources. Every run goes through a spreader (one
/// random draw and a tail call), so the spreader's own cost, the spreader into a bare drop
/// less the bare drop alone, is taken off every figure. Prints the table and returns its rows
/// (flood, program, ns, ratio to the bare drop).
pub fn many_sources() -> Vec<serde_json::Value> {
    pin_to_cpu(0);
    println!(
        "\nper-packet cost over many sources (BPF_PROG_TEST_RUN, {MANY_REPEAT} random draws x \
         {MANY_ROUNDS} rounds, medians, the spreader's cost taken off)"
    );
    let bare = RawXdp::load(XDP_DROP);
    let ceiling = RawXdp::memory_ceiling(live::bucket_bytes());
    let cases = [Case::BanPrefix, Case::BanHosts, Case::Rate, Case::RateBesideBans, Case::Pass];
    let mut rows = Vec::new();
    for flood in &FLOODS {
        let mut kernel = Kernel::with_sources(live::BUCKETS);
        let frame = flood.frame();
        let into_bare = RawXdp::spread_into(flood.spread, bare.fd());
        let into_ceiling = RawXdp::spread_into(flood.spread, ceiling.fd());
        let into_secgate = RawXdp::spread_into(flood.spread, kernel.prog_fd());
        let run = |p: &RawXdp| {
            let (action, ns) = p.run(&frame, MANY_REPEAT);
            assert_ne!(action, 0, "the spreader's tail call failed");
            f64::from(ns)
        };
        let (mut drop, mut spreader, mut ceil) = (Vec::new(), Vec::new(), Vec::new());
        let mut ours: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
        for (i, case) in cases.iter().enumerate() {
            live::prepare(&mut kernel, flood, *case);
            if case.warm() {
                into_secgate.run(&frame, WARM_DRAWS * flood.sources);
            }
            let before = kernel.counters();
            for _ in 0..MANY_ROUNDS {
                ours[i].push(run(&into_secgate));
                let into = run(&into_bare);
                let alone = f64::from(bare.run(&frame, MANY_REPEAT).1);
                drop.push(alone);
                spreader.push(into - alone);
                ceil.push(run(&into_ceiling) - (into - alone));
            }
            live::check_verdicts(&kernel, *case, flood, &before, MANY_REPEAT * MANY_ROUNDS as u32);
            live::reset(&mut kernel);
        }
        let (b, spread) = (median(drop), median(spreader));
        println!("\n{} (spreader {spread:.1} ns, bare drop {b:.1} ns)", flood.name);
        println!("{:<42} {:>10} {:>8}", "program", "ns", "x bare");
        let mut out = |case: Case, ns: f64| {
            println!("{:<42} {ns:>10.1} {:>8.2}", case.name(), ns / b);
            rows.push(serde_json::json!({
                "flood": flood.name, "sources": flood.sources, "program": case.name(),
                "ns": ns, "bare_drop_ns": b, "ratio": ns / b,
            }));
        };
        out(Case::Ceiling, median(ceil));
        for (case, v) in cases.iter().zip(ours) {
            out(*case, median(v) - spread);
        }
    }
    rows
}
