//! Drains over-limit events from the datapath's ring buffer: counts them per source, hands
//! them to the escalation (a source that stays over its limit gets banned, so the cheaper
//! deny path drops it) and logs a summary at most once per `LOG_EVERY`, so an attack cannot
//! turn into a log flood.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use aya::maps::{MapData, RingBuf};
use secgate_common::maps::{FAMILY_V4, OverLimitEvent};
use tokio::io::unix::AsyncFd;
use tracing::{info, warn};

use crate::{
    escalate::{Escalation, Kind},
    service::Service,
};

const LOG_EVERY: Duration = Duration::from_secs(5);

/// Sources tracked for "top offenders"; beyond this the least active are forgotten.
const MAX_TRACKED_SOURCES: usize = 4096;

#[derive(Default)]
pub struct EventCounts {
    pub total: u64,
    pub by_source: HashMap<IpAddr, u64>,
}

impl EventCounts {
    pub fn record(&mut self, source: IpAddr) {
        self.total += 1;
        *self.by_source.entry(source).or_default() += 1;
        if self.by_source.len() > MAX_TRACKED_SOURCES {
            self.forget_least_active();
        }
    }

    /// Keeps the more active half, so a flood of new sources costs amortised O(1) per event
    /// rather than a scan of every tracked source per event.
    fn forget_least_active(&mut self) {
        let mut counts: Vec<u64> = self.by_source.values().copied().collect();
        let middle = counts.len() / 2;
        let (_, threshold, _) = counts.select_nth_unstable(middle);
        let threshold = *threshold;
        self.by_source.retain(|_, n| *n > threshold);
    }

    pub fn top(&self, n: usize) -> Vec<SourceEvents> {
        let mut all: Vec<SourceEvents> = self
            .by_source
            .iter()
            .map(|(source, events)| SourceEvents { source: *source, events: *events })
            .collect();
        all.sort_by(|a, b| b.events.cmp(&a.events).then(a.source.cmp(&b.source)));
        all.truncate(n);
        all
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SourceEvents {
    pub source: IpAddr,
    pub events: u64,
}

/// Source address of an event (masked to the configured prefix by the datapath).
pub fn source(ev: &OverLimitEvent) -> IpAddr {
    if ev.family == FAMILY_V4 {
        IpAddr::from([ev.addr[0], ev.addr[1], ev.addr[2], ev.addr[3]])
    } else {
        IpAddr::from(ev.addr)
    }
}

fn decode(bytes: &[u8]) -> Option<OverLimitEvent> {
    (bytes.len() >= size_of::<OverLimitEvent>())
        // SAFETY: length checked; OverLimitEvent is plain data valid for any bytes.
        .then(|| unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<OverLimitEvent>()) })
}

pub async fn drain(ring: RingBuf<MapData>, service: Arc<Service>, escalation: Arc<Escalation>) {
    // SAFETY: the ring buffer owns its fd and keeps it open for as long as the AsyncFd,
    // which owns the ring buffer, lives.
    let mut fd = match unsafe { AsyncFd::register(ring) } {
        Ok(fd) => fd,
        Err(e) => {
            warn!(error = %e, "cannot poll the event ring buffer; over-limit events will not be logged");
            return;
        }
    };
    let mut pending: HashMap<IpAddr, u64> = HashMap::new();
    let mut last_log = Instant::now();
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            if let Some(ev) = decode(&item) {
                let src = source(&ev);
                *pending.entry(src).or_default() += 1;
                service.record_event(src);
                escalation.report(src, Kind::OverlimitEvent, "over_packet_limit");
            }
        }
        guard.clear_ready();
        if last_log.elapsed() >= LOG_EVERY && !pending.is_empty() {
            let mut top: Vec<_> = pending.drain().collect();
            top.sort_by_key(|e| std::cmp::Reverse(e.1));
            top.truncate(5);
            info!(sources = ?top, "sources over their rate limit");
            last_log = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracking_stays_bounded_and_keeps_the_most_active() {
        let mut counts = EventCounts::default();
        let heavy: IpAddr = "198.19.0.1".parse().unwrap();
        for i in 0..20_000u32 {
            counts.record(IpAddr::from((0xc612_0000u32 | i).to_be_bytes()));
            if i % 10 == 0 {
                counts.record(heavy);
            }
        }
        assert!(counts.by_source.len() <= MAX_TRACKED_SOURCES);
        assert_eq!(counts.total, 22_000);
        assert_eq!(counts.top(1), vec![SourceEvents { source: heavy, events: 2_000 }]);
    }
}
