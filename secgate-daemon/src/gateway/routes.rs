//! Route patterns and the route table: the first route whose pattern matches a normalized
//! path wins; its method list then decides between going on and 405.
//!
//! A pattern is an exact path (`/health`), a prefix (`/admin/*`, which matches `/admin`
//! itself and everything under it, so the bare `/admin` cannot slip past its ACL), or has
//! `{param}` segments that match one whole segment each (`/users/{id}/keys`).

use std::sync::Arc;

use http::Method;
use ipnet::IpNet;

use super::{authn::Methods, ratelimit::RateLimit, schema::Schema};

/// A configured route: what it matches, how callers authenticate, and who may call it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub name: String,
    /// `None`: any method.
    pub methods: Option<Vec<Method>>,
    pub pattern: PathPattern,
    pub auth: Methods,
    pub allow_roles: Vec<String>,
    pub allow_principals: Vec<String>,
    pub allow_cidrs: Vec<IpNet>,
    /// An upstream's own `Cache-Control` on its 401/403 answers is kept (else `no-store`).
    pub keep_upstream_cache_control: bool,
    /// The route's own body limit, instead of `[gateway.limits] max_body_bytes`.
    pub max_body_bytes: Option<u64>,
    /// Media types (`type/subtype`, lower case) a request body may have; `None`: any.
    pub content_types: Option<Vec<String>>,
    /// What a request body, the query parameters and a successful response must match.
    pub body_schema: Option<Arc<Schema>>,
    pub query_schema: Option<Arc<Schema>>,
    pub response_schema: Option<Arc<Schema>>,
    pub rate_limit: Option<Arc<RateLimit>>,
}

impl Routed for Route {
    fn pattern(&self) -> &PathPattern {
        &self.pattern
    }

    fn methods(&self) -> Option<&[Method]> {
        self.methods.as_deref()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathPattern {
    text: String,
    segments: Vec<Segment>,
    /// Ends in `/*`: matches the path and everything below it.
    prefix: bool,
}

impl PathPattern {
    /// Parses a pattern; it must already be in normalized form, so that a pattern that could
    /// never match (`/a//b`, `/a/../b`, `/%61dmin`) is a config error rather than a silent
    /// dead route.
    pub fn parse(text: &str) -> Result<PathPattern, String> {
        let (body, prefix) = match text.strip_suffix("/*") {
            Some(body) => (if body.is_empty() { "/" } else { body }, true),
            None => (text, false),
        };
        let normalized =
            super::normalize::normalize(body).map_err(|e| format!("route path {text:?}: {e}"))?;
        if normalized != body {
            return Err(format!(
                "route path {text:?} is not in normalized form; write {normalized:?}"
            ));
        }
        let segments = body
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| match s {
                "*" => Err(format!(
                    "route path {text:?}: `*` only as the last segment, as in /prefix/*"
                )),
                s if s.starts_with('{') && s.ends_with('}') && s.len() > 2 => Ok(Segment::Param),
                s if s.contains(['{', '}']) => Err(format!(
                    "route path {text:?}: a parameter is a whole segment, as in /users/{{id}}"
                )),
                s => Ok(Segment::Literal(s.to_owned())),
            })
            .collect::<Result<_, _>>()?;
        Ok(PathPattern { text: text.to_owned(), segments, prefix })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the normalized `path` matches.
    pub fn matches(&self, path: &str) -> bool {
        let mut parts = path.split('/').filter(|s| !s.is_empty());
        for segment in &self.segments {
            match (segment, parts.next()) {
                (Segment::Literal(want), Some(got)) if want == got => {}
                (Segment::Param, Some(_)) => {}
                _ => return false,
            }
        }
        self.prefix || parts.next().is_none()
    }
}

/// What a lookup found.
#[derive(Debug, PartialEq, Eq)]
pub enum Found<'a, R> {
    Route(&'a R),
    /// The first route matching the path does not take this method; `Allow` lists these.
    MethodNotAllowed(Vec<Method>),
    NotFound,
}

/// Anything a route table holds: its pattern and methods (`None`: any method).
pub trait Routed {
    fn pattern(&self) -> &PathPattern;
    fn methods(&self) -> Option<&[Method]>;
}

pub fn find<'a, R: Routed>(routes: &'a [R], path: &str, method: &Method) -> Found<'a, R> {
    let Some(route) = routes.iter().find(|r| r.pattern().matches(path)) else {
        return Found::NotFound;
    };
    match route.methods() {
        Some(methods) if !allows(methods, method) => {
            let mut allow = methods.to_vec();
            if allows(methods, &Method::HEAD) && !allow.contains(&Method::HEAD) {
                allow.push(Method::HEAD);
            }
            Found::MethodNotAllowed(allow)
        }
        _ => Found::Route(route),
    }
}

