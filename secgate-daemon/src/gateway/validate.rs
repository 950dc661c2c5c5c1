//! Request validation before anything reaches the upstream: the head against the global
//! limits (header count, URI length), then, once the caller is authorized, against its
//! route (declared body size, content type). The body is limited while it streams: an
//! upload over the limit is cut with 413 without being buffered.

use http::{HeaderMap, StatusCode, header};

use super::{respond::Rejection, routes::Route, settings::RequestLimits};

/// Refuses a request head over the global limits, or whose framing servers could read
/// differently (request smuggling): `Transfer-Encoding` with `Content-Length`, or any
/// `Transfer-Encoding` but one `chunked` (RFC 9112 §6.1, §6.3). hyper refuses differing
/// lengths, obs-fold, spaces before colons and control bytes itself.
pub fn head(headers: &HeaderMap, uri: &http::Uri, limits: &RequestLimits) -> Result<(), Rejection> {
    let mut te = headers.get_all(header::TRANSFER_ENCODING).iter();
    if let Some(first) = te.next() {
        if headers.contains_key(header::CONTENT_LENGTH) {
            return Err(framing("both Transfer-Encoding and Content-Length"));
        }
        if te.next().is_some() || !first.as_bytes().eq_ignore_ascii_case(b"chunked") {
            return Err(framing("a Transfer-Encoding other than one `chunked`"));
        }
    }
    // HTTP/2 clients may split one Cookie field into crumbs (RFC 9113 §8.2.3): one field.
    let crumbs = headers.get_all(header::COOKIE).iter().count().saturating_sub(1);
    let fields = headers.len() - crumbs;
    if fields > limits.max_headers as usize {
        return Err(Rejection::invalid(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "too_many_headers",
            format!("{fields} header fields, more than {}", limits.max_headers),
        ));
    }
    let uri_bytes = uri.path_and_query().map_or(0, |p| p.as_str().len());
    if uri_bytes > limits.max_uri_bytes as usize {
        return Err(Rejection::invalid(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("a {uri_bytes}-byte URI, longer than {}", limits.max_uri_bytes),
        ));
    }
    Ok(())
}

/// The body limit for `route`, after refusing a declared length over it and a content type
/// the route does not take.
pub fn for_route(
    has_body: bool,
    headers: &HeaderMap,
    route: &Route,
    limits: &RequestLimits,
) -> Result<u64, Rejection> {
    let limit = route.max_body_bytes.unwrap_or(limits.max_body_bytes);
    if headers.get_all(header::CONTENT_TYPE).iter().nth(1).is_some() {
        // Servers differ on which one counts.
        return Err(Rejection::invalid(
            StatusCode::BAD_REQUEST,
            "ambiguous_content_type",
            "more than one Content-Type".into(),
        ));
    }
    let declared = declared_length(headers)?;
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    if !has_body {
        return Ok(limit);
    }
    let essence = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).and_then(essence);
    if let Some(allowed) = &route.content_types
        && !essence.as_ref().is_some_and(|e| allowed.contains(e))
    {
        return Err(unsupported(format!("content type not among {allowed:?}")));
    }
    if route.body_schema.is_some() {
        // What the schema judged must be what the upstream reads: JSON, as sent.
        if !essence.as_deref().is_some_and(is_json) {
            return Err(unsupported("a schema route takes JSON bodies only".into()));
        }
        let coded = headers
            .get_all(header::CONTENT_ENCODING)
            .iter()
            .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
        if coded {
            return Err(unsupported("a schema route takes bodies without a content coding".into()));
        }
    }
    Ok(limit)
}

/// Whether a media type's essence is JSON (`application/json` or a `+json` type).
pub fn is_json(essence: &str) -> bool {
    essence == "application/json" || essence.ends_with("+json")
}

fn unsupported(detail: String) -> Rejection {
    Rejection::invalid(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", detail)
}

/// 413 for a body over `limit` bytes.
pub fn too_large(limit: u64) -> Rejection {
    Rejection::invalid(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the body is larger than {limit} bytes"),
    )
}

/// The declared `Content-Length`; hyper has already refused differing duplicates and
/// invalid values on HTTP/1.1, this repeats the check for HTTP/2.
fn declared_length(headers: &HeaderMap) -> Result<Option<u64>, Rejection> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let Some(first) = values.next() else { return Ok(None) };
    let bad = || framing("an invalid Content-Length");
    let n: u64 = first.to_str().ok().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    if values.any(|v| v != first) {
        return Err(bad());
    }
    Ok(Some(n))
}

