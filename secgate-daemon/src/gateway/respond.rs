//! The one place a refusal becomes a response: a JSON body from a serializer (no client input
//! echoed into it), `application/json; charset=utf-8`, and the status and headers the refusal
//! calls for. A [`Rejection`] also says whose fault it was: only the client's may count
//! against it later (an upstream failure or a gateway bug never bans anyone).

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, combinators::BoxBody};
use serde::Serialize;

use super::{authn::Failure, normalize::PathError};

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
    allow: Option<String>,
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
            allow: None,
        }
    }

    fn detail(mut self, detail: impl Into<String>) -> Rejection {
        self.detail = detail.into();
        self
    }

    pub fn bad_path(e: PathError) -> Rejection {
        Rejection::new(
            StatusCode::BAD_REQUEST,
            "bad_path",
            "the request path is not acceptable",
            Fault::Client,
        )
        .detail(e.to_string())
    }

    pub fn bad_host(why: &'static str) -> Rejection {
        Rejection::new(
            StatusCode::BAD_REQUEST,
            "bad_host",
            "the request's host is not acceptable",
            Fault::Client,
        )
        .detail(why)
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
        r.allow = Some(allow.iter().map(http::Method::as_str).collect::<Vec<_>>().join(", "));
        r
    }

    /// 401 that never tells which part of a credential was wrong.
    pub fn unauthorized(failure: Failure) -> Rejection {
        let (code, message, challenge, detail) = match failure {
            Failure::Ambiguous(why) => {
                return Rejection::new(
                    StatusCode::BAD_REQUEST,
                    "ambiguous_credentials",
                    "send one credential",
                    Fault::Client,
                )
                .detail(why);
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
            Failure::Invalid(why) => (
                "invalid_token",
                "authentication failed",
                r#"Bearer realm="secgate", error="invalid_token""#,
                why,
            ),
        };
        let mut r =
            Rejection::new(StatusCode::UNAUTHORIZED, code, message, Fault::Client).detail(detail);
        r.www_authenticate = Some(challenge);
        r
    }

    pub fn forbidden(why: &'static str) -> Rejection {
        Rejection::new(StatusCode::FORBIDDEN, "forbidden", "not allowed", Fault::Client).detail(why)
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

impl Rejection {
    pub fn response(&self) -> Response<Body> {
        let body = ErrorBody {
            error: ErrorFields {
                status: self.status.as_u16(),
                code: self.code,
                message: self.message,
            },
        };
        let mut resp = json(self.status, &body);
        let headers = resp.headers_mut();
        if let Some(challenge) = self.www_authenticate {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        }
        if let Some(allow) = self.allow.as_deref().and_then(|a| HeaderValue::from_str(a).ok()) {
            headers.insert(header::ALLOW, allow);
        }
        resp
    }
}
