//! `[auth]`: API keys (only their hashes), JWT verification (keys read here, from a JWKS or a
//! secret file) and client-certificate principals.

use std::{collections::HashMap, time::Duration};

use http::HeaderName;
use toml::Spanned;

use super::{
    gateway::file,
    raw::{RawApiKey, RawAuth, RawJwt, RawMtls},
    validate::Check,
    values,
};
use crate::gateway::authn::{
    self, Authenticator, MtlsSettings,
    api_key::{self, ApiKey, ApiKeys, KeyHash},
    jwt::{self, JwtKeys, JwtSettings},
    mtls::PrincipalFrom,
};

const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
const MAX_LEEWAY: Duration = Duration::from_secs(300);

pub(super) fn authenticator(
    c: &mut Check<'_>,
    raw: Option<&Spanned<RawAuth>>,
    client_ca: bool,
) -> Option<Authenticator> {
    let Some(raw) = raw else { return Some(Authenticator::default()) };
    let a = raw.get_ref();
    let api_keys = api_keys(c, &a.api_keys);
    let header = a.header.as_ref().map_or(Some(None), |h| {
        let parsed = HeaderName::from_bytes(h.get_ref().as_bytes())
            .map_err(|_| format!("invalid header name {:?}", h.get_ref()))
            .and_then(|name| match name.as_str() {
                "authorization" | "cookie" | "host" | "content-length" | "transfer-encoding" => {
                    Err(format!("header {:?} cannot carry API keys; pick a header of its own such as X-Api-Key", h.get_ref()))
                }
                _ => Ok(name),
            });
        c.take(h, parsed).map(Some)
    });
    let jwt = a.jwt.as_ref().map_or(Some(None), |j| jwt_settings(c, j).map(Some));
    let mtls = a.mtls.as_ref().map_or(Some(None), |m| mtls(c, m, client_ca).map(Some));
    if a.header.is_some() && a.api_keys.is_empty() {
        c.say(raw, "auth.header is set but no [[auth.api_keys]] is configured".into());
    }
    Some(Authenticator { api_keys: api_keys?, api_key_header: header?, jwt: jwt?, mtls: mtls? })
}

fn api_keys(c: &mut Check<'_>, raw: &[Spanned<RawApiKey>]) -> Option<ApiKeys> {
    let mut keys: Vec<ApiKey> = Vec::new();
    let mut ok = true;
    for k in raw {
        let r = k.get_ref();
        let id = r.id.get_ref();
        let id_ok = api_key::valid_id(id);
        if !id_ok {
            c.say(&r.id, format!("invalid API key id {id:?}: 1–64 letters, digits, `-` or `_`"));
        } else if keys.iter().any(|k| k.id == *id) {
            c.say(&r.id, format!("API key id {id:?} is given twice"));
        }
        let hash = c.take(&r.hash, KeyHash::parse(r.hash.get_ref()));
        let roles = names(c, &r.roles, "role");
        match (id_ok, hash, roles) {
            (true, Some(hash), Some(roles)) if !keys.iter().any(|k| k.id == *id) => {
                keys.push(ApiKey { id: id.clone(), hash, roles });
            }
            _ => ok = false,
        }
    }
    // One cost for every key: with a cheap and a costly hash side by side, the response
    // time would tell which ids exist (an unknown id is checked against one dummy).
    // (Only when every entry parsed, so that `keys` and `raw` line up.)
    if ok && let Some(first) = keys.first() {
        let want = first.hash.cost();
        for (k, raw) in keys.iter().zip(raw).skip(1) {
            if k.hash.cost() != want {
                c.say(&raw.get_ref().hash, format!(
                    "API key {:?} is hashed with {}, but {:?} with {want}: give every key the same kind of hash (and argon2 parameters), or response times tell which ids exist",
                    k.id, k.hash.cost(), first.id
                ));
                ok = false;
            }
        }
    }
    ok.then(|| ApiKeys::new(keys))
}

/// Role or principal names: non-empty printable text without spaces (a space separates
/// scopes in a JWT).
pub(super) fn names(c: &mut Check<'_>, raw: &[Spanned<String>], what: &str) -> Option<Vec<String>> {
    let mut ok = true;
    for n in raw {
        let s = n.get_ref();
        if !authn::valid_name(s) {
            c.say(n, format!("invalid {what} {s:?}: {}", authn::NAME_RULE));
            ok = false;
        }
    }
    ok.then(|| raw.iter().map(|n| n.get_ref().clone()).collect())
}

