//! `cargo xtask bench`: the datapath measured against baselines in the same run, interleaved
//! round by round so machine noise hits all alike, and printed as ratios. Nothing here
//! asserts a timing.

mod cost;
mod live;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the benchmarks load BPF programs and create namespaces: run them as root"
    );
    cost::run();
    println!();
    live::run();
}
