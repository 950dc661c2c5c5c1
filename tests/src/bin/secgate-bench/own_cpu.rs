//! The live bench's second arrangement: the receiver timed by its own CPU time. With
//! generator and receiver on one CPU, each rate is the pair's (the generator's time per
//! frame adds to the receiver's), which pulls every ratio toward 1. Here the receiving veth
//! polls in kernel threads (threaded NAPI) pinned to one CPU while the generator runs on the
//! other, and a rate is frames per second those threads ran: all the receiver's work (the
//! ring, XDP, and for a pass or nftables the skb and the stack above it) and nothing of the
//! generator's. Wall time would not do: a thread that sleeps when its ring runs empty wakes
//! too late for the next burst, so veth's ring drops frames even ahead of a bare drop, and
//! a rate would count that sleep.

use nix::{sched::CpuSet, unistd::Pid};
use secgate_tests::netns::Topology;

/// Threaded NAPI on the receiving veth, its threads pinned to `cpu`, until dropped.
pub struct OwnCpu<'a> {
    topo: &'a Topology,
    threads: Vec<Pid>,
}

impl<'a> OwnCpu<'a> {
    pub fn new(topo: &'a Topology, cpu: usize) -> OwnCpu<'a> {
        set_threaded(topo, true);
        let threads = napi_threads(&topo.gw_if);
        assert!(
            !threads.is_empty(),
            "no napi/{}-* kernel thread after turning threaded NAPI on (is XDP attached?)",
            topo.gw_if
        );
        let mut set = CpuSet::new();
        set.set(cpu).expect("cpu");
        for pid in &threads {
            nix::sched::sched_setaffinity(*pid, &set).expect("pin a NAPI thread");
        }
        OwnCpu { topo, threads }
    }

    /// Runs the NAPI threads real-time (`SCHED_FIFO`), so that they preempt processes on
    /// their CPU as a NIC's softirq would, rather than share it by turns.
    pub fn realtime(&self) {
        let param = libc::sched_param { sched_priority: 50 };
        for pid in &self.threads {
            // SAFETY: sched_setscheduler on a live thread with a valid parameter.
            let set = unsafe { libc::sched_setscheduler(pid.as_raw(), libc::SCHED_FIFO, &param) };
            assert_eq!(set, 0, "SCHED_FIFO for {pid}: {}", std::io::Error::last_os_error());
        }
    }

    /// Nanoseconds the receiver's NAPI threads have run, all told (the first field of
    /// `/proc/PID/schedstat`).
    pub fn run_ns(&self) -> u64 {
        self.threads
            .iter()
            .map(|pid| {
                let path = format!("/proc/{pid}/schedstat");
                let text = std::fs::read_to_string(&path).expect("a NAPI thread's schedstat");
                text.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()).expect(&path)
            })
            .sum()
    }
}

impl Drop for OwnCpu<'_> {
    fn drop(&mut self) {
        set_threaded(self.topo, false);
    }
}

/// Writes the receiving veth's `threaded` attribute in its namespace (`ip netns exec`
/// mounts that namespace's /sys, where the interface is).
fn set_threaded(topo: &Topology, on: bool) {
    let path = format!("/sys/class/net/{}/threaded", topo.gw_if);
    let script = format!("echo {} > {path}", u8::from(on));
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &topo.gw.name, "sh", "-c", &script])
        .output()
        .expect("ip netns exec");
    assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The kernel threads polling `ifname`'s queues (`napi/IFNAME-ID`, cut to the 15 bytes a
/// thread's name holds: the bench's interface names keep the prefix within them).
fn napi_threads(ifname: &str) -> Vec<Pid> {
    let prefix = format!("napi/{ifname}-");
    assert!(prefix.len() <= 15, "{prefix}: a longer prefix would not fit a thread's name");
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim_end().starts_with(&prefix))
        })
        .map(Pid::from_raw)
        .collect()
}
