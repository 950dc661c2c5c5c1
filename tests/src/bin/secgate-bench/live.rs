//! Throughput on a live veth under a flood from 1 to 1,048,576 sources. A generator namespace
//! transmits UDP frames with a spreader program (`XDP_TX` on live frames, a random source of N
//! written into each frame); the receiving end judges identical traffic with each case in
//! turn: a bare `XDP_DROP` (the ceiling), secgate banning the flood (its prefix, or one entry
//! per source), secgate rate-limiting it (every source over its limit), secgate passing it
//! (every source within its limit) against a bare `XDP_PASS`, and nftables at its earliest
//! hook (netdev ingress) with a ban set and a per-source meter. Each rate is frames the
//! receiving veth ran XDP on (its own counters) per second of the run, in two arrangements
//! ([`Cpus`]): generator and receiver on one CPU, and the receiver on a CPU of its own.

use std::{collections::BTreeMap, path::PathBuf, time::Instant};

use ipnet::IpNet;
use secgate::clock::coarse_tick_ns;
use secgate_common::{
    limit::coarse_clock_fits,
    maps::{DatapathConfig, DenyEntry, FLAG_COARSE_CLOCK, FLAG_NO_ALLOW, RateRule},
    model::prefix_mask,
    verdict::Reason,
};
use secgate_tests::{
    bare::{RawXdp, Spread, XDP_DROP, XDP_PASS},
    frames::{L4Spec, Spec},
    harness::{Kernel, pin_to_cpu},
    netns::{NetNs, Topology},
};

use crate::{median, own_cpu::OwnCpu};

const FRAMES: u32 = 1_000_000;
const ROUNDS: usize = 3;
/// Every source over its limit: one packet an hour, so after its first packet (in the warm-up)
/// every packet of every source is over. A limit of a packet a second let a few percent of
/// a large flood through each run, and those passes (an skb each) dominated the rate.
/// A burst of two, as a real limit has, which lets the program read the coarse clock.
const LIMIT: RateRule =
    RateRule { interval_ns: 3_600_000_000_000, tolerance_ns: 3_600_000_000_000 };
/// Warm-up frames per source: random draws reach all but e^-8 (0.03%) of the sources.
pub const WARM_DRAWS: u32 = 8;
/// Every source within its limit, through its bucket.
const GENEROUS: RateRule = RateRule::from_rate(1_000_000_000, 1 << 24);
/// Limiter buckets: room for every source of the largest flood.
pub const BUCKETS: u32 = 1 << 21;

/// A flood: who sends it.
#[derive(Clone, Copy)]
pub struct Flood {
    pub name: &'static str,
    pub spread: Spread,
    pub sources: u32,
    /// The prefix holding every source.
    pub prefix: &'static str,
}

pub const FLOODS: [Flood; 4] = [
    Flood {
        name: "1 source",
        spread: Spread::V4 { sources: 1 },
        sources: 1,
        prefix: "198.18.0.0/16",
    },
    Flood {
        name: "1,024 sources",
        spread: Spread::V4 { sources: 1 << 10 },
        sources: 1 << 10,
        prefix: "198.18.0.0/16",
    },
    Flood {
        name: "65,536 sources",
        spread: Spread::V4 { sources: 1 << 16 },
        sources: 1 << 16,
        prefix: "198.18.0.0/16",
    },
    Flood {
        name: "1,048,576 IPv6 /64s",
        spread: Spread::V6 { sources: 1 << 20 },
        sources: 1 << 20,
        prefix: "fd00:1::/32",
    },
];

impl Flood {
    /// One ban per source the spreader can draw: an IPv4 /32 or an IPv6 /64.
    pub fn hosts(&self) -> Vec<IpNet> {
        let base: IpNet = self.prefix.parse().expect("prefix");
        (0..self.sources)
            .map(|i| match base {
                IpNet::V4(n) => {
                    let mut o = n.addr().octets();
                    // The spreader's draw lands in the last two octets (little-endian word).
                    o[2] = (i & 0xff) as u8;
                    o[3] = (i >> 8) as u8;
                    IpNet::from(std::net::IpAddr::from(o))
                }
                IpNet::V6(n) => {
                    // The draw is a little-endian word at bytes 4..8: the /64 of the source.
                    let mut o = n.addr().octets();
                    o[4..8].copy_from_slice(&i.to_le_bytes());
                    IpNet::new(std::net::IpAddr::from(o), 64).expect("a /64")
                }
            })
            .collect()
    }

