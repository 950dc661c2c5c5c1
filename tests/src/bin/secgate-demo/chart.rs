//! The chart under `target/demo/`: packets per second passed and dropped per source over
//! time. Hand-written SVG (a few polylines and labels): plotting crates need a font stack to
//! lay out text, which a fresh machine may not have.

use std::fmt::Write as _;

use crate::counters::{SOURCES, Sample};

const W: f64 = 900.0;
const H: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const COLOURS: [&str; 3] = ["#2a7ab0", "#d98c1f", "#c0392b"];

/// Per source and interval: (time, passed per second, dropped per second).
///
/// The counters of different namespaces cannot be read at one instant. Senders are read
/// before the gateway, so `sent − passed` can only undercount drops (packets sent in between
/// count as passed, not as sent); drops only ever grow, so the running maximum of that
/// difference is the best lower bound, and no packet in flight ever shows as dropped.
fn rates(samples: &[Sample]) -> Vec<Vec<(f64, f64, f64)>> {
    SOURCES
        .iter()
        .map(|(name, _)| {
            let mut dropped = 0i64;
            let mut last = (0.0, 0u64, 0i64);
            samples
                .iter()
                .enumerate()
                .filter_map(|(i, s)| {
                    let (sent, passed) = s.counts[name];
                    dropped = dropped.max(sent as i64 - passed as i64);
                    let (at0, passed0, dropped0) =
                        std::mem::replace(&mut last, (s.at, passed, dropped));
                    let dt = (s.at - at0).max(1e-3);
                    (i > 0).then(|| {
                        let p = passed.saturating_sub(passed0) as f64;
                        (s.at, p / dt, (dropped - dropped0) as f64 / dt)
                    })
                })
                .collect()
        })
        .collect()
}

/// The SVG text of the chart; the y axis is logarithmic so a flood and a client fit on it.
pub fn svg(samples: &[Sample], marks: &[(f64, String)]) -> String {
    let rates = rates(samples);
    let t_max = samples.last().map_or(1.0, |s| s.at).max(1.0);
    let y_max =
        rates.iter().flatten().map(|&(_, p, d)| p.max(d)).fold(10.0f64, f64::max).log10().ceil();
    let x = |t: f64| LEFT + t / t_max * (W - LEFT - RIGHT);
    let y = |v: f64| H - BOTTOM - ((v.max(1.0)).log10() / y_max) * (H - TOP - BOTTOM);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="22" font-size="15">secgate demo: packets per second per source, passed (solid) and dropped by XDP (dashed)</text>"#
    );
    for e in 0..=y_max as i32 {
        let v = 10f64.powi(e);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{v}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            y(v) + 4.0,
            y = y(v)
        );
    }
    for (at, label) in marks {
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="{TOP}" y2="{}" stroke="#999" stroke-dasharray="2,3"/><text x="{:.1}" y="{}" font-size="10" transform="rotate(-90 {:.1} {})">{label}</text>"##,
            H - BOTTOM,
            x(*at) + 10.0,
            H - BOTTOM - 4.0,
            x(*at) + 10.0,
            H - BOTTOM - 4.0,
            x = x(*at)
        );
    }
    for ((name, addr), (series, colour)) in SOURCES.iter().zip(rates.iter().zip(COLOURS)) {
        for (pick, dash) in [(0usize, ""), (1, r#" stroke-dasharray="6,4""#)] {
            let points: Vec<String> = series
                .iter()
                .map(|&(t, p, d)| format!("{:.1},{:.1}", x(t), y(if pick == 0 { p } else { d })))
                .collect();
            let _ = writeln!(
                out,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="1.8"{dash} points="{}"/>"#,
                points.join(" ")
            );
        }
        let i = SOURCES.iter().position(|(n, _)| n == name).unwrap_or(0) as f64;
        let ly = TOP + 20.0 + i * 22.0;
        let _ = writeln!(
            out,
            r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{colour}" stroke-width="3"/><text x="{}" y="{}">{name} {addr}</text>"#,
            W - RIGHT + 10.0,
            W - RIGHT + 30.0,
            W - RIGHT + 36.0,
            ly + 4.0
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">seconds</text>"#,
        (LEFT + W - RIGHT) / 2.0,
        H - 12.0
    );
    for s in 0..=t_max as u32 {
        if s % 5 == 0 {
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{}" text-anchor="middle">{s}</text>"#,
                x(f64::from(s)),
                H - BOTTOM + 16.0
            );
        }
    }
    out.push_str("</svg>\n");
    out
}
