//! A flood from banned sources while legitimate clients use the gateway: UDP frames from
//! 65,536 IPv6 /64s in [`BANNED`], sent by a spreader program (`XDP_TX` on live frames)
//! into the client's veth at [`PPS`] on average, for as long as the legitimate load runs.
//! It comes in bursts of [`BATCH`] at the generator's full speed (some 12 Mpps): each run
//! of live frames costs some 16 ms to set up and tear down here, so smaller batches could
//! not reach the rate.
//! secgate bans the prefix in its XDP deny map; nginx gets what a user would build without
//! secgate, the same prefix in an nftables ban set at netdev ingress (secgate's program,
//! still attached, passes the flood to it).

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use secgate_tests::{
    bare::{RawXdp, Spread},
    frames::{L4Spec, Spec},
    harness::pin_to_cpu,
    netns::Topology,
};

/// The banned prefix the flood comes from.
pub const BANNED: &str = "fd00:99::/32";
/// Frames per second offered, in batches of [`BATCH`].
pub const PPS: u64 = 1_000_000;
const BATCH: u32 = 50_000;

pub struct Flood {
    generator: RawXdp,
    frame: Vec<u8>,
    ifindex: u32,
}

impl Flood {
    pub fn new(topo: &Topology) -> Flood {
        let mut frame =
            Spec::new("fd00:99::2".parse().expect("ip"), L4Spec::Udp { dport: 9 }).build();
        frame[..6].copy_from_slice(&topo.gw_mac());
        let client_if = topo.client_if.clone();
        let ifindex = topo
            .client
            .within(move || nix::net::if_::if_nametoindex(client_if.as_str()).expect("ifindex"));
        Flood { generator: RawXdp::spreader(Spread::V6 { sources: 1 << 16 }), frame, ifindex }
    }

    /// Floods from `cpu` until `stop` is set (or [`Flood::LIMIT`] has passed, whatever
    /// happens to the caller); returns the frames sent, for how long, and the CPU time the
    /// generator took from the legitimate client and the upstream beside it.
    pub fn run(&self, topo: &Topology, cpu: usize, stop: &AtomicBool) -> (u64, Duration, Duration) {
        let (generator, frame, ifindex) = (&self.generator, &self.frame, self.ifindex);
        topo.client.within(move || {
            pin_to_cpu(cpu);
            let start = Instant::now();
            let cpu_before = thread_cpu();
            let tick = Duration::from_secs_f64(f64::from(BATCH) / PPS as f64);
            let (mut next, mut sent) = (start, 0u64);
            while !stop.load(Ordering::Relaxed) && start.elapsed() < Self::LIMIT {
                generator.run_live(frame, BATCH, ifindex).expect("live-frame generator");
                sent += u64::from(BATCH);
                next += tick;
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            (sent, start.elapsed(), thread_cpu() - cpu_before)
        })
    }

    /// The longest a flood runs, whatever its caller does.
    const LIMIT: Duration = Duration::from_secs(60);
}

/// The calling thread's CPU time so far.
fn thread_cpu() -> Duration {
    // SAFETY: an all-zero rusage is valid; getrusage fills it for this thread.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_THREAD is the calling thread.
    let ok = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    assert_eq!(ok, 0, "getrusage: {}", std::io::Error::last_os_error());
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Sets `stop` when dropped, so that a load run that fails ends its flood at once.
pub struct StopOnDrop<'a>(pub &'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// nftables' ban set at netdev ingress on the gateway's interface: `BANNED` dropped.
pub fn nft_ban(topo: &Topology) -> String {
    format!(
        "table netdev sgbench {{\n  set banned {{ type ipv6_addr; flags interval; elements = {{ {BANNED} }} }}\n  \
         chain ingress {{ type filter hook ingress device \"{}\" priority -500; ip6 saddr @banned drop; }}\n}}\n",
        topo.gw_if
    )
}
