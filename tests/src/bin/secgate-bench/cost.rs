//! Per-packet cost of the secgate XDP program on each verdict path under
//! `BPF_PROG_TEST_RUN`, against a bare `XDP_DROP` program.

use std::net::IpAddr;

use crate::{live::config, median};
use secgate_common::{
    maps::{DatapathConfig, DenyEntry, RateRule},
    net::TCP_FLAG_SYN,
};
use secgate_tests::{
    bare::{RawXdp, XDP_DROP},
    frames::{L4Spec, Spec},
    harness::{Kernel, pin_to_cpu},
};

const REPEAT: u32 = 200_000;
const ROUNDS: usize = 9;

pub fn run() {
    pin_to_cpu(0);
    let mut kernel = Kernel::load();
    let bare = RawXdp::load(XDP_DROP);
    let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
    let cfg = config(RateRule::from_rate(1_000_000_000, 1 << 24));
    kernel.maps.set_config(&cfg).expect("config");
    kernel.maps.set_deny("198.18.66.0/24".parse().unwrap(), DenyEntry { expires_ns: 0 }).unwrap();
    let syn = L4Spec::Tcp { dport: 443, flags: TCP_FLAG_SYN };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("ipv4 syn, within limit (CAS)", Spec::new(ip("198.18.1.1"), syn.clone()).build()),
        (
            "ipv6 udp, within limit (CAS)",
            Spec::new(ip("fd00:1::1"), L4Spec::Udp { dport: 53 }).build(),
        ),
        ("ipv4 denied /24", Spec::new(ip("198.18.66.6"), syn.clone()).build()),
        ("malformed ipv4", Spec::new(ip("198.18.1.1"), syn).build()[..30].to_vec()),
    ];
    println!(
        "datapath per-packet cost (BPF_PROG_TEST_RUN, {REPEAT} runs x {ROUNDS} rounds, medians)"
    );
    println!("{:<32} {:>10} {:>10} {:>8}", "case", "secgate ns", "bare ns", "ratio");
    for (name, frame) in &cases {
        row(&kernel, &bare, name, frame);
    }
    // With an allowlist in use, every packet also walks its trie.
    kernel.maps.set_config(&DatapathConfig { flags: 0, ..cfg }).unwrap();
    kernel.maps.set_allow("203.0.113.0/24".parse().unwrap()).unwrap();
    let frame =
        Spec::new(ip("198.18.66.6"), L4Spec::Tcp { dport: 443, flags: TCP_FLAG_SYN }).build();
    row(&kernel, &bare, "ipv4 denied /24, allowlist used", &frame);
    kernel.maps.remove_allow("203.0.113.0/24".parse().unwrap()).unwrap();
    // Over-limit path: a 1 pps limit keeps every run after the first over the limit.
    let mut cfg = cfg;
    cfg.default_rule = RateRule::from_rate(1, 1);
    kernel.maps.set_config(&cfg).unwrap();
    let frame = Spec::new(ip("198.18.7.7"), L4Spec::Udp { dport: 53 }).build();
    row(&kernel, &bare, "ipv4 udp, over limit (drop)", &frame);
}

/// Medians of `frame`'s cost under secgate and under the bare drop, rounds interleaved.
fn row(kernel: &Kernel, bare: &RawXdp, name: &str, frame: &[u8]) {
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        ours.push(kernel.cost(frame, REPEAT).as_nanos() as f64);
        base.push(f64::from(bare.run(frame, REPEAT).1));
    }
    let (o, b) = (median(ours), median(base));
    println!("{name:<32} {o:>10.1} {b:>10.1} {:>8.2}", o / b);
}
