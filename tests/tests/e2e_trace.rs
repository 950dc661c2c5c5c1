//! End to end: `secgate trace` streams the XDP program's verdicts (aya-log records) for a
//! flooding source: its rate drops with the limit that applied, then its deny drops once
//! banned; never another source's packets, and never more lines than the kernel's budget.

use std::{
    io::Read as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use secgate_tests::{
    netns::{Daemon, Topology, addr::*, secgate_bin},
    privileged,
    traffic::*,
};

const PORT: u16 = 9300;
const TRACE_SECS: u64 = 4;

#[test]
fn trace_shows_rate_then_deny_verdicts_of_one_flooding_source() {
    if !privileged("trace_shows_rate_then_deny_verdicts_of_one_flooding_source") {
        return;
    }
    let topo = Topology::new("trc");
    let limit =
        format!("[[datapath.limits]]\nprotocol = \"udp\"\nport = {PORT}\npps = 100\nburst = 10\n");
    let daemon = Daemon::start(&topo, "trc", &limit);
    let (code, _, err) = daemon.cli(&["trace", &format!("{OTHER_V4}/32"), "--for", "2h"]);
    assert_ne!(code, 0);
    assert!(err.contains("out of range"), "an over-long trace is refused: {err}");

    let mut trace = Command::new(secgate_bin())
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["trace", &format!("{OTHER_V4}/32"), "--for", &format!("{TRACE_SECS}s"), "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("secgate trace");
    std::thread::sleep(Duration::from_millis(500));
    let flooder = udp_senders(&topo.client, OTHER_V4, 4);
    let (flood, _) = udp_paced(&flooder, sa(GW_V4, PORT), 5000, Duration::from_millis(1500));
    udp_send(&topo.client, CLIENT_V4, sa(GW_V4, PORT), 50, 1);
    daemon.ok(&["ban", "add", OTHER_V4]);
    let (banned, _) = udp_paced(&flooder, sa(GW_V4, PORT), 1000, Duration::from_millis(800));

    let deadline = Instant::now() + Duration::from_secs(TRACE_SECS + 10);
    while trace.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "the trace did not end after --for");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (mut out, mut err) = (String::new(), String::new());
    trace.stdout.take().expect("stdout").read_to_string(&mut out).unwrap();
    trace.stderr.take().expect("stderr").read_to_string(&mut err).unwrap();
    assert!(trace.wait().unwrap().success(), "{err}");
    let lines: Vec<serde_json::Value> =
        out.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    let with = |verdict: &str| lines.iter().filter(|l| l["verdict"] == verdict).count();
    assert!(
        lines.iter().all(|l| l["src"] == OTHER_V4 && l["dport"] == PORT && l["proto"] == 17),
        "only the traced source's packets: {out}"
    );
    let rate = lines.iter().find(|l| l["verdict"] == "rate").expect("rate verdicts traced");
    assert_eq!(rate["limit"], format!("udp port {PORT}"), "{rate}");
    assert_eq!((rate["pps"].as_u64(), rate["burst"].as_u64()), (Some(100), Some(10)), "{rate}");
    assert!(rate["sport"].as_u64().is_some_and(|p| p > 0), "{rate}");
    assert!(with("pass") > 0 && with("deny") > 0, "passes, then deny after the ban: {out}");
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let budget = cpus * (50 * (TRACE_SECS + 1) + 20);
    let traced = lines.len() as u64;
    assert!(traced <= budget, "{traced} lines for {flood} + {banned} packets: the budget holds");
    assert!(flood + banned > 10 * budget, "the flood outran the budget");
    let held: u64 = err
        .split_whitespace()
        .zip(err.split_whitespace().skip(1))
        .find(|(_, next)| *next == "held")
        .and_then(|(n, _)| n.parse().ok())
        .expect("the held-back count is reported");
    assert!(held > 0, "{err}");
}
