//! Differential test: random frames over random map states through the kernel program and the
//! `secgate_common::model` reference; verdicts, counters, limiter state and over-limit events
//! must agree.
//!
//! Bans are set as an operator sets them (overlapping prefixes, each with its own expiry) and
//! reach the kernel through the daemon's own projection (`secgate::bans`), so the test holds
//! the daemon and the kernel together to the model's rule that no ban hides another.
//!
//! The kernel reads its own clock, fine or (under `FLAG_COARSE_CLOCK`) coarse, so each run
//! is bracketed by two reads of that clock and the model is evaluated at both ends. GCRA is monotonic in time, so the kernel's state
//! must lie between the two model states and its verdict must be one of the two. The model
//! keeps its own state wherever both ends agree (then the kernel must match it exactly) and
//! takes the kernel's only where the two ends differ, i.e. where the kernel's clock decided.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Barrier,
};

use ipnet::IpNet;
use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};
use secgate::bans::{Ban, Bans};
use secgate_common::{
    limit,
    maps::{
        Counter, DatapathConfig, DenyEntry, FLAG_COARSE_CLOCK, FLAG_DROP_FRAGMENTS, FLAG_NO_ALLOW,
        FLAG_PASS_MALFORMED, LimitKey, MODE_MONITOR, OverLimitEvent, RateRule, STATS_DROPPED,
        STATS_NEW_BUCKETS, SourceState,
    },
    model::{self, Outcome, Tables},
    net::*,
    verdict::{Action, Reason},
};
use secgate_tests::{
    frames::{Ext, L4Spec, Spec, packet},
    harness::{Kernel, XDP_DROP, XDP_PASS, datapath_ns, monotonic_ns, pin_to_cpu},
    model_tables::ModelTables,
    privileged,
};

const FRAMES_PER_SCENARIO: usize = 500;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn pool(rng: &mut StdRng) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for _ in 0..6 {
        let net = rng.random_range(0..4u8);
        out.push(IpAddr::V4(Ipv4Addr::new(198, 18 + net % 2, net, rng.random_range(1..6))));
        let word = rng.random_range(0..3u16);
        let v6 =
            Ipv6Addr::new(0xfd00, word, 0, 0, 0, 0, rng.random_range(0..3), rng.random_range(1..4));
        out.push(IpAddr::V6(v6));
    }
    out
}

fn random_rule(rng: &mut StdRng) -> RateRule {
    match rng.random_range(0..10) {
        0 => RateRule::UNLIMITED,
        _ => RateRule::from_rate(rng.random_range(1..2000), rng.random_range(1..20)),
    }
}

fn random_limit_key(rng: &mut StdRng) -> LimitKey {
    let proto = *[IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP, IPPROTO_ICMPV6].choose(rng).unwrap();
    let port = if has_ports(proto) { *[0u16, 53, 80, 443].choose(rng).unwrap() } else { 0 };
    let syn_only = u8::from(proto == IPPROTO_TCP && rng.random_bool(0.5));
    LimitKey { port, proto, syn_only }
}

fn prefix_of(addr: IpAddr, len: u8) -> IpNet {
    IpNet::new(addr, len).expect("prefix").trunc()
}

fn clear(kernel: &mut Kernel) {
    for (key, _) in kernel.maps.limits().unwrap() {
        kernel.maps.remove_limit(&key).unwrap();
    }
    for (net, _) in kernel.maps.allow().unwrap() {
        kernel.maps.remove_allow(net).unwrap();
    }
    for (net, _) in kernel.maps.deny().unwrap() {
        kernel.maps.remove_deny(net).unwrap();
    }
    kernel.maps.clear_sources().unwrap();
}

