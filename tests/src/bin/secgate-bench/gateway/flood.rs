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
    /// happens to the caller); returns the frames sent and for how long.
    pub fn run(&self, topo: &Topology, cpu: usize, stop: &AtomicBool) -> (u64, Duration) {
        let (generator, frame, ifindex) = (&self.generator, &self.frame, self.ifindex);
        topo.client.within(move || {
            pin_to_cpu(cpu);
            realtime();
            let start = Instant::now();
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
            (sent, start.elapsed())
        })
    }

    /// The longest a flood runs, whatever its caller does.
    const LIMIT: Duration = Duration::from_secs(60);
}

/// Makes the calling thread real-time (`SCHED_FIFO`): the load generator beside it keeps
/// its CPU busy, and an attacker's frames do not wait for a victim's client to yield. It
/// sleeps between batches, so it takes only the share the flood's rate needs.
fn realtime() {
    let param = libc::sched_param { sched_priority: 10 };
    // SAFETY: sched_setscheduler on the calling thread (0) with a valid parameter.
    let set = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    assert_eq!(set, 0, "SCHED_FIFO for the flood: {}", std::io::Error::last_os_error());
}

/// nftables' ban set at netdev ingress on the gateway's interface: `BANNED` dropped.
pub fn nft_ban(topo: &Topology) -> String {
    format!(
        "table netdev sgbench {{\n  set banned {{ type ipv6_addr; flags interval; elements = {{ {BANNED} }} }}\n  \
         chain ingress {{ type filter hook ingress device \"{}\" priority -500; ip6 saddr @banned drop; }}\n}}\n",
        topo.gw_if
    )
}
