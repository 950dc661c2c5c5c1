//! Drains over-limit events from the datapath's ring buffer: counts them per source and logs
//! a summary at most once per `LOG_EVERY`, so an attack cannot turn into a log flood.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use secgate_common::maps::{FAMILY_V4, OverLimitEvent};
use tokio::io::unix::AsyncFd;
use tracing::{info, warn};

use crate::shared::Shared;

const LOG_EVERY: Duration = Duration::from_secs(5);

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

pub async fn drain(ring: RingBuf<MapData>, shared: Arc<Shared>) {
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
                shared.events().record(src);
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
