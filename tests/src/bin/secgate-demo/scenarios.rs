//! The demo's scenarios, each checked against what it should do, with the counters that
//! show it: the gateway's answers, the daemon's own counters, and packets counted outside
//! secgate (see [`crate::counters`]).

use std::time::{Duration, Instant};

use secgate_tests::{
    gateway::{
        Gw, HOST,
        client::{H1, Http, Reply, request},
        jwt::claims,
    },
    netns::addr::{CLIENT_V4, GW_V4, NEIGHBOUR_V4, OTHER_V4},
    traffic::{sa, tcp_connects, udp_paced, udp_senders},
};
use serde_json::json;

use crate::{Lab, interrupted};

pub const FLOOD_PORT: u16 = 9999;
/// The datapath's limit for the flooded port, per source.
pub const FLOOD_PPS: u64 = 1000;
pub const FAILED_LOGINS: usize = 5;
pub const BAN_TTL_SECS: u64 = 4;

/// What a scenario was meant to do and what it did.
pub struct Outcome {
    pub expected: String,
    pub observed: String,
    /// The counters that show it.
    pub proof: String,
    pub ok: bool,
}

/// A scenario: its name, its label on the chart (for those that send traffic worth
/// seeing), and what runs it.
pub type Scenario = (&'static str, Option<&'static str>, fn(&Lab) -> Outcome);

pub const ALL: [Scenario; 8] = [
    ("API call with an API key", None, api_key),
    ("API call with a JWT", None, jwt),
    ("bad API key", None, bad_token),
    ("ACL: a user key on an admin route", None, acl),
    ("invalid JSON payload", None, invalid_payload),
    ("UDP flood from one source", Some("flood"), flood),
    ("failed logins escalate to a kernel ban", Some("failed logins, ban"), escalation),
    ("the ban expires", Some("waiting for expiry"), expiry),
];

fn status(expected: u16, reply: &Reply, proof: String) -> Outcome {
    Outcome {
        expected: expected.to_string(),
        observed: reply.status.to_string(),
        proof,
        ok: reply.status == expected,
    }
}

fn send(gw: &Gw, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let tls = gw.tls(H1, None);
    gw.rt.block_on(async {
        let stream = tls.connect(&gw.topo.client, CLIENT_V4, gw.addr()).await.expect("connect");
        let mut http = Http::over(stream).await;
        http.send(request(method, HOST, path, headers, body.as_bytes().to_vec()))
            .await
            .expect("request")
    })
}

fn api_key(lab: &Lab) -> Outcome {
    let gw = &lab.gw;
    let before = gw.up.count("/admin/");
    let r = send(gw, "GET", "/admin/demo", &[("x-api-key", gw.key("admin-key"))], "");
    let seen = gw.up.count("/admin/") - before;
    let mut o = status(200, &r, format!("upstream received {seen} request"));
    o.ok &= seen == 1;
    o
}

fn jwt(lab: &Lab) -> Outcome {
    let gw = &lab.gw;
    let token = gw.issuer.token(&claims("bob", json!({ "scope": ["reports:read"] })));
    let before = gw.up.count("/reports/");
    let r = send(gw, "GET", "/reports/7", &[("authorization", &format!("Bearer {token}"))], "");
    let seen = gw.up.count("/reports/") - before;
    let mut o =
        status(200, &r, format!("ES256 token of \"bob\"; upstream received {seen} request"));
    o.ok &= seen == 1;
    o
}

/// A refusal: the status, and the upstream never reached.
fn refused(lab: &Lab, expected: u16, headers: &[(&str, &str)]) -> Outcome {
    let gw = &lab.gw;
    let before = gw.up.count("/admin/");
    let r = send(gw, "GET", "/admin/demo", headers, "");
    let reached = gw.up.count("/admin/") - before;
    let proof = format!("error {}; upstream received {reached} requests", r.json()["error"]);
    let mut o = status(expected, &r, proof);
    o.ok &= reached == 0;
    o
}

fn bad_token(lab: &Lab) -> Outcome {
    refused(lab, 401, &[("x-api-key", "admin-key.not-the-key")])
}

fn acl(lab: &Lab) -> Outcome {
    refused(lab, 403, &[("x-api-key", lab.gw.key("user-key"))])
}

