//! End to end: sources that keep offending at the gateway (bad credentials, bad TLS,
//! slowloris) or past their packet limit at XDP are banned in the XDP deny map, so their
//! next SYNs are dropped before the kernel sees them, while a client in another namespace
//! goes on being served.

use std::time::{Duration, Instant};

use secgate_tests::{
    gateway::{
        Gw, HOST, NOT_TLS, Opts,
        client::{H1, Http, request, tcp},
    },
    metrics::sum,
    netns::addr::*,
    privileged,
    traffic::{sa, tcp_connects, udp_paced, udp_senders},
};
use serde_json::Value;

const BAD_TOKEN: (&str, &str) = ("authorization", "Bearer not-a-token");

/// Polls `cond` every 50 ms for at most `limit`.
fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

fn bans(gw: &Gw) -> Vec<Value> {
    gw.daemon.json(&["ban", "list", "--json"]).as_array().expect("ban list").clone()
}

fn ban_of(gw: &Gw, cidr: &str) -> Option<Value> {
    bans(gw).into_iter().find(|b| b["cidr"] == cidr)
}

fn denied_packets(gw: &Gw) -> u64 {
    gw.daemon.json(&["stats", "--json"])["reasons"]["deny"]["packets"].as_u64().unwrap_or(0)
}

/// Whether a TCP connection from `src` to the gateway completes within a second: a source
/// XDP drops never gets its SYN answered.
fn connects(gw: &Gw, src: &str) -> bool {
    tcp_connects(&gw.topo.client, src, gw.addr(), Duration::from_secs(1))
}

fn failed_login(gw: &Gw, src: &str) {
    assert_eq!(gw.get(src, "/admin/x", &[BAD_TOKEN]).status, 401);
}

/// The neighbour (another namespace, another link) is served.
fn neighbour_served(gw: &Gw) {
    let ns = gw.neighbour.as_ref().expect("a neighbour");
    assert_eq!(gw.get_in(ns, NEIGHBOUR_V4, "/health", &[]).status, 200);
}

/// The audit lines with `action`, parsed.
fn audited(gw: &Gw, action: &str) -> Vec<Value> {
    std::fs::read_to_string(&gw.daemon.audit)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["action"] == action)
        .collect()
}

fn expires_in(ban: &Value) -> f64 {
    ban["expires_in_secs"].as_f64().expect("a ban with a TTL")
}