/// Bans on nested prefixes of the pool's sources, some expired, some permanent, some due
/// within the scenario: written through the daemon's projection, kept as set in the model.
fn bans(rng: &mut StdRng, kernel: &mut Kernel, tables: &mut ModelTables, sources: &[IpAddr]) {
    let now = datapath_ns();
    let mut bans = Bans::default();
    for _ in 0..rng.random_range(0..6) {
        let addr = *sources.choose(rng).unwrap();
        let lens: &[u8] = if addr.is_ipv4() { &[32, 25, 24, 16] } else { &[128, 64, 48, 32] };
        let net = prefix_of(addr, *lens.choose(rng).unwrap());
        let expires_ns = match rng.random_range(0..3) {
            0 => None,
            1 => Some(now - rng.random_range(1..1_000_000)),
            _ => Some(now + rng.random_range(1..30_000_000)),
        };
        kernel.maps.write_deny(&bans.ban(net, Ban { expires_ns, reason: "".into() })).unwrap();
        tables.deny.retain(|(n, _)| *n != net);
        tables.deny.push((net, DenyEntry { expires_ns: expires_ns.unwrap_or(0) }));
    }
}

/// Writes a random configuration and map contents into both the kernel and the model.
fn scenario(
    rng: &mut StdRng,
    kernel: &mut Kernel,
    sources: &[IpAddr],
) -> (DatapathConfig, ModelTables) {
    let mut tables = ModelTables::default();
    clear(kernel);
    let flags = [
        (0.2, FLAG_PASS_MALFORMED),
        (0.2, FLAG_DROP_FRAGMENTS),
        (0.2, FLAG_NO_ALLOW),
        (0.5, FLAG_COARSE_CLOCK),
    ]
    .iter()
    .filter(|(p, _)| rng.random_bool(*p))
    .fold(0, |acc, (_, f)| acc | f);
    let mut cfg = DatapathConfig {
        mode: if rng.random_bool(0.1) { MODE_MONITOR } else { 0 },
        flags,
        v4_mask: model::prefix_mask(*[32, 24, 16].choose(rng).unwrap()),
        v6_mask: model::prefix_mask(*[64, 48, 128].choose(rng).unwrap()),
        default_rule: random_rule(rng),
        event_interval_ns: rng.random_range(0..5_000_000),
        event_budget: RateRule::from_rate(rng.random_range(1..5000), rng.random_range(1..10)),
        fragment_rule: random_rule(rng),
        ..Default::default()
    };
    for _ in 0..rng.random_range(0..6) {
        let (key, rule) = (random_limit_key(rng), random_rule(rng));
        cfg.override_protos |= 1 << key.proto;
        kernel.maps.set_limit(key, rule).unwrap();
        tables.rules.insert(key, rule);
    }
    // Some rules removed again, so the program also meets the override ports a removal
    // leaves (a port keeping its bit for the other SYN variant, or losing it).
    for _ in 0..rng.random_range(0..3) {
        let key = random_limit_key(rng);
        kernel.maps.remove_limit(&key).unwrap();
        tables.rules.remove(&key);
    }
    for _ in 0..rng.random_range(0..3) {
        let addr = *sources.choose(rng).unwrap();
        let lens: &[u8] = if addr.is_ipv4() { &[32, 24] } else { &[128, 64] };
        let net = prefix_of(addr, *lens.choose(rng).unwrap());
        kernel.maps.set_allow(net).unwrap();
        tables.allow.push(net);
    }
    bans(rng, kernel, &mut tables, sources);
    kernel.maps.set_config(&cfg).unwrap();
    tables.budget = kernel.event_budget(0);
    (cfg, tables)
}

fn random_ext(rng: &mut StdRng) -> Ext {
    let kinds = [IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT, IPPROTO_AH];
    let kind = *kinds.choose(rng).unwrap();
    let frag_offset =
        if kind == IPPROTO_FRAGMENT && rng.random_bool(0.5) { rng.random_range(1..100) } else { 0 };
    // Mostly short headers; now and then one that runs past the 512-byte bound on its own.
    let units =
        if rng.random_bool(0.05) { rng.random_range(60..=255) } else { rng.random_range(0..4) };
    Ext { kind, units, frag_offset }
}