/// Whether `methods` takes `method`; HEAD comes with GET, as HTTP says it must (RFC 9110 §9.3.2).
fn allows(methods: &[Method], method: &Method) -> bool {
    methods.contains(method) || (*method == Method::HEAD && methods.contains(&Method::GET))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct R(PathPattern, Option<Vec<Method>>);

    impl Routed for R {
        fn pattern(&self) -> &PathPattern {
            &self.0
        }
        fn methods(&self) -> Option<&[Method]> {
            self.1.as_deref()
        }
    }

    fn p(s: &str) -> PathPattern {
        PathPattern::parse(s).unwrap()
    }

    #[test]
    fn patterns_match_as_documented() {
        assert!(p("/health").matches("/health") && !p("/health").matches("/health/x"));
        assert!(p("/admin/*").matches("/admin"), "a prefix covers its own root");
        assert!(p("/admin/*").matches("/admin/") && p("/admin/*").matches("/admin/a/b"));
        assert!(!p("/admin/*").matches("/administrator"));
        assert!(p("/users/{id}/keys").matches("/users/7/keys"));
        assert!(
            !p("/users/{id}/keys").matches("/users/keys")
                && !p("/users/{id}/keys").matches("/users/7/8/keys")
        );
        assert!(p("/*").matches("/anything/at/all") && p("/*").matches("/"));
        assert!(p("/Admin").matches("/Admin") && !p("/Admin").matches("/admin"), "case is kept");
    }

    #[test]
    fn patterns_that_could_never_match_are_refused() {
        for bad in ["admin", "/a//b", "/a/../b", "/%61dmin", "/a/*/b", "/a{b}", "/x;y"] {
            assert!(PathPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn first_match_wins_and_methods_decide() {
        let routes = vec![R(p("/admin/*"), Some(vec![Method::GET])), R(p("/*"), None)];
        assert!(
            matches!(find(&routes, "/admin/x", &Method::GET), Found::Route(r) if r.0.as_str() == "/admin/*")
        );
        assert_eq!(
            find(&routes, "/admin", &Method::POST),
            Found::MethodNotAllowed(vec![Method::GET, Method::HEAD])
        );
        assert!(
            matches!(find(&routes, "/admin/x", &Method::HEAD), Found::Route(_)),
            "HEAD comes with GET"
        );
        assert!(
            matches!(find(&routes, "/other", &Method::DELETE), Found::Route(r) if r.0.as_str() == "/*")
        );
        assert_eq!(find(&routes[..1], "/x", &Method::GET), Found::NotFound);
    }

    proptest::proptest! {
        /// Matching never panics, and a prefix pattern matches whatever its exact form does.
        #[test]
        fn matching_is_total(pattern in "(/[a-z{}]{1,4}){0,3}(/\\*)?", path in "(/[a-z0-9]{0,3}){0,5}") {
            if let Ok(pat) = PathPattern::parse(&pattern) {
                let hit = pat.matches(&path);
                if let Some(exact) = pattern.strip_suffix("/*").and_then(|e| PathPattern::parse(e).ok()) {
                    proptest::prop_assert!(!exact.matches(&path) || hit);
                }
            }
        }
    }
}
