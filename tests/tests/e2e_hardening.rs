//! End to end: no ban hidden or lost, one daemon per pin path, durable bans under load,
//! limits and fragments without a free pass, interfaces that come and go, and status and
//! metrics that cannot stall. Each test names the defect it pins.

use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::net::UnixStream,
    time::{Duration, Instant},
};

use secgate_tests::{
    metrics::metric,
    netns::{Daemon, Topology, addr::*, wait_bounded},
    privileged,
    traffic::*,
};

const UDP_PORT: u16 = 9300;
const RATE_PORT: u16 = 9301;

fn counter(stats: &serde_json::Value, reason: &str) -> u64 {
    stats["reasons"][reason]["packets"].as_u64().unwrap_or_else(|| panic!("no {reason} in {stats}"))
}

/// Pings `count` times, 0.1 s apart, from `src`; returns how many were answered.
fn pings_answered(topo: &Topology, src: &str, dst: &str, count: u32) -> u32 {
    let out = topo
        .client
        .command("ping")
        .args(["-n", "-c", &count.to_string(), "-i", "0.1", "-W", "1", "-I", src, dst])
        .output()
        .expect("ping");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains("received")).unwrap_or_else(|| panic!("{text}"));
    line.split(", ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"))
}

#[test]
fn a_short_ban_inside_a_longer_one_never_lets_the_host_through() {
    // Regression: with a 1 s ban on a /32 inside a /25 ban, 9 of 30 pings over 3 s got
    // through: the kernel read only the expired /32 until the sweeper removed it.
    if !privileged("a_short_ban_inside_a_longer_one_never_lets_the_host_through") {
        return;
    }
    let topo = Topology::new("hid");
    let daemon = Daemon::start(&topo, "hid", "");
    assert_eq!(pings_answered(&topo, CLIENT_V4, GW_V4, 2), 2, "reachable before any ban");
    daemon.ok(&["ban", "add", "198.18.0.0/25"]);
    daemon.ok(&["ban", "add", CLIENT_V4, "--ttl", "1s"]);
    daemon.ok(&["ban", "add", "fd00:18::/48"]);
    daemon.ok(&["ban", "add", CLIENT_V6, "--ttl", "1s"]);
    assert_eq!(pings_answered(&topo, CLIENT_V4, GW_V4, 30), 0, "no IPv4 ping over 3 s");
    assert_eq!(pings_answered(&topo, CLIENT_V6, GW_V6, 10), 0, "no IPv6 ping either");
    let bans = daemon.json(&["ban", "list", "--json"]);
    assert_eq!(bans.as_array().map(Vec::len), Some(2), "the /32 and /128 lapsed: {bans}");
    daemon.ok(&["ban", "del", "198.18.0.0/25"]);
    assert_eq!(pings_answered(&topo, CLIENT_V4, GW_V4, 2), 2, "lifting the /25 restores it");
}

fn write_state(daemon: &Daemon, bytes: &[u8]) -> std::path::PathBuf {
    let path = daemon.dir.join("state").join("state.json");
    std::fs::write(&path, bytes).expect("write state");
    path
}

