//! End to end: `secgate run` attached to a veth in a gateway namespace, real traffic from a
//! client namespace, and the CLI driving bans, limits and modes.

use std::time::Duration;

use secgate_tests::{
    netns::{Daemon, Topology, addr::*},
    privileged,
    traffic::*,
};

const UDP_PORT: u16 = 9000;
const TCP_PORT: u16 = 9001;
const RATE_PORT: u16 = 9100;
const SHORT: Duration = Duration::from_millis(800);

/// Whether `src` reaches the gateway by ICMP, UDP and TCP; panics if the protocols disagree.
fn reaches(topo: &Topology, src: &str, dst: &str) -> bool {
    let rx = udp_receiver(&topo.gw, UDP_PORT);
    udp_send(&topo.client, src, sa(dst, UDP_PORT), 5, 1);
    let udp = drain(&rx) == 5;
    let tcp = tcp_connects(&topo.client, src, sa(dst, TCP_PORT), SHORT);
    let icmp = ping(&topo.client, src, dst);
    assert!(udp == tcp && tcp == icmp, "{src} → {dst}: udp {udp}, tcp {tcp}, icmp {icmp} disagree");
    udp
}

fn counter(stats: &serde_json::Value, reason: &str, field: &str) -> u64 {
    stats["reasons"][reason][field]
        .as_u64()
        .unwrap_or_else(|| panic!("stats lack {reason}.{field}: {stats}"))
}

#[test]
fn bans_drop_all_protocols_lift_and_expire() {
    if !privileged("bans_drop_all_protocols_lift_and_expire") {
        return;
    }
    let topo = Topology::new("ban");
    let daemon = Daemon::start(&topo, "ban", "");
    let _tcp = tcp_listener(&topo.gw, TCP_PORT);
    for src in [CLIENT_V4, OTHER_V4] {
        assert!(reaches(&topo, src, GW_V4), "{src} before any ban");
    }
    assert!(reaches(&topo, CLIENT_V6, GW_V6), "{CLIENT_V6} before any ban");

    daemon.ok(&["ban", "add", &format!("{CLIENT_V4}/32"), "--reason", "e2e"]);
    daemon.ok(&["ban", "add", "fd00:18::/64"]);
    assert!(!reaches(&topo, CLIENT_V4, GW_V4), "banned /32 must be dropped");
    assert!(!reaches(&topo, CLIENT_V6, GW_V6), "banned /64 must be dropped");
    assert!(reaches(&topo, OTHER_V4, GW_V4), "another IPv4 source still passes");
    assert!(reaches(&topo, OTHER_V6, GW_V6_OTHER), "a source in another /64 still passes");
    let bans = daemon.json(&["ban", "list", "--json"]);
    assert_eq!(bans.as_array().map(Vec::len), Some(2), "{bans}");

    daemon.ok(&["ban", "del", CLIENT_V4]);
    daemon.ok(&["ban", "del", "fd00:18::/64"]);
    assert!(reaches(&topo, CLIENT_V4, GW_V4), "ban del restores IPv4 traffic");
    assert!(reaches(&topo, CLIENT_V6, GW_V6), "ban del restores IPv6 traffic");

    // Long enough to outlast the probes (UDP, an 800 ms connect, two pings), even on a busy
    // machine: a 2 s ban could lapse before the last probe.
    daemon.ok(&["ban", "add", CLIENT_V4, "--ttl", "5s"]);
    let banned = std::time::Instant::now();
    assert!(!reaches(&topo, CLIENT_V4, GW_V4), "ttl ban drops at once");
    std::thread::sleep(Duration::from_millis(5300).saturating_sub(banned.elapsed()));
    assert!(reaches(&topo, CLIENT_V4, GW_V4), "ttl ban expires by itself");
    let bans = daemon.json(&["ban", "list", "--json"]);
    assert_eq!(bans, serde_json::json!([]), "expired ban is gone from the list");
}

