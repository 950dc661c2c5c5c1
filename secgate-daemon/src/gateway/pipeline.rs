//! A request's way through the gateway, stage by stage in one function: normalize the path,
//! find the route, check the source, authenticate, authorize, forward. Each stage either
//! hands on or refuses with a [`Rejection`]; every request, either way, ends as one audit
//! line and one count.

use std::{convert::Infallible, sync::Arc, time::Instant};

use bytes::Bytes;
use http::{Request, Response, header::AUTHORIZATION};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;

use super::{
    Conn, Gateway,
    audit::Line,
    authn::{Method, Principal},
    authz, host,
    metrics::RequestLabels,
    normalize::normalize,
    proxy::{self, Origin},
    respond::{self, Body, Rejection},
    routes::{self, Found},
    schema::{self, Schema},
    validate,
};

pub async fn handle(
    gateway: Arc<Gateway>,
    conn: Arc<Conn>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    conn.activity.progress();
    let version = req.version();
    let mut pending = Pending {
        conn: conn.clone(),
        line: Line::new(conn.peer.ip(), req.method()),
        started: Instant::now(),
        gateway: gateway.clone(),
        done: false,
    };
    let (mut response, keep_cache_control) =
        match stages(&gateway, &conn, req, &mut pending.line).await {
            Ok(proxied) => proxied,
            Err(rejection) => {
                if let Some(kind) = rejection.offence() {
                    gateway.escalation.report(conn.source, kind, rejection.code);
                }
                pending.line.decision = rejection.code;
                pending.line.reason = rejection.detail.chars().take(MAX_REASON_CHARS).collect();
                tracing::debug!(
                    source = %conn.peer.ip(),
                    route = pending.line.route.as_deref().unwrap_or("-"),
                    code = rejection.code,
                    reason = %pending.line.reason,
                    "request refused"
                );
                (rejection.response(), false)
            }
        };
    respond::harden(&mut response, keep_cache_control);
    if version == http::Version::HTTP_2 {
        // HTTP/2 has no Connection header (hyper would drop it, with a warning per answer).
        response.headers_mut().remove(http::header::CONNECTION);
    }
    pending.finish(response.status().as_u16());
    conn.activity.progress();
    Ok(response)
}

/// Reasons come partly from what the client sent (a token's `alg`, a parser's complaint):
/// bounded, so that a request cannot write kilobytes into the audit.
const MAX_REASON_CHARS: usize = 200;

/// A request's audit line until it is written. hyper drops a request's future when the
/// client resets the stream or goes away, or when the gateway cuts the connection; the line
/// is then written on drop, with status 499 and decision `cancelled` (or `cut`, with the
/// gateway's reason), so that every request is accounted for.
struct Pending {
    conn: Arc<Conn>,
    line: Line,
    started: Instant,
    gateway: Arc<Gateway>,
    done: bool,
}

impl Pending {
    fn finish(&mut self, status: u16) {
        self.done = true;
        self.line.status = status;
        self.line.latency_ms = self.started.elapsed().as_secs_f64() * 1e3;
        self.gateway
            .metrics
            .requests
            .get_or_create(&RequestLabels {
                route: self.line.route.clone().unwrap_or_default(),
                status,
                decision: self.line.decision.to_owned(),
            })
            .inc();
        self.gateway.log.record(self.line.clone());
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.done {
            match self.conn.cut.get() {
                Some(why) => {
                    self.line.decision = "cut";
                    self.line.reason = format!("the gateway closed the connection ({why})");
                }
                None => {
                    self.line.decision = "cancelled";
                    self.line.reason = "the client went away before the response".into();
                }
            }
            self.finish(499);
        }
    }
}

/// The host the request is for, checked against the connection (see [`host`]), as it is
/// to be forwarded.
fn authority(req: &Request<Incoming>, conn: &Conn) -> Result<Option<String>, Rejection> {
    let headers = req
        .headers()
        .get_all(http::header::HOST)
        .iter()
        .map(|h| h.to_str().map(str::to_owned).map_err(|_| ()));
    let target = req.uri().authority().map(http::uri::Authority::as_str);
    match host::of_request(target, headers).map_err(Rejection::bad_host)? {
        None => Err(Rejection::bad_host("the request names no host")),
        Some(h) if !conn.hosts.allows(&h.name) => Err(Rejection::misdirected(h.name)),
        Some(h) => Ok(Some(h.authority())),
    }
}

