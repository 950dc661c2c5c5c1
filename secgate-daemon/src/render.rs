//! Human-readable output of control replies (`--json` prints the reply data as is).

use std::fmt::Write as _;

use ipnet::IpNet;

use crate::{
    config::describe,
    control::proto::StatsReply,
    views::{BanView, LimitsView, StatsView, StatusView},
};

pub fn status(s: &StatusView) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "mode:       {:?}", s.mode);
    for a in &s.attachments {
        let how = match (a.state.as_str(), &a.error) {
            ("attached", _) if a.mode == a.xdp => a.mode.clone(),
            ("attached", _) => format!("{}, {}", a.xdp, a.mode),
            ("failed", Some(e)) => format!("failed: {e}"),
            _ => "waiting for it to appear".into(),
        };
        let how = if a.napi.is_empty() { how } else { format!("{how}, NAPI {}", a.napi) };
        let _ = writeln!(out, "interface:  {} ({how})", a.interface);
    }
    let _ = writeln!(out, "pins:       {}", s.pin_path);
    let _ = writeln!(out, "bans:       {}", s.bans);
    let _ = writeln!(out, "allow:      {}", s.allow);
    let _ = writeln!(out, "overrides:  {}", s.overrides);
    let _ = writeln!(out, "sources:    {} ({} buckets created)", s.sources, s.buckets_created);
    if s.buckets_evicted > 0 {
        let _ = writeln!(
            out,
            "evicted:    {} live buckets (more sources than max_sources: raise it)",
            s.buckets_evicted
        );
    }
    let _ = writeln!(out, "uptime:     {}s", s.uptime_secs);
    let e = &s.enforcement;
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3} ms"));
    let _ = writeln!(
        out,
        "escalation: {} bans, offence to kernel map p50 {} p99 {} max {}",
        e.bans,
        ms(e.p50_ms),
        ms(e.p99_ms),
        ms(e.max_ms)
    );
    if e.would_ban_total > 0 {
        let _ = writeln!(out, "would ban:  {} (monitor mode), latest:", e.would_ban_total);
        for w in &e.would_ban {
            let _ = writeln!(
                out,
                "  {:<43} {:>8.0}s  {} ({}, {})",
                w.cidr.to_string(),
                w.ttl_secs,
                w.rule,
                w.reason,
                w.at
            );
        }
    }
    if let Some(f) = &s.fleet {
        fleet(&mut out, f);
    }
    out
}

fn fleet(out: &mut String, f: &crate::views::FleetView) {
    let link = if f.connected { "connected" } else { "DISCONNECTED" };
    let _ = writeln!(
        out,
        "fleet:      node {} via {} ({link}; shares {})",
        f.node,
        f.redis,
        f.shares.join(", ")
    );
    let sync = f.last_sync_secs_ago.map_or("never".to_string(), |s| format!("{s:.1}s ago"));
    let _ = writeln!(
        out,
        "            last sync {sync}, {} bans shared, {} changes pending, {} Redis errors",
        f.bans_shared, f.pending, f.errors
    );
    if let Some(p99) = f.propagation_p99_ms {
        let p50 = f.propagation_p50_ms.unwrap_or(p99);
        let _ = writeln!(
            out,
            "            bans from other nodes in force here after p50 {p50:.1} ms, p99 {p99:.1} ms"
        );
    }
    if let Some(e) = &f.last_error {
        let _ = writeln!(out, "            last error: {e}");
    }
}

pub fn stats(s: &StatsView) -> String {
    let mut out =
        format!("mode: {:?}\n{:<10} {:>14} {:>16}\n", s.mode, "reason", "packets", "bytes");
    for (reason, t) in &s.reasons {
        let _ = writeln!(out, "{reason:<10} {:>14} {:>16}", t.packets, t.bytes);
    }
    let _ = writeln!(out, "{:<10} {:>14} {:>16}", "dropped", s.dropped.packets, s.dropped.bytes);
    out
}

pub fn bans(bans: &[BanView]) -> String {
    let mut out = format!("{:<44} {:>12}  {}\n", "cidr", "expires in", "reason");
    for b in bans {
        let left = b.expires_in_secs.map_or("never".to_string(), |s| format!("{s:.1}s"));
        let _ = writeln!(out, "{:<44} {left:>12}  {}", b.cidr.to_string(), b.reason);
    }
    out
}

pub fn nets(nets: &[IpNet]) -> String {
    nets.iter().map(|n| format!("{n}\n")).collect()
}