#[test]
fn bad_input_is_rejected_and_changes_nothing() {
    if !privileged("bad_input_is_rejected_and_changes_nothing") {
        return;
    }
    let topo = Topology::new("bad");
    let daemon = Daemon::start(&topo, "bad", "");
    daemon.ok(&["ban", "add", "198.18.5.0/24"]);
    let before = daemon.ok(&["ban", "list", "--json"]);
    for (args, needle) in [
        (vec!["ban", "add", "198.18.0.0/33"], "198.18.0.0/33"),
        (vec!["ban", "add", "198.18.0.1/8"], "198.18.0.1/8"),
        (vec!["ban", "add", "198.18.0.9", "--ttl", "5x"], "5x"),
        (vec!["ban", "del", "not-an-ip"], "not-an-ip"),
        (vec!["limit", "set", "--pps", "100", "--burst", "0"], "burst 0"),
        (
            vec!["limit", "set", "--pps", "100", "--burst", "5", "--proto", "udp", "--port", "0"],
            "port 0",
        ),
        (
            vec!["limit", "set", "--pps", "100", "--burst", "5", "--proto", "icmp", "--port", "80"],
            "port only applies",
        ),
    ] {
        let (code, out, err) = daemon.cli(&args);
        assert_eq!(code, 2, "{args:?} must exit 2: {out}{err}");
        assert!(err.contains(needle), "{args:?}: message must name {needle:?}: {err}");
    }
    assert_eq!(daemon.ok(&["ban", "list", "--json"]), before, "rejected input changed nothing");

    let bad = daemon.dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[datapath]\ninterfaces = [\"x\"]\nipv6_prefix = 129\ndeny = [\"1.2.3.4/40\"]\n",
    )
    .unwrap();
    let (code, _, err) = daemon.cli(&["check-config", "-c", bad.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("line 3") && err.contains("ipv6_prefix 129"), "{err}");
    assert!(err.contains("line 4") && err.contains("1.2.3.4/40"), "{err}");
}

#[test]
fn stats_json_matches_traffic_sent() {
    if !privileged("stats_json_matches_traffic_sent") {
        return;
    }
    let topo = Topology::new("stat");
    let daemon = Daemon::start(&topo, "stat", "");
    let rx = udp_receiver(&topo.gw, UDP_PORT);
    daemon.ok(&["ban", "add", CLIENT_V4]);
    let before = daemon.json(&["stats", "--json"]);
    let (banned, clean) = (37u64, 23u64);
    udp_send(&topo.client, CLIENT_V4, sa(GW_V4, UDP_PORT), banned as usize, 3);
    udp_send(&topo.client, OTHER_V4, sa(GW_V4, UDP_PORT), clean as usize, 3);
    let received = drain(&rx);
    let after = daemon.json(&["stats", "--json"]);
    let delta = |reason: &str, field: &str| {
        counter(&after, reason, field) - counter(&before, reason, field)
    };
    let frame = (14 + 20 + 8 + UDP_PAYLOAD) as u64;
    assert_eq!(received, clean, "clean datagrams all arrive, banned ones none");
    assert_eq!(delta("deny", "packets"), banned, "{after}");
    assert_eq!(delta("deny", "bytes"), banned * frame, "{after}");
    assert_eq!(delta("rate", "packets"), 0, "{after}");
    assert_eq!(delta("malformed", "packets"), 0, "{after}");
    let pass = delta("pass", "packets");
    assert!(
        (clean..=clean + 4).contains(&pass),
        "pass moved by {pass}, sent {clean} (+ at most a few stray packets)"
    );
    let dropped = after["dropped"]["packets"].as_u64().unwrap()
        - before["dropped"]["packets"].as_u64().unwrap();
    assert_eq!(dropped, banned, "{after}");
}

#[test]
fn monitor_mode_passes_everything_but_counts() {
    if !privileged("monitor_mode_passes_everything_but_counts") {
        return;
    }
    let topo = Topology::new("mon");
    let daemon = Daemon::start(&topo, "mon", "");
    let rx = udp_receiver(&topo.gw, UDP_PORT);
    daemon.ok(&["ban", "add", CLIENT_V4]);
    daemon.ok(&["mode", "monitor"]);
    let before = daemon.json(&["stats", "--json"]);
    udp_send(&topo.client, CLIENT_V4, sa(GW_V4, UDP_PORT), 30, 2);
    assert_eq!(drain(&rx), 30, "monitor mode passes banned traffic");
    let after = daemon.json(&["stats", "--json"]);
    assert_eq!(
        counter(&after, "deny", "packets") - counter(&before, "deny", "packets"),
        30,
        "would-be drops are counted"
    );
    assert_eq!(
        after["dropped"]["packets"], before["dropped"]["packets"],
        "nothing dropped in monitor mode"
    );
    daemon.ok(&["mode", "enforce"]);
    udp_send(&topo.client, CLIENT_V4, sa(GW_V4, UDP_PORT), 30, 2);
    assert_eq!(drain(&rx), 0, "enforce mode drops again without reloading");
    // Regression: `dropped` was derived from the reason counters and the current mode, so
    // switching back to enforce counted the monitor-era would-be drops as dropped.
    let enforced = daemon.json(&["stats", "--json"]);
    let dropped = |s: &serde_json::Value| s["dropped"]["packets"].as_u64().expect("dropped");
    assert_eq!(dropped(&enforced) - dropped(&before), 30, "only packets really dropped count");
}

#[test]
fn rate_limit_holds_a_multi_flow_source_to_its_rate() {
    if !privileged("rate_limit_holds_a_multi_flow_source_to_its_rate") {
        return;
    }
    const PPS: u64 = 2000;
    const BURST: u64 = 100;
    const SEND_PPS: u64 = 6 * PPS;
    let topo = Topology::new("rate");
    let daemon = Daemon::start(&topo, "rate", "");
    daemon.ok(&[
        "limit",
        "set",
        "--pps",
        &PPS.to_string(),
        "--burst",
        &BURST.to_string(),
        "--proto",
        "udp",
        "--port",
        &RATE_PORT.to_string(),
    ]);
    let rx = udp_receiver(&topo.gw, RATE_PORT);
    let before = daemon.json(&["stats", "--json"]);
    let dst = sa(GW_V4, RATE_PORT);
    let (per_thread, duration) = (SEND_PPS / 2, Duration::from_secs(3));
    let results: Vec<(u64, Duration)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let socks = udp_senders(&topo.client, CLIENT_V4, 4);
                s.spawn(move || udp_paced(&socks, dst, per_thread, duration))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("sender")).collect()
    });
    let received = drain(&rx);
    let sent: u64 = results.iter().map(|r| r.0).sum();
    let elapsed = results.iter().map(|r| r.1).max().unwrap();
    let expected = PPS as f64 * elapsed.as_secs_f64() + BURST as f64;
    let ratio = received as f64 / expected;
    let after = daemon.json(&["stats", "--json"]);
    let rate_drops = counter(&after, "rate", "packets") - counter(&before, "rate", "packets");
    let queues = String::from_utf8_lossy(
        &topo
            .gw
            .command("ethtool")
            .args(["-S", &topo.gw_if])
            .output()
            .map(|o| o.stdout)
            .unwrap_or_default(),
    )
    .lines()
    .filter(|l| l.contains("xdp_packets"))
    .map(str::trim)
    .collect::<Vec<_>>()
    .join(", ");
    eprintln!(
        "sent {sent} in {elapsed:?} ({:.0} pps), received {received}, expected {expected:.0}, ratio {ratio:.3}, rate drops {rate_drops}; {queues}",
        sent as f64 / elapsed.as_secs_f64()
    );
    assert!(
        sent as f64 >= 5.0 * expected * 0.95,
        "the sender must offer at least 5x the limit (sent {sent})"
    );
    assert!(
        (0.9..=1.1).contains(&ratio),
        "received {received}, expected {expected:.0} ±10% (ratio {ratio:.3})"
    );
    assert_eq!(
        received + rate_drops,
        sent,
        "every datagram sent is either passed or counted as a rate drop"
    );
}

