//! Enforcement latency: the time from an offence at the gateway to the offender's ban being
//! in the kernel's deny map, as the daemon's own histogram records it, in the hard case: a
//! burst of sources offending at the same instant (each a failed TLS handshake, which bans at
//! the first with `tls_failures = 1`), so the later ones queue behind the earlier ones.
//!
//! Each table is measured with the gateway interface's NAPI polling in softirq (the
//! default) and in a kernel thread (`/sys/class/net/IFACE/threaded`): the burst's network
//! work in softirq runs for up to 2 ms at a time, which no thread can preempt on this
//! kernel (PREEMPT_NONE), so it sets the tail.
//!
//! The baseline, in the same rounds on the same daemon, is what an outside tool such as
//! fail2ban could do at best once it has noticed an offence: a `ban_add` request on the
//! control socket, one at a time, timed until it is acknowledged (on disk). It leaves out
//! the tool's own delay in reading logs, so it flatters the baseline.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use secgate::control::{client, proto::Request};
use secgate_tests::gateway::{Gw, NOT_TLS, Opts, client::tcp};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const ROUNDS: usize = 4;
/// Sources offending at once in a round.
const BURST: usize = 250;

/// The `i`th offender: 198.18.4.0/22 upwards, on the client's link.
fn offender(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(0xc612_0400u32 + 1 + i as u32)
}

/// The `i`th address the baseline bans: from 198.19.200.0, never used for traffic.
fn baseline_cidr(i: usize) -> ipnet::IpNet {
    ipnet::IpNet::from(IpAddr::from(Ipv4Addr::from(0xc613_c800u32 + i as u32)))
}

/// Gives the client namespace the offenders' addresses.
fn add_addresses(gw: &Gw) {
    let addrs: Vec<Ipv4Addr> = (0..ROUNDS * BURST).map(offender).collect();
    gw.topo.add_client_addresses("198.18.4.0/22", &addrs);
}

/// The gateway interface's `threaded` attribute, read in its namespace (`ip netns exec`
/// mounts that namespace's /sys), independently of the daemon's report.
fn sysfs_threaded(gw: &Gw) -> String {
    let path = format!("/sys/class/net/{}/threaded", gw.topo.gw_if);
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &gw.topo.gw.name, "cat", &path])
        .output()
        .expect("ip netns exec");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// One round of offences: `BURST` connections opened, then all send their bytes at once.
fn burst(gw: &Gw, round: usize) {
    let _runtime = gw.rt.enter();
    let conns: Vec<_> = (round * BURST..(round + 1) * BURST)
        .map(|i| tcp(&gw.topo.client, &offender(i).to_string(), gw.addr()).expect("connect"))
        .collect();
    gw.rt.block_on(async {
        let all = conns.into_iter().map(|mut s| async move {
            let _ = s.write_all(NOT_TLS).await;
            let mut buf = [0u8; 256];
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
        });
        futures::future::join_all(all).await;
    });
}

/// The baseline: `BURST` bans through the control socket, one after another; their times.
fn outside_tool(gw: &Gw, round: usize) -> Vec<Duration> {
    (round * BURST..(round + 1) * BURST)
        .map(|i| {
            let req = Request::BanAdd {
                cidr: baseline_cidr(i),
                ttl_secs: Some(600.0),
                reason: Some("bench".into()),
            };
            let start = Instant::now();
            client::call(&gw.daemon.socket, &req).expect("ban_add");
            start.elapsed()
        })
        .collect()
}

fn quantile(sorted: &[Duration], q: f64) -> f64 {
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1e3
}

/// Bans already held in the loaded case: IPv4 addresses from 198.18.16.0 on (in the host table the
/// measured bans go into), away from the offenders and the baseline's.
const LOADED: u32 = 100_000;

/// Replaces the daemon's state with `LOADED` bans an hour long and restarts it on them.
fn load(gw: &mut Gw) {
    gw.daemon.stop();
    let expires = secgate::clock::unix_ms(std::time::SystemTime::now()) + 3_600_000;
    let mut runtime = secgate::state::Runtime::default();
    for n in 0..LOADED {
        let addr = Ipv4Addr::from(0xc612_1000u32 + n);
        let ban = secgate::state::StoredBan {
            expires_unix_ms: Some(expires),
            expires_mono_ns: None,
            reason: "bench load".into(),
        };
        runtime.bans.insert(ipnet::IpNet::from(IpAddr::from(addr)), ban);
    }
    let state = secgate::state::StateFile::new(&gw.daemon.dir.join("state"));
    state.write(&secgate::state::StateFile::encode(&runtime)).expect("state file");
    gw.daemon.spawn();
}