pub fn limits(l: &LimitsView) -> String {
    let mut out = match l.default {
        Some(r) => format!("default: {} pps, burst {}\n", r.pps, r.burst),
        None => "default: unlimited\n".to_string(),
    };
    for o in &l.overrides {
        let _ =
            writeln!(out, "{}: {} pps, burst {}", describe(&o.selector), o.rate.pps, o.rate.burst);
    }
    out
}

/// One `stats --watch` frame: per-reason packets per second since the previous frame, and the
/// sources with the most over-limit events.
pub fn watch(previous: Option<&(std::time::Instant, StatsReply)>, now: &StatsReply) -> String {
    let mut out = format!(
        "secgate  mode: {:?}\n\n{:<10} {:>12} {:>14}\n",
        now.stats.mode, "reason", "pps", "packets"
    );
    let secs = previous.map(|(t, _)| t.elapsed().as_secs_f64().max(1e-3));
    for (reason, t) in &now.stats.reasons {
        let pps = match (previous, secs) {
            (Some((_, prev)), Some(secs)) => {
                let before = prev.stats.reasons.get(reason).map_or(0, |p| p.packets);
                format!("{:.0}", t.packets.saturating_sub(before) as f64 / secs)
            }
            _ => "-".into(),
        };
        let _ = writeln!(out, "{reason:<10} {pps:>12} {:>14}", t.packets);
    }
    let _ = writeln!(out, "{:<10} {:>12} {:>14}", "dropped", "", now.stats.dropped.packets);
    let _ = writeln!(out, "\ntop sources over their limit (events: {})", now.events_total);
    for s in &now.top_sources {
        let _ = writeln!(out, "  {:<40} {:>8}", s.source.to_string(), s.events);
    }
    out
}

/// One `secgate trace` line: when, who, what, the verdict and the limit that applied.
pub fn trace_line(l: &crate::views::TraceLine) -> String {
    let proto = crate::config::Protocol::from_number(l.proto)
        .map_or_else(|| format!("proto {}", l.proto), |p| p.name().to_owned());
    let ms = l.at_ms % 86_400_000;
    let (h, m, s, milli) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    let flags = match (l.syn, l.fragment) {
        (true, _) => " SYN",
        (_, true) => " fragment",
        _ => "",
    };
    let limit = match l.limit.as_str() {
        "none" => "no limit".to_owned(),
        name => format!("limit {name} {} pps burst {}", l.pps, l.burst),
    };
    let from = std::net::SocketAddr::new(l.src, l.sport);
    format!(
        "{h:02}:{m:02}:{s:02}.{milli:03} {:<8} {proto} {from} -> :{}{flags}  ({limit})",
        l.verdict, l.dport
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn status_names_evictions_only_when_there_are_some() {
        let mut s = crate::views::StatusView {
            mode: crate::config::Mode::Enforce,
            attachments: Vec::new(),
            pin_path: "/sys/fs/bpf/secgate".into(),
            bans: 0,
            allow: 0,
            overrides: 0,
            sources: 16,
            buckets_created: 40,
            buckets_evicted: 0,
            uptime_secs: 1,
            enforcement: Default::default(),
            fleet: None,
        };
        assert!(!super::status(&s).contains("evicted"));
        s.buckets_evicted = 24;
        let out = super::status(&s);
        assert!(
            out.contains("evicted:    24 live buckets") && out.contains("max_sources"),
            "{out}"
        );
    }

    #[test]
    fn a_trace_line_reads_as_verdict_flow_and_limit() {
        let record = "src=198.18.0.3 proto=17 sport=40000 dport=9999 syn=0 fragment=0 verdict=rate limit_proto=17 limit_port=9999 limit_syn=0 pps=1000 burst=100";
        let mut line = crate::trace::parse_line(record).expect("parses");
        line.at_ms = 1_000 * 3600 * 13 + 61_234;
        assert_eq!(
            super::trace_line(&line),
            "13:01:01.234 rate     udp 198.18.0.3:40000 -> :9999  (limit udp port 9999 1000 pps burst 100)"
        );
        let syn = record.replace("proto=17", "proto=6").replace("syn=0 f", "syn=1 f");
        let mut line = crate::trace::parse_line(&syn.replace("pps=1000", "pps=0")).unwrap();
        line.at_ms = 0;
        assert_eq!(
            super::trace_line(&line),
            "00:00:00.000 rate     tcp 198.18.0.3:40000 -> :9999 SYN  (no limit)"
        );
        let mut line = crate::trace::parse_line(&record.replace("198.18.0.3", "fd00::2")).unwrap();
        line.at_ms = 0;
        assert!(super::trace_line(&line).contains(" udp [fd00::2]:40000 -> :9999 "));
    }
}