fn random_spec(rng: &mut StdRng, sources: &[IpAddr]) -> Spec {
    let src = *sources.choose(rng).unwrap();
    let l4 = match rng.random_range(0..10) {
        0..=3 => L4Spec::Tcp {
            dport: *[53u16, 80, 443, 8080].choose(rng).unwrap(),
            flags: *[TCP_FLAG_SYN, TCP_FLAG_ACK, TCP_FLAG_SYN | TCP_FLAG_ACK, 0x01]
                .choose(rng)
                .unwrap(),
        },
        4..=6 => L4Spec::Udp { dport: *[53u16, 443, 123].choose(rng).unwrap() },
        7..=8 => L4Spec::Icmp,
        _ => L4Spec::Other(*[47u8, 50, 59, 132].choose(rng).unwrap()),
    };
    let mut spec = Spec::new(src, l4);
    let tpids = [ETH_P_8021Q, ETH_P_8021AD];
    spec.vlans = (0..*[0, 0, 0, 1, 2, 3].choose(rng).unwrap())
        .map(|_| *tpids.choose(rng).unwrap())
        .collect();
    // Jumbo frames now and then: up to 9 KiB, past the one page BPF_PROG_TEST_RUN keeps linear.
    spec.payload =
        if rng.random_bool(0.05) { rng.random_range(1500..9000) } else { rng.random_range(0..64) };
    if src.is_ipv4() {
        spec.v4_option_words = if rng.random_bool(0.2) { rng.random_range(1..=10) } else { 0 };
        spec.v4_frag = match rng.random_range(0..10) {
            0 => 0x2000,
            1 => rng.random_range(1..0x1fff),
            _ => 0,
        };
    } else if rng.random_bool(0.4) {
        spec.v6_exts = (0..rng.random_range(1..11)).map(|_| random_ext(rng)).collect();
    }
    spec
}

/// A frame biased toward edge cases: valid, truncated at a random point, or with a header
/// byte overwritten.
fn random_frame(rng: &mut StdRng, sources: &[IpAddr]) -> Vec<u8> {
    let mut frame = random_spec(rng, sources).build();
    match rng.random_range(0..10) {
        0..=1 => frame.truncate(rng.random_range(ETH_HLEN..=frame.len())),
        2 => {
            let at = rng.random_range(12..frame.len().min(100));
            frame[at] = rng.random();
        }
        _ => {}
    }
    frame
}

fn moved_reason(before: &[Counter], after: &[Counter]) -> Reason {
    let moved: Vec<Reason> = Reason::ALL
        .into_iter()
        .filter(|r| after[*r as usize].packets != before[*r as usize].packets)
        .collect();
    assert_eq!(moved.len(), 1, "exactly one counter moves per packet, got {moved:?}");
    moved[0]
}

fn moved(before: &[Counter], after: &[Counter], slot: u32) -> bool {
    after[slot as usize].packets != before[slot as usize].packets
}

fn between(lo: &SourceState, hi: &SourceState, k: &SourceState) -> bool {
    let within = |a: u64, b: u64, x: u64| a.min(b) <= x && x <= a.max(b);
    within(lo.tat_ns, hi.tat_ns, k.tat_ns)
        && within(lo.event_stamp.into(), hi.event_stamp.into(), k.event_stamp.into())
}

/// The kernel's event agrees with one end's, the timestamp within the run.
fn event_matches(
    want: &Option<OverLimitEvent>,
    got: &Option<OverLimitEvent>,
    t0: u64,
    t1: u64,
) -> bool {
    match (want, got) {
        (None, None) => true,
        (Some(w), Some(g)) => {
            (w.addr, w.family, w.limit) == (g.addr, g.family, g.limit)
                && (t0..=t1).contains(&g.ts_ns)
        }
        _ => false,
    }
}

/// One frame through the kernel and the model.
struct Step<'a> {
    kernel: &'a mut Kernel,
    cfg: &'a DatapathConfig,
    tables: &'a mut ModelTables,
    ctx: String,
}

