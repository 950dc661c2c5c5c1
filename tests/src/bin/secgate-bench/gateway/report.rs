//! The gateway results as `target/bench/gateway.{json,md,svg}`: JSON for tools, a Markdown
//! table for the README, and a chart of secgate's requests/s as a share of nginx's per load
//! (hand-written SVG, like the datapath's).

use std::{fmt::Write as _, path::Path};

use super::{Case, Enforcement, FloodRate, Results, Run, Server, enforce, handshake};

/// A load as a row label: `h2, 32 connections, POST /api/orders at 5000 req/s`.
fn label(case: &Case) -> String {
    let what = if case.post { "POST (schema)" } else { "GET" };
    let rate = case.rate.map_or(String::new(), |r| format!(" at {r} req/s"));
    format!("{}, {} conns, {what}{rate}", case.proto.name(), case.clients)
}

/// One load's line as the bench prints it.
pub fn line(case: &Case, nginx: &Run, secgate: &Run) -> String {
    format!(
        "{:<40} nginx {:>8.0} req/s p50 {:.2} p99 {:.2} ms {:.0} us/req | secgate {:>8.0} req/s p50 {:.2} p99 {:.2} ms {:.0} us/req | {:.2}x",
        label(case),
        nginx.done.rps(),
        nginx.done.p50_ms,
        nginx.done.p99_ms,
        nginx.cpu_us_per_request,
        secgate.done.rps(),
        secgate.done.p50_ms,
        secgate.done.p99_ms,
        secgate.cpu_us_per_request,
        secgate.done.rps() / nginx.done.rps(),
    )
}

pub fn handshake_line(
    kind: handshake::Kind,
    nginx: &handshake::Rate,
    secgate: &handshake::Rate,
) -> String {
    format!(
        "{:<40} nginx {:>8.0} conn/s ({:.0}% resumed) | secgate {:>8.0} conn/s ({:.0}% resumed) | {:.2}x",
        format!("new connections, {} handshakes", kind.name()),
        nginx.per_sec,
        nginx.resumed * 100.0,
        secgate.per_sec,
        secgate.resumed * 100.0,
        secgate.per_sec / nginx.per_sec
    )
}

/// The under-attack rows: per server, legitimate requests/s and p99 without and with the
/// flood, and their ratio.
pub fn attack_lines(attack: &[(Server, bool, Run, FloodRate)]) -> Vec<String> {
    [Server::Nginx, Server::Secgate]
        .into_iter()
        .filter_map(|server| {
            let (calm, flooded, pps) = calm_and_flooded(attack, server)?;
            Some(format!(
                "{:<40} {:>8.0} req/s p99 {:.2} ms calm | {:>8.0} req/s p99 {:.2} ms under {:.2} Mpps sent, {:.2} taken, generator {:.0}% of CPU 0 | {:.2}x",
                attack_label(server),
                calm.done.rps(),
                calm.done.p99_ms,
                flooded.done.rps(),
                flooded.done.p99_ms,
                pps.sent_pps / 1e6,
                pps.taken_pps / 1e6,
                pps.generator_cpu * 100.0,
                flooded.done.rps() / calm.done.rps()
            ))
        })
        .collect()
}

/// `server`'s calm run, its flooded run and the flood.
fn calm_and_flooded(
    attack: &[(Server, bool, Run, FloodRate)],
    server: Server,
) -> Option<(&Run, &Run, &FloodRate)> {
    let get = |flooded| attack.iter().find(|(s, f, _, _)| *s == server && *f == flooded);
    let ((_, _, calm, _), (_, _, flooded, flood)) = (get(false)?, get(true)?);
    Some((calm, flooded, flood))
}

fn attack_label(server: Server) -> &'static str {
    match server {
        Server::Nginx => "nginx, the flood in an nftables ban set",
        Server::Secgate => "secgate, the flood in its XDP deny map",
    }
}

pub fn enforcement_line(e: &Enforcement) -> String {
    format!(
        "{:<40} fail2ban p50 {:.1} p99 {:.1} ms ({} dropped, the rest refused) | secgate p50 {:.3} p99 {:.3} ms ({} dropped) (its own histogram: offence to ban in the map p50 {:.3} p99 {:.3} ms)",
        format!("{} failed logins to the first stopped connection", enforce::FAILURES),
        e.fail2ban[0],
        e.fail2ban[1],
        e.dropped[0],
        e.secgate[0],
        e.secgate[1],
        e.dropped[1],
        e.secgate_own[0],
        e.secgate_own[1],
    )
}

