//! `[[routes]]`: patterns in normalized form, methods, the authentication each accepts (only
//! methods `[auth]` configures), and who may call it.

use std::sync::Arc;

use http::Method;
use toml::Spanned;

use super::{
    auth::names,
    raw::{RawRateLimit, RawRoute},
    validate::Check,
    values,
};
use crate::gateway::{
    authn::{self, Methods},
    ratelimit::{MAX_FLEET_RPS, Per, RateLimit, Scope},
    routes::{PathPattern, Route},
    schema::Schema,
    validate,
};

pub(super) fn routes(
    c: &mut Check<'_>,
    raw: &[Spanned<RawRoute>],
    configured: Methods,
) -> Option<Vec<Route>> {
    let mut out: Vec<Route> = Vec::new();
    let mut names: Vec<&str> = Vec::new();
    let mut ok = true;
    for r in raw {
        let name = r.get_ref().name.get_ref();
        if names.contains(&name.as_str()) {
            c.say(&r.get_ref().name, format!("route name {name:?} is given twice"));
            ok = false;
        }
        names.push(name);
        match route(c, r.get_ref(), configured) {
            Some(route) => {
                if let Some(earlier) =
                    out.iter().find(|o| o.pattern.as_str() == route.pattern.as_str())
                {
                    c.say(
                        &r.get_ref().path,
                        format!(
                            "route {:?} can never match: route {:?} has the same path and comes first",
                            route.name, earlier.name
                        ),
                    );
                    ok = false;
                }
                out.push(route);
            }
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn route(c: &mut Check<'_>, r: &RawRoute, configured: Methods) -> Option<Route> {
    let name = r.name.get_ref();
    let name_ok = (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !name_ok {
        c.say(
            &r.name,
            format!("invalid route name {name:?}: 1–64 letters, digits, `.`, `_` or `-`"),
        );
    }
    let pattern = c.take(&r.path, PathPattern::parse(r.path.get_ref()));
    let methods = r.methods.as_ref().map_or(Some(None), |m| methods(c, m).map(Some));
    let accepts = accepts(c, r, configured);
    let allow_roles = names(c, &r.allow_roles, "role");
    let allow_principals = names(c, &r.allow_principals, "principal")
        .and_then(|names| principals(c, &r.allow_principals, accepts.as_ref()).then_some(names));
    let allow_cidrs: Option<Vec<_>> = r
        .allow_cidrs
        .iter()
        .map(|s| c.take(s, values::cidr(s.get_ref())))
        .collect::<Vec<_>>()
        .into_iter()
        .collect();
    let max_body_bytes = match &r.max_body_bytes {
        None => Some(None),
        Some(v) => c
            .take(
                v,
                values::range("max_body_bytes", *v.get_ref(), 1, super::gateway::MAX_BODY_BYTES),
            )
            .map(Some),
    };
    let content_types =
        r.content_types.as_ref().map_or(Some(None), |t| content_types(c, t).map(Some));
    let body_schema = schema(c, &r.body_schema, "body_schema");
    let query_schema = schema(c, &r.query_schema, "query_schema");
    let response_schema = schema(c, &r.response_schema, "response_schema");
    let rate_limit =
        r.rate_limit.as_ref().map_or(Some(None), |l| rate_limit(c, l, accepts.as_ref()).map(Some));
    if let Some(accepts) = &accepts
        && accepts.none()
        && let Some(first) = r.allow_roles.first().or(r.allow_principals.first())
    {
        c.say(
            first,
            format!(
                "route {name:?} has auth = [\"none\"], so no caller has a role or name to allow"
            ),
        );
        return None;
    }
    if !name_ok {
        return None;
    }
    Some(Route {
        name: name.clone(),
        methods: methods?,
        pattern: pattern?,
        auth: accepts?,
        allow_roles: allow_roles?,
        allow_principals: allow_principals?,
        allow_cidrs: allow_cidrs?,
        keep_upstream_cache_control: r.keep_upstream_cache_control,
        max_body_bytes: max_body_bytes?,
        content_types: content_types?,
        body_schema: body_schema?,
        query_schema: query_schema?,
        response_schema: response_schema?,
        rate_limit: rate_limit?,
    })
}

fn rate_limit(
    c: &mut Check<'_>,
    raw: &Spanned<RawRateLimit>,
    accepts: Option<&Methods>,
) -> Option<Arc<RateLimit>> {
    let l = raw.get_ref();
    let per = c.take(&l.per, Per::parse(l.per.get_ref()));
    if per == Some(Per::Principal) && accepts.is_some_and(Methods::none) {
        c.say(&l.per, "rate_limit.per = \"principal\" on a route with auth = [\"none\"]: no caller has a principal; use \"source\"".into());
        return None;
    }
    let rps = c.take(&l.rps, values::range("rps", *l.rps.get_ref(), 1, 1_000_000));
    let burst = c.take(&l.burst, values::range("burst", *l.burst.get_ref(), 1, 1_000_000));
    let scope =
        l.scope.as_ref().map_or(Some(Scope::Node), |s| c.take(s, Scope::parse(s.get_ref())));
    if scope == Some(Scope::Fleet) && rps.is_some_and(|r| r > MAX_FLEET_RPS) {
        c.say(&l.rps, format!("rate_limit.rps above {MAX_FLEET_RPS} with scope = \"fleet\": the fleet's bucket counts whole µs, which would hold it far under its value"));
        return None;
    }
    Some(Arc::new(RateLimit::new(per?, rps? as u32, burst? as u32).in_scope(scope?)))
}

/// A schema file, compiled; `Some(None)` when not configured, `None` if invalid (recorded).
fn schema(
    c: &mut Check<'_>,
    v: &Option<Spanned<String>>,
    what: &str,
) -> Option<Option<Arc<Schema>>> {
    let Some(v) = v else { return Some(None) };
    let path = super::gateway::file(c, v, what)?;
    c.take(v, Schema::load(&path, what)).map(|s| Some(Arc::new(s)))
}

/// Media types as `type/subtype`, without parameters (they would never match).
fn content_types(c: &mut Check<'_>, list: &Spanned<Vec<Spanned<String>>>) -> Option<Vec<String>> {
    if list.get_ref().is_empty() {
        c.say(list, "content_types is empty: list media types, or leave it out to take any".into());
        return None;
    }
    let mut out = Vec::new();
    let mut ok = true;
    for t in list.get_ref() {
        let text = t.get_ref();
        match validate::essence(text) {
            Some(e) if e == text.trim().to_ascii_lowercase() => out.push(e),
            _ => {
                c.say(t, format!("invalid content type {text:?}: write type/subtype, like application/json, without parameters"));
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

/// Each `allow_principals` entry names the method that proves it (`api_key:ci`,
/// `jwt:alice`, `mtls:svc.example.com`), one the route accepts.
fn principals(c: &mut Check<'_>, raw: &[Spanned<String>], accepts: Option<&Methods>) -> bool {
    let mut ok = true;
    for p in raw {
        let text = p.get_ref();
        match text.split_once(':').map(|(m, id)| (authn::Method::from_name(m), id)) {
            Some((Some(m), id)) if !id.is_empty() => {
                if accepts.is_some_and(|a| !a.none() && !a.contains(m)) {
                    c.say(p, format!("principal {text:?} can never call this route: its auth does not list {:?}", m.name()));
                    ok = false;
                }
            }
            _ => {
                c.say(p, format!("principal {text:?} must say how it is proven: \"api_key:<id>\", \"jwt:<sub>\" or \"mtls:<name>\""));
                ok = false;
            }
        }
    }
    ok
}

fn methods(c: &mut Check<'_>, m: &Spanned<Vec<Spanned<String>>>) -> Option<Vec<Method>> {
    if m.get_ref().is_empty() {
        c.say(
            m,
            "methods is empty: list the methods the route takes, or leave it out for any".into(),
        );
        return None;
    }
    let mut out: Vec<Method> = Vec::new();
    let mut ok = true;
    for s in m.get_ref() {
        let text = s.get_ref();
        let parsed = Method::from_bytes(text.as_bytes())
            .ok()
            .filter(|_| text.bytes().all(|b| b.is_ascii_uppercase()))
            .ok_or_else(|| {
                format!("invalid method {text:?}: write it in upper case, like GET or POST")
            });
        match c.take(s, parsed) {
            Some(method) if out.contains(&method) => {
                c.say(s, format!("method {text} is given twice"));
                ok = false;
            }
            Some(method) => out.push(method),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// The methods a route accepts; each must be configured in `[auth]`.
fn accepts(c: &mut Check<'_>, r: &RawRoute, configured: Methods) -> Option<Methods> {
    let Some(list) = &r.auth else {
        if configured.none() {
            c.say(&r.name, format!(
                "route {:?}: [auth] configures no method; set auth = [\"none\"] for an open route or configure one",
                r.name.get_ref()
            ));
            return None;
        }
        return Some(configured);
    };
    let items = list.get_ref();
    if items.is_empty() {
        c.say(list, "auth is empty: list methods, or write [\"none\"] for an open route".into());
        return None;
    }
    let mut m = Methods::default();
    let mut ok = true;
    let mut none = false;
    for item in items {
        let (flag, have) = match item.get_ref().as_str() {
            "api_key" => (&mut m.api_key, configured.api_key),
            "jwt" => (&mut m.jwt, configured.jwt),
            "mtls" => (&mut m.mtls, configured.mtls),
            "none" => {
                none = true;
                continue;
            }
            other => {
                c.say(
                    item,
                    format!("invalid auth method {other:?}: expected api_key, jwt, mtls or none"),
                );
                ok = false;
                continue;
            }
        };
        *flag = true;
        if !have {
            let table = match item.get_ref().as_str() {
                "api_key" => "[[auth.api_keys]]",
                "jwt" => "[auth.jwt]",
                _ => "[auth.mtls]",
            };
            c.say(item, format!("auth method {:?} is not configured: add {table}", item.get_ref()));
            ok = false;
        }
    }
    if none && items.len() > 1 {
        c.say(list, "auth = [\"none\"] cannot be combined with other methods".into());
        ok = false;
    }
    ok.then_some(m)
}