    /// As many hosts as [`Flood::hosts`], none of them the flood's: the same draws under the
    /// next prefix (198.19.0.0/16, fd00:2::/32).
    pub fn other_hosts(&self) -> Vec<IpNet> {
        let next = |net: &IpNet| match net.addr() {
            std::net::IpAddr::V4(a) => {
                let mut o = a.octets();
                o[1] += 1;
                IpNet::from(std::net::IpAddr::from(o))
            }
            std::net::IpAddr::V6(a) => {
                let mut o = a.octets();
                o[3] += 1;
                IpNet::new(std::net::IpAddr::from(o), 64).expect("a /64")
            }
        };
        self.hosts().iter().map(next).collect()
    }

    /// The UDP frame the spreader draws sources into.
    pub fn frame(&self) -> Vec<u8> {
        let src = match self.spread {
            Spread::V4 { .. } => "198.18.0.2",
            Spread::V6 { .. } => "fd00:1::2",
        };
        Spec::new(src.parse().expect("ip"), L4Spec::Udp { dport: 9 }).build()
    }

    /// [`Flood::frame`] addressed to the receiving end of `topo`.
    pub fn frame_to(&self, topo: &Topology) -> Vec<u8> {
        let mut frame = self.frame();
        frame[..6].copy_from_slice(&topo.gw_mac());
        frame
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Case {
    BareDrop,
    Ceiling,
    BanPrefix,
    BanHosts,
    Rate,
    /// Over its limit while as many other hosts are banned: a flood from sources escalation
    /// has not banned yet, each packet missing the host table before the limiter.
    RateBesideBans,
    BarePass,
    Pass,
    NftBan,
    NftRate,
}

/// Where generator and receiver run.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Cpus {
    /// Both on CPU 0: the receiver's NAPI runs in softirq when the generator's batch ends, so
    /// a rate is the pair's, and no frame is lost.
    Shared,
    /// The receiver's NAPI in kernel threads on CPU 1, the generator on CPU 0, and a rate
    /// taken over the time those threads ran ([`OwnCpu`]): the receiver's own cost.
    Split,
}

impl Cpus {
    pub fn name(self) -> &'static str {
        match self {
            Cpus::Shared => "generator and receiver on one CPU",
            Cpus::Split => "receiver on a CPU of its own, per second of its CPU time",
        }
    }
}

/// One measured run.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Frames the receiver ran XDP on, per second of the run ([`Cpus::Shared`]) or of the
    /// receiver's CPU time ([`Cpus::Split`]).
    pub pps: f64,
    /// Share of the generator's frames the receiver took; the rest veth's ring dropped
    /// ([`Cpus::Split`] only).
    pub taken: f64,
}

impl Case {
    pub const ALL: [Case; 10] = [
        Case::BareDrop,
        Case::Ceiling,
        Case::BanPrefix,
        Case::BanHosts,
        Case::Rate,
        Case::RateBesideBans,
        Case::BarePass,
        Case::Pass,
        Case::NftBan,
        Case::NftRate,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Case::BareDrop => "bare XDP drop",
            Case::Ceiling => "memory ceiling (one random read, drop)",
            Case::BanPrefix => "secgate, prefix banned",
            Case::BanHosts => "secgate, every source banned",
            Case::Rate => "secgate, every source over its limit",
            Case::RateBesideBans => "secgate, over its limit, as many others banned",
            Case::BarePass => "bare XDP pass",
            Case::Pass => "secgate, every source within its limit",
            Case::NftBan => "nftables ingress, ban set",
            Case::NftRate => "nftables ingress, per-source meter",
        }
    }

    /// The case a ratio is taken against.
    pub fn baseline(self) -> Case {
        match self {
            Case::BarePass | Case::Pass => Case::BarePass,
            _ => Case::BareDrop,
        }
    }

    /// Whether the case needs a run before the measured one (every source's bucket or meter
    /// made, so that the measured run is about the verdict, not about making state).
    pub fn warm(self) -> bool {
        matches!(self, Case::Rate | Case::RateBesideBans | Case::NftRate | Case::Pass)
    }
}

