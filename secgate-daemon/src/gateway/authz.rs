//! Who may call what, default deny. A route's `allow_cidrs` limit where calls may come from;
//! its `allow_roles` and `allow_principals` say who may make them. A route that needs
//! authentication and names no one is closed; only `auth = ["none"]` opens a route to all.

use std::net::IpAddr;

use super::{authn::Principal, routes::Route};

/// Why a call was refused (403), for the audit.
pub type Denied = &'static str;

/// Whether calls to `route` may come from `source`.
pub fn source_allowed(route: &Route, source: IpAddr) -> Result<(), Denied> {
    if route.allow_cidrs.is_empty() || route.allow_cidrs.iter().any(|n| n.contains(&source)) {
        Ok(())
    } else {
        Err("source not in allow_cidrs")
    }
}

/// Whether `principal` (authenticated for `route`) may call it.
pub fn authorize(route: &Route, principal: Option<&Principal>) -> Result<(), Denied> {
    let Some(principal) = principal else {
        return if route.auth.none() { Ok(()) } else { Err("not authenticated") };
    };
    let names_someone = !route.allow_roles.is_empty() || !route.allow_principals.is_empty();
    if !names_someone {
        // A route opened only by source (allow_cidrs) admits every authenticated caller from
        // there; one with no allow list at all admits no one.
        return if route.allow_cidrs.is_empty() { Err("route allows no one") } else { Ok(()) };
    }
    let by_role = route.allow_roles.iter().any(|r| principal.roles.contains(r));
    let by_name = route.allow_principals.iter().any(|p| {
        p.split_once(':').is_some_and(|(m, id)| m == principal.via.name() && id == principal.id)
    });
    if by_role || by_name { Ok(()) } else { Err("principal not allowed") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::{
        authn::{Method, Methods},
        routes::PathPattern,
    };

    fn route(roles: &[&str], principals: &[&str], cidrs: &[&str], none: bool) -> Route {
        Route {
            name: "r".into(),
            methods: None,
            pattern: PathPattern::parse("/*").unwrap(),
            auth: Methods { api_key: !none, ..Default::default() },
            allow_roles: roles.iter().map(|s| s.to_string()).collect(),
            allow_principals: principals.iter().map(|s| s.to_string()).collect(),
            allow_cidrs: cidrs.iter().map(|s| s.parse().unwrap()).collect(),
            keep_upstream_cache_control: false,
            max_body_bytes: None,
            content_types: None,
            body_schema: None,
            query_schema: None,
            response_schema: None,
            rate_limit: None,
        }
    }

    fn who(id: &str, roles: &[&str]) -> Principal {
        Principal {
            id: id.into(),
            roles: roles.iter().map(|s| s.to_string()).collect(),
            via: Method::ApiKey,
        }
    }

    #[test]
    fn default_deny() {
        let alice = who("alice", &["admin"]);
        assert_eq!(
            authorize(&route(&[], &[], &[], false), Some(&alice)),
            Err("route allows no one")
        );
        assert_eq!(authorize(&route(&["admin"], &[], &[], false), Some(&alice)), Ok(()));
        assert_eq!(
            authorize(&route(&["ops"], &[], &[], false), Some(&alice)),
            Err("principal not allowed")
        );
        assert_eq!(
            authorize(&route(&["ops"], &["api_key:alice"], &[], false), Some(&alice)),
            Ok(())
        );
        assert_eq!(
            authorize(&route(&["ops"], &["jwt:alice", "alice"], &[], false), Some(&alice)),
            Err("principal not allowed"),
            "a JWT subject or a bare name is not the API key alice"
        );
        assert_eq!(authorize(&route(&[], &[], &["198.18.0.0/15"], false), Some(&alice)), Ok(()));
        assert_eq!(authorize(&route(&["admin"], &[], &[], false), None), Err("not authenticated"));
        assert_eq!(authorize(&route(&[], &[], &[], true), None), Ok(()));
    }

    #[test]
    fn sources_outside_the_cidrs_are_refused() {
        let r = route(&[], &[], &["198.18.0.0/24", "fd00::/8"], true);
        assert!(source_allowed(&r, "198.18.0.9".parse().unwrap()).is_ok());
        assert!(source_allowed(&r, "fd00::1".parse().unwrap()).is_ok());
        assert!(source_allowed(&r, "198.19.0.9".parse().unwrap()).is_err());
    }
}