/// One table's rounds: (escalation's p50, p99, max and bans; the baseline's times).
fn measure(loaded: bool, threaded: bool) -> ([f64; 3], u64, Vec<Duration>) {
    let escalation = "tls_failures = 1\nauth_failures = 0\nban_ttl = \"10m\"\nmax_ttl = \"1h\"";
    let mut gw = Gw::start(
        match (loaded, threaded) {
            (false, false) => "bench-es1",
            (false, true) => "bench-es2",
            (true, false) => "bench-es3",
            (true, true) => "bench-es4",
        },
        Opts {
            escalation: Some(escalation.into()),
            // Room for the burst at accept.
            routes_extra: "\n[gateway.limits]\nmax_connections = 100000\n",
            datapath_extra: if threaded { "napi = \"threaded\"" } else { "" },
            ..Opts::default()
        },
    );
    if loaded {
        load(&mut gw);
    }
    add_addresses(&gw);
    let status = gw.daemon.json(&["status", "--json"]);
    let napi = &status["attachments"][0]["napi"];
    assert_eq!(napi, if threaded { "threaded" } else { "softirq" }, "{status}");
    assert_eq!(sysfs_threaded(&gw), if threaded { "1" } else { "0" }, "as sysfs says too");
    let mut baseline = Vec::new();
    for round in 0..ROUNDS {
        burst(&gw, round);
        baseline.extend(outside_tool(&gw, round));
    }
    std::thread::sleep(Duration::from_millis(500));
    let status = gw.daemon.json(&["status", "--json"]);
    let e = &status["enforcement"];
    let ms = |k: &str| e[k].as_f64().unwrap_or(f64::NAN);
    baseline.sort_unstable();
    let bans = e["bans"].as_u64().unwrap_or(0);
    assert_eq!(bans, (ROUNDS * BURST) as u64, "every offender was banned: {status}");
    ([ms("p50_ms"), ms("p99_ms"), ms("max_ms")], bans, baseline)
}

pub fn run() {
    println!(
        "enforcement latency, offence → ban in the kernel's deny map ({} sources, {BURST} offending at once per round, {ROUNDS} rounds)",
        ROUNDS * BURST
    );
    println!(
        "{:<84} {:>8} {:>8} {:>8} {:>10}",
        "table, path", "p50 ms", "p99 ms", "max ms", "p99 ratio"
    );
    let (mut worst, mut worst_softirq) = (0.0f64, 0.0f64);
    for (loaded, threaded) in [(false, false), (false, true), (true, false), (true, true)] {
        let table = if loaded { format!("{LOADED} bans held") } else { "empty".into() };
        let napi = if threaded { "threaded NAPI" } else { "softirq NAPI" };
        let table = format!("{table}, {napi}");
        let ([p50, p99, max], bans, baseline) = measure(loaded, threaded);
        if threaded {
            worst = worst.max(p99);
        } else {
            worst_softirq = worst_softirq.max(p99);
        }
        println!(
            "{:<84} {p50:>8.3} {p99:>8.3} {max:>8.3} {:>10.2}",
            format!("{table}, escalation in the daemon ({bans} bans)"),
            1.0
        );
        let (b50, b99, bmax) =
            (quantile(&baseline, 0.5), quantile(&baseline, 0.99), quantile(&baseline, 1.0));
        println!(
            "{:<84} {b50:>8.3} {b99:>8.3} {bmax:>8.3} {:>10.2}",
            format!("{table}, outside tool: ban_add on the control socket ({})", baseline.len()),
            b99 / p99
        );
    }
    let verdict = |p99: f64| if p99 < 1.0 { "met" } else { "NOT met" };
    println!("target p99 < 1 ms, softirq NAPI (the default): {}", verdict(worst_softirq));
    println!("target p99 < 1 ms, threaded NAPI on the gateway interface: {}", verdict(worst));
}
