//! Bans per second through the service layer, as the escalation will issue them under
//! attack: many callers at once, each reply only once its ban is on disk. The baseline, run
//! in the same rounds, is one caller at a time, where every ban pays a state write and fsync
//! of its own (what every ban cost before group commit). Each is measured on an empty table
//! and on one already holding `LOADED` bans, since every write carries the whole table.

use std::{
    net::{IpAddr, Ipv6Addr},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use ipnet::IpNet;
use secgate::service::{Caller, Service};
use secgate_tests::service::Fixture;

use crate::median;

const ROUNDS: usize = 3;
const CALLERS: u32 = 1000;
const BANS_PER_CALLER: u32 = 10;
const SEQUENTIAL_BANS: u32 = 300;
/// Bans already held in the loaded case.
const LOADED: u32 = 100_000;

/// The `n`th ban of a round: round `r` bans in 198.18.0.0/15 at an offset of its own.
fn cidr(round: usize, n: u32) -> IpNet {
    let addr = IpAddr::from((0xc612_0000u32 + ((round as u32) << 16) + n).to_be_bytes());
    IpNet::new(addr, 32).expect("/32")
}

async fn ban(service: &Service, cidr: IpNet) {
    let rule = Caller::Escalation { rule: "bench".into() };
    service.ban_add(&rule, cidr, Some(Duration::from_secs(3600)), None).await.expect("ban");
}

/// `LOADED` bans on /64s in fd00::/16, away from the measured ones.
async fn load(service: &Arc<Service>) {
    let per_task = LOADED / 100;
    let tasks = (0..100u32).map(|t| {
        let service = service.clone();
        tokio::spawn(async move {
            for n in t * per_task..(t + 1) * per_task {
                let addr = Ipv6Addr::new(0xfd00, (n >> 16) as u16, n as u16, 0, 0, 0, 0, 0);
                ban(&service, IpNet::new(addr.into(), 64).expect("/64")).await;
            }
        })
    });
    for t in futures::future::join_all(tasks).await {
        t.expect("loader");
    }
}

/// Bans per second with one caller at a time.
async fn sequential(service: &Arc<Service>, round: usize) -> f64 {
    let start = Instant::now();
    for n in 0..SEQUENTIAL_BANS {
        ban(service, cidr(round, n)).await;
    }
    f64::from(SEQUENTIAL_BANS) / start.elapsed().as_secs_f64()
}

/// Bans per second and state writes with `CALLERS` concurrent callers.
async fn concurrent(service: &Arc<Service>, round: usize) -> (f64, u64) {
    let commits = service.journal_stats().commits.load(Ordering::Relaxed);
    let start = Instant::now();
    let tasks = (0..CALLERS).map(|c| {
        let service = service.clone();
        tokio::spawn(async move {
            for i in 0..BANS_PER_CALLER {
                ban(&service, cidr(round, c * BANS_PER_CALLER + i)).await;
            }
        })
    });
    for t in futures::future::join_all(tasks).await {
        t.expect("caller");
    }
    let rate = f64::from(CALLERS * BANS_PER_CALLER) / start.elapsed().as_secs_f64();
    (rate, service.journal_stats().commits.load(Ordering::Relaxed) - commits)
}

/// A fresh service, holding `LOADED` bans if `loaded`.
fn fixture(rt: &tokio::runtime::Runtime, tag: &str, loaded: bool) -> Fixture {
    let f = Fixture::start(tag, "");
    if loaded {
        rt.block_on(load(f.service()));
    }
    f
}

/// Medians over the rounds: one caller at a time, and `CALLERS` at once with their writes.
fn measure(rt: &tokio::runtime::Runtime, loaded: bool) -> (f64, f64, f64) {
    let (mut seq, mut grp, mut writes) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let f = fixture(rt, "bench-seq", loaded);
        seq.push(rt.block_on(sequential(f.service(), round)));
        drop(f);
        let f = fixture(rt, "bench-grp", loaded);
        let (rate, commits) = rt.block_on(concurrent(f.service(), round));
        grp.push(rate);
        writes.push(commits as f64);
    }
    (median(seq), median(grp), median(writes))
}

pub fn run() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let total = CALLERS * BANS_PER_CALLER;
    println!(
        "bans through the service layer, each acknowledged once on disk (median of {ROUNDS} rounds)"
    );
    println!("{:<60} {:>10} {:>8}", "table, callers", "bans/s", "ratio");
    for loaded in [false, true] {
        let (seq, grp, writes) = measure(&rt, loaded);
        let table = if loaded { format!("{LOADED} bans held") } else { "empty".into() };
        println!("{:<60} {seq:>10.0} {:>8.2}", format!("{table}, 1 at a time"), 1.0);
        let many = format!("{table}, {CALLERS} at once ({total} bans, {writes:.0} writes)");
        println!("{many:<60} {grp:>10.0} {:>8.2}", grp / seq);
    }
}
