//! The TLS gateway: listeners, and per connection: banned? close → TLS → hyper (HTTP/1.1 or
//! HTTP/2, whichever the client speaks) → [`pipeline`], which takes each request through its
//! stages to the upstream.
//!
//! Everything a reload or a certificate change replaces is held in an [`ArcSwap`] and read
//! once per connection (TLS) or per request (routes, authentication, upstream), so a change
//! never waits for open connections and never disturbs them.

pub mod audit;
pub mod authn;
pub mod authz;
mod fleet_limit;
mod framing;
mod guard;
mod host;
pub mod metrics;
pub mod normalize;
mod pipeline;
pub mod proxy;
pub mod ratelimit;
pub mod respond;
pub mod routes;
pub mod schema;
pub mod settings;
pub mod slots;
pub mod tls;
pub mod validate;

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use rustls::{pki_types::UnixTime, server::danger::ClientCertVerifier};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, error, info, warn};

pub use settings::GatewaySettings;

use self::{
    audit::RequestLog,
    authn::Authenticator,
    framing::H1Scan,
    guard::{Abuse, Activity, Guarded},
    metrics::GatewayMetrics,
    proxy::Upstream,
    routes::Route,
    settings::{ConnLimits, RequestLimits, Timeouts},
    slots::{Slot, Slots, SourceKey},
    tls::TlsSettings,
};
use crate::{
    config::Config,
    escalate::{Escalation, Kind},
    fleet::limits::FleetLimits,
    service::{Reloadable, Service},
};

/// How often certificate files are checked for changes.
const CERT_CHECK: Duration = Duration::from_secs(2);
/// Stream resets HTTP/2 may hold for streams not yet accepted (h2's own guard).
const PENDING_RESET_STREAMS: usize = 20;
/// Streams the gateway may reset for a client's protocol errors before closing.
const LOCAL_ERROR_RESETS: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(
        "gateway listen address {addr}: {source}; is another server on it, or is it not an address of this host?"
    )]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("gateway TLS: {0}")]
    Tls(String),
}

/// What requests are judged by; replaced whole on reload.
#[derive(Debug)]
pub struct Rules {
    pub routes: Vec<Route>,
    pub auth: Authenticator,
    pub limits: RequestLimits,
}

/// The TLS acceptor in use and what it was built from.
struct Tls {
    settings: TlsSettings,
    acceptor: TlsAcceptor,
    stamps: Vec<Option<(SystemTime, u64)>>,
    /// Checks the client certificate a resumed session brings along (see `client_cert`).
    verifier: Option<Arc<dyn ClientCertVerifier>>,
    /// The names the certificates are for, for requests on connections without SNI.
    served: Arc<[String]>,
}

impl Tls {
    fn build(settings: TlsSettings, tickets: &Tickets) -> Result<Tls, String> {
        let stamps = tls::stamps(&settings.files());
        let acceptor = TlsAcceptor::from(settings.server_config(tickets.clone())?);
        let verifier = settings.client_verifier()?;
        let served = settings.served_names().into();
        Ok(Tls { settings, acceptor, stamps, verifier, served })
    }

    /// The client certificate of a finished handshake, if it holds now. rustls restores a
    /// resumed session's certificate from its ticket without verifying it again, so a
    /// certificate that has expired, or whose CA was removed by a reload since, would live
    /// on for the ticket's life: it is verified against the current settings here.
    fn client_cert(&self, session: &rustls::ServerConnection, resumed: bool) -> Option<Vec<u8>> {
        let chain = session.peer_certificates()?;
        let (leaf, rest) = chain.split_first()?;
        if resumed {
            let verifier = self.verifier.as_ref()?;
            verifier.verify_client_cert(leaf, rest, UnixTime::now()).ok()?;
        }
        Some(leaf.as_ref().to_vec())
    }
}

/// The session-ticket keys, made once: a reload or a certificate change must not make
/// every client's ticket useless (the ticketer rotates its keys itself).
type Tickets = Arc<dyn rustls::server::ProducesTickets>;

/// Per-connection settings, read when a connection starts.
#[derive(Clone, Copy, Debug)]
struct ConnSettings {
    timeouts: Timeouts,
    limits: ConnLimits,
    sources: SourceKey,
}

/// What the gateway knows about a client connection.
#[derive(Debug)]
pub struct Conn {
    /// The client's address, IPv4-mapped IPv6 addresses in their IPv4 form.
    pub peer: SocketAddr,
    /// The verified client certificate (DER), under mTLS.
    pub client_cert: Option<Vec<u8>>,
    /// For the idle timer: requests mark themselves in flight.
    pub activity: Arc<Activity>,
    /// The source it counts as (see `SourceKey`).
    pub source: IpAddr,
    /// The hosts its requests may be for.
    pub hosts: host::Expected,
    /// Why the gateway cut the connection, if it did: for the audit of requests it ends.
    pub cut: std::sync::OnceLock<&'static str>,
}