fn invalid_payload(lab: &Lab) -> Outcome {
    let gw = &lab.gw;
    let before = gw.up.count("/orders/");
    let headers = [("content-type", "application/json")];
    let r = send(gw, "POST", "/orders/new", &headers, r#"{"item": "book", "qty": 0}"#);
    let pointers: Vec<String> = r.json()["violations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["pointer"].as_str().map(str::to_owned))
        .collect();
    let reached = gw.up.count("/orders/") - before;
    let mut o = status(
        422,
        &r,
        format!("violations at {pointers:?}; upstream received {reached} requests"),
    );
    o.ok &= reached == 0 && pointers.iter().any(|p| p == "/qty");
    o
}

/// The datapath's `reason` packet counter.
fn counter(lab: &Lab, reason: &str) -> u64 {
    lab.gw.daemon.json(&["stats", "--json"])["reasons"][reason]["packets"].as_u64().unwrap_or(0)
}

fn flood(lab: &Lab) -> Outcome {
    const PPS: u64 = 20_000;
    const SECONDS: u32 = 3;
    let rate_before = counter(lab, "rate");
    let (sent0, passed0) = lab.counters.now("flooder");
    let socks = udp_senders(&lab.gw.topo.client, OTHER_V4, 4);
    let dst = sa(GW_V4, FLOOD_PORT);
    crate::progress(&format!("flood: {PPS} packets/s from {OTHER_V4} for {SECONDS} s"));
    let start = Instant::now();
    // A quarter second at a time, so Ctrl-C stops the flood at once.
    while start.elapsed() < Duration::from_secs(u64::from(SECONDS)) && !interrupted() {
        udp_paced(&socks, dst, PPS, Duration::from_millis(250));
    }
    let secs = start.elapsed().as_secs_f64();
    lab.counters.settle();
    let (sent1, passed1) = lab.counters.now("flooder");
    let (sent, passed) = (sent1 - sent0, passed1 - passed0);
    let rate = counter(lab, "rate") - rate_before;
    let limit = (FLOOD_PPS as f64 * secs) as u64 + 200;
    // A limiter that dropped everything would be as wrong as one that dropped nothing.
    let floor = (FLOOD_PPS as f64 * secs * 0.8) as u64;
    let client = client_ok(lab);
    Outcome {
        expected: format!("{FLOOD_PPS}/s (+ burst) pass, the rest dropped; client 200"),
        observed: format!(
            "{:.0}/s pass; client {}",
            passed as f64 / secs,
            if client { "200" } else { "refused" }
        ),
        proof: format!("sent {sent}, passed {passed}, XDP rate drops +{rate}"),
        ok: sent > 10 * limit
            && (floor..=limit).contains(&passed)
            && rate + passed >= sent * 9 / 10
            && client,
    }
}

fn banned(lab: &Lab, who: &str) -> bool {
    let bans = lab.gw.daemon.json(&["ban", "list", "--json"]);
    bans.to_string().contains(&format!("{who}/32"))
}

fn attacker_connects(lab: &Lab) -> bool {
    tcp_connects(lab.attacker(), NEIGHBOUR_V4, lab.gw.addr(), Duration::from_secs(1))
}

fn client_ok(lab: &Lab) -> bool {
    send(&lab.gw, "GET", "/health", &[], "").status == 200
}

fn escalation(lab: &Lab) -> Outcome {
    let gw = &lab.gw;
    let bad = [("x-api-key", "admin-key.guessed")];
    let answers: Vec<u16> = (0..FAILED_LOGINS)
        .map(|_| gw.get_in(lab.attacker(), NEIGHBOUR_V4, "/admin/demo", &bad).status)
        .collect();
    crate::progress(&format!("{FAILED_LOGINS} failed logins from {NEIGHBOUR_V4}, then its ban"));
    let deadline = Instant::now() + Duration::from_secs(3);
    while !banned(lab, NEIGHBOUR_V4) && Instant::now() < deadline && !interrupted() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let ban = banned(lab, NEIGHBOUR_V4);
    let deny_before = counter(lab, "deny");
    lab.counters.settle();
    let (sent0, passed0) = lab.counters.now("attacker");
    let connects = attacker_connects(lab);
    let clients = (0..3).filter(|_| client_ok(lab)).count();
    lab.counters.settle();
    let (sent1, passed1) = lab.counters.now("attacker");
    let deny = counter(lab, "deny") - deny_before;
    let enforcement = gw.daemon.json(&["status", "--json"])["enforcement"]["max_ms"]
        .as_f64()
        .map_or("-".into(), |v| format!("{v:.2} ms"));
    Outcome {
        expected: "banned; SYNs dropped; client 200".into(),
        observed: format!(
            "{}; {}; client {clients}/3 OK",
            if ban { "banned" } else { "not banned" },
            if connects { "connects" } else { "connect timed out" }
        ),
        proof: format!(
            "answers {answers:?}; offence to kernel ban {enforcement}; attacker's packets since: sent {}, let through {}; XDP deny +{deny}",
            sent1 - sent0,
            passed1 - passed0
        ),
        ok: answers.iter().all(|&s| s == 401)
            && ban
            && !connects
            && clients == 3
            && deny > 0
            && passed1 == passed0,
    }
}

fn expiry(lab: &Lab) -> Outcome {
    crate::progress(&format!("waiting for the {BAN_TTL_SECS} s ban to lapse"));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(BAN_TTL_SECS + 10);
    while banned(lab, NEIGHBOUR_V4) && Instant::now() < deadline && !interrupted() {
        std::thread::sleep(Duration::from_millis(100));
    }
    let lifted = !banned(lab, NEIGHBOUR_V4);
    let connects = lifted && attacker_connects(lab);
    let health =
        lifted && lab.gw.get_in(lab.attacker(), NEIGHBOUR_V4, "/health", &[]).status == 200;
    Outcome {
        expected: format!("lifted after its {BAN_TTL_SECS} s TTL; attacker connects again"),
        observed: format!(
            "{} after {:.1} s more; {}",
            if lifted { "lifted" } else { "still banned" },
            start.elapsed().as_secs_f64(),
            if health { "GET /health 200" } else { "no answer" }
        ),
        proof: format!(
            "ban list {}; TCP handshake {}",
            if lifted { "empty" } else { "still holds it" },
            if connects { "completes" } else { "fails" }
        ),
        ok: lifted && connects && health,
    }
}
