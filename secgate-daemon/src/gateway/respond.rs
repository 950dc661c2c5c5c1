//! The one place a refusal becomes a response: a JSON body from a serializer (no client input
//! echoed into it), `application/json; charset=utf-8`, and the status and headers the refusal
//! calls for. A [`Rejection`] also says whose fault it was: only the client's may count
//! against it later (an upstream failure or a gateway bug never bans anyone).

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, combinators::BoxBody};
use serde::Serialize;

use super::{
    super::escalate::Kind,
    authn::Failure,
    normalize::PathError,
    ratelimit::{self, Limited, RateLimit},
    schema::{JsonError, Violation},
};

/// Every response body the gateway sends: its own JSON, or the upstream's stream.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// Whose fault a refusal is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    Client,
    Upstream,
    Gateway,
}

#[derive(Debug)]
pub struct Rejection {
    pub status: StatusCode,
    /// Stable, machine-readable, and the `decision` reason in the audit.
    pub code: &'static str,
    /// For the client: never says more than the code does.
    message: &'static str,
    pub fault: Fault,
    /// For the log and the audit only.
    pub detail: String,
    www_authenticate: Option<&'static str>,
    /// More headers for the answer (`Allow`, `Retry-After`, `RateLimit-*`).
    headers: Vec<(header::HeaderName, HeaderValue)>,
    /// Schema violations, listed in the body (422).
    violations: Option<Box<[Violation]>>,
    /// Close the connection after the answer (HTTP/1.1 `Connection: close`).
    close: bool,
    /// What it counts as toward escalation; `None`: nothing (not the client's fault, or a
    /// mistake honest clients make: a missing credential, an unknown path, a wrong host).
    offence: Option<Kind>,
}

impl Rejection {
    fn new(
        status: StatusCode,
        code: &'static str,
        message: &'static str,
        fault: Fault,
    ) -> Rejection {
        Rejection {
            status,
            code,
            message,
            fault,
            detail: String::new(),
            www_authenticate: None,
            headers: Vec::new(),
            violations: None,
            close: false,
            offence: None,
        }
    }

    fn offending(mut self, kind: Kind) -> Rejection {
        debug_assert_eq!(self.fault, Fault::Client, "only client faults are offences");
        self.offence = Some(kind);
        self
    }

    /// What this refusal counts as toward the client's escalation.
    pub fn offence(&self) -> Option<Kind> {
        self.offence
    }

    /// 400 for a body the client stopped sending: not an offence (networks fail).
    pub fn incomplete_body() -> Rejection {
        Rejection::new(
            StatusCode::BAD_REQUEST,
            "incomplete_body",
            "the request body ended early",
            Fault::Client,
        )
        .closing()
    }

    pub fn closing(mut self) -> Rejection {
        self.close = true;
        self
    }

    fn detail(mut self, detail: impl Into<String>) -> Rejection {
        self.detail = detail.into();
        self
    }

