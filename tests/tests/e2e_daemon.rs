//! End to end: the daemon's life cycle. Crashes and restarts lose nothing, a reboot restores
//! run-time state, reload applies valid configs and rejects invalid ones, the control plane
//! admits only root and survives garbage, and metrics match the traffic.

use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::net::UnixStream,
    time::Duration,
};

use secgate_tests::{
    metrics::{sample, scrape},
    netns::{Daemon, Topology, addr::*},
    privileged,
    traffic::*,
};

const UDP_PORT: u16 = 9200;
const RATE_PORT: u16 = 9201;

fn counter(stats: &serde_json::Value, reason: &str) -> u64 {
    stats["reasons"][reason]["packets"].as_u64().unwrap_or_else(|| panic!("no {reason} in {stats}"))
}

#[test]
fn kill9_under_flood_keeps_bans_and_counters() {
    if !privileged("kill9_under_flood_keeps_bans_and_counters") {
        return;
    }
    let topo = Topology::new("k9");
    let mut daemon = Daemon::start(&topo, "k9", "");
    daemon.ok(&["ban", "add", CLIENT_V4, "--reason", "flood"]);
    let rx = udp_receiver(&topo.gw, UDP_PORT);
    let before = daemon.json(&["stats", "--json"]);
    let socks = udp_senders(&topo.client, CLIENT_V4, 4);
    let dst = sa(GW_V4, UDP_PORT);
    let (sent, _) = std::thread::scope(|s| {
        let flood = s.spawn(|| udp_paced(&socks, dst, 5000, Duration::from_secs(4)));
        std::thread::sleep(Duration::from_secs(1));
        daemon.kill9();
        std::thread::sleep(Duration::from_millis(700));
        daemon.spawn();
        flood.join().expect("flood")
    });
    let received = drain(&rx);
    let after = daemon.json(&["stats", "--json"]);
    assert_eq!(
        received, 0,
        "no packet from the banned source reached the gateway across the crash"
    );
    assert_eq!(
        counter(&after, "deny") - counter(&before, "deny"),
        sent,
        "every flood packet was counted, before, during and after the restart"
    );
    let bans = daemon.json(&["ban", "list", "--json"]);
    assert_eq!(bans[0]["cidr"], format!("{CLIENT_V4}/32"), "{bans}");
    assert_eq!(bans[0]["reason"], "flood", "the ban keeps its reason: {bans}");
    let status = daemon.json(&["status", "--json"]);
    assert_eq!(
        status["attachments"][0]["mode"], "adopted",
        "the new daemon swapped into the pinned link: {status}"
    );
}

#[test]
fn simulated_reboot_restores_every_runtime_change() {
    if !privileged("simulated_reboot_restores_every_runtime_change") {
        return;
    }
    let topo = Topology::new("boot");
    let mut daemon = Daemon::start(&topo, "boot", "");
    daemon.ok(&["ban", "add", CLIENT_V4, "--ttl", "1h", "--reason", "auth failures"]);
    daemon.ok(&["ban", "add", "fd00:18::/64"]);
    daemon.ok(&["allow", "add", "198.18.0.77"]);
    daemon.ok(&[
        "limit",
        "set",
        "--pps",
        "300",
        "--burst",
        "30",
        "--proto",
        "tcp",
        "--port",
        "443",
        "--syn-only",
    ]);
    daemon.ok(&["limit", "set", "--pps", "5000", "--burst", "500"]);
    daemon.ok(&["mode", "monitor"]);
    let bans = daemon.json(&["ban", "list", "--json"]);
    let limits = daemon.json(&["limit", "show", "--json"]);
    let allow = daemon.json(&["allow", "list", "--json"]);

    daemon.kill9();
    std::fs::remove_dir_all(&daemon.pin_path)
        .expect("remove pins: the kernel forgets everything at reboot");
    daemon.spawn();

    let status = daemon.json(&["status", "--json"]);
    assert_eq!(status["mode"], "monitor", "{status}");
    assert_ne!(
        status["attachments"][0]["mode"], "adopted",
        "pins were gone, so the program was attached afresh"
    );
    assert_eq!(daemon.json(&["limit", "show", "--json"]), limits);
    assert_eq!(daemon.json(&["allow", "list", "--json"]), allow);
    let restored = daemon.json(&["ban", "list", "--json"]);
    assert_eq!(restored.as_array().unwrap().len(), 2, "{restored}");
    assert_eq!(restored[0]["reason"], bans[0]["reason"]);
    let left = restored[0]["expires_in_secs"].as_f64().expect("ttl kept");
    assert!((3500.0..=3600.0).contains(&left), "about an hour left, got {left}");
    assert_eq!(
        restored[1]["expires_in_secs"],
        serde_json::Value::Null,
        "permanent stays permanent"
    );

    daemon.ok(&["mode", "enforce"]);
    let rx = udp_receiver(&topo.gw, UDP_PORT);
    udp_send(&topo.client, CLIENT_V4, sa(GW_V4, UDP_PORT), 10, 1);
    udp_send(&topo.client, CLIENT_V6, sa(GW_V6, UDP_PORT), 10, 1);
    udp_send(&topo.client, OTHER_V4, sa(GW_V4, UDP_PORT), 10, 1);
    assert_eq!(drain(&rx), 10, "restored bans drop again; the other source passes");
}

