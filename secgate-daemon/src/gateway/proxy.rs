//! Forwarding to the upstream over pooled keep-alive HTTP/1.1 connections, bodies streamed
//! both ways. The upstream gets the normalized path; the gateway sets `X-Forwarded-For`,
//! `X-Forwarded-Proto`, `X-Forwarded-Host` and `Forwarded` itself (replacing whatever the
//! client sent, which would otherwise let it claim any address), and hop-by-hop headers are
//! dropped in both directions.

use std::{
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{
    HeaderMap, HeaderName, HeaderValue, Request, Response, Uri, Version,
    header::{self, HOST},
    uri::{Authority, Scheme},
};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

use super::{
    guard::Activity,
    respond::{Body, Rejection},
    slots::Slots,
    validate,
};

/// Where requests go, and how long the upstream may take to answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamSettings {
    pub scheme: Scheme,
    pub authority: Authority,
    pub timeout: Duration,
}

impl UpstreamSettings {
    /// Parses `http://host:port` (the only scheme so far).
    pub fn parse(url: &str, timeout: Duration) -> Result<UpstreamSettings, String> {
        let uri: Uri = url.parse().map_err(|e| format!("upstream {url:?}: {e}"))?;
        if uri.scheme() != Some(&Scheme::HTTP) {
            return Err(format!("upstream {url:?}: only http:// upstreams are supported"));
        }
        if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
            return Err(format!("upstream {url:?}: give only scheme, host and port"));
        }
        let authority =
            uri.authority().cloned().ok_or_else(|| format!("upstream {url:?}: no host"))?;
        Ok(UpstreamSettings { scheme: Scheme::HTTP, authority, timeout })
    }
}

/// A request body on its way upstream: the client's, limited while it streams, or one the
/// gateway has read and checked.
pub type UpBody =
    http_body_util::combinators::BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// The client's body, streamed upstream and cut at `limit` bytes; its frames count as the
/// connection's progress, and its failure (malformed chunked framing) is told apart from
/// the upstream's through `origin.client_body_failed`.
pub fn streaming(body: Incoming, origin: &Origin, limit: u64) -> UpBody {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut tracked = Tracked::new(body, origin.activity.clone(), ());
    tracked.failed = Some(origin.client_body_failed.clone());
    http_body_util::Limited::new(tracked, limit).boxed()
}

/// A body the gateway has already read whole.
pub fn buffered(bytes: Bytes) -> UpBody {
    http_body_util::Full::new(bytes).map_err(|never| match never {}).boxed()
}

pub struct Upstream {
    client: Client<HttpConnector, UpBody>,
    settings: UpstreamSettings,
    /// One slot per request in flight upstream, held until its response body is done;
    /// shared by every `Upstream` the gateway makes, so a reload does not double them.
    in_flight: Arc<Slots>,
}

/// Requests in flight to the upstream at most, and from one source; more get 503 at once.
/// Each holds an upstream socket and descriptors, which 10,000 client connections × 100
/// streams would exhaust, and one source must not hold them all (by reading its responses
/// slowly, say).
pub const MAX_UPSTREAM_IN_FLIGHT: u32 = 4096;
pub const MAX_UPSTREAM_IN_FLIGHT_PER_SOURCE: u32 = MAX_UPSTREAM_IN_FLIGHT / 16;
/// Idle keep-alive connections kept to the upstream.
const MAX_IDLE_UPSTREAM: usize = 256;

/// What the gateway knows about the connection a request came on.
pub struct Origin {
    pub client: IpAddr,
    /// The client as a source is counted (see `SourceKey`).
    pub source: IpAddr,
    /// The host the client asked for (`Host`, or the HTTP/2 `:authority`), checked.
    pub host: Option<String>,
    /// Where the request's body frames count as progress.
    pub activity: Arc<Activity>,
    /// Set if the client's body failed on its way upstream.
    pub client_body_failed: Arc<AtomicBool>,
}