pub struct Gateway {
    rules: ArcSwap<Rules>,
    tls: ArcSwap<Tls>,
    upstream: ArcSwap<Upstream>,
    conn: ArcSwap<ConnSettings>,
    listen: Vec<SocketAddr>,
    service: Arc<Service>,
    escalation: Arc<Escalation>,
    metrics: Arc<GatewayMetrics>,
    log: Arc<RequestLog>,
    slots: Arc<Slots>,
    /// Requests in flight upstream, across upstream changes.
    upstream_slots: Arc<Slots>,
    tickets: Tickets,
    /// The fleet's buckets, for routes limited with `scope = "fleet"` (with `[fleet]`
    /// sharing limits).
    fleet: Option<Arc<FleetLimits>>,
}

impl Gateway {
    pub fn new(
        settings: &GatewaySettings,
        service: Arc<Service>,
        escalation: Arc<Escalation>,
        (metrics, log): (Arc<GatewayMetrics>, Arc<RequestLog>),
        fleet: Option<Arc<FleetLimits>>,
    ) -> Result<Arc<Gateway>, GatewayError> {
        let tickets = tls::ticketer().map_err(GatewayError::Tls)?;
        let upstream_slots = Arc::<Slots>::default();
        let tls = Tls::build(settings.tls.clone(), &tickets).map_err(GatewayError::Tls)?;
        Ok(Arc::new(Gateway {
            tickets,
            rules: ArcSwap::from_pointee(Rules {
                routes: settings.routes.clone(),
                auth: settings.auth.clone(),
                limits: settings.request_limits,
            }),
            tls: ArcSwap::from_pointee(tls),
            upstream: ArcSwap::from_pointee(Upstream::new(
                settings.upstream.clone(),
                upstream_slots.clone(),
            )),
            upstream_slots,
            conn: ArcSwap::from_pointee(ConnSettings {
                timeouts: settings.timeouts,
                limits: settings.limits,
                sources: settings.sources,
            }),
            listen: settings.listen.clone(),
            service,
            escalation,
            metrics,
            log,
            slots: Arc::default(),
            fleet,
        }))
    }