#[test]
fn ipv6_sources_in_one_64_share_a_limit() {
    if !privileged("ipv6_sources_in_one_64_share_a_limit") {
        return;
    }
    let topo = Topology::new("v6");
    let daemon = Daemon::start(&topo, "v6", "");
    daemon.ok(&[
        "limit",
        "set",
        "--pps",
        "1",
        "--burst",
        "10",
        "--proto",
        "udp",
        "--port",
        &UDP_PORT.to_string(),
    ]);
    let rx = udp_receiver(&topo.gw, UDP_PORT);
    udp_send(&topo.client, CLIENT_V6, sa(GW_V6, UDP_PORT), 10, 1);
    assert_eq!(drain(&rx), 10, "the burst passes");
    udp_send(&topo.client, CLIENT_V6_SAME_64, sa(GW_V6, UDP_PORT), 10, 1);
    assert_eq!(drain(&rx), 0, "another address in the same /64 draws on the same bucket");
    udp_send(&topo.client, OTHER_V6, sa(GW_V6_OTHER, UDP_PORT), 10, 1);
    assert_eq!(drain(&rx), 10, "a source in another /64 has its own bucket");
}

/// The program skips the allowlist while it is empty (a flag the daemon keeps): an entry
/// added at run time or by a reload is honoured at once, and removing the last one brings
/// the ban back.
#[test]
fn the_allowlist_wins_over_a_ban_as_soon_as_it_is_added_and_until_removed() {
    if !privileged("the_allowlist_wins_over_a_ban_as_soon_as_it_is_added_and_until_removed") {
        return;
    }
    let topo = Topology::new("alw");
    let daemon = Daemon::start(&topo, "alw", "");
    let _tcp = tcp_listener(&topo.gw, TCP_PORT);
    daemon.ok(&["ban", "add", "198.18.0.0/24"]);
    assert!(!reaches(&topo, CLIENT_V4, GW_V4), "banned");
    daemon.ok(&["allow", "add", CLIENT_V4]);
    assert!(reaches(&topo, CLIENT_V4, GW_V4), "allowed over the ban at once");
    assert!(!reaches(&topo, OTHER_V4, GW_V4), "only the allowed address");
    daemon.ok(&["allow", "del", CLIENT_V4]);
    assert!(!reaches(&topo, CLIENT_V4, GW_V4), "the last entry removed: banned again");
    daemon.write_config(&topo.gw_if, &format!("allow = [\"{OTHER_V4}\"]"));
    daemon.ok(&["reload"]);
    assert!(reaches(&topo, OTHER_V4, GW_V4), "a config allow entry, by reload");
    daemon.write_config(&topo.gw_if, "");
    daemon.ok(&["reload"]);
    assert!(!reaches(&topo, OTHER_V4, GW_V4), "and gone with it");
}
