use std::{collections::HashMap, net::IpAddr, time::Duration};

use proptest::prelude::*;

use super::*;
use crate::{config::Mode, escalate::settings::EscalationSettings};

fn settings(thresholds: [u32; 5], window_ms: u64) -> EscalationSettings {
    EscalationSettings {
        window: Duration::from_millis(window_ms),
        thresholds,
        ban_ttl: Duration::from_secs(60),
        ttl_factor: 2.0,
        max_ttl: Duration::from_secs(3600),
        mode: Mode::Enforce,
        widen: None,
    }
}

fn source(i: u8) -> IpAddr {
    IpAddr::from([198, 18, 0, i])
}

/// The rule stated plainly: a source trips when, counting only its offences since its last
/// trip, `threshold` of one kind fall within the window ending now.
#[derive(Default)]
struct Model {
    since_trip: HashMap<IpAddr, Vec<(Kind, u64)>>,
}

impl Model {
    fn offend(&mut self, src: IpAddr, kind: Kind, at_ms: u64, s: &EscalationSettings) -> bool {
        let threshold = s.threshold(kind) as usize;
        if threshold == 0 {
            return false;
        }
        let seen = self.since_trip.entry(src).or_default();
        seen.push((kind, at_ms));
        let window = s.window.as_millis() as u64;
        let n = seen.iter().filter(|(k, t)| *k == kind && at_ms - t <= window).count();
        if n >= threshold {
            self.since_trip.remove(&src);
            true
        } else {
            false
        }
    }
}

fn kind(i: u8) -> Kind {
    Kind::ALL[usize::from(i) % 5]
}

proptest! {
    #[test]
    fn trips_exactly_when_the_plain_rule_does(
        thresholds in prop::array::uniform5(0u32..5),
        window_ms in 1u64..500,
        steps in prop::collection::vec((0u8..4, 0u8..5, 0u64..200), 1..300),
    ) {
        let s = settings(thresholds, window_ms);
        let start = Instant::now();
        let (mut counts, mut model, mut now) = (Counts::default(), Model::default(), 0u64);
        for (src, k, gap) in steps {
            now += gap;
            let o = Offence { source: source(src), kind: kind(k), what: "x", at: start + Duration::from_millis(now) };
            let trip = counts.offend(o, &s);
            let expected = model.offend(source(src), kind(k), now, &s);
            prop_assert_eq!(trip.is_some(), expected, "at {}ms, source {}, kind {:?}", now, src, kind(k));
            if let Some(t) = trip {
                prop_assert_eq!(t.source, source(src));
                prop_assert_eq!(t.kind, kind(k));
                prop_assert!(t.offences.len() <= LISTED);
                prop_assert_eq!(t.offences.last().map(|o| o.at), Some(o.at));
            }
        }
    }

    #[test]
    fn memory_stays_bounded_whatever_the_sources(
        cap in 2usize..64,
        steps in prop::collection::vec((any::<u32>(), 0u8..5, 0u64..50), 1..2000),
    ) {
        let s = settings([3, 3, 3, 3, 3], 1000);
        let start = Instant::now();
        let (mut counts, mut now) = (Counts::with_cap(cap), 0u64);
        for (src, k, gap) in steps {
            now += gap;
            let o = Offence { source: IpAddr::from(src.to_be_bytes()), kind: kind(k), what: "x", at: start + Duration::from_millis(now) };
            counts.offend(o, &s);
            prop_assert!(counts.tracked() <= cap);
        }
    }
}

#[test]
fn a_source_close_to_its_threshold_survives_decoys_with_more_offences() {
    let s = settings([5, 0, 100, 0, 0], 60_000);
    let now = Instant::now();
    let mut counts = Counts::with_cap(1000);
    let attacker = source(1);
    let offend = |counts: &mut Counts, src, kind| {
        counts.offend(Offence { source: src, kind, what: "x", at: now }, &s)
    };
    for _ in 0..4 {
        assert!(offend(&mut counts, attacker, Kind::AuthFailure).is_none());
    }
    // Decoys with more offences each, but far from their threshold (9 of 100).
    for i in 0..5_000u32 {
        for _ in 0..9 {
            offend(&mut counts, IpAddr::from((0xc613_0000 | i).to_be_bytes()), Kind::RateLimited);
        }
    }
    let trip = offend(&mut counts, attacker, Kind::AuthFailure).expect("the fifth failure trips");
    assert_eq!(trip.count, 5);
}

#[test]
fn high_thresholds_track_fewer_sources() {
    let s = settings([10_000; 5], 60_000);
    let start = Instant::now();
    let mut counts = Counts::default();
    for i in 0..20_000u32 {
        let o = Offence {
            source: IpAddr::from(i.to_be_bytes()),
            kind: Kind::AuthFailure,
            what: "x",
            at: start,
        };
        counts.offend(o, &s);
    }
    assert!(counts.tracked() < 1000, "{} sources of 50,000 timestamps each", counts.tracked());
}

#[test]
fn offences_leave_the_window() {
    let s = settings([3, 0, 0, 0, 0], 1000);
    let start = Instant::now();
    let mut counts = Counts::default();
    let at = |ms| Offence {
        source: source(1),
        kind: Kind::AuthFailure,
        what: "x",
        at: start + Duration::from_millis(ms),
    };
    assert!(counts.offend(at(0), &s).is_none());
    assert!(counts.offend(at(600), &s).is_none());
    // The first has left the window: two in it.
    assert!(counts.offend(at(1001), &s).is_none());
    assert!(counts.offend(at(1500), &s).is_some());
}