    /// Binds every listen address; any failure is fatal at start.
    pub async fn bind(&self) -> Result<Vec<TcpListener>, GatewayError> {
        let mut listeners = Vec::new();
        for &addr in &self.listen {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| GatewayError::Bind { addr, source })?;
            info!(%addr, "gateway listening");
            listeners.push(listener);
        }
        Ok(listeners)
    }

    /// Serves on `listeners` and watches the certificate files, until the process exits.
    pub fn serve(self: &Arc<Self>, listeners: Vec<TcpListener>) {
        for listener in listeners {
            tokio::spawn(self.clone().accept(listener));
        }
        tokio::spawn(self.clone().watch_certs());
    }

    async fn accept(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "gateway accept failed");
                    tokio::time::sleep(crate::control::ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
            // A banned source costs one lookup and a reset: not a byte of TLS.
            if self.service.refuses(peer.ip()) {
                self.metrics.closed("banned");
                reset(stream);
                continue;
            }
            let settings = **self.conn.load();
            let (limits, source) = (settings.limits, settings.sources.of(peer.ip()));
            let slot = match self.slots.take(
                source,
                limits.max_connections,
                limits.max_connections_per_source,
            ) {
                Ok(slot) => slot,
                Err(full) => {
                    self.metrics.closed(full.reason());
                    reset(stream);
                    continue;
                }
            };
            tokio::spawn(self.clone().connection(stream, peer, source, slot));
        }
    }

    async fn connection(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        source: IpAddr,
        _slot: Slot,
    ) {
        let _ = stream.set_nodelay(true);
        let settings = **self.conn.load();
        let tls_now = self.tls.load_full();
        let acceptor = tls_now.acceptor.clone();
        let tls = match tokio::time::timeout(settings.timeouts.handshake, acceptor.accept(stream))
            .await
        {
            Err(_) => return self.handshake_failed(source, "timeout"),
            Ok(Err(e)) => {
                let outcome = handshake_failure(&e);
                debug!(%peer, error = %e, outcome, "TLS handshake failed");
                return self.handshake_failed(source, outcome);
            }
            Ok(Ok(tls)) => tls,
        };
        let session = tls.get_ref().1;
        let resumed = session.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        self.metrics.handshake(if resumed { "resumed" } else { "ok" });
        let client_cert = tls_now.client_cert(session, resumed);
        if resumed
            && client_cert.is_none()
            && tls_now.settings.client_auth == tls::ClientAuth::Required
        {
            return self.handshake_failed(source, "bad_certificate");
        }
        let activity = Activity::new();
        let hosts = host::Expected::from_sni(session.server_name(), &tls_now.served);
        let conn = Arc::new(Conn {
            peer,
            source,
            client_cert,
            activity: activity.clone(),
            hosts,
            cut: std::sync::OnceLock::new(),
        });
        let (metrics, cut, escalation) =
            (self.metrics.clone(), conn.clone(), self.escalation.clone());
        let log = self.log.clone();
        // The protocol is the one ALPN settled on (HTTP/1.1 without ALPN): hyper is not left
        // to guess it from the first bytes, which the HTTP/1.1 scan holds back until a head
        // is whole.
        let h2 = session.alpn_protocol() == Some(b"h2");
        let max_head = settings.limits.max_header_bytes as usize;
        // Fixed for the connection (the framing scan and hyper's parser are both sized by
        // it): a raised limit applies to new connections, a lowered one at once (each
        // request is checked against the current one in `validate::head`).
        let max_fields = self.rules.load().limits.max_headers as usize;
        let io = Guarded::new(
            tls,
            activity.clone(),
            if h2 { H1Scan::off() } else { H1Scan::new(max_head, max_fields) },
            Box::new(move |abuse| match abuse {
                Abuse::RapidReset => {
                    warn!(%peer, "HTTP/2 connection cut: stream resets over budget");
                    let _ = cut.cut.set("rapid_reset");
                    metrics.closed("rapid_reset");
                    escalation.report(source, Kind::ValidationFailure, "rapid_reset");
                }
                // A body refused midway fails its request, which the pipeline answers,
                // audits and counts.
                Abuse::Framing(refused) if refused.in_body => metrics.closed("bad_framing"),
                Abuse::Framing(refused) => {
                    debug!(%peer, why = refused.why, "HTTP/1.1 head refused");
                    metrics.closed("bad_framing");
                    let code = refused.code;
                    log.record(audit::Line::refused(peer.ip(), refused.status, code, refused.why));
                    escalation.report(source, Kind::ValidationFailure, code);
                }
            }),
        );
        let gateway = self.clone();
        let on_conn = conn.clone();
        let service =
            service_fn(move |req| pipeline::handle(gateway.clone(), on_conn.clone(), req));
        let builder = http_builder(&settings, h2, max_fields);
        let served = builder.serve_connection(TokioIo::new(io), service);
        // Closed gracefully once it has been idle (see `Activity::quiet`) for `idle`; dropped
        // if it is still open after another `idle`.
        let idle = settings.timeouts.idle;
        let mut served = std::pin::pin!(served);
        let mut tick = tokio::time::interval(
            (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(1)),
        );
        let mut closing = false;
        loop {
            tokio::select! {
                ended = served.as_mut() => return self.ended(source, &activity, ended),
                _ = tick.tick() => {
                    // A source banned while connected is cut at the next tick.
                    if self.service.refuses(peer.ip()) {
                        let _ = conn.cut.set("banned");
                        self.metrics.closed("banned");
                        return;
                    }
                    let quiet = activity.quiet();
                    if !closing && quiet >= idle {
                        served.as_mut().graceful_shutdown();
                        closing = true;
                    } else if closing && quiet >= idle * 2 {
                        let _ = conn.cut.set("idle");
                        return;
                    }
                }
            }
        }
    }

    /// Counts a failed handshake. Only bytes that are not TLS, or TLS no client of this
    /// gateway could speak, count toward the client's escalation: not a connection closed
    /// early (port scanners, load balancer probes and impatient clients do it all day), a
    /// timeout (an overloaded gateway causes those), an alert (a client refusing our
    /// certificate, after an operator's mistake), or a refused client certificate (an
    /// expired one, or a CA an operator removed).
    fn handshake_failed(&self, source: IpAddr, outcome: &'static str) {
        self.metrics.handshake(outcome);
        if matches!(outcome, "protocol" | "incompatible") {
            self.escalation.report(source, Kind::TlsFailure, outcome);
        }
    }

    /// A connection hyper ended with an error: a head begun but not finished within the
    /// header timeout (slowloris: not a keep-alive connection at rest, whose timer runs too),
    /// or one hyper could not parse, counts against the client.
    fn ended(
        &self,
        source: IpAddr,
        activity: &Activity,
        ended: Result<(), Box<dyn std::error::Error + Send + Sync>>,
    ) {
        let Err(e) = ended else { return };
        let Some(e) = e.downcast_ref::<hyper::Error>() else { return };
        let what = if e.is_timeout() && activity.mid_head() {
            "header_timeout"
        } else if !e.is_timeout() && (e.is_parse() || e.is_parse_too_large()) {
            "malformed_head"
        } else {
            return;
        };
        debug!(%source, error = %e, "HTTP connection ended by the client's fault");
        self.escalation.report(source, Kind::ValidationFailure, what);
    }

    async fn watch_certs(self: Arc<Self>) {
        let mut tick = tokio::time::interval(CERT_CHECK);
        let mut failed = None;
        loop {
            tick.tick().await;
            let current = self.tls.load_full();
            let now = tls::stamps(&current.settings.files());
            if now == current.stamps || failed.as_ref() == Some(&now) {
                continue;
            }
            match current.settings.reload().and_then(|s| Tls::build(s, &self.tickets)) {
                Ok(fresh) => {
                    // Unless a `secgate reload` replaced the settings meanwhile: then its
                    // files are the ones to serve, and the next check looks at them.
                    let before = self.tls.compare_and_swap(&current, Arc::new(fresh));
                    if Arc::ptr_eq(&before, &current) {
                        info!("gateway certificates changed on disk; new connections get them");
                    }
                    failed = None;
                }
                Err(e) => {
                    error!(
                        "gateway certificates changed on disk but cannot be used, the old ones stay: {e}"
                    );
                    failed = Some(now);
                }
            }
        }
    }
}

