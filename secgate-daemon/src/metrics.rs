//! Prometheus text metrics on a local admin listener. Values are read through the service at
//! scrape time by a collector, so a scrape always shows the live state; no value walks a
//! map, so a scrape costs the same with one source or a million.

use std::{sync::Arc, time::Duration};

use tokio::sync::Semaphore;

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode, body::Bytes, server::conn::http1, service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use tracing::warn;

use crate::service::Service;

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

struct DaemonCollector(Arc<Service>);

impl std::fmt::Debug for DaemonCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DaemonCollector")
    }
}

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    families: &[(Vec<(&str, String)>, u64)],
) -> std::fmt::Result {
    let mut metric = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in families {
        ConstCounter::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> std::fmt::Result {
    ConstGauge::new(value).encode(enc.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

impl Collector for DaemonCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let service = &self.0;
        if let Ok(stats) = service.stats() {
            let by = |f: fn(&crate::views::Traffic) -> u64| -> Vec<(Vec<(&str, String)>, u64)> {
                stats.reasons.iter().map(|(r, t)| (vec![("reason", r.clone())], f(t))).collect()
            };
            counter(
                &mut enc,
                "secgate_datapath_packets",
                "Packets judged by the XDP program, by verdict reason",
                &by(|t| t.packets),
            )?;
            counter(
                &mut enc,
                "secgate_datapath_bytes",
                "Bytes judged by the XDP program, by verdict reason",
                &by(|t| t.bytes),
            )?;
            counter(
                &mut enc,
                "secgate_datapath_dropped_packets",
                "Packets the XDP program dropped",
                &[(vec![], stats.dropped.packets)],
            )?;
            gauge(
                &mut enc,
                "secgate_monitor_mode",
                "1 while the datapath only counts (monitor mode)",
                i64::from(stats.mode == crate::config::Mode::Monitor),
            )?;
        }
        if let Ok(s) = service.status() {
            gauge(&mut enc, "secgate_bans_active", "Active denylist entries", s.bans as i64)?;
            gauge(&mut enc, "secgate_allow_entries", "Allowlist entries", s.allow as i64)?;
            gauge(
                &mut enc,
                "secgate_limit_overrides",
                "Per-protocol/port limit overrides",
                s.overrides as i64,
            )?;
            gauge(
                &mut enc,
                "secgate_sources_tracked",
                "Limiter buckets in use (buckets created, capped at the map's capacity)",
                s.sources as i64,
            )?;
            counter(
                &mut enc,
                "secgate_source_buckets_created",
                "Limiter buckets the XDP program created (new sources seen)",
                &[(vec![], s.buckets_created)],
            )?;
            counter(
                &mut enc,
                "secgate_source_buckets_evicted",
                "Limiter buckets pushed out while still limiting (more sources than max_sources)",
                &[(vec![], s.buckets_evicted)],
            )?;
            let attached = s.attachments.iter().filter(|a| a.state == "attached").count();
            gauge(
                &mut enc,
                "secgate_interfaces_attached",
                "Configured interfaces with the XDP program attached",
                attached as i64,
            )?;
            let waiting = s.attachments.iter().filter(|a| a.state == "waiting").count();
            gauge(
                &mut enc,
                "secgate_interfaces_waiting",
                "Configured interfaces that do not exist (yet)",
                waiting as i64,
            )?;
            gauge(
                &mut enc,
                "secgate_interfaces_failed",
                "Configured interfaces that exist but would not take the XDP program",
                (s.attachments.len() - attached - waiting) as i64,
            )?;
        }
        let journal = service.journal_stats();
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        counter(
            &mut enc,
            "secgate_state_commits",
            "State-file writes (each one fsync'd; concurrent changes share one)",
            &[(vec![], load(&journal.commits))],
        )?;
        counter(
            &mut enc,
            "secgate_state_committed_changes",
            "Policy changes carried by those writes",
            &[(vec![], load(&journal.committed_changes))],
        )?;
        counter(
            &mut enc,
            "secgate_state_commit_failures",
            "State-file writes that failed (the changes stayed in force)",
            &[(vec![], load(&journal.failures))],
        )?;
        let changes: Vec<(Vec<(&str, String)>, u64)> = service
            .changes()
            .into_iter()
            .map(|((action, caller, ok), n)| {
                let outcome = if ok { "ok" } else { "error" };
                (
                    vec![
                        ("action", action.into()),
                        ("caller", caller.into()),
                        ("outcome", outcome.into()),
                    ],
                    n,
                )
            })
            .collect();
        counter(
            &mut enc,
            "secgate_policy_changes",
            "Policy changes through the service layer, by action, caller and outcome",
            &changes,
        )?;
        let events = service.events().total;
        counter(
            &mut enc,
            "secgate_overlimit_events",
            "Over-limit events received from the datapath",
            &[(vec![], events)],
        )?;
        let actions: Vec<(Vec<(&str, String)>, u64)> = service
            .actions()
            .into_iter()
            .map(|((action, ok), n)| {
                (vec![("action", action), ("outcome", if ok { "ok" } else { "error" }.into())], n)
            })
            .collect();
        counter(
            &mut enc,
            "secgate_control_actions",
            "Control requests served, by action and outcome",
            &actions,
        )
    }
}

/// Scrapes served at once; further connections are closed at once. Anyone on the host can
/// connect, so no number of connections may starve the daemon of descriptors.
const MAX_CONNECTIONS: usize = 64;
/// A connection that has not sent its request headers by then is closed, so idle
/// connections cannot hold the slots for long.
const HEADER_DEADLINE: Duration = Duration::from_secs(2);
/// A connection gets one request and this long to send it and read the answer.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(10);

/// A registry with the daemon's metrics; the gateway adds its own.
pub fn registry(service: Arc<Service>) -> Registry {
    let mut registry = Registry::default();
    registry.register(
        "secgate_escalation_enforcement_seconds",
        "Time from the offence that tripped an escalation ban to the ban being in the kernel's deny map",
        service.enforcement().histogram.clone(),
    );
    registry.register_collector(Box::new(DaemonCollector(service)));
    registry
}

/// Serves `GET /metrics` from `registry` on `listener` until the process exits. The caller
/// binds, so that the endpoint answers before the daemon reports itself ready.
pub async fn serve(listener: tokio::net::TcpListener, registry: Registry) {
    let registry = Arc::new(registry);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(crate::control::ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let registry = registry.clone();
                async move { Ok::<_, std::convert::Infallible>(respond(&req, &registry)) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_DEADLINE)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), svc);
            let _ = tokio::time::timeout(CONNECTION_DEADLINE, conn).await;
            drop(slot);
        });
    }
}

fn respond(req: &Request<hyper::body::Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    let plain = |status, body: &str| {
        Response::builder()
            .status(status)
            .header("content-type", "text/plain; charset=utf-8")
            .header("x-content-type-options", "nosniff")
            .body(Full::new(Bytes::from(body.to_owned())))
            .expect("static response")
    };
    if req.method() != Method::GET || req.uri().path() != "/metrics" {
        return plain(StatusCode::NOT_FOUND, "not found; metrics are at GET /metrics\n");
    }
    let mut body = String::new();
    if prometheus_client::encoding::prometheus_text::encode(&mut body, registry).is_err() {
        return plain(StatusCode::INTERNAL_SERVER_ERROR, "encoding metrics failed\n");
    }
    Response::builder()
        .header("content-type", CONTENT_TYPE)
        .header("x-content-type-options", "nosniff")
        .body(Full::new(Bytes::from(body)))
        .expect("static response")
}