    /// A request that breaks a validation rule: the client's fault, and the `detail` says
    /// which rule, never what the client sent.
    pub fn invalid(status: StatusCode, code: &'static str, detail: String) -> Rejection {
        let message = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "the request body is too large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "the route does not take this content type",
            StatusCode::URI_TOO_LONG => "the request URI is too long",
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "the request has too many header fields",
            _ => "the request is malformed",
        };
        Rejection::new(status, code, message, Fault::Client)
            .detail(detail)
            .offending(Kind::ValidationFailure)
    }

    /// 422 with where and how the document breaks its schema.
    pub fn unprocessable(what: &'static str, violations: Vec<Violation>) -> Rejection {
        let mut r = Rejection::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "schema_violation",
            "the request does not match the route's schema",
            Fault::Client,
        )
        .detail(format!("{} {what} violation(s)", violations.len()))
        .offending(Kind::ValidationFailure);
        r.violations = Some(violations.into_boxed_slice());
        r
    }

    pub fn bad_json(e: JsonError) -> Rejection {
        Rejection::new(
            StatusCode::BAD_REQUEST,
            "bad_json",
            "the body is not acceptable JSON",
            Fault::Client,
        )
        .detail(e.to_string())
        .offending(Kind::ValidationFailure)
    }

    /// 502: the upstream's answer breaks the route's response schema; its body is not sent.
    pub fn response_invalid(detail: String) -> Rejection {
        Rejection::new(
            StatusCode::BAD_GATEWAY,
            "response_invalid",
            "the upstream's answer was withheld",
            Fault::Upstream,
        )
        .detail(detail)
    }

    pub fn bad_path(e: PathError) -> Rejection {
        Rejection::new(
            StatusCode::BAD_REQUEST,
            "bad_path",
            "the request path is not acceptable",
            Fault::Client,
        )
        .detail(e.to_string())
        .offending(Kind::ValidationFailure)
    }

    pub fn bad_host(why: &'static str) -> Rejection {
        Rejection::new(
            StatusCode::BAD_REQUEST,
            "bad_host",
            "the request's host is not acceptable",
            Fault::Client,
        )
        .detail(why)
        .closing()
        .offending(Kind::ValidationFailure)
    }

    /// 421: the request is for another host than the connection's (RFC 9110 §15.5.20).
    pub fn misdirected(host: String) -> Rejection {
        Rejection::new(
            StatusCode::MISDIRECTED_REQUEST,
            "misdirected_request",
            "this connection does not serve that host",
            Fault::Client,
        )
        .detail(format!(
            "host {:?} is not the connection's server name",
            host.chars().take(64).collect::<String>()
        ))
    }

    pub fn not_found() -> Rejection {
        Rejection::new(StatusCode::NOT_FOUND, "not_found", "no such route", Fault::Client)
    }

    pub fn method_not_allowed(allow: &[http::Method]) -> Rejection {
        let mut r = Rejection::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "the route does not take this method",
            Fault::Client,
        );
        let allow = allow.iter().map(http::Method::as_str).collect::<Vec<_>>().join(", ");
        if let Ok(v) = HeaderValue::from_str(&allow) {
            r.headers.push((header::ALLOW, v));
        }
        r
    }

    /// 401 that never tells which part of a credential was wrong.
    pub fn unauthorized(failure: Failure) -> Rejection {
        // A wrong credential counts against the client; a missing or merely stale one not.
        let guessed = matches!(failure, Failure::Invalid(_));
        let (code, message, challenge, detail) = match failure {
            Failure::Ambiguous(why) => {
                return Rejection::new(
                    StatusCode::BAD_REQUEST,
                    "ambiguous_credentials",
                    "send one credential",
                    Fault::Client,
                )
                .detail(why)
                .offending(Kind::AuthFailure);
            }
            Failure::Busy => {
                return Rejection::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "busy",
                    "too many credential checks at once; retry shortly",
                    Fault::Gateway,
                );
            }
            Failure::Missing => (
                "invalid_request",
                "authentication required",
                r#"Bearer realm="secgate", error="invalid_request""#,
                "no credential".to_string(),
            ),
            Failure::Invalid(why) | Failure::Lapsed(why) => (
                "invalid_token",
                "authentication failed",
                r#"Bearer realm="secgate", error="invalid_token""#,
                why,
            ),
        };
        let mut r =
            Rejection::new(StatusCode::UNAUTHORIZED, code, message, Fault::Client).detail(detail);
        if guessed {
            r = r.offending(Kind::AuthFailure);
        }
        r.www_authenticate = Some(challenge);
        r
    }

    /// 429 with when to come back and the route's policy (draft-ietf-httpapi-ratelimit-headers).
    pub fn rate_limited(route: &str, limit: &RateLimit, limited: &Limited) -> Rejection {
        let mut r = Rejection::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many requests; retry later",
            Fault::Client,
        )
        .detail(format!("over {} rps (burst {}) per {:?}", limit.rps, limit.burst, limit.per));
        if limited.own {
            r = r.offending(Kind::RateLimited);
        }
        let retry = ratelimit::ceil_secs(limited.retry_after).max(1);
        for (name, value) in [
            (header::RETRY_AFTER, retry.to_string()),
            (header::HeaderName::from_static("ratelimit-policy"), limit.policy(route)),
            (header::HeaderName::from_static("ratelimit"), limit.state(route, limited)),
        ] {
            if let Ok(v) = HeaderValue::from_str(&value) {
                r.headers.push((name, v));
            }
        }
        r
    }

    pub fn forbidden(why: &'static str) -> Rejection {
        Rejection::new(StatusCode::FORBIDDEN, "forbidden", "not allowed", Fault::Client)
            .detail(why)
            .offending(Kind::AuthFailure)
    }

    pub fn bad_gateway(detail: impl Into<String>) -> Rejection {
        Rejection::new(
            StatusCode::BAD_GATEWAY,
            "bad_gateway",
            "the upstream could not be reached",
            Fault::Upstream,
        )
        .detail(detail)
    }

    /// A route limited fleet-wide while the fleet's Redis is away, with
    /// `on_unavailable = "closed"`.
    pub fn fleet_unavailable() -> Rejection {
        Rejection::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "limit_unavailable",
            "the rate limit for this route cannot be checked; retry shortly",
            Fault::Gateway,
        )
    }

    pub fn upstream_busy() -> Rejection {
        Rejection::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream_busy",
            "too many requests in flight to the upstream; retry shortly",
            Fault::Gateway,
        )
    }

    pub fn gateway_timeout() -> Rejection {
        Rejection::new(
            StatusCode::GATEWAY_TIMEOUT,
            "gateway_timeout",
            "the upstream did not answer in time",
            Fault::Upstream,
        )
    }

    pub fn internal(detail: impl Into<String>) -> Rejection {
        Rejection::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
            Fault::Gateway,
        )
        .detail(detail)
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorFields<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    violations: Option<&'a [Violation]>,
}

