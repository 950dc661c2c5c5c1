//! The upstream the gateway proxies to in tests: a real HTTP/1.1 server (hyper) on the
//! gateway namespace's loopback that records every request it is sent.
//!
//! `/…/slow` answers after 3 s; `/…/big` streams 8 MiB; `/…/drip` sends one chunk, then
//! the rest 1 s later (and records when it has); a body is counted as it streams and the
//! count is answered. `/…/untyped` answers without a content type, `/…/deny` with a 401 of
//! its own that may be cached. Every answer carries hop-by-hop headers (which must not reach the
//! client) and a `Server` header.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt as _, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;

use crate::netns::NetNs;

/// What the upstream was sent.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body_bytes: usize,
}

#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Set once a `/drip` answer has sent its last chunk.
    pub drip_done: Arc<AtomicBool>,
}

pub const BIG_BYTES: usize = 8 << 20;

impl Upstream {
    /// Starts the server on the runtime `rt`, listening on 127.0.0.1 inside `ns`.
    pub fn start(rt: &tokio::runtime::Runtime, ns: &NetNs) -> Upstream {
        let listener =
            ns.within(|| std::net::TcpListener::bind("127.0.0.1:0").expect("bind upstream"));
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let drip_done = Arc::new(AtomicBool::new(false));
        let up = Upstream { addr, seen: seen.clone(), drip_done: drip_done.clone() };
        rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (seen, drip_done) = (seen.clone(), drip_done.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        answer(seen.clone(), drip_done.clone(), req)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        up
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Requests so far whose path starts with `prefix`.
    pub fn count(&self, prefix: &str) -> usize {
        self.seen().iter().filter(|s| s.path_and_query.starts_with(prefix)).count()
    }

    pub fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }
}

type Body = BoxBody<Bytes, Infallible>;

async fn answer(
    seen: Arc<Mutex<Vec<Seen>>>,
    drip_done: Arc<AtomicBool>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (parts, mut body) = req.into_parts();
    let mut body_bytes = 0;
    while let Some(Ok(frame)) = body.frame().await {
        body_bytes += frame.data_ref().map_or(0, Bytes::len);
    }
    let path = parts.uri.path_and_query().map_or("/".into(), |p| p.to_string());
    seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        path_and_query: path.clone(),
        headers: parts.headers.clone(),
        body_bytes,
    });
    if path.contains("/slow") {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let body: Body = if path.contains("/drip") {
        let first = futures::stream::once(async { Ok(Frame::data(Bytes::from_static(b"first"))) });
        let rest = futures::stream::once(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            drip_done.store(true, Ordering::SeqCst);
            Ok(Frame::data(Bytes::from_static(b"rest")))
        });
        StreamBody::new(futures::StreamExt::chain(first, rest)).boxed()
    } else if path.contains("/big") {
        let chunks = (0..BIG_BYTES / 65536)
            .map(|_| Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'x'; 65536]))));
        StreamBody::new(futures::stream::iter(chunks)).boxed()
    } else {
        let mut json = serde_json::json!({ "path": path, "method": parts.method.as_str(), "received": body_bytes });
        if path.contains("/leak") {
            json["ssn"] = "078-05-1120".into();
        }
        http_body_util::Full::new(Bytes::from(json.to_string())).boxed()
    };
    if path.contains("/untyped") || path.contains("/deny") {
        let status = if path.contains("/deny") { 401 } else { 200 };
        let resp = Response::builder()
            .status(status)
            .header("server", "upstream/1.0")
            .header("x-powered-by", "tests")
            .header("cache-control", "max-age=60")
            .body(http_body_util::Full::new(Bytes::from_static(b"<html>raw</html>")).boxed())
            .expect("response");
        return Ok(resp);
    }
    let resp = Response::builder()
        .header("content-type", "application/json")
        .header("server", "upstream/1.0")
        .header("x-powered-by", "tests")
        .header("connection", "x-up-hop")
        .header("x-up-hop", "1")
        .header("keep-alive", "timeout=5")
        .header("x-upstream", "yes")
        .body(body)
        .expect("response");
    Ok(resp)
}
