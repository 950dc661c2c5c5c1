//! The real XDP program, loaded into the kernel and driven with `BPF_PROG_TEST_RUN`.

use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
    programs::{ProgramError, TestRun, TestRunOptions, Xdp},
};
use secgate::maps::DatapathMaps;
use secgate_common::maps::{Counter, EVENTS, OverLimitEvent, STATS_SLOTS};

pub use crate::bare::{XDP_DROP, XDP_PASS};

/// A freshly loaded program with its own (unpinned) maps.
pub struct Kernel {
    bpf: Ebpf,
    pub maps: DatapathMaps,
    events: RingBuf<MapData>,
}

impl Kernel {
    pub fn load() -> Kernel {
        Kernel::with_sources(secgate_common::maps::DEFAULT_MAX_SOURCES)
    }

    /// With room for `capacity` limiter buckets (`datapath.max_sources`).
    pub fn with_sources(capacity: u32) -> Kernel {
        let mut bpf = aya::EbpfLoader::new()
            .map_max_entries(
                secgate_common::maps::SOURCES,
                secgate_common::sources::sets_for(capacity),
            )
            .load(secgate::EBPF_OBJECT)
            .expect("parse the embedded XDP object");
        let prog: &mut Xdp = bpf.program_mut("secgate").expect("program").try_into().expect("xdp");
        if let Err(e) = prog.load() {
            if let ProgramError::LoadError { verifier_log, .. } = &e {
                panic!("verifier rejected the program: {verifier_log}");
            }
            panic!("load failed: {e}");
        }
        let maps = DatapathMaps::take(&mut bpf, None).expect("maps");
        let events = bpf.take_map(EVENTS).expect("events map");
        let events = RingBuf::try_from(events).expect("ring buffer");
        Kernel { bpf, maps, events }
    }

    /// Over-limit events the program submitted since the last call, oldest first.
    pub fn events(&mut self) -> Vec<OverLimitEvent> {
        let mut out = Vec::new();
        while let Some(item) = self.events.next() {
            assert_eq!(item.len(), size_of::<OverLimitEvent>(), "event size");
            // SAFETY: length checked; the event is plain data valid for any bytes.
            out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<OverLimitEvent>()) });
        }
        out
    }

    /// Attaches the program natively to `iface` of the calling thread's namespace; the link
    /// lives as long as this `Kernel` or until [`Kernel::detach`].
    pub fn attach(&mut self, iface: &str) -> aya::programs::xdp::XdpLinkId {
        self.prog_mut().attach(iface, aya::programs::XdpMode::Driver).expect("attach XDP")
    }

    pub fn detach(&mut self, link: aya::programs::xdp::XdpLinkId) {
        self.prog_mut().detach(link).expect("detach XDP");
    }

    fn prog_mut(&mut self) -> &mut Xdp {
        self.bpf.program_mut("secgate").expect("program").try_into().expect("xdp")
    }

    fn prog(&self) -> &Xdp {
        self.bpf.program("secgate").expect("program").try_into().expect("xdp")
    }

    /// The loaded program, for a spreader to tail-call.
    pub fn prog_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.prog().fd().expect("a loaded program has an fd").as_fd()
    }

    /// Runs one frame, returning the XDP action.
    pub fn run(&self, frame: &[u8]) -> u32 {
        let opts = TestRunOptions { data_in: Some(frame), ..Default::default() };
        self.prog().test_run(opts).expect("BPF_PROG_TEST_RUN").return_value
    }

    /// Runs one frame `repeat` times in the kernel, returning the mean cost per run.
    pub fn cost(&self, frame: &[u8], repeat: u32) -> std::time::Duration {
        let opts = TestRunOptions { data_in: Some(frame), repeat, ..Default::default() };
        self.prog().test_run(opts).expect("BPF_PROG_TEST_RUN").duration
    }

    /// CPU `cpu`'s event-budget TAT.
    pub fn event_budget(&self, cpu: usize) -> u64 {
        let map = self.bpf.map(secgate_common::maps::EVENT_BUDGET).expect("budget map");
        let arr = aya::maps::PerCpuArray::<_, u64>::try_from(map).expect("per-cpu array");
        arr.get(&0, 0).expect("read budget")[cpu]
    }

    /// `SG_STATS`: indexed by `Reason as usize`, then `STATS_DROPPED`.
    pub fn counters(&self) -> [Counter; STATS_SLOTS as usize] {
        self.maps.stats().expect("read stats")
    }
}

pub use secgate::clock::{datapath_ns, monotonic_ns};

/// Pins the calling thread to `cpu`, so per-CPU state (counters, event budget) is one slot.
pub fn pin_to_cpu(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).expect("cpu");
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).expect("sched_setaffinity");
}
