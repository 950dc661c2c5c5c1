//! End to end: two gateways in two namespaces sharing bans through a `redis-server` the
//! test starts (on a Unix socket, with a password). A ban made on one node, by the CLI or
//! by the escalation, drops the source at the other node's XDP, and its strike lengthens
//! the other node's next ban; an outage loses nothing;
//! a node started late enforces the fleet's bans before it answers; `rediss://` is checked
//! against the configured CA; a route limited
//! fleet-wide holds its rate across both gateways, and falls back as configured without
//! Redis.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use secgate_tests::{
    gateway::{Gw, Opts, pki::Pki},
    netns::{Daemon, Topology, addr::*},
    privileged,
    redis::Redis,
    traffic::*,
};

const PASSWORD: &str = "fleet-test-Secret-9d1f";
const FLOOD_PORT: u16 = 9999;
/// A packet limit on one UDP port, and an escalation that bans who stays over it.
const DATAPATH: &str = "event_interval = \"100ms\"\n[[datapath.limits]]\nprotocol = \"udp\"\nport = 9999\npps = 100\nburst = 100";
const ESCALATION: &str = "[escalation]\noverlimit_events = 3\nban_ttl = \"10m\"\n";

fn fleet(redis: &Redis, node: &str) -> String {
    let file = redis.dir.join(format!("password-{node}"));
    private_file(&file, &format!("{PASSWORD}\n"));
    format!(
        "[fleet]\nredis = \"{}\"\nnode = \"{node}\"\npassword_file = \"{}\"\n",
        redis.url(),
        file.display()
    )
}

