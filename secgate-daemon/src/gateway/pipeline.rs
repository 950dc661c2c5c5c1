//! A request's way through the gateway, stage by stage in one function: normalize the path,
//! find the route, check the source, authenticate, authorize, forward. Each stage either
//! hands on or refuses with a [`Rejection`]; every request, either way, ends as one audit
//! line and one count.

use std::{convert::Infallible, sync::Arc, time::Instant};

use http::{Request, Response, header::AUTHORIZATION};
use hyper::body::Incoming;

use super::{
    Conn, Gateway,
    audit::Line,
    authn::Method,
    authz,
    metrics::RequestLabels,
    normalize::normalize,
    proxy::Origin,
    respond::{Body, Rejection},
    routes::{self, Found},
};

pub async fn handle(
    gateway: Arc<Gateway>,
    conn: Arc<Conn>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let mut line = Line::new(conn.peer.ip(), req.method());
    let response = match stages(&gateway, &conn, req, &mut line).await {
        Ok(response) => response,
        Err(rejection) => {
            line.decision = rejection.code;
            line.reason = rejection.detail.clone();
            rejection.response()
        }
    };
    line.status = response.status().as_u16();
    line.latency_ms = started.elapsed().as_secs_f64() * 1e3;
    gateway
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            route: line.route.clone().unwrap_or_default(),
            status: line.status,
            decision: line.decision.to_owned(),
        })
        .inc();
    gateway.log.record(line);
    Ok(response)
}

async fn stages(
    gateway: &Gateway,
    conn: &Conn,
    mut req: Request<Incoming>,
    line: &mut Line,
) -> Result<Response<Body>, Rejection> {
    let policy = gateway.rules.load();
    // The raw path, bounded, stands in the audit until it is normalized.
    line.path = req.uri().path().chars().take(256).collect();
    let path = normalize(req.uri().path()).map_err(Rejection::bad_path)?;
    line.path.clone_from(&path);
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
                .map_err(Rejection::unauthorized)?,
        )
    };
    line.principal = principal.as_ref().map(|p| p.id.clone());
    authz::authorize(route, principal.as_ref()).map_err(Rejection::forbidden)?;
    // An API key is the gateway's secret to check, not the upstream's to see; a JWT is made
    // to be passed on.
    if principal.as_ref().is_some_and(|p| p.via == Method::ApiKey) {
        req.headers_mut().remove(AUTHORIZATION);
        if let Some(h) = &policy.auth.api_key_header {
            req.headers_mut().remove(h);
        }
    }
    let host = req.uri().authority().map(|a| a.to_string()).or_else(|| {
        req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()).map(str::to_owned)
    });
    let origin = Origin { client: conn.peer.ip(), host };
    let upstream = gateway.upstream.load();
    let sent = Instant::now();
    let answer = upstream.forward(req, &path, &origin).await;
    gateway.metrics.upstream_seconds.observe(sent.elapsed().as_secs_f64());
    answer
}