struct Bench {
    topo: Topology,
    kernel: Kernel,
    generator: RawXdp,
    gen_ifindex: u32,
    frame: Vec<u8>,
    flood: Flood,
    drop_pin: PathBuf,
    pass_pin: PathBuf,
    ceiling_pin: PathBuf,
    _pins: [RawXdp; 3],
}

impl Drop for Bench {
    fn drop(&mut self) {
        for pin in [&self.drop_pin, &self.pass_pin, &self.ceiling_pin] {
            let _ = std::fs::remove_file(pin);
        }
    }
}

pub fn nft(ns: &NetNs, script: &str) {
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

impl Bench {
    fn new(flood: Flood) -> Bench {
        // Receiver named by this process, so the NAPI threads found are its own.
        let id = std::process::id() % 100_000;
        let topo = Topology::with_interfaces("bench", "sg-c", &format!("sgb{id}"));
        let gen_if = topo.client_if.clone();
        let gen_ifindex = topo
            .client
            .within(move || nix::net::if_::if_nametoindex(gen_if.as_str()).expect("ifindex"));
        let frame = flood.frame_to(&topo);
        let mut kernel = Kernel::with_sources(BUCKETS);
        let pins = [
            RawXdp::load(XDP_DROP),
            RawXdp::load(XDP_PASS),
            RawXdp::memory_ceiling(bucket_bytes()),
        ];
        let id = std::process::id();
        let pin = |what: &str| PathBuf::from(format!("/sys/fs/bpf/secgate-bench-{what}-{id}"));
        let (drop_pin, pass_pin, ceiling_pin) = (pin("drop"), pin("pass"), pin("ceiling"));
        pins[0].pin(&drop_pin).expect("pin (is bpffs mounted? cargo xtask setup mounts it)");
        pins[1].pin(&pass_pin).expect("pin");
        pins[2].pin(&ceiling_pin).expect("pin");
        kernel.maps.set_config(&config(RateRule::UNLIMITED)).expect("config");
        Bench {
            topo,
            kernel,
            generator: RawXdp::spreader(flood.spread),
            gen_ifindex,
            frame,
            flood,
            drop_pin,
            pass_pin,
            ceiling_pin,
            _pins: pins,
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

    fn nft_rules(&self, case: Case) -> String {
        let v6 = matches!(self.flood.spread, Spread::V6 { .. });
        let (family, addr, key) = if v6 {
            ("ip6", "ipv6_addr", "ip6 saddr and ffff:ffff:ffff:ffff::")
        } else {
            ("ip", "ipv4_addr", "ip saddr")
        };
        let rule = match case {
            Case::NftBan => format!("{family} saddr @ban counter drop"),
            _ => format!(
                "add @persrc {{ {key} limit rate over 1/hour burst 2 packets }} counter drop"
            ),
        };
        format!(
            "table netdev secgate_bench {{\n  set ban {{ type {addr}; flags interval; elements = {{ {} }} }}\n  \
             set persrc {{ type {addr}; size {BUCKETS}; flags dynamic; timeout 10m; }}\n  \
             chain ingress {{\n    type filter hook ingress device \"{}\" priority -500;\n    {rule}\n  }}\n}}\n",
            self.flood.prefix, self.topo.gw_if
        )
    }

    fn set_up(&mut self, case: Case) -> Option<aya::programs::xdp::XdpLinkId> {
        match case {
            Case::BareDrop => self.ip_xdp(&["pinned", &self.drop_pin.display().to_string()]),
            Case::Ceiling => self.ip_xdp(&["pinned", &self.ceiling_pin.display().to_string()]),
            Case::BarePass => self.ip_xdp(&["pinned", &self.pass_pin.display().to_string()]),
            Case::NftBan | Case::NftRate => {
                self.ip_xdp(&["pinned", &self.pass_pin.display().to_string()]);
                nft(&self.topo.gw, &self.nft_rules(case));
            }
            Case::BanPrefix | Case::BanHosts | Case::Rate | Case::RateBesideBans | Case::Pass => {
                prepare(&mut self.kernel, &self.flood, case);
                let gw_if = self.topo.gw_if.clone();
                let kernel = &mut self.kernel;
                return Some(self.topo.gw.within(move || kernel.attach(&gw_if)));
            }
        }
        None
    }

    fn tear_down(&mut self, case: Case, link: Option<aya::programs::xdp::XdpLinkId>) {
        match case {
            Case::BareDrop | Case::Ceiling | Case::BarePass => self.ip_xdp(&["off"]),
            Case::NftBan | Case::NftRate => {
                nft(&self.topo.gw, "delete table netdev secgate_bench\n");
                self.ip_xdp(&["off"]);
            }
            _ => {
                self.kernel.detach(link.expect("attached"));
                reset(&mut self.kernel);
            }
        }
    }

    /// Sends `frames` from CPU 0; returns the seconds it took.
    fn generate(&self, frames: u32) -> f64 {
        let (generator, frame, ifindex) = (&self.generator, &self.frame, self.gen_ifindex);
        self.topo.client.within(move || {
            pin_to_cpu(0);
            let start = Instant::now();
            generator.run_live(frame, frames, ifindex).expect("live-frame generator");
            start.elapsed().as_secs_f64()
        })
    }

    /// Sets the receiver up for `case`, measures, and tears it down. A warm-up runs with
    /// both on one CPU, where no frame is lost, so it reaches every source in either
    /// arrangement.
    fn measure(&mut self, case: Case, cpus: Cpus) -> Sample {
        let link = self.set_up(case);
        if case.warm() {
            self.generate(FRAMES.max(WARM_DRAWS * self.flood.sources));
        }
        let own = (cpus == Cpus::Split).then(|| OwnCpu::new(&self.topo, 1));
        let ran_before = own.as_ref().map(OwnCpu::run_ns);
        let before = self.xdp_packets();
        let counters_before = self.kernel.counters();
        let mut elapsed = self.generate(FRAMES);
        if let (Some(own), Some(ran_before)) = (&own, ran_before) {
            // The threads may still be emptying the ring.
            std::thread::sleep(std::time::Duration::from_millis(20));
            elapsed = (own.run_ns() - ran_before) as f64 / 1e9;
        }
        let processed = self.xdp_packets() - before;
        drop(own);
        // A few stray frames of the namespaces' own (neighbour discovery, MLD) may add to it.
        let most = u64::from(FRAMES) + 100;
        let least = if cpus == Cpus::Shared { u64::from(FRAMES) } else { u64::from(FRAMES / 100) };
        assert!(
            (least..=most).contains(&processed),
            "{} ({}, {}): the receiver saw {processed} of {FRAMES} frames",
            case.name(),
            self.flood.name,
            cpus.name()
        );
        if link.is_some() {
            let judged = u32::try_from(processed.min(u64::from(FRAMES))).expect("frames");
            check_verdicts(&self.kernel, case, &self.flood, &counters_before, judged);
        }
        self.tear_down(case, link);
        Sample { pps: processed as f64 / elapsed, taken: processed as f64 / f64::from(FRAMES) }
    }

    /// Frames the receiving veth ran its XDP program on (veth's own counters, independent of
    /// the program under test).
    fn xdp_packets(&self) -> u64 {
        rx_queue_packets(&self.topo).iter().sum()
    }
}

/// XDP packets per receive queue of the receiving veth, from its own counters.
pub fn rx_queue_packets(topo: &Topology) -> Vec<u64> {
    let out = topo.gw.command("ethtool").args(["-S", &topo.gw_if]).output().expect("ethtool");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.trim().strip_prefix("rx_queue_").and_then(|l| l.split_once("_xdp_packets: "))
        })
        .map(|(_, n)| n.trim().parse::<u64>().expect("counter"))
        .collect()
}

/// The `frames` run since `before` got the verdict `case` is about, not another.
pub fn check_verdicts(
    kernel: &Kernel,
    case: Case,
    flood: &Flood,
    before: &[secgate_common::maps::Counter],
    frames: u32,
) {
    let reason = match case {
        Case::BanPrefix | Case::BanHosts => Reason::Deny,
        Case::Rate | Case::RateBesideBans => Reason::Rate,
        _ => Reason::Pass,
    };
    let after = kernel.counters();
    let moved = |r: Reason| after[r as usize].packets - before[r as usize].packets;
    let want = u64::from(frames) * 99 / 100;
    let all: Vec<String> = Reason::ALL
        .iter()
        .filter(|r| moved(**r) > 0)
        .map(|r| format!("{} {}", r.name(), moved(*r)))
        .collect();
    assert!(
        moved(reason) >= want,
        "{} ({}): only {} of {frames} frames were {} ({})",
        case.name(),
        flood.name,
        moved(reason),
        reason.name(),
        all.join(", ")
    );
}

/// Writes what one of secgate's cases needs into its maps: the bans and the default rule.
pub fn prepare(kernel: &mut Kernel, flood: &Flood, case: Case) {
    let nets = match case {
        Case::BanPrefix => vec![flood.prefix.parse().expect("prefix")],
        Case::BanHosts => flood.hosts(),
        Case::RateBesideBans => flood.other_hosts(),
        _ => Vec::new(),
    };
    for net in nets {
        kernel.maps.set_deny(net, DenyEntry { expires_ns: 0 }).expect("ban");
    }
    let rule = match case {
        Case::Rate | Case::RateBesideBans => LIMIT,
        Case::Pass => GENEROUS,
        _ => RateRule::UNLIMITED,
    };
    kernel.maps.set_config(&config(rule)).expect("config");
}

/// Undoes [`prepare`] and forgets every bucket.
pub fn reset(kernel: &mut Kernel) {
    for (net, _) in kernel.maps.deny().expect("deny entries") {
        kernel.maps.remove_deny(net).expect("lift");
    }
    kernel.maps.clear_sources().expect("empty the buckets");
    kernel.maps.set_config(&config(RateRule::UNLIMITED)).expect("config");
}

/// The memory ceiling's array: as many bytes as the limiter table.
pub fn bucket_bytes() -> u64 {
    u64::from(secgate_common::sources::sets_for(BUCKETS))
        * size_of::<secgate_common::sources::SourceSet>() as u64
}

/// What the daemon writes with an empty allowlist and `default_rule` (and, as the daemon
/// does, the coarse clock where every rule fits it).
pub fn config(default_rule: RateRule) -> DatapathConfig {
    let event_budget = RateRule::from_rate(1000, 1000);
    let coarse = coarse_clock_fits([&default_rule, &event_budget], coarse_tick_ns());
    DatapathConfig {
        flags: FLAG_NO_ALLOW | if coarse { FLAG_COARSE_CLOCK } else { 0 },
        v4_mask: prefix_mask(32),
        v6_mask: prefix_mask(64),
        default_rule,
        // The daemon's defaults: one event per source per second, 1000 per second per CPU.
        event_interval_ns: 1_000_000_000,
        event_budget,
        ..Default::default()
    }
}

/// Medians of every case for every flood in the arrangement `cpus`: (flood, case) → sample
/// (the median rate, and the least share of frames taken over the rounds).
pub fn run(cpus: Cpus) -> BTreeMap<(usize, Case), Sample> {
    println!(
        "throughput on a live veth ({FRAMES} frames x {ROUNDS} rounds, medians; {})",
        cpus.name()
    );
    let mut out = BTreeMap::new();
    for (f, flood) in FLOODS.iter().enumerate() {
        let mut bench = Bench::new(*flood);
        let mut results: BTreeMap<Case, Vec<Sample>> = BTreeMap::new();
        for _ in 0..ROUNDS {
            for case in Case::ALL {
                results.entry(case).or_default().push(bench.measure(case, cpus));
            }
        }
        println!("\n{}", flood.name);
        println!("{:<48} {:>8} {:>8} {:>8}", "receiver", "Mpps", "ratio", "taken");
        let summary = |case: Case| {
            let runs = &results[&case];
            Sample {
                pps: median(runs.iter().map(|s| s.pps).collect()),
                taken: runs.iter().map(|s| s.taken).fold(1.0, f64::min),
            }
        };
        for case in Case::ALL {
            let s = summary(case);
            out.insert((f, case), s);
            let base = summary(case.baseline()).pps;
            println!(
                "{:<48} {:>8.2} {:>8.2} {:>8.3}",
                case.name(),
                s.pps / 1e6,
                s.pps / base,
                s.taken
            );
        }
    }
    out
}