fn find<'a>(results: &'a Results, case: &Case, server: Server) -> Option<&'a Run> {
    results.loads.iter().find(|(c, s, _)| c == case && *s == server).map(|(_, _, r)| r)
}

/// The loads measured, in order, once each.
fn cases(results: &Results) -> Vec<Case> {
    let mut cases: Vec<Case> = Vec::new();
    for (c, _, _) in &results.loads {
        if !cases.contains(c) {
            cases.push(*c);
        }
    }
    cases
}

pub fn write(results: &Results) {
    let dir = Path::new("target/bench");
    if let Err(e) = std::fs::create_dir_all(dir) {
        eprintln!("cannot write {}: {e}", dir.display());
        return;
    }
    let files = [
        ("gateway.json", json(results)),
        ("gateway.md", markdown(results)),
        ("gateway.svg", svg(results)),
    ];
    for (name, text) in files {
        match std::fs::write(dir.join(name), text) {
            Ok(()) => println!("wrote {}", dir.join(name).display()),
            Err(e) => eprintln!("cannot write {name}: {e}"),
        }
    }
}

fn json(results: &Results) -> String {
    let loads: Vec<_> = results
        .loads
        .iter()
        .map(|(c, s, r)| {
            serde_json::json!({
                "proto": c.proto.name(), "connections": c.clients, "post_schema": c.post,
                "offered_rps": c.rate, "server": s.name(), "rps": r.done.rps(),
                "requests": r.done.requests, "ok": r.done.ok, "p50_ms": r.done.p50_ms,
                "p99_ms": r.done.p99_ms, "cpu_us_per_request": r.cpu_us_per_request,
                "server_cpu_busy": r.busy,
                "rps_ratio_to_nginx": find(results, c, Server::Nginx).map(|n| r.done.rps() / n.done.rps()),
            })
        })
        .collect();
    let handshakes: Vec<_> = results
        .handshakes
        .iter()
        .map(|(k, s, r)| serde_json::json!({ "kind": k.name(), "server": s.name(), "per_sec": r.per_sec, "resumed_share": r.resumed }))
        .collect();
    let enforcement = results.enforcement.as_ref().map(|e| {
        serde_json::json!({
            "failures": enforce::FAILURES, "runs": enforce::RUNS,
            "fail2ban_ms": { "p50": e.fail2ban[0], "p99": e.fail2ban[1], "max": e.fail2ban[2] },
            "secgate_ms": { "p50": e.secgate[0], "p99": e.secgate[1], "max": e.secgate[2] },
            "dropped_not_refused": { "fail2ban": e.dropped[0], "secgate": e.dropped[1] },
            "secgate_offence_to_map_ms": { "p50": e.secgate_own[0], "p99": e.secgate_own[1] },
        })
    });
    let attack: Vec<_> = results
        .attack
        .iter()
        .map(|(s, f, r, flood)| {
            serde_json::json!({
                "server": s.name(), "flooded": f, "flood_sent_pps": flood.sent_pps,
                "flood_taken_pps": flood.taken_pps, "flood_generator_cpu": flood.generator_cpu,
                "rps": r.done.rps(),
                "p50_ms": r.done.p50_ms, "p99_ms": r.done.p99_ms,
                "cpu_us_per_request": r.cpu_us_per_request,
            })
        })
        .collect();
    let all = serde_json::json!({
        "loads": loads, "handshakes": handshakes, "under_attack": attack, "enforcement": enforcement,
    });
    serde_json::to_string_pretty(&all).expect("json")
}

