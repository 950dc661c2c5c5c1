//! The datapath results as files under `target/bench/`: the per-packet cost over many sources
//! as JSON; throughput and rate accuracy as JSON for tools, a Markdown
//! table for the README, and a chart (SVG bars of each case's ratio to its baseline, per
//! flood; hand-written like the demo's, for the same reason: no font stack needed).

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use crate::live::{Case, Cpus, FLOODS, Sample};

/// Live results of one arrangement: (flood, case) → sample.
pub type Live = BTreeMap<(usize, Case), Sample>;

fn ratio(results: &Live, f: usize, c: Case) -> Option<f64> {
    Some(results.get(&(f, c))?.pps / results.get(&(f, c.baseline()))?.pps)
}

/// Writes `target/bench/STEM.{json,md,svg}`.
pub fn write(stem: &str, live: &[(Cpus, Live)], accuracy: &[(String, f64)]) {
    let dir = Path::new("target/bench");
    if let Err(e) = std::fs::create_dir_all(dir) {
        eprintln!("cannot write {}: {e}", dir.display());
        return;
    }
    let json: Vec<serde_json::Value> = live
        .iter()
        .flat_map(|(cpus, results)| {
            results.iter().map(move |(&(f, case), s)| {
                serde_json::json!({
                    "cpus": cpus.name(), "flood": FLOODS[f].name, "sources": FLOODS[f].sources,
                    "receiver": case.name(), "pps": s.pps, "taken": s.taken,
                    "baseline": case.baseline().name(), "ratio": ratio(results, f, case),
                })
            })
        })
        .collect();
    let json = serde_json::json!({
        "throughput": json,
        "rate_accuracy": accuracy
            .iter()
            .map(|(case, r)| serde_json::json!({ "case": case, "admitted_rate_per_limit": r }))
            .collect::<Vec<_>>(),
    });
    let mut md = String::new();
    for (cpus, results) in live {
        md.push_str(&table(*cpus, results));
    }
    if !accuracy.is_empty() {
        md.push_str("| rate limit, flooded from two CPUs | admitted / allowed |\n|---|---|\n");
        for (case, r) in accuracy {
            let _ = writeln!(md, "| {case} | {r:.3} |");
        }
    }
    let files = [
        (format!("{stem}.json"), serde_json::to_string_pretty(&json).expect("json")),
        (format!("{stem}.md"), md),
        (format!("{stem}.svg"), svg(live)),
    ];
    for (name, text) in files {
        match std::fs::write(dir.join(&name), text) {
            Ok(()) => println!("wrote {}", dir.join(&name).display()),
            Err(e) => eprintln!("cannot write {name}: {e}"),
        }
    }
}

/// One arrangement's Markdown table: Mpps (ratio to the baseline), and with the receiver on
/// a CPU of its own the least share of the generator's frames it took.
fn table(cpus: Cpus, results: &Live) -> String {
    let mut md = format!("{}:\n\n| receiver |", cpus.name());
    for flood in &FLOODS {
        let _ = write!(md, " {} Mpps (ratio) |", flood.name);
    }
    md.push_str("\n|---|");
    md.push_str(&"---|".repeat(FLOODS.len()));
    md.push('\n');
    for case in Case::ALL {
        let _ = write!(md, "| {} |", case.name());
        for f in 0..FLOODS.len() {
            match (results.get(&(f, case)), ratio(results, f, case)) {
                (Some(s), Some(r)) if cpus == Cpus::Split => {
                    let _ = write!(md, " {:.2} ({r:.2}; {:.0}%) |", s.pps / 1e6, s.taken * 100.0);
                }
                (Some(s), Some(r)) => {
                    let _ = write!(md, " {:.2} ({r:.2}) |", s.pps / 1e6);
                }
                _ => md.push_str(" n/a |"),
            }
        }
        md.push('\n');
    }
    md.push('\n');
    md
}

/// The chart's row height, and where its bars start and how wide 1.2× is.
const ROW: f64 = 16.0;
const LEFT: f64 = 290.0;
const WIDTH: f64 = 420.0;

fn svg(live: &[(Cpus, Live)]) -> String {
    let rows = live.len() * (1 + FLOODS.len() * (Case::ALL.len() + 2));
    let height = rows as f64 * ROW + 40.0;
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{height}" font-family="sans-serif" font-size="11"><rect width="100%" height="100%" fill="white"/><text x="10" y="18" font-size="14">secgate datapath: throughput as a share of the bare program (drop, or pass), per flood</text>"#,
        LEFT + WIDTH + 140.0
    );
    let mut y = 40.0;
    for (cpus, results) in live {
        let _ = write!(
            out,
            r#"<text x="10" y="{:.0}" font-size="13">{}</text>"#,
            y + 11.0,
            cpus.name()
        );
        y += ROW;
        for (f, flood) in FLOODS.iter().enumerate() {
            let _ = write!(
                out,
                r#"<text x="10" y="{:.0}" font-weight="bold">{}</text>"#,
                y + 11.0,
                flood.name
            );
            y += ROW;
            for case in Case::ALL {
                if let (Some(r), Some(s)) = (ratio(results, f, case), results.get(&(f, case))) {
                    out.push_str(&bar(y, case, r, s.pps));
                }
                y += ROW;
            }
            y += ROW;
        }
    }
    out.push_str("</svg>\n");
    out
}

/// One case's bar at height `y`: its ratio, labelled with its rate.
fn bar(y: f64, case: Case, r: f64, pps: f64) -> String {
    let colour = if case.name().starts_with("nftables") {
        "#999"
    } else if case.name().starts_with("bare") {
        "#333"
    } else {
        "#2a7ab0"
    };
    let w = r.min(1.2) * WIDTH / 1.2;
    format!(
        r#"<text x="20" y="{:.0}">{}</text><rect x="{LEFT}" y="{:.0}" width="{:.1}" height="{:.0}" fill="{colour}"/><text x="{:.1}" y="{:.0}">{r:.2} ({:.2} Mpps)</text>"#,
        y + 11.0,
        case.name(),
        y + 2.0,
        w.max(1.0),
        ROW - 4.0,
        LEFT + w + 4.0,
        y + 11.0,
        pps / 1e6
    )
}

/// The per-packet cost over many sources as `target/bench/cost.json`.
pub fn write_cost(rows: &[serde_json::Value]) {
    let path = Path::new("target/bench/cost.json");
    let text = serde_json::to_string_pretty(rows).expect("json");
    match std::fs::create_dir_all("target/bench").and_then(|()| std::fs::write(path, text)) {
        Ok(()) => println!("wrote {}", path.display()),
        Err(e) => eprintln!("cannot write {}: {e}", path.display()),
    }
}
