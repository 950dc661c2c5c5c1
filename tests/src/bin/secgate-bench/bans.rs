//! Bans per second through the service layer, as the escalation will issue them under
//! attack: many callers at once, each reply only once its ban is on disk. The baseline, run
//! in the same rounds, is one caller at a time, where every ban pays a state write and fsync
//! of its own (what every ban cost before group commit).

use std::{
    net::IpAddr,
    sync::Arc,
    sync::atomic::Ordering,
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

fn cidr(round: usize, n: u32) -> IpNet {
    let addr = IpAddr::from((0xc612_0000u32 + ((round as u32) << 24 >> 8) + n).to_be_bytes());
    IpNet::new(addr, 32).expect("/32")
}

async fn ban(service: &Service, cidr: IpNet) {
    let rule = Caller::Escalation { rule: "bench".into() };
    service.ban_add(&rule, cidr, Some(Duration::from_secs(3600)), None).await.expect("ban");
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

pub fn run() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (mut seq, mut grp, mut writes) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let f = Fixture::start("bench-seq", "");
        seq.push(rt.block_on(sequential(f.service(), round)));
        drop(f);
        let f = Fixture::start("bench-grp", "");
        let (rate, commits) = rt.block_on(concurrent(f.service(), round));
        grp.push(rate);
        writes.push(commits as f64);
    }
    let (seq, grp, writes) = (median(seq), median(grp), median(writes));
    let total = CALLERS * BANS_PER_CALLER;
    println!(
        "bans through the service layer, each acknowledged once on disk (median of {ROUNDS} rounds)"
    );
    println!("{:<52} {:>10} {:>10}", "callers", "bans/s", "ratio");
    println!("{:<52} {seq:>10.0} {:>10.2}", "1 at a time (one fsync'd write per ban)", 1.0);
    println!(
        "{:<52} {grp:>10.0} {:>10.2}",
        format!("{CALLERS} at once, {total} bans ({writes:.0} writes)"),
        grp / seq
    );
}