fn markdown(results: &Results) -> String {
    let mut md = String::from(
        "| load | nginx req/s | secgate req/s | ratio | nginx p50 / p99 ms | secgate p50 / p99 ms | nginx / secgate CPU µs per request (busy) |\n|---|---|---|---|---|---|---|\n",
    );
    for case in cases(results) {
        let (Some(n), Some(s)) =
            (find(results, &case, Server::Nginx), find(results, &case, Server::Secgate))
        else {
            continue;
        };
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.0} | {:.2} | {:.2} / {:.2} | {:.2} / {:.2} | {:.0} ({:.0}%) / {:.0} ({:.0}%) |",
            label(&case),
            n.done.rps(),
            s.done.rps(),
            s.done.rps() / n.done.rps(),
            n.done.p50_ms,
            n.done.p99_ms,
            s.done.p50_ms,
            s.done.p99_ms,
            n.cpu_us_per_request,
            n.busy * 100.0,
            s.cpu_us_per_request,
            s.busy * 100.0,
        );
    }
    md.push_str("\n| new connections (TCP, TLS, one GET, close) | nginx conn/s | secgate conn/s | ratio |\n|---|---|---|---|\n");
    for kind in [handshake::Kind::Full, handshake::Kind::Resumed] {
        let get = |server| {
            results
                .handshakes
                .iter()
                .find(|(k, s, _)| *k == kind && *s == server)
                .map(|(_, _, r)| *r)
        };
        if let (Some(n), Some(s)) = (get(Server::Nginx), get(Server::Secgate)) {
            let _ = writeln!(
                md,
                "| {} handshakes ({:.0}% / {:.0}% resumed) | {:.0} | {:.0} | {:.2} |",
                kind.name(),
                n.resumed * 100.0,
                s.resumed * 100.0,
                n.per_sec,
                s.per_sec,
                s.per_sec / n.per_sec
            );
        }
    }
    if !results.attack.is_empty() {
        md.push_str("\n| under a flood from a banned prefix (HTTP/1.1, 32 conns, GET) | req/s calm | req/s flooded | ratio | p99 ms calm / flooded | flood Mpps sent / taken | generator's share of CPU 0 |\n|---|---|---|---|---|---|---|\n");
        for server in [Server::Nginx, Server::Secgate] {
            if let Some((calm, flooded, pps)) = calm_and_flooded(&results.attack, server) {
                let _ = writeln!(
                    md,
                    "| {} | {:.0} | {:.0} | {:.2} | {:.2} / {:.2} | {:.2} / {:.2} | {:.0}% |",
                    attack_label(server),
                    calm.done.rps(),
                    flooded.done.rps(),
                    flooded.done.rps() / calm.done.rps(),
                    calm.done.p99_ms,
                    flooded.done.p99_ms,
                    pps.sent_pps / 1e6,
                    pps.taken_pps / 1e6,
                    pps.generator_cpu * 100.0,
                );
            }
        }
    }
    if let Some(e) = &results.enforcement {
        let _ = write!(
            md,
            "\n| {} failed logins → first stopped connection ({} attackers each) | p50 ms | p99 ms | max ms |\n|---|---|---|---|\n\
             | nginx `auth_basic` + fail2ban (pyinotify, nftables reject) | {:.1} | {:.1} | {:.1} |\n\
             | secgate escalation (XDP deny map, SYNs dropped) | {:.3} | {:.3} | {:.3} |\n\
             | secgate, offence → ban in the map (its own histogram) | {:.3} | {:.3} | |\n",
            enforce::FAILURES,
            enforce::RUNS,
            e.fail2ban[0],
            e.fail2ban[1],
            e.fail2ban[2],
            e.secgate[0],
            e.secgate[1],
            e.secgate[2],
            e.secgate_own[0],
            e.secgate_own[1],
        );
    }
    md
}

const ROW: f64 = 18.0;
const LEFT: f64 = 300.0;
const WIDTH: f64 = 400.0;

/// secgate's requests/s over nginx's, one bar per load, a line at 1.
fn svg(results: &Results) -> String {
    let cases = cases(results);
    let rows = cases.len() + 2;
    let height = rows as f64 * ROW + 50.0;
    let scale = |r: f64| r.min(2.0) * WIDTH / 2.0;
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{height}" font-family="sans-serif" font-size="11"><rect width="100%" height="100%" fill="white"/><text x="10" y="18" font-size="14">secgate gateway: requests/s as a share of nginx's on the same load</text>"#,
        LEFT + WIDTH + 120.0
    );
    let mut y = 36.0;
    for case in &cases {
        let (Some(n), Some(s)) =
            (find(results, case, Server::Nginx), find(results, case, Server::Secgate))
        else {
            continue;
        };
        let r = s.done.rps() / n.done.rps();
        let w = scale(r);
        let _ = write!(
            out,
            r##"<text x="10" y="{:.0}">{}</text><rect x="{LEFT}" y="{:.0}" width="{:.1}" height="{:.0}" fill="#2a7ab0"/><text x="{:.1}" y="{:.0}">{r:.2} ({:.0} / {:.0})</text>"##,
            y + 12.0,
            label(case),
            y + 3.0,
            w.max(1.0),
            ROW - 5.0,
            LEFT + w + 4.0,
            y + 12.0,
            s.done.rps(),
            n.done.rps(),
        );
        y += ROW;
    }
    let one = LEFT + scale(1.0);
    let _ = write!(
        out,
        r##"<line x1="{one}" y1="30" x2="{one}" y2="{y}" stroke="#333" stroke-dasharray="3,3"/><text x="{one}" y="{:.0}">nginx = 1</text>"##,
        y + 14.0
    );
    out.push_str("</svg>\n");
    out
}