fn jwt_settings(c: &mut Check<'_>, raw: &Spanned<RawJwt>) -> Option<JwtSettings> {
    let j = raw.get_ref();
    if j.issuer.get_ref().is_empty() {
        c.say(&j.issuer, "auth.jwt.issuer is empty".into());
    }
    let audiences: Vec<String> =
        j.audiences.get_ref().iter().map(|a| a.get_ref().clone()).collect();
    if audiences.is_empty() || audiences.iter().any(String::is_empty) {
        c.say(&j.audiences, "auth.jwt.audiences needs at least one non-empty audience".into());
    }
    let algorithms: Vec<_> =
        j.algorithms.get_ref().iter().map(|a| c.take(a, jwt::algorithm(a.get_ref()))).collect();
    let algorithms: Option<Vec<_>> = algorithms.into_iter().collect();
    if j.algorithms.get_ref().is_empty() {
        c.say(
            &j.algorithms,
            "auth.jwt.algorithms is empty: list the algorithms your issuer signs with".into(),
        );
    }
    let keys = match (&j.jwks_file, &j.secret_file) {
        (Some(path), None) => {
            file(c, path, "jwks_file").and_then(|p| c.take(path, jwt::load_jwks(&p)))
        }
        (None, Some(path)) => {
            file(c, path, "secret_file").and_then(|p| c.take(path, jwt::load_secret(&p)))
        }
        _ => {
            c.say(raw, "auth.jwt needs exactly one of jwks_file or secret_file".into());
            None
        }
    };
    if let (Some(algs), Some(keys)) = (&algorithms, &keys) {
        let secret = matches!(keys, JwtKeys::Secret(_));
        for (alg, at) in algs.iter().zip(j.algorithms.get_ref()) {
            let hmac = alg.family() == jsonwebtoken::AlgorithmFamily::Hmac;
            if hmac != secret {
                let needs = if hmac { "secret_file" } else { "jwks_file" };
                c.say(at, format!("algorithm {alg:?} needs a {needs}; list only algorithms the configured keys can verify"));
            }
        }
    }
    let roles_claim = match &j.roles_claim {
        None => Some("roles".to_string()),
        Some(r) if r.get_ref().is_empty() => {
            c.say(r, "roles_claim is empty: name the claim that holds roles".into());
            None
        }
        Some(r) => Some(r.get_ref().clone()),
    };
    let leeway = j.leeway.as_ref().map_or(Some(DEFAULT_LEEWAY), |l| c.take(l, leeway(l.get_ref())));
    Some(JwtSettings {
        issuer: j.issuer.get_ref().clone(),
        audiences,
        algorithms: algorithms?,
        keys: keys?,
        roles_claim: roles_claim?,
        leeway: leeway?,
    })
}

/// A leeway may be zero, unlike other durations, but not long enough to make `exp` moot.
fn leeway(s: &str) -> Result<Duration, String> {
    let d = if s.trim() == "0s" || s.trim() == "0" { Duration::ZERO } else { values::duration(s)? };
    if d > MAX_LEEWAY {
        return Err(format!(
            "leeway {s:?} is longer than 5m; clocks that far apart need fixing, not tolerating"
        ));
    }
    Ok(d)
}

fn mtls(c: &mut Check<'_>, raw: &Spanned<RawMtls>, client_ca: bool) -> Option<MtlsSettings> {
    let m = raw.get_ref();
    if !client_ca {
        c.say(
            raw,
            "[auth.mtls] needs gateway.tls.client_ca to verify client certificates against".into(),
        );
    }
    let principal = m.principal.as_ref().map_or(Some(PrincipalFrom::San), |p| {
        let r = match p.get_ref().as_str() {
            "san" => Ok(PrincipalFrom::San),
            "cn" => Ok(PrincipalFrom::Cn),
            other => Err(format!("invalid mtls principal {other:?}: expected \"san\" or \"cn\"")),
        };
        c.take(p, r)
    });
    let mut roles = HashMap::new();
    let mut ok = client_ca;
    for (who, list) in &m.roles {
        match names(c, list, "role") {
            Some(list) => {
                roles.insert(who.clone(), list);
            }
            None => ok = false,
        }
    }
    let principal = principal?;
    ok.then_some(MtlsSettings { principal, roles })
}