#[test]
fn an_unusable_state_file_loses_no_ban() {
    // Regression: a corrupt state file made the daemon start from the config alone and
    // delete every dynamic ban and allow entry from the pinned maps.
    if !privileged("an_unusable_state_file_loses_no_ban") {
        return;
    }
    let topo = Topology::new("adp");
    let mut daemon = Daemon::start(&topo, "adp", "");
    daemon.ok(&["ban", "add", CLIENT_V4, "--ttl", "1h", "--reason", "keep me"]);
    daemon.ok(&["ban", "add", "fd00:18::/64"]);
    daemon.ok(&["allow", "add", "198.18.0.77"]);
    let rx = udp_receiver(&topo.gw, UDP_PORT);
    let state = daemon.dir.join("state").join("state.json");
    for (case, bytes, why) in [
        ("corrupt", &b"{\"version\":2,\"bans\":{\"198.18"[..], "EOF"),
        ("from a newer version", br#"{"version":99,"bans":{},"future":1}"#, "unknown version 99"),
    ] {
        daemon.kill9();
        write_state(&daemon, bytes);
        let seen = daemon.log_text().len();
        daemon.spawn();
        let log = daemon.log_text()[seen..].to_string();
        assert!(
            log.contains("unusable") && log.contains(why),
            "{case}: the operator is told: {log}"
        );
        assert!(log.contains("kept 3"), "{case}: and what was kept: {log}");
        let bans = daemon.json(&["ban", "list", "--json"]);
        assert_eq!(bans.as_array().map(Vec::len), Some(2), "{case}: both bans kept: {bans}");
        let v4 = &bans[0];
        assert!(
            v4["reason"].as_str().is_some_and(|r| r.contains("kept from the pinned maps")),
            "{case}: {bans}"
        );
        let left = v4["expires_in_secs"].as_f64().expect("the TTL is kept");
        assert!((3500.0..=3600.0).contains(&left), "{case}: {left}s left");
        assert_eq!(
            daemon.json(&["allow", "list", "--json"]),
            serde_json::json!(["198.18.0.77/32"])
        );
        udp_send(&topo.client, CLIENT_V4, sa(GW_V4, UDP_PORT), 10, 1);
        assert_eq!(drain(&rx), 0, "{case}: the ban still drops");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !std::fs::read_to_string(&state).is_ok_and(|s| s.contains("198.18.0.2/32")) {
            assert!(Instant::now() < deadline, "{case}: what was kept is written at once");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    // An unreadable state file is left as it is and never written over; the daemon keeps
    // what the pinned maps hold and says that changes cannot be saved.
    daemon.kill9();
    std::fs::remove_file(&state).unwrap();
    std::fs::create_dir(&state).unwrap();
    let seen = daemon.log_text().len();
    daemon.spawn();
    let log = daemon.log_text()[seen..].to_string();
    assert!(log.contains("reading") && log.contains("state.json"), "{log}");
    assert_eq!(daemon.json(&["ban", "list", "--json"]).as_array().map(Vec::len), Some(2));
    let (code, _, err) = daemon.cli(&["ban", "add", OTHER_V4]);
    assert_ne!(code, 0);
    assert!(err.contains("not overwriting") && err.contains("in force"), "{err}");
    udp_send(&topo.client, OTHER_V4, sa(GW_V4, UDP_PORT), 10, 1);
    assert_eq!(drain(&rx), 0, "the unsaved ban is enforced all the same");
    assert!(state.is_dir(), "the unreadable state is left as it was");

    // Once the file is fixed, a restart keeps the ban that could not be saved.
    daemon.kill9();
    std::fs::remove_dir(&state).unwrap();
    daemon.spawn();
    let bans = daemon.json(&["ban", "list", "--json"]);
    assert_eq!(bans.as_array().map(Vec::len), Some(3), "nothing was lost: {bans}");
}

#[test]
fn one_daemon_per_pin_path() {
    // Regression: a second `secgate run` loaded its own program and swapped it into the
    // pinned links before failing on the control socket; `secgate detach` pulled the
    // filter out from under a running daemon.
    if !privileged("one_daemon_per_pin_path") {
        return;
    }
    let topo = Topology::new("one");
    let daemon = Daemon::start(&topo, "one", "");
    daemon.ok(&["ban", "add", CLIENT_V4]);
    let prog = topo.gw_xdp_prog(&topo.gw_if).expect("attached");
    let (code, err) = daemon.run_again(&daemon.config);
    assert_ne!(code, 0);
    assert!(err.contains("locked by another secgate daemon") && err.contains("pid"), "{err}");
    let other = daemon.dir.join("other.toml");
    let text = std::fs::read_to_string(&daemon.config).unwrap();
    std::fs::write(
        &other,
        text.replace("control.sock", "other.sock").replace("/state\"", "/state2\""),
    )
    .unwrap();
    let (code, err) = daemon.run_again(&other);
    assert_ne!(code, 0, "the same pins with another state dir are refused too");
    assert!(err.contains("locked by another secgate daemon"), "{err}");
    assert_eq!(topo.gw_xdp_prog(&topo.gw_if), Some(prog), "the running program was not replaced");

    let (code, _, err) = daemon.cli(&["detach", "-c", daemon.config.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("stop the daemon first"), "{err}");
    assert!(topo.gw_has_xdp(&topo.gw_if) && daemon.pin_path.exists(), "nothing was detached");
    let rx = udp_receiver(&topo.gw, UDP_PORT);
    udp_send(&topo.client, CLIENT_V4, sa(GW_V4, UDP_PORT), 10, 1);
    assert_eq!(drain(&rx), 0, "the first daemon's ban still drops");
    daemon.ok(&["status"]);
}

/// Sends one control request and returns the reply.
fn request(daemon: &Daemon, req: &serde_json::Value) -> serde_json::Value {
    let mut s = UnixStream::connect(&daemon.socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut line = serde_json::to_vec(req).unwrap();
    line.push(b'\n');
    s.write_all(&line).unwrap();
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply).expect("a reply");
    serde_json::from_str(&reply).expect("JSON reply")
}

#[test]
fn acknowledged_bans_survive_kill9_and_share_fsyncs() {
    // Regression: every ban rewrote and fsync'd the state file under the policy lock, one
    // after another; bans issued at once queued behind each other's fsyncs.
    if !privileged("acknowledged_bans_survive_kill9_and_share_fsyncs") {
        return;
    }
    let topo = Topology::new("dur");
    let mut daemon = Daemon::start(&topo, "dur", "");
    let before = metric(&topo, "secgate_state_commits_total");
    let threads = 16;
    let per_thread = 25;
    std::thread::scope(|s| {
        for t in 0..threads {
            let daemon = &daemon;
            s.spawn(move || {
                for i in 0..per_thread {
                    let cidr = format!("198.19.{t}.{i}/32");
                    let reply = request(
                        daemon,
                        &serde_json::json!({"cmd": "ban_add", "cidr": cidr, "ttl_secs": 3600.0}),
                    );
                    assert_eq!(reply["ok"], true, "{reply}");
                }
            });
        }
    });
    let commits = metric(&topo, "secgate_state_commits_total") - before;
    let total = f64::from(threads * per_thread);
    eprintln!("{total} bans from {threads} concurrent callers: {commits} state writes");
    assert!(commits < total / 2.0, "{total} bans took {commits} writes");
    daemon.kill9();
    std::fs::remove_dir_all(&daemon.pin_path).expect("remove pins: only the state file is left");
    daemon.spawn();
    let bans = daemon.json(&["ban", "list", "--json"]);
    assert_eq!(
        bans.as_array().map(Vec::len),
        Some(threads as usize * per_thread as usize),
        "every acknowledged ban is back"
    );
}

#[test]
fn a_changed_limit_applies_at_once() {
    // Regression: after `limit set` raised a rate, a source that had spent a large burst
    // under the old rule stayed blocked until its old bucket state came due (minutes).
    if !privileged("a_changed_limit_applies_at_once") {
        return;
    }
    let topo = Topology::new("lim");
    let extra = format!(
        "[[datapath.limits]]\nprotocol = \"udp\"\nport = {RATE_PORT}\npps = 1\nburst = 300\n"
    );
    let daemon = Daemon::start(&topo, "lim", &extra);
    let rx = udp_receiver(&topo.gw, RATE_PORT);
    udp_send(&topo.client, CLIENT_V4, sa(GW_V4, RATE_PORT), 300, 1);
    assert_eq!(drain(&rx), 300, "the old burst");
    let port = RATE_PORT.to_string();
    daemon
        .ok(&["limit", "set", "--pps", "1000", "--burst", "20", "--proto", "udp", "--port", &port]);
    // The source has spent its burst, so from its next packet on it gets the new rate.
    let socks = udp_senders(&topo.client, CLIENT_V4, 1);
    let (sent, took) = udp_paced(&socks, sa(GW_V4, RATE_PORT), 2000, Duration::from_millis(500));
    let got = drain(&rx);
    let want = took.as_secs_f64() * 1000.0;
    eprintln!(
        "after raising the limit: {got} of {sent} in {took:?}, the new rate allows {want:.0}"
    );
    assert!(
        got as f64 >= 0.8 * want && got as f64 <= want + 21.0,
        "got {got}, the new rate allows {want:.0}"
    );
}

/// A UDP socket that lets the kernel fragment datagrams larger than the path MTU.
fn fragmenting_sender(topo: &Topology, src: &str) -> std::net::UdpSocket {
    use std::os::fd::AsRawFd as _;
    let sock = udp_senders(&topo.client, src, 1).pop().unwrap();
    let dont: libc::c_int = libc::IP_PMTUDISC_DONT;
    // SAFETY: a valid socket and option value of the size passed.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            (&raw const dont).cast(),
            size_of::<libc::c_int>() as u32,
        )
    };
    assert_eq!(r, 0, "IP_MTU_DISCOVER");
    sock
}

#[test]
fn fragments_are_limited_in_their_own_bucket_or_dropped() {
    // Regression: non-first fragments carry no ports, so with only port limits configured
    // a fragmented flood passed unlimited.
    if !privileged("fragments_are_limited_in_their_own_bucket_or_dropped") {
        return;
    }
    let topo = Topology::new("frg");
    let ports = format!(
        "[[datapath.limits]]\nprotocol = \"udp\"\nport = {UDP_PORT}\npps = 100000\nburst = 100000\n"
    );
    let daemon =
        Daemon::start(&topo, "frg", &format!("fragment_limit = {{ pps = 1, burst = 4 }}\n{ports}"));
    let rx = udp_receiver(&topo.gw, UDP_PORT);
    let sock = fragmenting_sender(&topo, CLIENT_V4);
    let before = daemon.json(&["stats", "--json"]);
    let datagram = [0x5au8; 4000];
    for _ in 0..30 {
        sock.send_to(&datagram, sa(GW_V4, UDP_PORT)).expect("send");
    }
    let got = drain(&rx);
    let after = daemon.json(&["stats", "--json"]);
    let limited = counter(&after, "rate") - counter(&before, "rate");
    assert!(
        got <= 4,
        "the fragment bucket holds the flood to its burst: {got} of 30 datagrams reassembled"
    );
    assert!(limited >= 50, "non-first fragments over their limit are dropped: {limited}");

    daemon.write_config(&topo.gw_if, &format!("fragments = \"drop\"\n{ports}"));
    daemon.ok(&["reload"]);
    let small = [0x5au8; 100];
    sock.send_to(&small, sa(GW_V4, UDP_PORT)).unwrap();
    for _ in 0..10 {
        sock.send_to(&datagram, sa(GW_V4, UDP_PORT)).unwrap();
    }
    assert_eq!(drain(&rx), 1, "only the unfragmented datagram arrives");
    let dropped = counter(&daemon.json(&["stats", "--json"]), "fragment");
    assert!(dropped >= 20, "two non-first fragments per datagram are dropped: {dropped}");
}

fn attachment(daemon: &Daemon, iface: &str) -> serde_json::Value {
    let status = daemon.json(&["status", "--json"]);
    status["attachments"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["interface"] == iface).cloned())
        .unwrap_or_else(|| panic!("{iface} is not in {status}"))
}

/// Waits up to `limit` for `iface`'s state to become `state`.
fn becomes(daemon: &Daemon, iface: &str, state: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    while attachment(daemon, iface)["state"] != state {
        assert!(
            start.elapsed() < limit,
            "{iface} not {state} within {limit:?}: {}",
            attachment(daemon, iface)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

#[test]
fn interfaces_that_come_and_go() {
    // Regression: a deleted and re-created interface stayed without the program (banned
    // sources passed) while `status` said attached; the next `secgate run` failed with "Link
    // has been severed"; an interface missing at start was fatal.
    if !privileged("interfaces_that_come_and_go") {
        return;
    }
    let topo = Topology::new("ifc");
    let mut daemon = Daemon::start(&topo, "ifc", "");
    daemon.kill9();
    daemon.write_config_for(&[&topo.gw_if, "sg-late"], "");
    daemon.spawn();
    assert!(
        daemon.log_text().contains("sg-late") && daemon.log_text().contains("does not exist"),
        "{}",
        daemon.log_text()
    );
    assert_eq!(attachment(&daemon, "sg-late")["state"], "waiting");
    topo.add_link("sg-latec", "sg-late");
    let took = becomes(&daemon, "sg-late", "attached", Duration::from_secs(1));
    eprintln!("a new interface got the program in {took:?}");
    assert!(topo.gw_has_xdp("sg-late"));

    daemon.ok(&["ban", "add", CLIENT_V4]);
    topo.delete_pair();
    becomes(&daemon, &topo.gw_if, "waiting", Duration::from_secs(1));
    topo.recreate_pair();
    let took = becomes(&daemon, &topo.gw_if, "attached", Duration::from_secs(1));
    eprintln!("a re-created interface got the program back in {took:?}");
    let rx = udp_receiver(&topo.gw, UDP_PORT);
    udp_send(&topo.client, CLIENT_V4, sa(GW_V4, UDP_PORT), 10, 1);
    udp_send(&topo.client, OTHER_V4, sa(GW_V4, UDP_PORT), 10, 1);
    assert_eq!(drain(&rx), 10, "the ban drops on the re-created interface; others pass");

    daemon.kill9();
    topo.delete_pair();
    topo.recreate_pair();
    daemon.spawn();
    assert_eq!(
        attachment(&daemon, &topo.gw_if)["state"],
        "attached",
        "a severed pinned link is replaced"
    );
    udp_send(&topo.client, CLIENT_V4, sa(GW_V4, UDP_PORT), 10, 1);
    udp_send(&topo.client, OTHER_V4, sa(GW_V4, UDP_PORT), 10, 1);
    assert_eq!(drain(&rx), 10, "and the ban drops again");
}

#[test]
fn an_interface_that_refuses_the_program_is_an_error_at_start_and_reported_later() {
    if !privileged("an_interface_that_refuses_the_program_is_an_error_at_start_and_reported_later")
    {
        return;
    }
    let topo = Topology::new("ifr");
    let mut daemon = Daemon::start(&topo, "ifr", "");
    daemon.kill9();
    // An ifb device has no native XDP.
    topo.gw.ip(&["link", "add", "sg-ifb", "type", "ifb"]);
    daemon.write_config_for(&[&topo.gw_if, "sg-ifb"], "attach = \"native\"\n");
    let (code, err) = daemon.run_again(&daemon.config);
    assert_ne!(code, 0, "a configured interface that refuses the program stops the start");
    assert!(err.contains("sg-ifb"), "the interface is named: {err}");
    topo.gw.ip(&["link", "del", "sg-ifb"]);
    daemon.spawn();
    assert_eq!(attachment(&daemon, "sg-ifb")["state"], "waiting");
    topo.gw.ip(&["link", "add", "sg-ifb", "type", "ifb"]);
    becomes(&daemon, "sg-ifb", "failed", Duration::from_secs(2));
    let failed = attachment(&daemon, "sg-ifb");
    assert!(failed["error"].as_str().is_some_and(|e| e.contains("sg-ifb")), "{failed}");
    assert_eq!(
        attachment(&daemon, &topo.gw_if)["state"],
        "attached",
        "the other interface is unaffected"
    );
    assert_eq!(metric(&topo, "secgate_interfaces_failed"), 1.0);
}

type SourceMap = aya::maps::Array<aya::maps::MapData, secgate_common::sources::SourceSet>;

fn open_sources(daemon: &Daemon) -> SourceMap {
    let pin = daemon.pin_path.join("maps").join(secgate_common::maps::SOURCES);
    let map = aya::maps::MapData::from_pin(&pin).expect("pinned source map");
    aya::maps::Array::try_from(aya::maps::Map::Array(map)).expect("array")
}

/// A set whose every slot holds a bucket in use for hours: numbered `n`, so each write
/// changes the table.
fn full_set(n: u32) -> secgate_common::sources::SourceSet {
    let slot = |i: u32| secgate_common::sources::SourceSlot {
        tat_ns: u64::MAX / 2,
        tag: n.wrapping_mul(4).wrapping_add(i) | 1,
        event_stamp: 0,
    };
    secgate_common::sources::SourceSet { slots: [slot(0), slot(1), slot(2), slot(3)] }
}

/// The `bpf(2)` calls the daemon makes while `f` runs, counted by strace.
fn bpf_calls(pid: nix::unistd::Pid, f: impl FnOnce()) -> u64 {
    let out = std::env::temp_dir().join(format!("secgate-strace-{}", std::process::id()));
    let mut strace = std::process::Command::new("strace")
        .args(["-f", "-qq", "-c", "-e", "trace=bpf", "-o"])
        .arg(&out)
        .args(["-p", &pid.to_string()])
        .spawn()
        .expect("strace (`cargo xtask setup` installs it)");
    let tasks = format!("/proc/{pid}/task");
    let traced = || {
        std::fs::read_dir(&tasks).unwrap().flatten().all(|t| {
            std::fs::read_to_string(t.path().join("status")).is_ok_and(|s| {
                s.lines().any(|l| {
                    l.starts_with("TracerPid:") && l.split_whitespace().nth(1) != Some("0")
                })
            })
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !traced() {
        assert!(Instant::now() < deadline, "strace did not attach");
        std::thread::sleep(Duration::from_millis(20));
    }
    f();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(strace.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    strace.wait().unwrap();
    let summary = std::fs::read_to_string(&out).unwrap_or_default();
    let _ = std::fs::remove_file(&out);
    summary
        .lines()
        .find(|l| l.split_whitespace().last() == Some("bpf"))
        .and_then(|l| l.split_whitespace().nth(3))
        .map_or(0, |n| n.parse().expect("calls column"))
}

fn status(daemon: &Daemon) -> serde_json::Value {
    let child = std::process::Command::new(secgate_tests::netns::secgate_bin())
        .args(["status", "--json"])
        .env("SECGATE_SOCKET", &daemon.socket)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_bounded(child, Duration::from_secs(20), "secgate status");
    serde_json::from_slice(&out.stdout).expect("status JSON")
}

#[test]
fn status_and_metrics_never_walk_the_sources() {
    // Regression: `status` and every scrape walked the whole LRU source map under the policy
    // lock, one syscall per entry (seconds for a full map), and under churn a walk can start
    // over without end. The table is an array now, but a walk of it would cost as much.
    if !privileged("status_and_metrics_never_walk_the_sources") {
        return;
    }
    let topo = Topology::new("obs");
    let capacity = 131_072u32;
    let extra =
        format!("max_sources = {capacity}\ndefault_limit = {{ pps = 100000, burst = 1000 }}\n");
    let daemon = Daemon::start(&topo, "obs", &extra);
    udp_send(&topo.client, CLIENT_V4, sa(GW_V4, UDP_PORT), 5, 1);
    udp_send(&topo.client, OTHER_V4, sa(GW_V4, UDP_PORT), 5, 1);
    let mut map = open_sources(&daemon);
    let sets = map.len();
    assert_eq!(sets, secgate_common::sources::sets_for(capacity), "the table max_sources sizes");
    let deadline = Instant::now() + Duration::from_secs(5);
    let created_before_fill = loop {
        let created = status(&daemon)["buckets_created"].as_u64().expect("created");
        if created >= 2 {
            break created;
        }
        assert!(Instant::now() < deadline, "the two senders made no buckets: {created}");
        std::thread::sleep(Duration::from_millis(20));
    };
    for n in 0..sets {
        map.set(n, full_set(n), 0).expect("fill");
    }
    let calls = bpf_calls(daemon.pid(), || {
        status(&daemon);
        metric(&topo, "secgate_sources_tracked");
    });
    eprintln!("one status and one scrape over a full map of {capacity}: {calls} bpf calls");
    assert!(calls > 0, "strace saw no bpf call at all: the count would mean nothing");
    assert!(calls < 200, "status and a scrape made {calls} bpf calls: they walk the source map");

    let stop = std::sync::atomic::AtomicBool::new(false);
    /// Stops the churn however the scope ends, so a failed assertion cannot leave it running.
    struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    std::thread::scope(|s| {
        let stopper = StopOnDrop(&stop);
        let churn = s.spawn(|| {
            let mut n = sets;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                map.set(n % sets, full_set(n), 0).expect("write");
                n += 1;
            }
            n - sets
        });
        for _ in 0..5 {
            // Sources are the buckets the program created (two senders, and whatever the
            // client's kernel sends on its own, such as IPv6 router solicitations); the entries
            // this test writes from userspace are not traffic and are not counted. Only a
            // bucket created after the fill can evict one: none made before it did.
            let status = status(&daemon);
            let created = status["buckets_created"].as_u64().expect("buckets_created");
            assert_eq!(status["sources"], status["buckets_created"], "{status}");
            let evicted = status["buckets_evicted"].as_u64().expect("buckets_evicted");
            assert!(evicted <= created - created_before_fill, "the senders fit: {status}");
            let tracked = metric(&topo, "secgate_sources_tracked");
            assert!((2.0..=f64::from(capacity)).contains(&tracked), "{tracked}");
        }
        drop(stopper);
        let inserted = churn.join().unwrap();
        eprintln!("{inserted} churning writes while status and metrics answered");
        assert!(inserted > 10_000, "the churn was real: {inserted} writes");
    });
}

#[test]
fn the_audit_log_names_the_caller() {
    if !privileged("the_audit_log_names_the_caller") {
        return;
    }
    let topo = Topology::new("who");
    let daemon = Daemon::start(&topo, "who", "");
    daemon.ok(&["ban", "add", CLIENT_V4]);
    daemon.signal(nix::sys::signal::Signal::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let audit = std::fs::read_to_string(&daemon.audit).unwrap_or_default();
        let lines: Vec<serde_json::Value> =
            audit.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let has = |caller: &str, action: &str| {
            lines.iter().any(|l| l["caller"] == caller && l["action"] == action && l["ok"] == true)
        };
        if has("operator", "ban_add") && has("config", "reload") {
            let ban = lines.iter().find(|l| l["action"] == "ban_add").unwrap();
            assert_eq!(ban["uid"], 0, "{ban}");
            break;
        }
        assert!(Instant::now() < deadline, "audit lacks the callers: {audit}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn idle_metrics_connections_cannot_exhaust_the_daemon() {
    // Regression: the metrics listener took connections without bound or deadline, so local
    // users holding idle connections ran the daemon out of descriptors (no state writes, no
    // re-attach) and made its accept loop spin.
    if !privileged("idle_metrics_connections_cannot_exhaust_the_daemon") {
        return;
    }
    let topo = Topology::new("idl");
    let daemon = Daemon::start(&topo, "idl", "");
    let idle: Vec<std::net::TcpStream> = topo.gw.within(|| {
        (0..300).filter_map(|_| std::net::TcpStream::connect("127.0.0.1:9477").ok()).collect()
    });
    assert_eq!(idle.len(), 300, "the kernel accepts the connections");
    daemon.ok(&["ban", "add", CLIENT_V4]);
    std::thread::sleep(Duration::from_secs(3));
    let closed = idle
        .iter()
        .filter(|s| {
            s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
            match (&**s).read(&mut [0u8; 64]) {
                Ok(0) => true,
                Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
                Ok(_) => false,
            }
        })
        .count();
    assert_eq!(closed, idle.len(), "every idle connection is closed within the header deadline");
    assert_eq!(metric(&topo, "secgate_bans_active"), 1.0, "scrapes are served again");
}
