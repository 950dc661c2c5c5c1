//! `cargo xtask bench [datapath|cost|live|split|bans|escalation|gateway]`: the datapath
//! (`cost`: only its per-packet cost under `BPF_PROG_TEST_RUN`; `live`: its live floods in
//! both CPU arrangements and rate accuracy; `split`: the floods with the receiver on a CPU
//! of its own alone), the ban path of the service layer, the enforcement latency of
//! escalation bans and the TLS gateway against nginx, each measured against a baseline in
//! the same run, interleaved round by round so machine noise hits all alike, and printed as
//! ratios. Nothing here asserts a timing.

mod accuracy;
mod bans;
mod cost;
mod escalation;
mod gateway;
mod live;
mod own_cpu;
mod report;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the benchmarks load BPF programs and create namespaces: run them as root"
    );
    let what = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    let datapath = matches!(what.as_str(), "all" | "datapath");
    if datapath || what == "cost" {
        cost::run();
        report::write_cost(&cost::many_sources());
    }
    if datapath || what == "live" {
        println!();
        let shared = live::run(live::Cpus::Shared);
        println!();
        let split = live::run(live::Cpus::Split);
        let both = [(live::Cpus::Shared, shared), (live::Cpus::Split, split)];
        report::write("datapath", &both, &accuracy::run());
    }
    if what == "split" {
        report::write("split", &[(live::Cpus::Split, live::run(live::Cpus::Split))], &[]);
    }
    if matches!(what.as_str(), "all" | "bans") {
        if datapath {
            println!();
        }
        bans::run();
    }
    if matches!(what.as_str(), "all" | "escalation") {
        println!();
        escalation::run();
    }
    if matches!(what.as_str(), "all" | "gateway") {
        println!();
        gateway::run();
    }
    if what == "gateway-profile" {
        gateway::profile();
    }
    assert!(
        matches!(
            what.as_str(),
            "all"
                | "datapath"
                | "cost"
                | "live"
                | "split"
                | "bans"
                | "escalation"
                | "gateway"
                | "gateway-profile"
        ),
        "unknown benchmark {what:?}: all, datapath, cost, live or split (its per-packet cost, \
         its live floods and rate accuracy, or the floods with the receiver on a CPU of its \
         own, alone), bans, escalation, gateway (the TLS gateway against nginx) or gateway-profile (where \
         their CPU goes)"
    );
}
