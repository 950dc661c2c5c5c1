//! Prometheus text metrics on a local admin listener. Values are read from the maps and the
//! shared counters at scrape time by a collector, so a scrape always shows the live state.

use std::{net::SocketAddr, sync::Arc};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode, body::Bytes, server::conn::http1, service::service_fn,
};
use hyper_util::rt::TokioIo;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use tracing::{info, warn};

use crate::shared::Shared;

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

struct DaemonCollector(Arc<Shared>);

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
        let shared = &self.0;
        let (stats, status) = {
            let p = shared.policy();
            (p.stats().ok(), p.status().ok())
        };
        if let Some(stats) = stats {
            let by = |f: fn(&crate::policy::Traffic) -> u64| -> Vec<(Vec<(&str, String)>, u64)> {
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
        if let Some(s) = status {
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
                "Limiter buckets in use (SG_SOURCES occupancy)",
                s.sources as i64,
            )?;
            gauge(
                &mut enc,
                "secgate_interfaces_attached",
                "Interfaces with the XDP program attached",
                s.attachments.len() as i64,
            )?;
        }
        let events = shared.events().total;
        counter(
            &mut enc,
            "secgate_overlimit_events",
            "Over-limit events received from the datapath",
            &[(vec![], events)],
        )?;
        let actions: Vec<(Vec<(&str, String)>, u64)> = shared
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

/// Serves `GET /metrics` on `addr` until the process exits.
pub async fn serve(addr: SocketAddr, shared: Arc<Shared>) -> std::io::Result<()> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(DaemonCollector(shared)));
    let registry = Arc::new(registry);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    info!(%addr, "metrics endpoint ready");
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "metrics accept failed");
                continue;
            }
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let registry = registry.clone();
                async move { Ok::<_, std::convert::Infallible>(respond(&req, &registry)) }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
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
