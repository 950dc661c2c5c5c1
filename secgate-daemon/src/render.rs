//! Human-readable output of control replies (`--json` prints the reply data as is).

use std::fmt::Write as _;

use ipnet::IpNet;

use crate::{
    config::describe,
    policy::{BanView, LimitsView, StatsView, StatusView},
};

pub fn status(s: &StatusView) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "mode:       {:?}", s.mode);
    for a in &s.attachments {
        let _ = writeln!(out, "interface:  {} ({})", a.interface, a.mode);
    }
    let _ = writeln!(out, "pins:       {}", s.pin_path);
    let _ = writeln!(out, "bans:       {}", s.bans);
    let _ = writeln!(out, "allow:      {}", s.allow);
    let _ = writeln!(out, "overrides:  {}", s.overrides);
    let _ = writeln!(out, "sources:    {}", s.sources);
    let _ = writeln!(out, "uptime:     {}s", s.uptime_secs);
    out
}

pub fn stats(s: &StatsView) -> String {
    let mut out = format!(
        "mode: {:?}\n{:<10} {:>14} {:>16}\n",
        s.mode, "reason", "packets", "bytes"
    );
    for (reason, t) in &s.reasons {
        let _ = writeln!(out, "{reason:<10} {:>14} {:>16}", t.packets, t.bytes);
    }
    let _ = writeln!(
        out,
        "{:<10} {:>14} {:>16}",
        "dropped", s.dropped.packets, s.dropped.bytes
    );
    out
}

pub fn bans(bans: &[BanView]) -> String {
    let mut out = format!("{:<44} {:>12}  {}\n", "cidr", "expires in", "reason");
    for b in bans {
        let left = b
            .expires_in_secs
            .map_or("never".to_string(), |s| format!("{s:.1}s"));
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
        let _ = writeln!(
            out,
            "{}: {} pps, burst {}",
            describe(&o.selector),
            o.rate.pps,
            o.rate.burst
        );
    }
    out
}
