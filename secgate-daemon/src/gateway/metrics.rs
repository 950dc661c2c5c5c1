//! The gateway's Prometheus metrics, registered next to the datapath's: requests by route,
//! status and decision; TLS handshakes by outcome; upstream latency; refused connections;
//! request-audit lines lost.

use std::sync::Arc;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

use super::audit::RequestLog;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub status: u16,
    pub decision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    /// `ok`, `resumed`, or why it failed (`timeout`, `incompatible`, `no_certificate`,
    /// `bad_certificate`, `alert`, `protocol`, `eof`, `io`, `other`).
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClosedLabels {
    /// `banned` (at accept, or later when the source is banned while connected),
    /// `connection_limit`, `source_connection_limit` or `rapid_reset`.
    pub reason: String,
}

#[derive(Debug)]
pub struct GatewayMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub handshakes: Family<HandshakeLabels, Counter>,
    pub upstream_seconds: Histogram,
    /// Connections the gateway closed itself, by reason.
    pub closed: Family<ClosedLabels, Counter>,
}

impl Default for GatewayMetrics {
    fn default() -> GatewayMetrics {
        GatewayMetrics {
            requests: Family::default(),
            handshakes: Family::default(),
            upstream_seconds: Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            closed: Family::default(),
        }
    }
}

impl GatewayMetrics {
    /// Registers every metric in `registry`, the request-audit loss counter read from `log`.
    pub fn register(self: &Arc<Self>, registry: &mut Registry, log: Arc<RequestLog>) {
        registry.register(
            "secgate_gateway_requests",
            "Requests, by route, status and decision",
            self.requests.clone(),
        );
        registry.register(
            "secgate_gateway_tls_handshakes",
            "TLS handshakes, by outcome",
            self.handshakes.clone(),
        );
        registry.register(
            "secgate_gateway_upstream_seconds",
            "Time from sending a request upstream to its response headers",
            self.upstream_seconds.clone(),
        );
        registry.register(
            "secgate_gateway_connections_closed",
            "Connections the gateway closed: from banned sources (before any TLS byte), over the connection limit, or cut for HTTP/2 abuse",
            self.closed.clone(),
        );
        registry.register_collector(Box::new(LostLines(log)));
    }

    pub fn closed(&self, reason: &str) {
        self.closed.get_or_create(&ClosedLabels { reason: reason.to_owned() }).inc();
    }

    pub fn handshake(&self, outcome: &str) {
        self.handshakes.get_or_create(&HandshakeLabels { outcome: outcome.to_owned() }).inc();
    }
}

/// Request-audit lines lost to a full queue, read from the log at scrape time.
#[derive(Debug)]
struct LostLines(Arc<RequestLog>);

impl prometheus_client::collector::Collector for LostLines {
    fn encode(&self, mut enc: prometheus_client::encoding::DescriptorEncoder) -> std::fmt::Result {
        use prometheus_client::encoding::EncodeMetric as _;
        let counter = prometheus_client::metrics::counter::ConstCounter::new(self.0.lost());
        let metric = enc.encode_descriptor(
            "secgate_gateway_audit_lost",
            "Request-audit lines dropped because the writer fell behind",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        counter.encode(metric)
    }
}