#[test]
fn failed_logins_get_the_source_dropped_by_xdp_and_repeat_bans_grow() {
    if !privileged("failed_logins_get_the_source_dropped_by_xdp_and_repeat_bans_grow") {
        return;
    }
    let escalation =
        "window = \"30s\"\nauth_failures = 3\nban_ttl = \"3s\"\nttl_factor = 2\nmax_ttl = \"1m\"";
    let mut gw = Gw::start(
        "esa",
        Opts {
            escalation: Some(escalation.into()),
            neighbour: true,
            datapath_extra: "allow = [\"198.18.0.3\"]",
            ..Opts::default()
        },
    );
    // An allow-listed source is never banned, however often it fails.
    for _ in 0..5 {
        failed_login(&gw, OTHER_V4);
    }
    assert!(eventually(Duration::from_secs(2), || {
        sum(&gw.topo, "secgate_escalation_spared_total", &[]) >= 1.0
    }));
    assert!(bans(&gw).is_empty(), "allow-listed: no ban");
    assert_eq!(gw.get(OTHER_V4, "/health", &[]).status, 200);

    neighbour_served(&gw);
    for _ in 0..3 {
        failed_login(&gw, CLIENT_V4);
    }
    assert!(eventually(Duration::from_secs(2), || ban_of(&gw, "198.18.0.2/32").is_some()));
    let ban = ban_of(&gw, "198.18.0.2/32").unwrap();
    assert!(ban["reason"].as_str().unwrap().contains("3 auth_failures"), "{ban}");
    assert!(expires_in(&ban) <= 3.0, "a first ban lasts ban_ttl: {ban}");
    let denied = denied_packets(&gw);
    assert!(!connects(&gw, CLIENT_V4), "the attacker's SYNs are dropped");
    assert!(denied_packets(&gw) > denied, "by XDP's deny verdict");
    neighbour_served(&gw);

    // Audited with the offences that caused it; the latency is in `status`.
    let audit = audited(&gw, "ban_add");
    let line =
        audit.iter().find(|l| l["caller"] == "escalation").expect("an escalation ban audited");
    assert_eq!(line["rule"], "auth_failures", "{line}");
    let offences = line["request"]["offences"].as_array().expect("offences");
    assert_eq!(offences.len(), 3, "{line}");
    assert!(offences.iter().all(|o| o["kind"] == "auth_failures" && o["what"] == "invalid_token"));
    let status = gw.daemon.json(&["status", "--json"]);
    assert_eq!(status["enforcement"]["bans"], 1, "{status}");
    assert!(status["enforcement"]["p99_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{status}");
    assert!(gw.daemon.ok(&["status"]).contains("escalation: 1 bans"));

    // The ban lapses after its TTL; a second offence bans for twice as long.
    assert!(eventually(Duration::from_secs(6), || bans(&gw).is_empty()), "the ban expires");
    assert!(eventually(Duration::from_secs(2), || connects(&gw, CLIENT_V4)));
    assert_eq!(gw.get(CLIENT_V4, "/health", &[]).status, 200, "served again");
    for _ in 0..3 {
        failed_login(&gw, CLIENT_V4);
    }
    assert!(eventually(Duration::from_secs(2), || ban_of(&gw, "198.18.0.2/32").is_some()));
    let second = expires_in(&ban_of(&gw, "198.18.0.2/32").unwrap());
    assert!((4.5..=6.0).contains(&second), "ban_ttl × 2: {second}");

    // A restart keeps the history: after an operator lifts the ban, the third costs × 4.
    gw.daemon.stop();
    gw.daemon.spawn();
    assert!(ban_of(&gw, "198.18.0.2/32").is_some(), "the ban itself survives the restart");
    gw.daemon.ok(&["ban", "del", "198.18.0.2/32"]);
    assert!(eventually(Duration::from_secs(2), || connects(&gw, CLIENT_V4)));
    for _ in 0..3 {
        failed_login(&gw, CLIENT_V4);
    }
    assert!(eventually(Duration::from_secs(2), || ban_of(&gw, "198.18.0.2/32").is_some()));
    let third = expires_in(&ban_of(&gw, "198.18.0.2/32").unwrap());
    assert!((10.5..=12.0).contains(&third), "ban_ttl × 4 after a restart: {third}");
    neighbour_served(&gw);
}

/// Sends bytes that are not TLS to the gateway from `src`, so its handshake fails.
fn bad_handshake(gw: &Gw, src: &str) {
    gw.rt.block_on(async {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut s = tcp(&gw.topo.client, src, gw.addr()).expect("TCP connect");
        s.write_all(NOT_TLS).await.expect("write");
        let mut buf = [0u8; 256];
        let _ = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await;
    });
}

#[test]
fn failed_handshakes_from_several_addresses_widen_to_their_prefix() {
    if !privileged("failed_handshakes_from_several_addresses_widen_to_their_prefix") {
        return;
    }
    let escalation = "tls_failures = 1\nauth_failures = 0\nban_ttl = \"1m\"\nwiden = { v4_prefix = 24, sources = 2 }";
    let gw = Gw::start(
        "esw",
        Opts { escalation: Some(escalation.into()), neighbour: true, ..Opts::default() },
    );
    let third = "198.18.0.4";
    gw.topo.client.ip(&["addr", "add", &format!("{third}/24"), "dev", &gw.topo.client_if]);
    assert!(connects(&gw, third));
    bad_handshake(&gw, CLIENT_V4);
    assert!(eventually(Duration::from_secs(2), || ban_of(&gw, "198.18.0.2/32").is_some()));
    assert!(connects(&gw, third), "one banned source does not ban its neighbours");
    bad_handshake(&gw, OTHER_V4);
    assert!(eventually(Duration::from_secs(2), || ban_of(&gw, "198.18.0.0/24").is_some()));
    let prefix = ban_of(&gw, "198.18.0.0/24").unwrap();
    assert!(prefix["reason"].as_str().unwrap().contains("2 offending sources"), "{prefix}");
    assert!(!connects(&gw, third), "an address that never offended is in the banned prefix");
    let widened = audited(&gw, "ban_add").into_iter().find(|l| l["rule"] == "widen").unwrap();
    assert_eq!(widened["request"]["offences"]["offending_sources"].as_array().unwrap().len(), 2);
    assert!(sum(&gw.topo, "secgate_escalation_offences_total", &[("kind", "tls_failures")]) >= 2.0);
    neighbour_served(&gw);
}

#[test]
fn monitor_mode_bans_nobody_and_reports_who_it_would_have() {
    if !privileged("monitor_mode_bans_nobody_and_reports_who_it_would_have") {
        return;
    }
    let escalation = "mode = \"monitor\"\nauth_failures = 2\nban_ttl = \"1m\"";
    let gw = Gw::start("esm", Opts { escalation: Some(escalation.into()), ..Opts::default() });
    for _ in 0..4 {
        failed_login(&gw, CLIENT_V4);
    }
    let would = |gw: &Gw| gw.daemon.json(&["status", "--json"])["enforcement"].clone();
    assert!(eventually(Duration::from_secs(2), || would(&gw)["would_ban_total"] == 2));
    assert_eq!(would(&gw)["would_ban"][0]["cidr"], "198.18.0.2/32");
    assert_eq!(would(&gw)["bans"], 0);
    assert!(bans(&gw).is_empty(), "monitor bans nobody");
    assert!(connects(&gw, CLIENT_V4));
    assert_eq!(gw.get(CLIENT_V4, "/health", &[]).status, 200);
    assert!(gw.daemon.ok(&["status"]).contains("would ban:  2 (monitor mode)"));
    let lines = audited(&gw, "would_ban");
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["request"]["cidr"], "198.18.0.2/32");
    assert_eq!(
        sum(&gw.topo, "secgate_escalation_would_ban_total", &[("rule", "auth_failures")]),
        2.0
    );
}