/// Writes `text` to `path`, readable by its owner only (as the daemon wants a password).
fn private_file(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text).expect("password file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

fn node(topo: &Topology, tag: &str, redis: &Redis) -> Daemon {
    Daemon::start_with(topo, tag, DATAPATH, format!("{ESCALATION}{}", fleet(redis, tag)))
}

/// Two nodes in two namespaces sharing a Redis of their own (fields drop in this order:
/// the daemons before their namespaces).
struct Pair {
    a: Daemon,
    b: Daemon,
    ta: Topology,
    tb: Topology,
    redis: Redis,
}

/// Nodes `{tag}a` and `{tag}b`.
fn pair(tag: &str) -> Pair {
    let redis = Redis::start(tag, PASSWORD);
    let (na, nb) = (format!("{tag}a"), format!("{tag}b"));
    let (ta, tb) = (Topology::new(&na), Topology::new(&nb));
    let a = node(&ta, &na, &redis);
    let b = node(&tb, &nb, &redis);
    Pair { a, b, ta, tb, redis }
}

fn bans(d: &Daemon) -> Vec<serde_json::Value> {
    d.json(&["ban", "list", "--json"]).as_array().expect("a list").clone()
}

fn ban_of(d: &Daemon, cidr: &str) -> Option<serde_json::Value> {
    bans(d).into_iter().find(|b| b["cidr"] == cidr)
}

fn cidrs(d: &Daemon) -> std::collections::BTreeSet<String> {
    bans(d).iter().map(|b| b["cidr"].as_str().expect("cidr").to_owned()).collect()
}

fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn denied(d: &Daemon) -> u64 {
    d.json(&["stats", "--json"])["reasons"]["deny"]["packets"].as_u64().expect("deny counter")
}

fn fleet_status(d: &Daemon) -> serde_json::Value {
    d.json(&["status", "--json"])["fleet"].clone()
}

fn no_password_in(texts: &[&str]) {
    for t in texts {
        assert!(!t.contains(PASSWORD), "the Redis password leaked: {t}");
    }
}

#[test]
fn a_ban_on_one_node_drops_at_the_other() {
    if !privileged("a_ban_on_one_node_drops_at_the_other") {
        return;
    }
    let p = pair("fl");
    let Pair { a, b, ta, tb, .. } = &p;
    assert_eq!(fleet_status(b)["connected"], true, "{}", b.log_text());
    assert!(ping(&tb.client, CLIENT_V4, GW_V4), "not banned yet");

    // By the CLI: in B's deny map, and its packets dropped at B's XDP.
    a.ok(&["ban", "add", CLIENT_V4, "--ttl", "10m", "--reason", "by hand"]);
    assert!(eventually(Duration::from_secs(2), || ban_of(b, "198.18.0.2/32").is_some()));
    let ban = ban_of(b, "198.18.0.2/32").unwrap();
    assert_eq!(ban["reason"], "by hand");
    let left = ban["expires_in_secs"].as_f64().expect("a ban with an expiry");
    assert!((590.0..=600.0).contains(&left), "the expiry travels by the wall clock: {left}");
    let before = denied(b);
    assert!(!ping(&tb.client, CLIENT_V4, GW_V4), "dropped at node B");
    assert!(denied(b) > before, "by B's deny verdict");
    let audit = std::fs::read_to_string(&b.audit).expect("B's audit log");
    assert!(
        audit.lines().any(|l| l.contains("\"caller\":\"fleet\"")
            && l.contains("\"node\":\"fla\"")
            && l.contains("198.18.0.2/32")),
        "B audits the ban with its origin: {audit}"
    );

    // Many bans, for the propagation delay B reports.
    for i in 0..50 {
        a.ok(&["ban", "add", &format!("198.18.60.{i}"), "--ttl", "1h"]);
    }
    assert!(eventually(Duration::from_secs(5), || cidrs(b).len() == 51), "{:?}", cidrs(b));
    let status = fleet_status(b);
    let p99 = status["propagation_p99_ms"].as_f64().expect("a reported p99");
    eprintln!(
        "propagation from A's ban to B's maps over 51 bans: p50 {} ms, p99 {p99} ms",
        status["propagation_p50_ms"]
    );

    // A lift travels too.
    a.ok(&["ban", "del", CLIENT_V4]);
    assert!(eventually(Duration::from_secs(2), || ban_of(b, "198.18.0.2/32").is_none()));
    assert!(ping(&tb.client, CLIENT_V4, GW_V4), "passes B again");

    // By the escalation: a source over its packet limit at A is dropped at B.
    let socks = udp_senders(&ta.client, OTHER_V4, 2);
    let (sent, _) = udp_paced(&socks, sa(GW_V4, FLOOD_PORT), 3000, Duration::from_millis(1500));
    assert!(sent > 1000, "{sent}");
    assert!(
        eventually(Duration::from_secs(3), || ban_of(b, "198.18.0.3/32").is_some()),
        "{}",
        a.log_text()
    );
    let ban = ban_of(b, "198.18.0.3/32").unwrap();
    assert!(ban["reason"].as_str().unwrap().contains("overlimit_events"), "{ban}");
    assert!(!ping(&tb.client, OTHER_V4, GW_V4), "the escalation's ban drops at B");

    // Its strike is B's too: lifted, then offending at B, its ban there is the second one
    // (ban_ttl × ttl_factor = 20 minutes), not a first.
    a.ok(&["ban", "del", OTHER_V4]);
    assert!(eventually(Duration::from_secs(2), || ban_of(b, "198.18.0.3/32").is_none()));
    let socks = udp_senders(&tb.client, OTHER_V4, 2);
    let (sent, _) = udp_paced(&socks, sa(GW_V4, FLOOD_PORT), 3000, Duration::from_millis(1500));
    assert!(sent > 1000, "{sent}");
    assert!(
        eventually(Duration::from_secs(3), || ban_of(b, "198.18.0.3/32").is_some()),
        "{}",
        b.log_text()
    );
    let again = ban_of(b, "198.18.0.3/32").unwrap()["expires_in_secs"].as_f64().unwrap();
    assert!(again > 1100.0, "B's ban is the source's second: {again} s");
    assert!(eventually(Duration::from_secs(2), || ban_of(a, "198.18.0.3/32")
        .is_some_and(|ban| ban["expires_in_secs"].as_f64().unwrap() > 1100.0)));

    let status_text = b.ok(&["status"]);
    assert!(status_text.contains("fleet:") && status_text.contains("connected"), "{status_text}");
    no_password_in(&[&a.log_text(), &b.log_text(), &status_text, &status.to_string(), &audit]);
}

#[test]
fn an_outage_loses_no_ban_and_each_node_keeps_enforcing() {
    if !privileged("an_outage_loses_no_ban_and_each_node_keeps_enforcing") {
        return;
    }
    let mut p = pair("fo");
    let Pair { a, b, ta, tb, redis } = &mut p;
    for ip in ["198.18.70.1", "198.18.70.2"] {
        a.ok(&["ban", "add", ip, "--ttl", "1h"]);
    }
    assert!(eventually(Duration::from_secs(2), || ban_of(b, "198.18.70.2/32").is_some()));

    redis.kill();
    assert!(eventually(Duration::from_secs(5), || fleet_status(a)["connected"] == false
        && fleet_status(b)["connected"] == false));
    // Each node bans on its own meanwhile, and enforces it at once.
    a.ok(&["ban", "add", CLIENT_V4, "--ttl", "1h", "--reason", "during the outage, on A"]);
    b.ok(&["ban", "add", OTHER_V4, "--ttl", "1h", "--reason", "during the outage, on B"]);
    b.ok(&["ban", "add", "fd00:77::/64", "--reason", "permanent, on B"]);
    assert!(!ping(&ta.client, CLIENT_V4, GW_V4), "A enforces its own ban with Redis away");
    assert!(!ping(&tb.client, OTHER_V4, GW_V4), "B too");
    assert!(ping(&tb.client, CLIENT_V4, GW_V4), "A's outage ban has not reached B");
    assert_eq!(fleet_status(a)["pending"], 1);
    let down = fleet_status(b);
    assert!(down["last_error"].is_string(), "{down}");
    // A lifts a ban the fleet shared, and restarts before Redis is back: the lift is kept
    // (its outage ban is in its state file, to be republished).
    a.ok(&["ban", "del", "198.18.70.2"]);
    a.stop();
    a.spawn();
    assert_eq!(fleet_status(a)["pending"], 1, "the lift, still to share");

    // Redis comes back empty: both nodes bring it, and each other, the whole set.
    redis.spawn();
    let want: std::collections::BTreeSet<String> =
        ["198.18.70.1/32", "198.18.0.2/32", "198.18.0.3/32", "fd00:77::/64"]
            .map(String::from)
            .into();
    for d in [&a, &b] {
        assert!(
            eventually(Duration::from_secs(10), || cidrs(d) == want),
            "{:?}: {}",
            cidrs(d),
            d.log_text()
        );
    }
    assert!(!ping(&tb.client, CLIENT_V4, GW_V4), "A's outage ban now drops at B");
    assert!(!ping(&ta.client, OTHER_V4, GW_V4), "and B's at A");
    let perm = ban_of(a, "fd00:77::/64").unwrap();
    assert!(perm["expires_in_secs"].is_null(), "a permanent ban stays permanent: {perm}");
    assert_eq!(redis.cli(&["HLEN", "{secgate}:bans"]).trim(), "4");
    for d in [&a, &b] {
        let s = fleet_status(d);
        assert_eq!((s["connected"].clone(), s["pending"].clone()), (true.into(), 0.into()), "{s}");
        assert!(s["bans_shared"].as_u64().is_some_and(|n| n >= 2), "{s}");
        assert!(s["errors"].as_u64().unwrap() > 0, "the outage is counted: {s}");
    }
    let log = b.log_text();
    assert_eq!(
        log.matches("fleet Redis unavailable").count(),
        1,
        "logged once per change of state: {log}"
    );
}

#[test]
fn after_a_partition_the_later_change_wins() {
    if !privileged("after_a_partition_the_later_change_wins") {
        return;
    }
    let p = pair("fp");
    let Pair { a, b, redis, .. } = &p;
    for ip in ["198.18.72.1", "198.18.72.2"] {
        a.ok(&["ban", "add", ip, "--ttl", "1h"]);
    }
    assert!(eventually(Duration::from_secs(2), || ban_of(b, "198.18.72.2/32").is_some()));
    redis.freeze(true);
    let apart = eventually(Duration::from_secs(10), || {
        fleet_status(a)["connected"] == false && fleet_status(b)["connected"] == false
    });
    if !apart {
        redis.freeze(false);
        panic!("the nodes did not notice Redis hanging");
    }
    // A lifts .1; a moment later B bans it again. B lifts .2, which A leaves alone.
    a.ok(&["ban", "del", "198.18.72.1"]);
    std::thread::sleep(Duration::from_millis(20));
    b.ok(&["ban", "add", "198.18.72.1", "--ttl", "1h", "--reason", "again, later, on B"]);
    b.ok(&["ban", "del", "198.18.72.2"]);
    redis.freeze(false);
    for d in [&a, &b] {
        let settled = || {
            ban_of(d, "198.18.72.1/32").is_some_and(|b| b["reason"] == "again, later, on B")
                && ban_of(d, "198.18.72.2/32").is_none()
        };
        assert!(eventually(Duration::from_secs(10), settled), "{:?}: {}", bans(d), d.log_text());
    }
    assert_eq!(redis.cli(&["HKEYS", "{secgate}:bans"]).trim(), "198.18.72.1/32");
}

#[test]
fn a_node_started_late_enforces_the_fleets_bans_before_it_answers() {
    if !privileged("a_node_started_late_enforces_the_fleets_bans_before_it_answers") {
        return;
    }
    let redis = Redis::start("late", PASSWORD);
    let (ta, tb) = (Topology::new("fta"), Topology::new("ftb"));
    let a = node(&ta, "fta", &redis);
    a.ok(&["ban", "add", CLIENT_V4, "--ttl", "1h"]);
    for i in 0..200 {
        a.ok(&["ban", "add", &format!("198.18.80.{i}"), "--ttl", "1h"]);
    }
    a.ok(&["ban", "add", "198.18.90.0/24", "--ttl", "1h"]);
    a.ok(&["ban", "del", "198.18.80.7"]);
    // The control socket answering is the daemon's readiness.
    let b = node(&tb, "ftb", &redis);
    let (got, want) = (cidrs(&b), cidrs(&a));
    assert_eq!(got.len(), 201, "{got:?}");
    assert_eq!(got, want);
    assert!(!ping(&tb.client, CLIENT_V4, GW_V4), "dropped at B's XDP from its first answer");
    assert!(ping(&tb.client, OTHER_V4, GW_V4), "others pass");
}

/// A route limited across the fleet: 20 rps in bursts of 10 per principal.
const FLEET_ROUTE: &str = r#"
[[routes]]
name = "fleet"
path = "/fleet/*"
auth = ["api_key"]
allow_roles = ["admin", "user"]
rate_limit = { per = "principal", rps = 20, burst = 10, scope = "fleet" }
[[routes]]
name = "fleet-fast"
path = "/fast/*"
auth = ["api_key"]
allow_roles = ["admin", "user"]
rate_limit = { per = "principal", rps = 400, burst = 40, scope = "fleet" }
"#;
const RPS: f64 = 20.0;
const BURST: f64 = 10.0;

fn gateway(tag: &str, redis: &Redis, on_unavailable: &str) -> Gw {
    let tables = format!("{}on_unavailable = \"{on_unavailable}\"\n", fleet(redis, tag));
    Gw::start(tag, Opts { routes_extra: FLEET_ROUTE, tables, ..Opts::default() })
}

#[test]
fn a_fleet_limit_holds_across_nodes_and_falls_back_as_configured() {
    if !privileged("a_fleet_limit_holds_across_nodes_and_falls_back_as_configured") {
        return;
    }
    let mut redis = Redis::start("lim", PASSWORD);
    let a = gateway("fga", &redis, "local");
    let b = gateway("fgb", &redis, "closed");
    let call = |gw: &Gw| gw.get(CLIENT_V4, "/fleet/x", &[("x-api-key", gw.key("user-key"))]).status;

    // One principal calling both nodes in turn, as fast as it can, for three seconds.
    let start = Instant::now();
    let mut admitted = [0u32; 2];
    let mut refused = [0u32; 2];
    while start.elapsed() < Duration::from_secs(3) {
        for (i, gw) in [&a, &b].into_iter().enumerate() {
            match call(gw) {
                200 => admitted[i] += 1,
                429 => refused[i] += 1,
                other => panic!("node {i} answered {other}"),
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let total = f64::from(admitted[0] + admitted[1]);
    let bound = BURST + RPS * secs;
    eprintln!("admitted {admitted:?}, refused {refused:?} over {secs:.2}s; bound {bound:.0}");
    assert!(refused[0] > 0 && refused[1] > 0, "429s from whichever node it calls");
    assert!(admitted[0] > 0 && admitted[1] > 0, "both nodes admit within the limit");
    assert!(total <= bound, "the fleet admitted {total}, over burst + rps × t = {bound:.1}");
    assert!(total >= 0.6 * RPS * secs, "the fleet admitted only {total} of about {bound:.0}");

    // A faster route, where each node takes admissions four at a time: both nodes called
    // at once, the fleet still admits at most burst + rps × (t + 0.1 s).
    let start = Instant::now();
    let hammer = |gw: &Gw| {
        let (mut admitted, mut refused) = (0u32, 0u32);
        while start.elapsed() < Duration::from_secs(3) {
            let reply = gw.get(CLIENT_V4, "/fast/x", &[("x-api-key", gw.key("admin-key"))]);
            match reply.status {
                200 => admitted += 1,
                429 => refused += 1,
                other => panic!("answered {other}"),
            }
        }
        (admitted, refused)
    };
    let fast = std::thread::scope(|s| {
        let (ta, tb) = (s.spawn(|| hammer(&a)), s.spawn(|| hammer(&b)));
        [ta.join().unwrap(), tb.join().unwrap()]
    });
    let secs = start.elapsed().as_secs_f64();
    let total = f64::from(fast[0].0 + fast[1].0);
    // A fresh key: every admission was granted by the bucket since the first request.
    let bound = 40.0 + 400.0 * secs;
    eprintln!("fast route: (admitted, refused) {fast:?} over {secs:.2}s; bound {bound:.0}");
    assert!(fast[0].1 > 0 && fast[1].1 > 0, "both nodes went over the limit: {fast:?}");
    assert!(total <= bound, "the fleet admitted {total}, over {bound:.1}");
    assert!(total >= 0.5 * 400.0 * secs, "the fleet admitted only {total}");

    // Without Redis: A limits on its own, B refuses the route (and serves others).
    redis.kill();
    assert!(eventually(Duration::from_secs(5), || fleet_status(&b.daemon)["connected"] == false));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(call(&a), 200, "on_unavailable = \"local\": A's own bucket decides");
    let reply = b.get(CLIENT_V4, "/fleet/x", &[("x-api-key", b.key("user-key"))]);
    assert_eq!(reply.status, 503, "on_unavailable = \"closed\"");
    assert_eq!(reply.json()["error"]["code"], "limit_unavailable", "{:?}", reply.json());
    assert_eq!(b.get(CLIENT_V4, "/health", &[]).status, 200, "unlimited routes are served");
    let mut local = 0;
    while call(&a) == 200 {
        local += 1;
        assert!(local < 100, "A's local bucket never refused");
    }
    redis.spawn();
    assert!(eventually(Duration::from_secs(10), || fleet_status(&b.daemon)["connected"] == true));
    assert!(
        eventually(Duration::from_secs(2), || call(&b) == 200),
        "B serves the route again once Redis is back"
    );
}

#[test]
fn a_node_reaches_redis_over_tls_checked_against_its_ca() {
    if !privileged("a_node_reaches_redis_over_tls_checked_against_its_ca") {
        return;
    }
    let topo = Topology::new("fts");
    let dir = std::env::temp_dir().join(format!("secgate-fleet-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let pki = Pki::new(&dir, "redis-ca");
    let (cert, key, _) = pki.server("redis", &["localhost"]);
    let redis = Redis::start_tls("tls", PASSWORD, &topo.gw, 6390, (&cert, &key));
    let table = |ca: &Path| {
        let file = redis.dir.join("password");
        private_file(&file, PASSWORD);
        format!(
            "[fleet]\nredis = \"rediss://localhost:6390/0\"\nnode = \"tls-a\"\npassword_file = \"{}\"\nca_file = \"{}\"\n",
            file.display(),
            ca.display()
        )
    };
    let mut a = Daemon::start_with(&topo, "fts", "", table(&pki.ca_pem));
    assert_eq!(fleet_status(&a)["connected"], true, "{}", a.log_text());
    assert!(fleet_status(&a)["redis"].as_str().unwrap().starts_with("rediss://localhost:6390"));
    a.ok(&["ban", "add", "198.18.71.1", "--ttl", "1h"]);
    assert!(eventually(Duration::from_secs(2), || redis
        .cli(&["HEXISTS", "{secgate}:bans", "198.18.71.1/32"])
        .trim()
        == "1"));

    // A CA that did not sign Redis's certificate: no connection, and status says why.
    let other = Pki::new(&dir.join("other"), "other-ca");
    a.stop();
    a.extra = table(&other.ca_pem);
    a.write_config(&topo.gw_if, "");
    a.spawn();
    let s = fleet_status(&a);
    assert_eq!(s["connected"], false, "{s}");
    assert!(s["last_error"].as_str().is_some_and(|e| e.contains("connecting")), "{s}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_second_gateway_under_the_same_name_is_reported() {
    if !privileged("a_second_gateway_under_the_same_name_is_reported") {
        return;
    }
    let redis = Redis::start("dup", PASSWORD);
    let (ta, tb) = (Topology::new("fda"), Topology::new("fdb"));
    let a = node(&ta, "fda", &redis);
    let twin = Daemon::start_with(&tb, "fdb", DATAPATH, fleet(&redis, "fda"));
    let warning = "another gateway uses this fleet.node name";
    assert!(twin.log_text().contains(warning), "{}", twin.log_text());
    assert!(!a.log_text().contains(warning), "the first holder is not the one told");
    // A restart is the same node, not another.
    drop(twin);
    let mut b = node(&tb, "fdb", &redis);
    b.stop();
    b.spawn();
    assert!(!b.log_text().contains(warning), "{}", b.log_text());
}
