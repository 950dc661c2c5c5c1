//! How fast escalation bans take effect: the time from the offence that tripped a ban to
//! the ban being in the kernel's deny map, as a Prometheus histogram and as the quantiles of
//! the recent bans that `secgate status` shows. Bans that `monitor` mode only reports are
//! kept apart, for `status` to list who would have been banned.

use std::{
    collections::VecDeque,
    sync::Mutex,
    time::{Duration, SystemTime},
};

use ipnet::IpNet;
use prometheus_client::metrics::histogram::Histogram;

use crate::views::{EnforcementView, WouldBanView};

/// Latencies kept for the quantiles in `status`.
const RECENT: usize = 4096;
/// Would-be bans kept for `status`.
const WOULD_BAN: usize = 64;

#[derive(Debug)]
pub struct Enforcement {
    pub histogram: Histogram,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    bans: u64,
    recent: VecDeque<Duration>,
    max: Duration,
    would_ban: VecDeque<WouldBanView>,
    would_ban_total: u64,
}

impl Default for Enforcement {
    fn default() -> Enforcement {
        Enforcement {
            histogram: Histogram::new([
                25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 0.1, 1.0,
            ]),
            inner: Mutex::default(),
        }
    }
}

impl Enforcement {
    pub fn observe(&self, latency: Duration) {
        self.histogram.observe(latency.as_secs_f64());
        let mut inner = self.lock();
        inner.bans += 1;
        inner.max = inner.max.max(latency);
        if inner.recent.len() == RECENT {
            inner.recent.pop_front();
        }
        inner.recent.push_back(latency);
    }

    pub fn would_ban(&self, cidr: IpNet, rule: &str, ttl: Duration, reason: &str) {
        let mut inner = self.lock();
        inner.would_ban_total += 1;
        inner.would_ban.retain(|w| w.cidr != cidr);
        if inner.would_ban.len() == WOULD_BAN {
            inner.would_ban.pop_front();
        }
        inner.would_ban.push_back(WouldBanView {
            cidr,
            rule: rule.to_owned(),
            ttl_secs: ttl.as_secs_f64(),
            reason: reason.to_owned(),
            at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        });
    }

    /// Sorts outside the lock: the escalation's real-time worker takes it for every ban.
    pub fn view(&self) -> EnforcementView {
        let (mut sorted, bans, max, would_ban_total, would_ban) = {
            let inner = self.lock();
            let recent: Vec<Duration> = inner.recent.iter().copied().collect();
            let would_ban: Vec<WouldBanView> = inner.would_ban.iter().rev().cloned().collect();
            (recent, inner.bans, inner.max, inner.would_ban_total, would_ban)
        };
        sorted.sort_unstable();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let quantile = |q: f64| {
            let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len().max(1));
            sorted.get(rank - 1).copied().map(ms)
        };
        EnforcementView {
            bans,
            p50_ms: quantile(0.5),
            p99_ms: quantile(0.99),
            max_ms: (bans > 0).then(|| ms(max)),
            would_ban_total,
            would_ban,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_of_the_recent_bans_and_would_bans_are_listed_newest_first() {
        let e = Enforcement::default();
        assert_eq!(e.view().p99_ms, None);
        for us in 1..=100u64 {
            e.observe(Duration::from_micros(us * 10));
        }
        let v = e.view();
        assert_eq!(v.bans, 100);
        assert_eq!(v.p50_ms, Some(0.5));
        assert_eq!(v.p99_ms, Some(0.99));
        assert_eq!(v.max_ms, Some(1.0));
        let (a, b) = ("198.18.0.1/32".parse().unwrap(), "198.18.0.2/32".parse().unwrap());
        e.would_ban(a, "auth_failures", Duration::from_secs(60), "x");
        e.would_ban(b, "auth_failures", Duration::from_secs(60), "y");
        e.would_ban(a, "auth_failures", Duration::from_secs(120), "z");
        let v = e.view();
        assert_eq!(v.would_ban_total, 3);
        assert_eq!(v.would_ban.iter().map(|w| w.cidr).collect::<Vec<_>>(), vec![a, b]);
        assert_eq!(v.would_ban[0].ttl_secs, 120.0);
    }
}