async fn stages(
    gateway: &Gateway,
    conn: &Conn,
    mut req: Request<Incoming>,
    line: &mut Line,
) -> Result<(Response<Body>, bool), Rejection> {
    let policy = gateway.rules.load();
    validate::head(req.headers(), req.uri(), &policy.limits)?;
    let host = authority(&req, conn)?;
    // The raw path, bounded, stands in the audit until it is normalized.
    line.path = req.uri().path().chars().take(256).collect();
    let path = normalize(req.uri().path()).map_err(Rejection::bad_path)?;
    line.path = path.chars().take(256).collect();
    let route = match routes::find(&policy.routes, &path, req.method()) {
        Found::Route(route) => route,
        Found::MethodNotAllowed(allow) => return Err(Rejection::method_not_allowed(&allow)),
        Found::NotFound => return Err(Rejection::not_found()),
    };
    line.route = Some(route.name.clone());
    authz::source_allowed(route, conn.peer.ip()).map_err(Rejection::forbidden)?;
    let principal = if route.auth.none() {
        None
    } else {
        let cert = conn.client_cert.as_deref();
        Some(
            policy
                .auth
                .authenticate(&route.auth, req.headers(), cert)
                .await
                .map_err(Rejection::unauthorized)?,
        )
    };
    line.principal = principal.as_ref().map(Principal::qualified);
    authz::authorize(route, principal.as_ref()).map_err(Rejection::forbidden)?;
    if let Some(limit) = &route.rate_limit {
        gateway.limit(&route.name, limit, principal.as_ref(), conn.source).await?;
    }
    // Asked of the body itself: exact on both protocols, whatever the headers claim.
    let has_body = !hyper::body::Body::is_end_stream(req.body());
    let body_limit = validate::for_route(has_body, req.headers(), route, &policy.limits)?;
    // An API key is the gateway's secret to check, not the upstream's to see, whichever
    // method authenticated the request; a JWT is made to be passed on, and an open route's
    // Authorization is the upstream's business.
    if let Some(h) = &policy.auth.api_key_header {
        req.headers_mut().remove(h);
    }
    if principal.as_ref().is_some_and(|p| p.via != Method::Jwt) {
        req.headers_mut().remove(AUTHORIZATION);
    }
    if let Some(schema) = &route.query_schema {
        let query = schema::query_object(req.uri().query());
        schema.check(&query).map_err(|v| Rejection::unprocessable("query", v))?;
    }
    let origin = Origin {
        client: conn.peer.ip(),
        source: conn.source,
        host,
        activity: conn.activity.clone(),
        client_body_failed: Arc::default(),
    };
    let (parts, body) = req.into_parts();
    let body = match &route.body_schema {
        Some(schema) if has_body => {
            proxy::buffered(checked_body(body, body_limit, schema, &origin).await?)
        }
        // A schema route that takes bodies gets one: frameworks read a missing body as `{}`,
        // which would skip the schema's `required`.
        Some(_)
            if matches!(
                parts.method,
                http::Method::POST | http::Method::PUT | http::Method::PATCH
            ) =>
        {
            return Err(Rejection::bad_json(schema::JsonError::Missing));
        }
        _ => proxy::streaming(body, &origin, body_limit),
    };
    let upstream = gateway.upstream.load();
    let sent = Instant::now();
    let answer =
        upstream.forward(Request::from_parts(parts, body), &path, body_limit, &origin).await;
    gateway.metrics.upstream_seconds.observe(sent.elapsed().as_secs_f64());
    let response = match &route.response_schema {
        Some(schema) if answer.as_ref().is_ok_and(|r| r.status().is_success()) => {
            checked_response(answer?, schema).await?
        }
        _ => answer?,
    };
    Ok((response, route.keep_upstream_cache_control))
}

/// Reads a body whole (at most `limit` bytes) and checks it against `schema`: the one place
/// a request body is buffered, because a schema can only judge a whole document.
async fn checked_body(
    body: Incoming,
    limit: u64,
    schema: &Schema,
    origin: &Origin,
) -> Result<Bytes, Rejection> {
    // Tracked, so that a slow but moving upload is not cut as idle.
    let body = proxy::Tracked::new(body, origin.activity.clone(), ());
    let limited = http_body_util::Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    let bytes = match limited.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if validate::over_limit(e.as_ref()) => return Err(validate::too_large(limit)),
        Err(e) if validate::malformed(e.as_ref()) => {
            return Err(validate::framing("a malformed request body"));
        }
        Err(_) => return Err(Rejection::incomplete_body()),
    };
    let document = schema::parse_body(&bytes).map_err(Rejection::bad_json)?;
    schema.check(&document).map_err(|v| Rejection::unprocessable("body", v))?;
    Ok(bytes)
}

/// A successful answer under a `response_schema`: read whole (bounded), and withheld (502)
/// unless it is JSON that matches, so a response carrying more than the schema allows never
/// leaves the gateway.
async fn checked_response(
    response: Response<Body>,
    schema: &Schema,
) -> Result<Response<Body>, Rejection> {
    let (parts, body) = response.into_parts();
    let json = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(validate::essence)
        .is_some_and(|e| validate::is_json(&e));
    if !json {
        return Err(Rejection::response_invalid("the answer is not JSON".into()));
    }
    let limited = http_body_util::Limited::new(body, MAX_CHECKED_RESPONSE_BYTES);
    let bytes = limited
        .collect()
        .await
        .map_err(|e| {
            Rejection::response_invalid(format!("the answer could not be read whole: {e}"))
        })?
        .to_bytes();
    let document =
        schema::parse_body(&bytes).map_err(|e| Rejection::response_invalid(e.to_string()))?;
    schema.check(&document).map_err(|v| {
        Rejection::response_invalid(format!("{} response schema violation(s)", v.len()))
    })?;
    let body = http_body_util::Full::new(bytes).map_err(|never| match never {}).boxed();
    Ok(Response::from_parts(parts, body))
}

/// Largest answer checked against a response schema; a larger one is withheld.
const MAX_CHECKED_RESPONSE_BYTES: usize = 16 << 20;