/// Trickles a request head one line every 300 ms from `src` until the gateway cuts it.
async fn slowloris(gw: &Gw, src: &str) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let tls = gw.tls(H1, None);
    let mut s = tls.connect(&gw.topo.client, src, gw.addr()).await.expect("TLS connect");
    let _ = s.write_all(format!("GET /health HTTP/1.1\r\nHost: {HOST}\r\n").as_bytes()).await;
    let started = Instant::now();
    let mut buf = [0u8; 256];
    while started.elapsed() < Duration::from_secs(10) {
        if s.write_all(b"X-Slow: 1\r\n").await.is_err() {
            return;
        }
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await
        {
            return;
        }
    }
    panic!("a slowloris head was not cut within 10 s");
}

#[test]
fn slowloris_clients_count_toward_escalation() {
    if !privileged("slowloris_clients_count_toward_escalation") {
        return;
    }
    let gw = Gw::start(
        "ess",
        Opts {
            escalation: Some("validation_failures = 2\nban_ttl = \"1m\"".into()),
            routes_extra: "\n[gateway.limits]\nheader_timeout = \"1s\"\n",
            neighbour: true,
            ..Opts::default()
        },
    );
    // A keep-alive connection at rest past the header timeout is closed, and not counted.
    let idle = gw.rt.block_on(async {
        let tls = gw.tls(H1, None).connect(&gw.topo.client, CLIENT_V4, gw.addr()).await.unwrap();
        let mut http = Http::over(tls).await;
        let first = http.send(request("GET", HOST, "/health", &[], vec![])).await.unwrap();
        assert_eq!(first.status, 200);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        http.send(request("GET", HOST, "/health", &[], vec![])).await.is_err()
    });
    assert!(idle, "the idle connection was closed by the header timeout");
    let timeouts = || {
        sum(
            &gw.topo,
            "secgate_escalation_offences_total",
            &[("kind", "validation_failures"), ("what", "header_timeout")],
        )
    };
    assert_eq!(timeouts(), 0.0, "a connection at rest is no slowloris");
    gw.rt.block_on(async { tokio::join!(slowloris(&gw, CLIENT_V4), slowloris(&gw, CLIENT_V4)) });
    assert!(eventually(Duration::from_secs(2), || ban_of(&gw, "198.18.0.2/32").is_some()));
    assert!(!connects(&gw, CLIENT_V4));
    assert_eq!(timeouts(), 2.0);
    neighbour_served(&gw);
}

#[test]
fn a_source_that_stays_over_its_packet_limit_is_moved_to_the_deny_map() {
    if !privileged("a_source_that_stays_over_its_packet_limit_is_moved_to_the_deny_map") {
        return;
    }
    let datapath = "event_interval = \"100ms\"\n[[datapath.limits]]\nprotocol = \"udp\"\nport = 9999\npps = 100\nburst = 100";
    let gw = Gw::start(
        "eso",
        Opts {
            escalation: Some("overlimit_events = 3\nban_ttl = \"1m\"".into()),
            datapath_extra: datapath,
            neighbour: true,
            ..Opts::default()
        },
    );
    let socks = udp_senders(&gw.topo.client, CLIENT_V4, 2);
    let (sent, _) = udp_paced(&socks, sa(GW_V4, 9999), 3000, Duration::from_millis(1500));
    assert!(sent > 1000, "{sent}");
    assert!(eventually(Duration::from_secs(2), || ban_of(&gw, "198.18.0.2/32").is_some()));
    let ban = ban_of(&gw, "198.18.0.2/32").unwrap();
    assert!(ban["reason"].as_str().unwrap().contains("overlimit_events"), "{ban}");
    let stats = gw.daemon.json(&["stats", "--json"]);
    assert!(stats["reasons"]["deny"]["packets"].as_u64().unwrap() > 0, "{stats}");
    assert!(!connects(&gw, CLIENT_V4), "now dropped on the deny path, TCP too");
    neighbour_served(&gw);
}