/// 400 for a request whose framing is ambiguous; the connection is closed after it, since
/// where the next request starts is unknown.
pub fn framing(why: &str) -> Rejection {
    Rejection::invalid(StatusCode::BAD_REQUEST, "bad_framing", format!("ambiguous framing: {why}"))
        .closing()
}

/// The refusal of a head the framing scanner stopped before hyper (see `framing`).
pub fn refused_head(r: super::framing::Refused) -> Rejection {
    if r.status == 431 {
        Rejection::invalid(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, r.code, r.why.into())
            .closing()
    } else {
        framing(r.why)
    }
}

/// The lower-case `type/subtype` of a media type, parameters dropped; `None` if it is not
/// one (RFC 9110 §8.3.1, parsed by the `mime` crate).
pub fn essence(value: &str) -> Option<String> {
    let m: mime::Mime = value.parse().ok()?;
    Some(m.essence_str().to_ascii_lowercase())
}

/// Whether a client's body failed for its framing (an invalid chunk: hyper's decoder says
/// `InvalidData` or `InvalidInput`), rather than because the client went away mid-body.
pub fn malformed(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput
            );
        }
        cause = c.source();
    }
    false
}

/// Whether an upstream request failed because its body went over the limit
/// (`http_body_util::Limited`), somewhere down the error's sources.
pub fn over_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cause = c.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;
    use crate::gateway::{authn::Methods, routes::PathPattern};

    const LIMITS: RequestLimits =
        RequestLimits { max_headers: 10, max_uri_bytes: 64, max_body_bytes: 100 };

    fn route(max_body_bytes: Option<u64>, content_types: Option<&[&str]>) -> Route {
        Route {
            name: "r".into(),
            methods: None,
            pattern: PathPattern::parse("/*").unwrap(),
            auth: Methods::default(),
            allow_roles: vec![],
            allow_principals: vec![],
            allow_cidrs: vec![],
            keep_upstream_cache_control: false,
            max_body_bytes,
            content_types: content_types.map(|c| c.iter().map(|s| s.to_string()).collect()),
            body_schema: None,
            query_schema: None,
            response_schema: None,
            rate_limit: None,
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn status(r: Result<u64, Rejection>) -> u16 {
        r.map_or_else(|e| e.status.as_u16(), |_| 200)
    }

    #[test]
    fn heads_over_the_global_limits_are_refused() {
        let many: Vec<_> = (0..11).map(|_| ("x-a", "1")).collect();
        let uri: http::Uri = "/ok".parse().unwrap();
        assert!(head(&headers(&many[..10]), &uri, &LIMITS).is_ok());
        assert_eq!(head(&headers(&many), &uri, &LIMITS).unwrap_err().status, 431);
        let mut crumbs = headers(&many[..9]);
        for _ in 0..5 {
            crumbs.append(header::COOKIE, HeaderValue::from_static("a=1"));
        }
        assert!(head(&crumbs, &uri, &LIMITS).is_ok(), "cookie crumbs are one field");
        let long: http::Uri = format!("/{}", "a".repeat(64)).parse().unwrap();
        assert_eq!(head(&HeaderMap::new(), &long, &LIMITS).unwrap_err().status, 414);
    }

    #[test]
    fn schema_routes_take_json_without_a_content_coding() {
        let path =
            std::env::temp_dir().join(format!("secgate-vschema-{}.json", std::process::id()));
        std::fs::write(&path, "{}").unwrap();
        let mut r = route(None, None);
        r.body_schema =
            Some(crate::gateway::schema::Schema::load(&path, "body_schema").unwrap().into());
        std::fs::remove_file(&path).unwrap();
        let check =
            |h: &[(&'static str, &'static str)]| status(for_route(true, &headers(h), &r, &LIMITS));
        assert_eq!(check(&[("content-type", "application/json")]), 200);
        assert_eq!(check(&[("content-type", "application/problem+json")]), 200);
        assert_eq!(check(&[("content-type", "text/plain")]), 415, "JSON sent as text");
        assert_eq!(check(&[]), 415, "an untyped body");
        assert_eq!(
            check(&[("content-type", "application/json"), ("content-encoding", "gzip")]),
            415
        );
        assert_eq!(
            check(&[("content-type", "application/json"), ("content-encoding", "identity")]),
            200
        );
    }

    #[test]
    fn bodies_and_types_are_checked_per_route() {
        let json = Some(&["application/json"][..]);
        let r = route(None, json);
        assert_eq!(
            status(for_route(true, &headers(&[("content-length", "101")]), &r, &LIMITS)),
            413
        );
        assert_eq!(
            status(for_route(
                true,
                &headers(&[
                    ("content-length", "100"),
                    ("content-type", "Application/JSON; charset=utf-8")
                ]),
                &r,
                &LIMITS
            )),
            200
        );
        assert_eq!(
            status(for_route(
                true,
                &headers(&[("content-length", "5"), ("content-type", "text/plain")]),
                &r,
                &LIMITS
            )),
            415
        );
        assert_eq!(
            status(for_route(true, &headers(&[("content-length", "5")]), &r, &LIMITS)),
            415,
            "a body without a type"
        );
        assert_eq!(
            status(for_route(true, &headers(&[("transfer-encoding", "chunked")]), &r, &LIMITS)),
            415
        );
        assert_eq!(
            status(for_route(false, &HeaderMap::new(), &r, &LIMITS)),
            200,
            "no body, no type needed"
        );
        let two = headers(&[("content-type", "application/json"), ("content-type", "text/plain")]);
        assert_eq!(status(for_route(true, &two, &r, &LIMITS)), 400);
        assert_eq!(
            status(for_route(
                true,
                &headers(&[("content-length", "5"), ("content-length", "6")]),
                &r,
                &LIMITS
            )),
            400
        );
        assert_eq!(
            status(for_route(true, &headers(&[("content-length", "-1")]), &r, &LIMITS)),
            400
        );
        assert_eq!(
            for_route(true, &HeaderMap::new(), &route(Some(7), None), &LIMITS).ok(),
            Some(7),
            "the route's own limit"
        );
    }

    /// Streams `chunks` through the limiter the proxy uses; `Err(over_limit)` if it cut them.
    fn stream(chunks: &[usize], limit: usize) -> Result<usize, bool> {
        use http_body_util::BodyExt as _;
        let frames: Vec<Result<_, std::convert::Infallible>> = chunks
            .iter()
            .map(|&n| Ok(hyper::body::Frame::data(bytes::Bytes::from(vec![0u8; n]))))
            .collect();
        let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
        let mut limited = http_body_util::Limited::new(body, limit);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let mut seen = 0;
            while let Some(frame) = limited.frame().await {
                match frame {
                    Ok(f) => seen += f.into_data().map_or(0, |d| d.len()),
                    Err(e) => return Err(over_limit(e.as_ref())),
                }
            }
            Ok(seen)
        })
    }

    proptest::proptest! {
        /// A body is cut exactly when it goes over the limit, never passes more than the
        /// limit on, and the cut is recognized as such (413, not 502).
        #[test]
        fn the_body_limiter_cuts_exactly_over_the_limit(
            chunks in proptest::collection::vec(0usize..5000, 0..20),
            limit in 0usize..40_000,
        ) {
            let total: usize = chunks.iter().sum();
            match stream(&chunks, limit) {
                Ok(seen) => proptest::prop_assert!(seen == total && total <= limit),
                Err(recognized) => proptest::prop_assert!(recognized && total > limit),
            }
        }

        /// Any header value parses or is refused without a panic; what parses is lower case
        /// and has no parameters.
        #[test]
        fn content_types_parse_or_are_refused(s in "\\PC{0,60}|[a-zA-Z]{1,8}/[a-zA-Z+.-]{1,12}(; ?[a-z]{1,6}=[a-z0-9\"]{0,8}){0,2}") {
            if let Some(e) = essence(&s) {
                proptest::prop_assert!(!e.contains(';') && e.contains('/'));
                proptest::prop_assert_eq!(e.clone(), e.to_ascii_lowercase());
            }
        }
    }
}