#[derive(Serialize)]
struct ErrorFields<'a> {
    status: u16,
    code: &'a str,
    message: &'a str,
}

/// A gateway-made JSON body.
pub fn json(status: StatusCode, value: &impl Serialize) -> Response<Body> {
    let bytes = serde_json::to_vec(value).expect("gateway bodies serialize");
    let mut resp =
        Response::new(Full::new(Bytes::from(bytes)).map_err(|never| match never {}).boxed());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    resp
}

/// Security headers on every response the gateway sends, its own and proxied ones: the API
/// is only reachable over TLS (HSTS), nothing it returns is to be sniffed, framed, run as a
/// page or leak a referrer, and nothing says what software runs behind it.
const SECURITY_HEADERS: [(header::HeaderName, &str); 4] = [
    (header::STRICT_TRANSPORT_SECURITY, "max-age=31536000; includeSubDomains"),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::CONTENT_SECURITY_POLICY, "default-src 'none'; frame-ancestors 'none'"),
    (header::REFERRER_POLICY, "no-referrer"),
];

/// Makes `response` safe to send: the security headers set (the upstream's replaced),
/// `Server` and `X-Powered-By` removed, a body without a content type marked
/// `application/octet-stream` (never sniffed), and an authentication or authorization
/// error marked `Cache-Control: no-store` unless `keep_cache_control` and the upstream
/// chose its own.
pub fn harden(response: &mut Response<Body>, keep_cache_control: bool) {
    let status = response.status();
    let headers = response.headers_mut();
    headers.remove(header::SERVER);
    headers.remove("x-powered-by");
    for (name, value) in SECURITY_HEADERS {
        headers.insert(name, HeaderValue::from_static(value));
    }
    let bodiless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    if !bodiless && !headers.contains_key(header::CONTENT_TYPE) {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    }
    let auth_error = status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN;
    if auth_error && !(keep_cache_control && headers.contains_key(header::CACHE_CONTROL)) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

impl Rejection {
    fn body(&self) -> ErrorBody<'_> {
        ErrorBody {
            error: ErrorFields {
                status: self.status.as_u16(),
                code: self.code,
                message: self.message,
            },
            violations: self.violations.as_deref(),
        }
    }

    /// The whole HTTP/1.1 answer as bytes, for a head refused before hyper saw it (see
    /// `framing`): the same JSON body and security headers as any refusal, and
    /// `Connection: close`.
    pub fn http1_bytes(&self) -> Vec<u8> {
        let body = serde_json::to_vec(&self.body()).expect("gateway bodies serialize");
        let status = self.status;
        let mut out = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            body.len()
        );
        for (name, value) in SECURITY_HEADERS {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str("\r\n");
        let mut out = out.into_bytes();
        out.extend_from_slice(&body);
        out
    }

    pub fn response(&self) -> Response<Body> {
        let mut resp = json(self.status, &self.body());
        let headers = resp.headers_mut();
        if let Some(challenge) = self.www_authenticate {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        for (name, value) in &self.headers {
            headers.insert(name, value.clone());
        }
        if self.close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(status: u16, headers: &[(&'static str, &'static str)]) -> Response<Body> {
        let mut r = Response::new(Full::new(Bytes::new()).map_err(|never| match never {}).boxed());
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        for (k, v) in headers {
            r.headers_mut().insert(*k, HeaderValue::from_static(v));
        }
        r
    }

    #[test]
    fn every_response_is_hardened() {
        let mut r = upstream(
            200,
            &[("server", "nginx/1.2"), ("x-powered-by", "PHP"), ("content-security-policy", "*")],
        );
        harden(&mut r, false);
        let h = r.headers();
        assert!(!h.contains_key("server") && !h.contains_key("x-powered-by"));
        for (name, value) in SECURITY_HEADERS {
            assert_eq!(h[&name], value, "{name}");
        }
        assert_eq!(h["content-type"], "application/octet-stream", "never left to sniffing");
        let mut none = upstream(204, &[]);
        harden(&mut none, false);
        assert!(!none.headers().contains_key("content-type"), "no body, no type");
    }

    #[test]
    fn auth_errors_are_not_cached_unless_the_route_keeps_the_upstreams_choice() {
        for (status, keep, want) in [
            (401, false, "no-store"),
            (403, false, "no-store"),
            (401, true, "private, max-age=5"),
            (200, false, "private, max-age=5"),
        ] {
            let mut r = upstream(status, &[("cache-control", "private, max-age=5")]);
            harden(&mut r, keep);
            assert_eq!(r.headers()["cache-control"], want, "{status} keep={keep}");
        }
        let mut r = upstream(401, &[]);
        harden(&mut r, true);
        assert_eq!(r.headers()["cache-control"], "no-store", "the upstream set none");
        let mut own = Rejection::unauthorized(Failure::Missing).response();
        harden(&mut own, false);
        assert_eq!(own.headers()["cache-control"], "no-store");
        assert_eq!(own.headers()["content-type"], "application/json; charset=utf-8");
    }
}