/// Closes a connection with a reset: no FIN handshake, no TIME_WAIT kept for it.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// hyper for one connection: HTTP/2, or HTTP/1.1 parsing at most `max_fields` header
/// fields (the framing scan refuses more first).
fn http_builder(
    settings: &ConnSettings,
    h2: bool,
    max_fields: usize,
) -> auto::Builder<TokioExecutor> {
    let builder = auto::Builder::new(TokioExecutor::new());
    let mut builder = if h2 { builder.http2_only() } else { builder.http1_only() };
    let header_bytes = settings.limits.max_header_bytes;
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.timeouts.header)
        .max_buf_size(header_bytes as usize)
        .max_headers(max_fields)
        // A head refused after pipelined requests ends the client's stream (see `guard`):
        // the answers already owed are still written, then the refusal.
        .half_close(true)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.limits.max_concurrent_streams)
        .max_header_list_size(header_bytes)
        .max_pending_accept_reset_streams(PENDING_RESET_STREAMS)
        .max_local_error_reset_streams(LOCAL_ERROR_RESETS);
    builder
}

/// The metrics label for a failed handshake.
fn handshake_failure(e: &std::io::Error) -> &'static str {
    use rustls::Error as E;
    match e.get_ref().and_then(|inner| inner.downcast_ref::<E>()) {
        Some(E::PeerIncompatible(_)) => "incompatible",
        Some(E::NoCertificatesPresented) => "no_certificate",
        Some(E::InvalidCertificate(_)) => "bad_certificate",
        Some(E::AlertReceived(_)) => "alert",
        Some(E::InvalidMessage(_) | E::PeerMisbehaved(_) | E::InappropriateMessage { .. }) => {
            "protocol"
        }
        Some(E::InappropriateHandshakeMessage { .. }) => "protocol",
        Some(_) => "other",
        None if e.kind() == std::io::ErrorKind::UnexpectedEof => "eof",
        None => "io",
    }
}

/// Takes the gateway's part of a reload: refused if the listen addresses changed (they are
/// bound once, at start); otherwise new routes, keys, certificates and upstream together.
pub struct GatewayReload(pub Arc<Gateway>);

impl Reloadable for GatewayReload {
    fn prepare(&self, config: &Config) -> Result<Box<dyn FnOnce() + Send>, String> {
        let gateway = self.0.clone();
        let Some(g) = &config.gateway else {
            return Err(
                "the config no longer has a [gateway]; stopping the gateway needs a restart".into(),
            );
        };
        if g.listen != gateway.listen {
            return Err("gateway.listen changed; listen addresses change only on restart".into());
        }
        let tls = Tls::build(g.tls.clone(), &gateway.tickets)?;
        let upstream = (g.upstream != *gateway.upstream.load().settings())
            .then(|| Upstream::new(g.upstream.clone(), gateway.upstream_slots.clone()));
        let rules =
            Rules { routes: g.routes.clone(), auth: g.auth.clone(), limits: g.request_limits };
        let conn = ConnSettings { timeouts: g.timeouts, limits: g.limits, sources: g.sources };
        Ok(Box::new(move || {
            gateway.rules.store(Arc::new(rules));
            gateway.tls.store(Arc::new(tls));
            if let Some(upstream) = upstream {
                gateway.upstream.store(Arc::new(upstream));
            }
            gateway.conn.store(Arc::new(conn));
        }))
    }
}

/// Stands for the gateway in a daemon started without one: a reload cannot add it.
pub struct NoGateway;

impl Reloadable for NoGateway {
    fn prepare(&self, config: &Config) -> Result<Box<dyn FnOnce() + Send>, String> {
        match config.gateway {
            Some(_) => {
                Err("the config gained a [gateway]; starting the gateway needs a restart".into())
            }
            None => Ok(Box::new(|| {})),
        }
    }
}
