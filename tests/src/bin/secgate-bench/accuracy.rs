//! Rate accuracy across CPUs on a live veth: two generator threads, one per CPU, flood the
//! same sources, so the receiving veth (two queues, each served on its sender's CPU) judges
//! every source on both CPUs at once and the buckets' compare-and-swap races for real. The
//! admitted rate, by the program's own counters, is taken between a short and a long flood:
//! `(admitted_long − admitted_short) / (span_long − span_short)`, so what both floods share
//! (each source's burst, and the generator's setup of its frame pool, tens of milliseconds
//! before the first frame leaves) cancels out; it is compared with `sources × rate`.

use std::{sync::Barrier, time::Instant};

use secgate::clock::coarse_tick_ns;
use secgate_common::{
    limit::COARSE_TICKS,
    maps::{FLAG_COARSE_CLOCK, RateRule},
    verdict::Reason,
};
use secgate_tests::{
    bare::{RawXdp, Spread},
    harness::{Kernel, pin_to_cpu},
    netns::Topology,
};

use crate::{
    live::{Flood, config, rx_queue_packets},
    median,
};

/// Frames each generator thread sends in the short and in the long flood of a round.
const SHORT: u32 = 1_000_000;
const LONG: u32 = 4_000_000;
const ROUNDS: usize = 3;

/// (name, sources, pps, burst): one source at 100,000 pps in a burst too short for the coarse
/// clock and in one long enough, and 1,024 sources at 100 pps each. Every source stays far
/// over its limit (the flood offers each thousands of times more), and what passes (an skb
/// each) stays small beside the flood.
fn cases() -> [(&'static str, u32, u64, u64); 3] {
    let tick_burst = COARSE_TICKS * coarse_tick_ns() / (1_000_000_000 / 100_000) + 2;
    [
        ("1 source, 100,000 pps, burst 100", 1, 100_000, 100),
        ("1 source, 100,000 pps, burst of 4 ticks", 1, 100_000, tick_burst),
        ("1,024 sources, 100 pps, burst 10", 1 << 10, 100, 10),
    ]
}

/// (case and the clock the program read, admitted rate ÷ configured rate) for each case,
/// medians of the rounds.
pub fn run() -> Vec<(String, f64)> {
    println!(
        "\nrate accuracy on two CPUs (a live flood from each, {SHORT} and {LONG} frames per CPU \
         x {ROUNDS} rounds, medians; admitted rate / configured rate)"
    );
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(cpus >= 2, "the accuracy bench needs two CPUs, this machine has {cpus}");
    cases()
        .iter()
        .map(|&(name, sources, pps, burst)| {
            let ratio = median(
                (0..ROUNDS)
                    .map(|_| {
                        let (short, long) =
                            (flood(sources, pps, burst, SHORT), flood(sources, pps, burst, LONG));
                        let rate = (long.0 - short.0) as f64 / (long.1 - short.1);
                        rate / (f64::from(sources) * pps as f64)
                    })
                    .collect(),
            );
            let cfg = config(RateRule::from_rate(pps, burst));
            let clock = if cfg.flags & FLAG_COARSE_CLOCK != 0 { "coarse" } else { "fine" };
            let name = format!("{name} ({clock} clock)");
            println!("{name:<52} {ratio:>8.3}");
            (name, ratio)
        })
        .collect()
}

/// One flood of `frames` per CPU against a freshly loaded program; returns (frames admitted,
/// seconds from the first generator's start to the last one's end).
fn flood(sources: u32, pps: u64, burst: u64, frames: u32) -> (u64, f64) {
    let topo = Topology::new("acc");
    let flood = Flood {
        name: "accuracy",
        spread: Spread::V4 { sources },
        sources,
        prefix: "198.18.0.0/16",
    };
    let frame = flood.frame_to(&topo);
    let mut kernel = Kernel::load();
    kernel.maps.set_config(&config(RateRule::from_rate(pps, burst))).expect("config");
    let gw_if = topo.gw_if.clone();
    let link = topo.gw.within(|| kernel.attach(&gw_if));
    let gen_if = topo.client_if.clone();
    let ifindex = topo
        .client
        .within(move || nix::net::if_::if_nametoindex(gen_if.as_str()).expect("ifindex"));
    let generator = RawXdp::spreader(flood.spread);
    let before = kernel.counters();
    let barrier = Barrier::new(2);
    // The span runs from the first generator's start to the last one's end, each read on its
    // own thread, so neither the threads' setup nor their joining counts as flood time.
    let runs: Vec<(Instant, Instant)> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..2)
            .map(|cpu| {
                let (topo, generator, frame, barrier) = (&topo, &generator, &frame, &barrier);
                s.spawn(move || {
                    topo.client.within(|| {
                        pin_to_cpu(cpu);
                        barrier.wait();
                        let start = Instant::now();
                        generator.run_live(frame, frames, ifindex).expect("generator");
                        (start, Instant::now())
                    })
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().expect("generator thread")).collect()
    });
    let first = runs.iter().map(|r| r.0).min().expect("two runs");
    let span = (runs.iter().map(|r| r.1).max().expect("two runs") - first).as_secs_f64();
    let queues = rx_queue_packets(&topo);
    assert!(
        queues.len() >= 2 && queues.iter().all(|&n| n >= u64::from(frames) / 2),
        "the flood did not reach both receive queues (and so both CPUs): {queues:?}"
    );
    let after = kernel.counters();
    kernel.detach(link);
    let moved = |r: Reason| after[r as usize].packets - before[r as usize].packets;
    let admitted = moved(Reason::Pass) + moved(Reason::Contended);
    let judged = admitted + moved(Reason::Rate);
    let allowed = f64::from(sources) * (pps as f64 * span + burst as f64);
    // What the ratio means rests on every source being offered far more than its limit the
    // whole time (frames a busy veth ring refused never reached the program, and need not).
    assert!(
        judged as f64 >= 10.0 * allowed,
        "the program judged {judged} frames, under ten times the {allowed:.0} the limits allow"
    );
    (admitted, span)
}