impl Step<'_> {
    /// Returns the kernel's reason and whether the verdict fell on a clock boundary.
    fn run(self, frame: &[u8]) -> (Reason, bool) {
        let ctx = &self.ctx;
        let before = self.kernel.counters();
        let now = clock_of(self.cfg);
        let t0 = now();
        let action = self.kernel.run(frame);
        let t1 = now();
        let after = self.kernel.counters();
        let reason = moved_reason(&before, &after);
        let (mut m0, mut m1) = (self.tables.clone(), self.tables.clone());
        let o0 = model::decide(self.cfg, &mut m0, frame, t0);
        let o1 = model::decide(self.cfg, &mut m1, frame, t1);
        let to_xdp = |a: Action| if a == Action::Pass { XDP_PASS } else { XDP_DROP };
        let agree = |o: &Outcome| o.verdict.reason == reason && to_xdp(o.verdict.action) == action;
        assert!(
            agree(&o0) || agree(&o1),
            "verdict mismatch: kernel {reason:?}/{action}, model {:?} .. {:?}; {ctx}",
            o0.verdict,
            o1.verdict
        );
        let o = if agree(&o0) { o0 } else { o1 };
        assert_eq!(
            moved(&before, &after, STATS_DROPPED),
            action == XDP_DROP,
            "dropped counter; {ctx}"
        );
        assert_eq!(
            moved(&before, &after, STATS_NEW_BUCKETS),
            o.created,
            "bucket-insert counter; {ctx}"
        );
        let events = self.kernel.events();
        assert!(events.len() <= 1, "one frame raises at most one event: {events:?}; {ctx}");
        let event = events.first().copied();
        let boundary = o0.verdict != o1.verdict;
        let matches = if boundary {
            // Another deadline (the event interval) may fall inside the run as well: then
            // only an event for the kernel's own verdict and bucket is comparable.
            event.is_none_or(|e| {
                let want = o.bucket.map(|k| (k.addr, k.family, k.limit));
                reason == Reason::Rate
                    && want == Some((e.addr, e.family, e.limit))
                    && (t0..=t1).contains(&e.ts_ns)
            })
        } else {
            event_matches(&o0.event, &event, t0, t1) || event_matches(&o1.event, &event, t0, t1)
        };
        assert!(
            matches,
            "event mismatch: kernel {event:?}, model {:?} .. {:?}; {ctx}",
            o0.event, o1.event
        );
        // Where both ends agree the model advances by itself and the kernel must match it;
        // only state the clock decided (a fresh or idle bucket, an event's time) is taken
        // from the kernel, once it is shown to lie between the two ends.
        let mut next = if agree(&o0) { m0.clone() } else { m1.clone() };
        if let Some(key) = o.bucket {
            let k = self.kernel.maps.source(&key).unwrap();
            match (m0.source(&key), m1.source(&key), k) {
                // On a verdict boundary the two ends took different branches: only the
                // verdict (checked above) is comparable, and the kernel's state is taken.
                (_, _, Some(k)) if boundary => {
                    next.sources.insert(key, k);
                }
                (Some(a), Some(b), Some(k)) if a == b => assert_eq!(k, a, "limiter state; {ctx}"),
                (Some(a), Some(b), Some(k)) => {
                    assert!(
                        between(&a, &b, &k),
                        "limiter state {k:?} outside {a:?} .. {b:?}; {ctx}"
                    );
                    next.sources.insert(key, k);
                }
                (None, None, None) => {}
                other => panic!("limiter state presence differs {other:?}; {ctx}"),
            }
        }
        let budget = self.kernel.event_budget(0);
        if m0.budget == m1.budget && !boundary {
            assert_eq!(budget, m0.budget, "event budget; {ctx}");
        } else {
            next.budget = budget;
        }
        *self.tables = next;
        (reason, boundary)
    }
}

