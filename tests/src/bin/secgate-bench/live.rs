//! Drop throughput on a live veth: a generator namespace transmits one UDP flow with an
//! `XDP_TX` program run on live frames; the receiving end judges it with (a) a bare XDP drop,
//! (b) secgate dropping a banned source, (c) secgate dropping an over-limit source, and the
//! equivalent nftables rules at the earliest hook (netdev ingress) for (d) the ban and (e)
//! the per-source limit. Generator and receiver share the CPU (the receiver's NAPI runs when
//! the generator's batch ends), so each number is the packets per second of the pair.

use std::{path::PathBuf, time::Instant};

use secgate_common::{
    maps::{DatapathConfig, DenyEntry, RateRule},
    model::prefix_mask,
    verdict::Reason,
};
use secgate_tests::{
    bare::{RawXdp, XDP_DROP, XDP_PASS, XDP_TX},
    frames::{L4Spec, Spec},
    harness::Kernel,
    netns::{NetNs, Topology, addr::*},
};

use crate::median;

const FRAMES: u32 = 1_000_000;
const ROUNDS: usize = 5;
const LIMIT_PPS: u64 = 1000;

#[derive(Clone, Copy, PartialEq)]
enum Case {
    BareDrop,
    SecgateDeny,
    SecgateRate,
    NftDeny,
    NftRate,
}

impl Case {
    const ALL: [Case; 5] =
        [Case::BareDrop, Case::SecgateDeny, Case::SecgateRate, Case::NftDeny, Case::NftRate];

    fn name(self) -> &'static str {
        match self {
            Case::BareDrop => "bare XDP drop",
            Case::SecgateDeny => "secgate, banned source",
            Case::SecgateRate => "secgate, over-limit source",
            Case::NftDeny => "nftables ingress, banned source",
            Case::NftRate => "nftables ingress, over-limit source",
        }
    }
}

struct Bench {
    topo: Topology,
    kernel: Kernel,
    generator: RawXdp,
    gen_ifindex: u32,
    frame: Vec<u8>,
    drop_pin: PathBuf,
    pass_pin: PathBuf,
    _pins: [RawXdp; 2],
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.drop_pin);
        let _ = std::fs::remove_file(&self.pass_pin);
    }
}

fn nft(ns: &NetNs, script: &str) {
    let mut child = ns
        .command("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("nft (cargo xtask setup installs nftables)");
    std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), script.as_bytes())
        .expect("nft script");
    assert!(child.wait().expect("nft").success(), "nft rejected:\n{script}");
}

fn nft_rules(dev: &str, rule: &str) -> String {
    format!(
        "table netdev secgate_bench {{\n  set persrc {{ type ipv4_addr; flags dynamic; timeout 10s; }}\n  \
         chain ingress {{\n    type filter hook ingress device \"{dev}\" priority -500;\n    {rule}\n  }}\n}}\n"
    )
}

impl Bench {
    fn new() -> Bench {
        let topo = Topology::new("bench");
        let gen_if = topo.client_if.clone();
        let gen_ifindex = topo
            .client
            .within(move || nix::net::if_::if_nametoindex(gen_if.as_str()).expect("ifindex"));
        let mut frame = Spec::new(CLIENT_V4.parse().expect("ip"), L4Spec::Udp { dport: 9 }).build();
        let mac: Vec<u8> = topo
            .gw
            .mac(&topo.gw_if)
            .split(':')
            .map(|b| u8::from_str_radix(b, 16).expect("mac"))
            .collect();
        frame[..6].copy_from_slice(&mac);
        let pins = [RawXdp::load(XDP_DROP), RawXdp::load(XDP_PASS)];
        let id = std::process::id();
        let (drop_pin, pass_pin) = (
            PathBuf::from(format!("/sys/fs/bpf/secgate-bench-drop-{id}")),
            PathBuf::from(format!("/sys/fs/bpf/secgate-bench-pass-{id}")),
        );
        pins[0].pin(&drop_pin).expect("pin (is bpffs mounted? cargo xtask setup mounts it)");
        pins[1].pin(&pass_pin).expect("pin");
        let mut kernel = Kernel::load();
        kernel.maps.set_config(&Self::config(RateRule::UNLIMITED)).expect("config");
        Bench {
            topo,
            kernel,
            generator: RawXdp::load(XDP_TX),
            gen_ifindex,
            frame,
            drop_pin,
            pass_pin,
            _pins: pins,
        }
    }

    fn config(default_rule: RateRule) -> DatapathConfig {
        DatapathConfig {
            v4_mask: prefix_mask(32),
            v6_mask: prefix_mask(64),
            default_rule,
            event_interval_ns: 1_000_000_000,
            event_budget: RateRule::from_rate(1000, 1000),
            ..Default::default()
        }
    }