const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// HTTP/2 clients may split `Cookie` into several fields; an HTTP/1.1 upstream must get
/// them as one, joined by `; ` (RFC 9113 §8.2.3).
fn join_cookies(headers: &mut HeaderMap) {
    if headers.get_all(header::COOKIE).iter().nth(1).is_none() {
        return;
    }
    let joined: Vec<u8> = headers
        .get_all(header::COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect::<Vec<_>>()
        .join(&b"; "[..]);
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

/// Drops hop-by-hop headers: the fixed ones, `Upgrade`, and those `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    remove_where(headers, |name| {
        HOP_BY_HOP.contains(name) || named.contains(name) || *name == header::UPGRADE
    });
}

/// Removes every field whose name `doomed` picks. Looks at the names the request has (a
/// handful) rather than removing each name it might have: a removal by name parses and
/// hashes that name, and 27 forgeable names, removed one by one, were 5% of the gateway's
/// CPU per proxied request.
fn remove_where(headers: &mut HeaderMap, doomed: impl Fn(&HeaderName) -> bool) {
    let names: Vec<HeaderName> = headers.keys().filter(|n| doomed(n)).cloned().collect();
    for name in names {
        headers.remove(name);
    }
}

impl Upstream {
    pub fn new(settings: UpstreamSettings, in_flight: Arc<Slots>) -> Upstream {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(settings.timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(MAX_IDLE_UPSTREAM)
            .build(connector);
        Upstream { client, settings, in_flight }
    }

    pub fn settings(&self) -> &UpstreamSettings {
        &self.settings
    }

    /// Sends `req` (with `path` as its path, its body cut at `body_limit` bytes) upstream
    /// and streams the answer back.
    pub async fn forward(
        &self,
        req: Request<UpBody>,
        path: &str,
        body_limit: u64,
        origin: &Origin,
    ) -> Result<Response<Body>, Rejection> {
        let slot = self
            .in_flight
            .take(origin.source, MAX_UPSTREAM_IN_FLIGHT, MAX_UPSTREAM_IN_FLIGHT_PER_SOURCE)
            .map_err(|_| Rejection::upstream_busy())?;
        let (mut parts, body) = req.into_parts();
        let path_and_query = match parts.uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path.to_owned(),
        };
        parts.uri = Uri::builder()
            .scheme(self.settings.scheme.clone())
            .authority(self.settings.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .map_err(|e| Rejection::internal(format!("upstream URI: {e}")))?;
        parts.version = Version::HTTP_11;
        strip_hop_by_hop(&mut parts.headers);
        join_cookies(&mut parts.headers);
        set_forwarded(&mut parts.headers, origin);
        let request = Request::from_parts(parts, body);
        let answer =
            tokio::time::timeout(self.settings.timeout, self.client.request(request)).await;
        let response = match answer {
            Err(_) => return Err(Rejection::gateway_timeout()),
            Ok(Err(e)) if validate::over_limit(&e) => return Err(validate::too_large(body_limit)),
            Ok(Err(_)) if origin.client_body_failed.load(Ordering::Relaxed) => {
                return Err(validate::framing("a malformed request body"));
            }
            Ok(Err(e)) => return Err(Rejection::bad_gateway(e.to_string())),
            Ok(Ok(r)) => r,
        };
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let body = Tracked::new(body, origin.activity.clone(), slot);
        Ok(Response::from_parts(parts, body.boxed()))
    }
}

/// Headers a client may not send through the gateway: claims about the client or the
/// connection that only the gateway can make, the real request path as some frameworks
/// (IIS, Symfony, Zend) read it, and method overrides (Express, Laravel, Symfony), either of
/// which would let a client reach a route or method other than the one authorized.
const FORGEABLE: &[&str] = &[
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "forwarded",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "x-cluster-client-ip",
    "cf-connecting-ip",
    "x-forwarded-scheme",
    "x-forwarded-ssl",
    "x-forwarded-uri",
    "front-end-https",
    "client-ip",
    "forwarded-for",
    "x-original-host",
    "x-host",
    "x-original-url",
    "x-original-uri",
    "x-rewrite-url",
    "x-original-method",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Replaces the client's forwarding headers with the gateway's own account.
fn set_forwarded(headers: &mut HeaderMap, origin: &Origin) {
    remove_where(headers, |name| FORGEABLE.contains(&name.as_str()));
    let ip = origin.client.to_string();
    let node = if origin.client.is_ipv6() { format!("\"[{ip}]\"") } else { ip.clone() };
    let mut forwarded = format!("for={node};proto=https");
    if let Some(host) = origin.host.as_deref().filter(|h| HeaderValue::from_str(h).is_ok()) {
        headers.insert(HOST, HeaderValue::from_str(host).expect("checked"));
        headers.insert("x-forwarded-host", HeaderValue::from_str(host).expect("checked"));
        // A host is a token or a quoted string in `Forwarded` (RFC 7239).
        forwarded.push_str(&format!(";host=\"{}\"", host.replace(['"', '\\'], "")));
    }
    let value =
        |s: &str| HeaderValue::from_str(s).expect("addresses and checked hosts are header-safe");
    headers.insert("x-forwarded-for", value(&ip));
    headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
    headers.insert("forwarded", value(&forwarded));
}

/// A proxied body, either way: each data frame counts as progress of its connection's
/// request (for the idle timer), and `held` (an upstream slot) is kept until the last byte
/// is through or the body is dropped, not only until the response head is.
pub struct Tracked<B, G> {
    inner: B,
    activity: Arc<Activity>,
    _held: G,
    /// Set when the inner body is malformed (a client's invalid chunked framing).
    failed: Option<Arc<AtomicBool>>,
}

impl<B, G> Tracked<B, G> {
    pub fn new(inner: B, activity: Arc<Activity>, held: G) -> Tracked<B, G> {
        Tracked { inner, activity, _held: held, failed: None }
    }
}

impl<B, G> Drop for Tracked<B, G> {
    fn drop(&mut self) {
        self.activity.progress();
    }
}

impl<B, G> hyper::body::Body for Tracked<B, G>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::error::Error + 'static,
    G: Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, B::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(Some(Ok(frame))) if frame.is_data() => self.activity.progress(),
            // Only a malformed body is the client's fault; one cut short is the client
            // going away.
            std::task::Poll::Ready(Some(Err(e))) if validate::malformed(e) => {
                if let Some(failed) = &self.failed {
                    failed.store(true, Ordering::Relaxed);
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_forged_forwarding_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("close, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        h.insert("forwarded", HeaderValue::from_static("for=1.2.3.4"));
        h.insert("x-keep", HeaderValue::from_static("yes"));
        for name in FORGEABLE {
            h.append(*name, HeaderValue::from_static("forged"));
        }
        strip_hop_by_hop(&mut h);
        set_forwarded(
            &mut h,
            &Origin {
                client: "fd00::7".parse().unwrap(),
                source: "fd00::".parse().unwrap(),
                host: Some("api.test".into()),
                activity: Activity::new(),
                client_body_failed: Arc::default(),
            },
        );
        for gone in
            ["connection", "x-secret", "keep-alive", "transfer-encoding"].iter().chain(FORGEABLE)
        {
            assert!(h.get_all(*gone).iter().all(|v| v != "forged" && v != "1"), "{gone}");
        }
        assert!(!h.contains_key("x-http-method-override") && !h.contains_key("true-client-ip"));
        assert_eq!(h["x-forwarded-for"], "fd00::7");
        assert_eq!(h["forwarded"], "for=\"[fd00::7]\";proto=https;host=\"api.test\"");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-keep"], "yes");
    }

    #[test]
    fn split_cookies_are_joined_for_http1() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        join_cookies(&mut h);
        assert_eq!(h.get_all(header::COOKIE).iter().collect::<Vec<_>>(), ["a=1; b=2"]);
    }

    #[test]
    fn only_plain_http_upstreams() {
        let t = Duration::from_secs(1);
        assert!(UpstreamSettings::parse("http://127.0.0.1:8080", t).is_ok());
        assert!(UpstreamSettings::parse("https://x", t).unwrap_err().contains("only http://"));
        assert!(UpstreamSettings::parse("http://x/api", t).unwrap_err().contains("only scheme"));
    }
}