#[test]
fn kernel_matches_model() {
    if !privileged("kernel_matches_model") {
        return;
    }
    pin_to_cpu(0);
    let seed = env_or("SECGATE_DIFF_SEED", rand::random());
    let total = env_or("SECGATE_DIFF_FRAMES", 200_000) as usize;
    eprintln!("differential test: {total} frames, SECGATE_DIFF_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut kernel = Kernel::load();
    let (mut frames, mut ambiguous, mut reasons) = (0usize, 0usize, [0usize; Reason::ALL.len()]);
    while frames < total {
        let sources = pool(&mut rng);
        let (cfg, mut tables) = scenario(&mut rng, &mut kernel, &sources);
        for _ in 0..FRAMES_PER_SCENARIO.min(total - frames) {
            let frame = random_frame(&mut rng, &sources);
            let ctx = format!("seed {seed}, frame #{frames} {frame:02x?}, cfg {cfg:?}");
            let step = Step { kernel: &mut kernel, cfg: &cfg, tables: &mut tables, ctx };
            let (reason, clock_decided) = step.run(&frame);
            ambiguous += usize::from(clock_decided);
            reasons[reason as usize] += 1;
            frames += 1;
        }
    }
    eprintln!("{frames} frames, {ambiguous} at a clock boundary; by reason {reasons:?}");
    assert!(
        ambiguous * 1000 <= frames,
        "too many clock-boundary frames ({ambiguous}) for a meaningful comparison"
    );
    for r in [
        Reason::Pass,
        Reason::Rate,
        Reason::Deny,
        Reason::Allow,
        Reason::Malformed,
        Reason::NonIp,
        Reason::Fragment,
    ] {
        assert!(reasons[r as usize] > 0, "the generator never produced a {} verdict", r.name());
    }
}

/// The clock the program reads under `cfg`.
fn clock_of(cfg: &DatapathConfig) -> fn() -> u64 {
    if cfg.flags & FLAG_COARSE_CLOCK != 0 { datapath_ns } else { monotonic_ns }
}

/// Runs `frame` `repeat` times on each CPU at once; returns each CPU's (start, end).
fn on_both_cpus(kernel: &Kernel, frame: &[u8], repeat: u32) -> [(u64, u64); 2] {
    let barrier = Barrier::new(2);
    std::thread::scope(|s| {
        let runs = [0, 1].map(|cpu| {
            let barrier = &barrier;
            s.spawn(move || {
                pin_to_cpu(cpu);
                barrier.wait();
                let start = monotonic_ns();
                if repeat == 1 {
                    kernel.run(frame);
                } else {
                    kernel.cost(frame, repeat);
                }
                (start, monotonic_ns())
            })
        });
        runs.map(|r| r.join().expect("cpu thread"))
    })
}

#[test]
fn two_cpus_on_one_bucket_keep_to_its_rate() {
    if !privileged("two_cpus_on_one_bucket_keep_to_its_rate") {
        return;
    }
    assert!(std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2, "needs two CPUs");
    let mut kernel = Kernel::load();
    let rule = RateRule::from_rate(100_000, 100);
    let cfg = DatapathConfig {
        v4_mask: model::prefix_mask(32),
        v6_mask: model::prefix_mask(64),
        default_rule: rule,
        event_interval_ns: 1_000_000_000,
        event_budget: RateRule::from_rate(1000, 1000),
        ..Default::default()
    };
    kernel.maps.set_config(&cfg).unwrap();

    // Insert races: a new source's first packet reaches both CPUs at once. One insert wins;
    // the other CPU must count against the winner's bucket, so the bucket holds two packets,
    // unless the winner's claim did not show within the loser's bounded wait (the winner's
    // vCPU stalled between lock and claim): the loser then lets its packet through as
    // `contended`, uncounted, by design. That must stay rare.
    let mut both_new = 0;
    let mut contended = 0;
    for i in 0..200u32 {
        let src = IpAddr::V4(Ipv4Addr::from(0xc612_0000 | i));
        let frame = Spec::new(src, L4Spec::Udp { dport: 53 }).build();
        let before = kernel.counters();
        let t0 = monotonic_ns();
        let runs = on_both_cpus(&kernel, &frame, 1);
        let after = kernel.counters();
        let delta = |slot: usize| after[slot].packets - before[slot].packets;
        assert_eq!(delta(STATS_NEW_BUCKETS as usize), 1, "exactly one CPU created the bucket");
        let (passed, waited) = (delta(Reason::Pass as usize), delta(Reason::Contended as usize));
        assert_eq!(passed + waited, 2, "both packets fit the burst");
        let counted = passed;
        contended += waited;
        let key = model::bucket_key(&cfg, &packet(&frame), LimitKey::DEFAULT);
        let tat = kernel.maps.source(&key).unwrap().expect("bucket").tat_ns;
        let t1 = runs[0].1.max(runs[1].1);
        let held = counted * rule.interval_ns;
        assert!(
            (t0 + held..=t1 + held).contains(&tat),
            "the bucket counts its {counted} packets: tat {tat} outside {t0}..{t1} + {counted} intervals"
        );
        both_new += usize::from(runs[0].0.abs_diff(runs[1].0) < 20_000);
    }
    eprintln!("{both_new} of 200 insert rounds started within 20 µs on both CPUs");
    assert!(contended <= 10, "{contended} of 200 insert races let a packet through uncounted");

    // CAS races: both CPUs flood one source far above its rate, on the fine clock and, with a
    // burst long enough for it, on the coarse one.
    cas_race(&kernel, "198.19.9.9", rule, monotonic_ns);
    let tick = secgate::clock::coarse_tick_ns();
    let coarse = RateRule::from_rate(100_000, limit::COARSE_TICKS * tick / rule.interval_ns + 2);
    assert!(limit::coarse_clock_fits([&coarse], tick));
    let cfg = DatapathConfig { flags: FLAG_COARSE_CLOCK, default_rule: coarse, ..cfg };
    kernel.maps.set_config(&cfg).unwrap();
    cas_race(&kernel, "198.19.9.10", coarse, datapath_ns);
}

/// Both CPUs flood `src` under `rule`: what they let through stays within the rule's ceiling
/// over the run and above a loose floor.
/// `now` is the clock the program reads, so the ceiling holds exactly.
fn cas_race(kernel: &Kernel, src: &str, rule: RateRule, now: fn() -> u64) {
    let frame = Spec::new(src.parse().unwrap(), L4Spec::Udp { dport: 53 }).build();
    let repeat = 300_000;
    let before = kernel.counters();
    let t0 = now();
    let runs = on_both_cpus(kernel, &frame, repeat);
    let t1 = now();
    let after = kernel.counters();
    let delta = |r: Reason| after[r as usize].packets - before[r as usize].packets;
    let (pass, rate, contended) =
        (delta(Reason::Pass), delta(Reason::Rate), delta(Reason::Contended));
    assert_eq!(pass + rate + contended, 2 * u64::from(repeat), "every packet got one reason");
    let admitted = pass + contended;
    let ceiling = rule.burst() + (t1 - t0) / rule.interval_ns + 1;
    // A loose floor (a quarter of the rate over the busiest CPU's run): the test-run loop
    // yields the CPU now and then, so not every nanosecond of a run floods. It catches a
    // limiter that starves a source; the ceiling is the limiter's guarantee and is exact.
    let busiest = runs.iter().map(|(a, b)| b - a).max().unwrap();
    let floor = busiest / rule.interval_ns / 4;
    eprintln!(
        "{src}: admitted {admitted} (pass {pass}, contended {contended}) of {}, bounds \
         {floor}..{ceiling}",
        2 * repeat
    );
    assert!(
        admitted <= ceiling,
        "two CPUs got {admitted} through, more than rate + burst {ceiling}"
    );
    assert!(
        admitted >= floor,
        "two CPUs got only {admitted} through, under a quarter of the rate ({floor})"
    );
}

/// Frames of 2–9 KiB: headers in reach are judged as usual, and no header chain past the
/// 512-byte bound is ever taken for well-formed, however long the frame behind it.
#[test]
fn jumbo_frames_match_the_model() {
    if !privileged("jumbo_frames_match_the_model") {
        return;
    }
    pin_to_cpu(0);
    let mut kernel = Kernel::load();
    let cfg = DatapathConfig {
        v4_mask: model::prefix_mask(32),
        v6_mask: model::prefix_mask(64),
        ..Default::default()
    };
    kernel.maps.set_config(&cfg).unwrap();
    let mut tables = ModelTables { budget: kernel.event_budget(0), ..Default::default() };
    let mut rng = StdRng::seed_from_u64(env_or("SECGATE_DIFF_SEED", 7));
    let sources = pool(&mut rng);
    for i in 0..2000 {
        let mut spec = random_spec(&mut rng, &sources);
        spec.payload = rng.random_range(2048..9 * 1024);
        if i % 2 == 0 {
            spec.src = *sources.iter().find(|s| s.is_ipv6()).unwrap();
            spec.dst = "fd00::1".parse().unwrap();
            spec.v4_frag = 0;
            spec.v4_option_words = 0;
            spec.v6_exts = (0..rng.random_range(1..4))
                .map(|_| Ext { units: rng.random_range(0..=255), ..random_ext(&mut rng) })
                .collect();
        }
        let frame = spec.build();
        let ctx = format!(
            "jumbo frame #{i} of {} bytes: {:02x?}",
            frame.len(),
            &frame[..frame.len().min(128)]
        );
        Step { kernel: &mut kernel, cfg: &cfg, tables: &mut tables, ctx }.run(&frame);
    }
}