    /// `ip link set DEV xdpdrv ARGS…` in the receiver's namespace. Through nsenter, not
    /// `ip -n`, which mounts a fresh /sys where the pinned programs are not visible.
    fn ip_xdp(&self, args: &[&str]) {
        let out = self
            .topo
            .gw
            .command("ip")
            .args(["link", "set", "dev", &self.topo.gw_if, "xdpdrv"])
            .args(args)
            .output();
        let out = out.expect("run ip");
        assert!(out.status.success(), "ip xdp {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Sets the receiver up for `case`, measures, and tears it down; returns packets/s.
    fn measure(&mut self, case: Case) -> f64 {
        let gw_if = self.topo.gw_if.clone();
        let ban = || format!("{CLIENT_V4}/32").parse().expect("cidr");
        let mut link = None;
        match case {
            Case::BareDrop => self.ip_xdp(&["pinned", &self.drop_pin.display().to_string()]),
            Case::NftDeny | Case::NftRate => {
                self.ip_xdp(&["pinned", &self.pass_pin.display().to_string()]);
                let rule = if case == Case::NftDeny {
                    format!("ip saddr {CLIENT_V4} counter drop")
                } else {
                    format!(
                        "add @persrc {{ ip saddr limit rate over {LIMIT_PPS}/second burst 100 packets }} counter drop"
                    )
                };
                nft(&self.topo.gw, &nft_rules(&gw_if, &rule));
            }
            Case::SecgateDeny | Case::SecgateRate => {
                if case == Case::SecgateDeny {
                    self.kernel.maps.set_deny(ban(), DenyEntry { expires_ns: 0 }).expect("ban");
                } else {
                    self.kernel
                        .maps
                        .set_config(&Self::config(RateRule::from_rate(LIMIT_PPS, 100)))
                        .expect("limit");
                }
                let kernel = &mut self.kernel;
                link = Some(self.topo.gw.within(move || kernel.attach(&gw_if)));
            }
        }
        let before = self.xdp_packets();
        let counters_before = self.kernel.counters();
        let (generator, frame, ifindex) = (&self.generator, &self.frame, self.gen_ifindex);
        let elapsed = self.topo.client.within(move || {
            let start = Instant::now();
            generator.run_live(frame, FRAMES, ifindex).expect("live-frame generator");
            start.elapsed()
        });
        match case {
            Case::BareDrop => self.ip_xdp(&["off"]),
            Case::NftDeny | Case::NftRate => {
                nft(&self.topo.gw, "delete table netdev secgate_bench\n");
                self.ip_xdp(&["off"]);
            }
            Case::SecgateDeny | Case::SecgateRate => {
                self.check_drops(case, &counters_before);
                self.kernel.detach(link.expect("attached"));
                let _ = self.kernel.maps.remove_deny(ban());
                self.kernel.maps.set_config(&Self::config(RateRule::UNLIMITED)).expect("config");
            }
        }
        let processed = self.xdp_packets() - before;
        // A few stray frames of the namespaces' own (neighbour discovery, MLD) may add to it.
        let expected = u64::from(FRAMES)..=u64::from(FRAMES) + 100;
        assert!(
            expected.contains(&processed),
            "{}: the receiver saw {processed} of {FRAMES} frames",
            case.name()
        );
        f64::from(FRAMES) / elapsed.as_secs_f64()
    }

    /// The frames were dropped for the reason the case is about, not passed up the stack.
    fn check_drops(&self, case: Case, before: &[secgate_common::maps::Counter]) {
        let reason = if case == Case::SecgateDeny { Reason::Deny } else { Reason::Rate };
        let dropped =
            self.kernel.counters()[reason as usize].packets - before[reason as usize].packets;
        assert!(
            dropped * 100 >= u64::from(FRAMES) * 99,
            "{}: only {dropped} of {FRAMES} frames dropped as {}",
            case.name(),
            reason.name()
        );
    }

    /// Frames the receiving veth ran its XDP program on (veth's own counters, independent of
    /// the program under test).
    fn xdp_packets(&self) -> u64 {
        let out = self
            .topo
            .gw
            .command("ethtool")
            .args(["-S", &self.topo.gw_if])
            .output()
            .expect("ethtool");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                l.trim().strip_prefix("rx_queue_").and_then(|l| l.split_once("_xdp_packets: "))
            })
            .map(|(_, n)| n.trim().parse::<u64>().expect("counter"))
            .sum()
    }
}

pub fn run() {
    let mut bench = Bench::new();
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); Case::ALL.len()];
    for _ in 0..ROUNDS {
        for (i, case) in Case::ALL.into_iter().enumerate() {
            results[i].push(bench.measure(case));
        }
    }
    println!(
        "drop throughput on a live veth ({FRAMES} frames x {ROUNDS} rounds, medians; generator and receiver share a CPU)"
    );
    println!("{:<38} {:>12} {:>14}", "receiver", "Mpps", "vs bare drop");
    let base = median(results[0].clone());
    for (i, case) in Case::ALL.into_iter().enumerate() {
        let pps = median(results[i].clone());
        println!("{:<38} {:>12.2} {:>14.2}", case.name(), pps / 1e6, pps / base);
    }
}