#[test]
fn reload_rejects_invalid_config_and_applies_valid_one() {
    if !privileged("reload_rejects_invalid_config_and_applies_valid_one") {
        return;
    }
    let topo = Topology::new("rld");
    let daemon = Daemon::start(&topo, "rld", &format!("deny = [\"{CLIENT_V4}\"]"));
    let rx = udp_receiver(&topo.gw, UDP_PORT);
    let reaches = |src: &str| {
        udp_send(&topo.client, src, sa(GW_V4, UDP_PORT), 5, 1);
        drain(&rx) == 5
    };
    assert!(!reaches(CLIENT_V4) && reaches(OTHER_V4), "config deny enforced");

    daemon.write_config(&topo.gw_if, "deny = [\"198.18.0.2/33\"]\nmode = \"block\"\n");
    let (code, _, err) = daemon.cli(&["reload"]);
    assert_ne!(code, 0, "an invalid config must be rejected");
    assert!(
        err.contains("198.18.0.2/33") && err.contains("\"block\""),
        "every problem is listed: {err}"
    );
    assert!(
        !reaches(CLIENT_V4) && reaches(OTHER_V4),
        "the old policy still holds after a rejected reload"
    );

    let extra = format!(
        "[[datapath.limits]]\nprotocol = \"udp\"\nport = {RATE_PORT}\npps = 10\nburst = 20\n"
    );
    daemon.write_config(&topo.gw_if, &extra);
    daemon.ok(&["reload"]);
    assert!(reaches(CLIENT_V4), "the deny entry left with the config");
    let limited = udp_receiver(&topo.gw, RATE_PORT);
    udp_send(&topo.client, OTHER_V4, sa(GW_V4, RATE_PORT), 200, 2);
    let got = drain(&limited);
    assert!(
        (20..=22).contains(&got),
        "the new limit holds the next packets to its burst of 20, got {got}"
    );

    daemon.write_config(&topo.gw_if, "mode = \"monitor\"\n");
    daemon.signal(nix::sys::signal::Signal::SIGHUP);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while daemon.json(&["status", "--json"])["mode"] != "monitor" {
        assert!(
            std::time::Instant::now() < deadline,
            "SIGHUP did not reload: {}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn control_plane_admits_only_root_and_survives_garbage() {
    if !privileged("control_plane_admits_only_root_and_survives_garbage") {
        return;
    }
    let topo = Topology::new("ctl");
    let daemon = Daemon::start(&topo, "ctl", "");
    let mode = std::fs::metadata(&daemon.socket)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()))
        .unwrap();
    assert_eq!(mode & 0o777, 0o600, "socket mode");
    let as_nobody = |args: &[&str]| {
        let out = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(secgate_tests::netns::secgate_bin())
            .args(args)
            .env("SECGATE_SOCKET", &daemon.socket)
            .output()
            .expect("setpriv (util-linux)");
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    // Let the unprivileged user traverse to the socket, so the socket's own mode decides.
    std::fs::set_permissions(&daemon.dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .unwrap();
    let (code, err) = as_nobody(&["ban", "add", "198.18.9.9"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("permission denied") && err.contains("root"), "{err}");
    // With the file mode opened up, the peer-credential check still refuses.
    std::fs::set_permissions(&daemon.socket, std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .unwrap();
    let (code, err) = as_nobody(&["ban", "add", "198.18.9.9"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("only serves root"), "{err}");
    std::fs::set_permissions(&daemon.socket, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .unwrap();
    assert_eq!(
        daemon.json(&["ban", "list", "--json"]),
        serde_json::json!([]),
        "nothing was applied"
    );

    let ask = |payload: &[u8]| -> serde_json::Value {
        let mut s = UnixStream::connect(&daemon.socket).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let _ = s.write_all(payload);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).expect("a reply");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("reply {line:?} is not JSON: {e}"))
    };
    let garbage: Vec<&[u8]> = vec![
        b"\xff\xfe\x00garbage\n",
        b"{\"cmd\":\"ban_add\",\"cidr\":\"nope\"}\n",
        b"{\n",
        b"[]\n",
        b"\n",
    ];
    for g in garbage {
        let reply = ask(g);
        assert_eq!(reply["ok"], false, "{g:?} → {reply}");
        assert!(reply["error"].as_str().is_some_and(|e| !e.is_empty()), "{reply}");
    }
    let reply = ask(&vec![b'a'; 200 * 1024]);
    assert!(reply["error"].as_str().unwrap().contains("exceeds"), "{reply}");
    daemon.ok(&["status"]);

    daemon.ok(&["ban", "add", "198.18.9.9", "--reason", "audit me"]);
    let mut audit = String::new();
    std::fs::File::open(&daemon.audit).unwrap().read_to_string(&mut audit).unwrap();
    let entries: Vec<serde_json::Value> =
        audit.lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
    assert!(
        entries
            .iter()
            .any(|e| e["uid"] == 65534 && e["ok"] == false && e["caller"] == "unauthorized"),
        "refusals are audited: {audit}"
    );
    let ban =
        entries.iter().find(|e| e["action"] == "ban_add" && e["ok"] == true).expect("ban audited");
    assert_eq!(ban["uid"], 0);
    assert_eq!(ban["request"]["reason"], "audit me");
    assert!(ban["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{ban}");
}

#[test]
fn metrics_scrape_matches_traffic() {
    if !privileged("metrics_scrape_matches_traffic") {
        return;
    }
    let topo = Topology::new("met");
    let daemon = Daemon::start(&topo, "met", "");
    daemon.ok(&["ban", "add", CLIENT_V4]);
    let before = scrape(&topo);
    let rx = udp_receiver(&topo.gw, UDP_PORT);
    udp_send(&topo.client, CLIENT_V4, sa(GW_V4, UDP_PORT), 41, 2);
    udp_send(&topo.client, OTHER_V4, sa(GW_V4, UDP_PORT), 17, 2);
    assert_eq!(drain(&rx), 17);
    let after = scrape(&topo);
    let delta = |name, label| sample(&after, name, label) - sample(&before, name, label);
    assert_eq!(delta("secgate_datapath_packets_total", Some(("reason", "deny"))), 41.0);
    assert_eq!(
        delta("secgate_datapath_bytes_total", Some(("reason", "deny"))),
        41.0 * (14 + 20 + 8 + UDP_PAYLOAD) as f64
    );
    let pass = delta("secgate_datapath_packets_total", Some(("reason", "pass")));
    assert!((17.0..=21.0).contains(&pass), "pass moved by {pass}");
    assert_eq!(delta("secgate_datapath_dropped_packets_total", None), 41.0);
    assert_eq!(sample(&after, "secgate_bans_active", None), 1.0);
    assert_eq!(sample(&after, "secgate_control_actions_total", Some(("action", "ban_add"))), 1.0);
    assert_eq!(sample(&after, "secgate_interfaces_attached", None), 1.0);
}

#[test]
fn stats_watch_redraws_every_second() {
    if !privileged("stats_watch_redraws_every_second") {
        return;
    }
    let topo = Topology::new("wat");
    let daemon = Daemon::start(&topo, "wat", "default_limit = { pps = 5, burst = 1 }");
    udp_send(&topo.client, CLIENT_V4, sa(GW_V4, UDP_PORT), 50, 1);
    let mut child = std::process::Command::new(secgate_tests::netns::secgate_bin())
        .args(["stats", "--watch"])
        .env("SECGATE_SOCKET", &daemon.socket)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("stats --watch");
    std::thread::sleep(Duration::from_millis(2500));
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let frames = text.matches("\x1b[2J").count();
    assert!((2..=4).contains(&frames), "expected a redraw per second, got {frames}: {text}");
    assert!(text.contains("pps") && text.contains("rate"), "{text}");
    assert!(text.contains(CLIENT_V4), "the over-limit source is among the top sources: {text}");
}

#[test]
fn reload_attaches_and_detaches_interfaces() {
    if !privileged("reload_attaches_and_detaches_interfaces") {
        return;
    }
    let topo = Topology::new("ifs");
    let daemon = Daemon::start(&topo, "ifs", "");
    let second = topo.add_link("sg-c2", "sg-g2");
    assert!(topo.gw_has_xdp(&topo.gw_if) && !topo.gw_has_xdp(&second));
    daemon.write_config_for(&[&topo.gw_if, &second], "");
    daemon.ok(&["reload"]);
    assert!(topo.gw_has_xdp(&topo.gw_if) && topo.gw_has_xdp(&second), "added interface attached");
    daemon.write_config_for(&[&second], "");
    daemon.ok(&["reload"]);
    assert!(!topo.gw_has_xdp(&topo.gw_if), "removed interface detached");
    assert!(topo.gw_has_xdp(&second));
    let status = daemon.json(&["status", "--json"]);
    assert_eq!(status["attachments"].as_array().map(Vec::len), Some(1), "{status}");

    // A missing interface only waits (see `interfaces_that_come_and_go`); an attach that
    // fails is an error: an ifb device has no native XDP.
    topo.gw.ip(&["link", "add", "sg-noxdp", "type", "ifb"]);
    topo.gw.ip(&["link", "set", "sg-noxdp", "up"]);
    daemon.write_config_for(&[&second, "sg-noxdp"], "attach = \"native\"\n");
    let (code, _, err) = daemon.cli(&["reload"]);
    assert_ne!(code, 0);
    assert!(err.contains("sg-noxdp"), "the failing interface is named: {err}");
    assert!(topo.gw_has_xdp(&second), "a failed reload keeps the running attachments");
    let status = daemon.json(&["status", "--json"]);
    assert_eq!(status["attachments"].as_array().map(Vec::len), Some(1), "{status}");
}

#[test]
fn restart_detaches_interfaces_dropped_from_the_config() {
    if !privileged("restart_detaches_interfaces_dropped_from_the_config") {
        return;
    }
    let topo = Topology::new("drp");
    let second = topo.add_link("sg-c2", "sg-g2");
    let mut daemon = Daemon::start(&topo, "drp", "");
    daemon.write_config_for(&[&topo.gw_if, &second], "");
    daemon.ok(&["reload"]);
    daemon.kill9();
    daemon.write_config_for(&[&second], "");
    daemon.spawn();
    assert!(!topo.gw_has_xdp(&topo.gw_if), "the stale pinned link was removed at start");
    assert!(topo.gw_has_xdp(&second));
}

#[test]
fn corrupt_state_is_moved_aside_and_detach_cleans_up() {
    if !privileged("corrupt_state_is_moved_aside_and_detach_cleans_up") {
        return;
    }
    let topo = Topology::new("cor");
    let mut daemon = Daemon::start(&topo, "cor", "");
    daemon.ok(&["ban", "add", CLIENT_V4]);
    daemon.kill9();
    let state = daemon.dir.join("state").join("state.json");
    let corrupt = b"{\"version\":1,\"bans\":{\"198.18";
    std::fs::write(&state, corrupt).unwrap();
    let seen = daemon.log_text().len();
    daemon.spawn();
    let log = daemon.log_text()[seen..].to_string();
    assert!(log.contains("corrupt"), "the operator is told: {log}");
    let moved = std::fs::read_dir(state.parent().unwrap())
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().contains("corrupt"));
    assert!(moved, "the corrupt file is kept aside");
    // With the pins kept, no ban is lost: what the maps hold is kept.
    let bans = daemon.json(&["ban", "list", "--json"]);
    assert_eq!(bans[0]["cidr"], format!("{CLIENT_V4}/32"), "the ban is kept: {bans}");
    let rx = secgate_tests::traffic::udp_receiver(&topo.gw, UDP_PORT);
    udp_send(&topo.client, CLIENT_V4, sa(GW_V4, UDP_PORT), 5, 1);
    assert_eq!(drain(&rx), 0, "and still drops");

    // After a reboot (no pins) a corrupt file leaves nothing to keep.
    daemon.kill9();
    std::fs::write(&state, corrupt).unwrap();
    std::fs::remove_dir_all(&daemon.pin_path).unwrap();
    daemon.spawn();
    assert_eq!(
        daemon.json(&["ban", "list", "--json"]),
        serde_json::json!([]),
        "started from the config alone"
    );

    daemon.ok(&["ban", "add", OTHER_V4]);
    assert!(state.exists());
    daemon.kill9();
    let (code, out, err) = daemon.cli(&["detach", "-c", daemon.config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!topo.gw_has_xdp(&topo.gw_if), "detach removes the XDP program");
    assert!(!daemon.pin_path.exists(), "detach removes the pins");
    assert!(!state.exists(), "detach removes the state file");
}

#[test]
fn detach_works_with_a_config_broken_elsewhere() {
    if !privileged("detach_works_with_a_config_broken_elsewhere") {
        return;
    }
    let topo = Topology::new("dbr");
    let mut daemon = Daemon::start(&topo, "dbr", "");
    daemon.ok(&["ban", "add", CLIENT_V4]);
    daemon.kill9();
    // A key file gone, a typo: the daemon would refuse this config, detach must not.
    daemon.write_config(&topo.gw_if, "[gateway.tls]\ncert = \"/nonexistent.pem\"");
    let (code, out, err) = daemon.cli(&["detach", "-c", daemon.config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("missing field `key`") && err.contains("detaching anyway"),
        "the problems are named: {err}"
    );
    assert!(!topo.gw_has_xdp(&topo.gw_if), "the program is detached");
    assert!(!daemon.pin_path.exists(), "the pins are gone");
    assert!(!daemon.dir.join("state").join("state.json").exists(), "so is the state");

    // A misspelled location, or unreadable TOML, names the problem and detaches nothing:
    // falling back to the default instance's pins would remove the wrong ones.
    daemon.write_config(&topo.gw_if, "");
    daemon.spawn();
    daemon.kill9();
    let pins = daemon.pin_path.display();
    for broken in [
        format!(
            "statedir = \"/tmp\"\n[datapath]\ninterfaces = [\"sg-g\"]\npin_path = \"{pins}\"\n"
        ),
        "[datapath\n".to_string(),
    ] {
        std::fs::write(&daemon.config, &broken).unwrap();
        let (code, _, err) = daemon.cli(&["detach", "-c", daemon.config.to_str().unwrap()]);
        assert_eq!(code, 2, "{broken}: {err}");
        assert!(err.contains("nothing was detached"), "{err}");
        assert!(topo.gw_has_xdp(&topo.gw_if) && daemon.pin_path.exists(), "{broken}: kept");
    }
    // A config the harness's own detach can use, so the test leaves no pins.
    daemon.write_config(&topo.gw_if, "");
}

#[test]
fn auto_attach_falls_back_to_skb_mode_with_a_warning() {
    if !privileged("auto_attach_falls_back_to_skb_mode_with_a_warning") {
        return;
    }
    let topo = Topology::new("skb");
    // An ifb device has no native XDP support, so `attach = "auto"` must fall back.
    topo.gw.ip(&["link", "add", "sg-ifb", "type", "ifb"]);
    topo.gw.ip(&["link", "set", "sg-ifb", "up"]);
    let daemon = Daemon::start(&topo, "skb", "");
    daemon.write_config_for(&["sg-ifb"], "attach = \"auto\"\n");
    daemon.ok(&["reload"]);
    let status = daemon.json(&["status", "--json"]);
    assert_eq!(status["attachments"][0]["interface"], "sg-ifb", "{status}");
    assert_eq!(status["attachments"][0]["mode"], "skb", "{status}");
    assert!(daemon.log_text().contains("falling back to skb"), "{}", daemon.log_text());
    assert!(topo.gw_has_xdp("sg-ifb"));
}

/// What the gateway namespace's own sysfs says of `dev`'s NAPI polling (`ip netns exec`
/// mounts that namespace's /sys).
fn napi_threaded(topo: &Topology, dev: &str) -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &topo.gw.name, "cat", &format!("/sys/class/net/{dev}/threaded")])
        .output()
        .expect("ip netns exec");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn threaded_napi_is_set_in_the_daemons_namespace_and_nowhere_else() {
    if !privileged("threaded_napi_is_set_in_the_daemons_namespace_and_nowhere_else") {
        return;
    }
    let mounts = || {
        let all = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        all.lines().filter(|l| l.contains(" - sysfs ")).collect::<Vec<_>>().join("\n")
    };
    let before = mounts();
    let topo = Topology::new("npi");
    let daemon = Daemon::start(&topo, "npi", "");
    assert_eq!(napi_threaded(&topo, &topo.gw_if), "0", "the default leaves NAPI alone");
    let status = daemon.json(&["status", "--json"]);
    assert_eq!(status["attachments"][0]["napi"], "softirq", "{status}");

    let second = topo.add_link("sg-c2", "sg-g2");
    daemon.write_config_for(&[&topo.gw_if, &second], "napi = \"threaded\"\n");
    daemon.ok(&["reload"]);
    // Reload attaches (and threads) before it answers.
    assert_eq!(
        napi_threaded(&topo, &topo.gw_if),
        "1",
        "the attached interface now polls in threads"
    );
    assert_eq!(napi_threaded(&topo, &second), "1", "so does the interface the reload added");
    let status = daemon.json(&["status", "--json"]);
    for a in status["attachments"].as_array().expect("attachments") {
        assert_eq!(a["napi"], "threaded", "{status}");
    }
    assert!(daemon.ok(&["status"]).contains("NAPI threaded"), "the text status says so");
    assert_eq!(mounts(), before, "the sysfs mounted for the write stayed in its own namespace");

    // An ifb device has no NAPI to thread: said in status, the program stays.
    topo.gw.ip(&["link", "add", "sg-ifb", "type", "ifb"]);
    topo.gw.ip(&["link", "set", "sg-ifb", "up"]);
    daemon.write_config_for(&["sg-ifb"], "napi = \"threaded\"\n");
    daemon.ok(&["reload"]);
    let status = daemon.json(&["status", "--json"]);
    assert_eq!(status["attachments"][0]["state"], "attached", "{status}");
    let napi = status["attachments"][0]["napi"].as_str().unwrap_or_default();
    assert!(napi.starts_with("softirq (threading failed: "), "{status}");
    assert!(napi.contains("has no NAPI polling to thread"), "{status}");
    assert!(daemon.log_text().contains("could not make NAPI polling threaded"));

    // A veth has no NAPI while it is down: threaded once it comes up.
    let late = topo.add_link("sg-c3", "sg-g3");
    topo.gw.ip(&["link", "set", &late, "down"]);
    daemon.write_config_for(&[&late], "napi = \"threaded\"\n");
    daemon.ok(&["reload"]);
    assert_eq!(napi_threaded(&topo, &late), "0");
    topo.gw.ip(&["link", "set", &late, "up"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while napi_threaded(&topo, &late) != "1" {
        assert!(std::time::Instant::now() < deadline, "threaded once up: {}", daemon.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = daemon.json(&["status", "--json"]);
    assert_eq!(status["attachments"][0]["napi"], "threaded", "{status}");
}
