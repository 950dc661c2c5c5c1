//! `[gateway]`, `[gateway.tls]` and `[gateway.limits]`. Certificates and keys are read and
//! checked here, so a missing file, a key that does not fit its certificate or a broken PEM
//! is a config problem naming the file, not a failure on the first handshake.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use toml::Spanned;

use super::{
    raw::{RawConfig, RawGateway, RawGatewayLimits, RawTls},
    validate::Check,
    values,
};
use crate::gateway::{
    authn::Methods,
    proxy::UpstreamSettings,
    settings::{
        ConnLimits, DEFAULT_LIMITS, DEFAULT_REQUEST_LIMITS, DEFAULT_TIMEOUTS,
        DEFAULT_UPSTREAM_TIMEOUT, GatewaySettings, MAX_HEADERS_ACCEPTED, RequestLimits, Timeouts,
    },
    slots::SourceKey,
    tls::{self, ClientAuth, MinVersion, TlsSettings},
};

/// The gateway settings: `Some(None)` without a `[gateway]`; `None` if invalid (recorded).
pub(super) fn settings(
    c: &mut Check<'_>,
    raw: &RawConfig,
    sources: Option<SourceKey>,
) -> Option<Option<GatewaySettings>> {
    let Some(g) = &raw.gateway else {
        if let Some(auth) = &raw.auth {
            c.say(auth, "[auth] is for the gateway; add a [gateway] table or remove [auth]".into());
        }
        if let Some(route) = raw.routes.first() {
            c.say(
                route,
                "[[routes]] are for the gateway; add a [gateway] table or remove them".into(),
            );
        }
        return Some(None);
    };
    let g = g.get_ref();
    let listen = listen(c, g);
    let upstream_timeout = duration(c, &g.upstream_timeout, DEFAULT_UPSTREAM_TIMEOUT);
    let upstream = upstream_timeout
        .and_then(|t| c.take(&g.upstream, UpstreamSettings::parse(g.upstream.get_ref(), t)));
    let timeouts = timeouts(c, g);
    // A request waiting for its upstream makes no progress, so the idle timer would close
    // its connection before the upstream timeout could answer it.
    if let (Some(t), Some(up)) = (&timeouts, upstream_timeout)
        && t.idle <= up
    {
        let at = g.idle_timeout.as_ref().or(g.upstream_timeout.as_ref());
        let message = format!(
            "idle_timeout ({:?}) must be longer than upstream_timeout ({up:?}): a request waiting for the upstream would be cut as idle",
            t.idle
        );
        match at {
            Some(at) => c.say(at, message),
            None => c.say(&g.upstream, message),
        }
    }
    let limits = limits(c, &g.limits);
    let request_limits = request_limits(c, &g.limits);
    let tls = tls(c, &g.tls);
    // From the raw table: a broken certificate elsewhere must not add a false mTLS problem.
    let client_ca = g.tls.get_ref().client_ca.is_some();
    let auth = super::auth::authenticator(c, raw.auth.as_ref(), client_ca);
    // Routes are checked against the tables the operator wrote, even when one of them has a
    // problem of its own, so that every problem is listed in one run.
    let configured = raw.auth.as_ref().map_or(Methods::default(), |a| Methods {
        api_key: !a.get_ref().api_keys.is_empty(),
        jwt: a.get_ref().jwt.is_some(),
        mtls: a.get_ref().mtls.is_some(),
    });
    let routes = super::routes::routes(c, &raw.routes, configured);
    Some(Some(GatewaySettings {
        listen: listen?,
        tls: tls?,
        upstream: upstream?,
        timeouts: timeouts?,
        limits: limits?,
        request_limits: request_limits?,
        sources: sources?,
        routes: routes?,
        auth: auth?,
    }))
}

fn listen(c: &mut Check<'_>, g: &RawGateway) -> Option<Vec<SocketAddr>> {
    let items = &g.listen.get_ref().0;
    if items.is_empty() {
        c.say(&g.listen, "gateway.listen is empty: give at least one IP:PORT".into());
        return None;
    }
    let mut out = Vec::new();
    let mut ok = true;
    for item in items {
        let parsed = item.parse::<SocketAddr>().map_err(|_| {
            format!("invalid gateway listen address {item:?}: expected IP:PORT like 0.0.0.0:443 or [::]:443")
        });
        match c.take(&g.listen, parsed) {
            Some(addr) if out.contains(&addr) => {
                c.say(&g.listen, format!("gateway listen address {addr} is given twice"));
                ok = false;
            }
            Some(addr) => out.push(addr),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// Longest gateway timeout: past an hour a timeout protects nothing, and deadlines computed
/// from a huge one would overflow.
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// A timeout, or `default` when absent; `None` if invalid (recorded).
fn duration(c: &mut Check<'_>, v: &Option<Spanned<String>>, default: Duration) -> Option<Duration> {
    v.as_ref().map_or(Some(default), |v| {
        let d = values::duration(v.get_ref()).and_then(|d| {
            if d > MAX_TIMEOUT {
                Err(format!("timeout {:?} is longer than 1h", v.get_ref()))
            } else {
                Ok(d)
            }
        });
        c.take(v, d)
    })
}

fn timeouts(c: &mut Check<'_>, g: &RawGateway) -> Option<Timeouts> {
    let d = DEFAULT_TIMEOUTS;
    let handshake = duration(c, &g.handshake_timeout, d.handshake);
    let header = duration(c, &g.limits.header_timeout, d.header);
    let idle = duration(c, &g.idle_timeout, d.idle);
    Some(Timeouts { handshake: handshake?, header: header?, idle: idle? })
}

fn limits(c: &mut Check<'_>, l: &RawGatewayLimits) -> Option<ConnLimits> {
    let d = DEFAULT_LIMITS;
    let mut int = |v: &Option<Spanned<i64>>, name: &str, lo: u64, hi: u64, default: u32| match v {
        None => Some(default),
        Some(v) => c.take(v, values::range(name, *v.get_ref(), lo, hi).map(|v| v as u32)),
    };
    let max_header_bytes =
        int(&l.max_header_bytes, "max_header_bytes", 8192, 1 << 20, d.max_header_bytes);
    let max_concurrent_streams =
        int(&l.max_concurrent_streams, "max_concurrent_streams", 1, 1000, d.max_concurrent_streams);
    let max_connections =
        int(&l.max_connections, "max_connections", 1, 1_000_000, d.max_connections);
    let max_connections_per_source = int(
        &l.max_connections_per_source,
        "max_connections_per_source",
        1,
        1_000_000,
        d.max_connections_per_source,
    );
    Some(ConnLimits {
        max_header_bytes: max_header_bytes?,
        max_concurrent_streams: max_concurrent_streams?,
        max_connections: max_connections?,
        max_connections_per_source: max_connections_per_source?,
    })
}

/// The largest body limit: 1 TiB, far above any API's, far below overflow.
pub(super) const MAX_BODY_BYTES: u64 = 1 << 40;

fn request_limits(c: &mut Check<'_>, l: &RawGatewayLimits) -> Option<RequestLimits> {
    let d = DEFAULT_REQUEST_LIMITS;
    let mut int = |v: &Option<Spanned<i64>>, name: &str, lo: u64, hi: u64, default: u64| match v {
        None => Some(default),
        Some(v) => c.take(v, values::range(name, *v.get_ref(), lo, hi)),
    };
    let max_headers =
        int(&l.max_headers, "max_headers", 1, MAX_HEADERS_ACCEPTED as u64, d.max_headers.into());
    let max_uri_bytes = int(&l.max_uri_bytes, "max_uri_bytes", 256, 65536, d.max_uri_bytes.into());
    let max_body_bytes =
        int(&l.max_body_bytes, "max_body_bytes", 1, MAX_BODY_BYTES, d.max_body_bytes);
    Some(RequestLimits {
        max_headers: max_headers? as u32,
        max_uri_bytes: max_uri_bytes? as u32,
        max_body_bytes: max_body_bytes?,
    })
}

/// An absolute file path; `None` if not (recorded).
pub(super) fn file(c: &mut Check<'_>, v: &Spanned<String>, what: &str) -> Option<PathBuf> {
    let path = PathBuf::from(v.get_ref());
    if path.is_absolute() {
        Some(path)
    } else {
        c.say(v, format!("{what} {:?} must be an absolute path", v.get_ref()));
        None
    }
}

fn tls(c: &mut Check<'_>, t: &Spanned<RawTls>) -> Option<TlsSettings> {
    let t = t.get_ref();
    let default = pair(c, &t.cert, &t.key);
    let min_version = t.min_version.as_ref().map_or(Some(MinVersion::Tls12), |v| {
        let r = match v.get_ref().as_str() {
            "1.2" => Ok(MinVersion::Tls12),
            "1.3" => Ok(MinVersion::Tls13),
            other => Err(format!("invalid min_version {other:?}: expected \"1.2\" or \"1.3\" (nothing older is possible)")),
        };
        c.take(v, r)
    });
    let client_ca = match &t.client_ca {
        None => Some(None),
        Some(v) => file(c, v, "client_ca")
            .and_then(|path| c.take(v, tls::load_roots(&path)).map(|roots| Some((path, roots)))),
    };
    let client_auth = match (&t.client_auth, &t.client_ca) {
        (None, None) => Some(ClientAuth::Off),
        (None, Some(_)) => Some(ClientAuth::Required),
        (Some(v), None) => {
            c.say(
                v,
                "client_auth needs client_ca: name the CA file client certificates chain to".into(),
            );
            None
        }
        (Some(v), Some(_)) => {
            let r = match v.get_ref().as_str() {
                "optional" => Ok(ClientAuth::Optional),
                "required" => Ok(ClientAuth::Required),
                other => Err(format!(
                    "invalid client_auth {other:?}: expected \"optional\" or \"required\""
                )),
            };
            c.take(v, r)
        }
    };
    let sni = sni_certs(c, t);
    let settings = TlsSettings {
        default: default?,
        sni: sni?,
        min_version: min_version?,
        client_ca: client_ca?,
        client_auth: client_auth?,
    };
    // Building the rustls config once here catches what only it would refuse.
    let built = tls::ticketer().and_then(|t| settings.server_config(t)).map(|_| ());
    c.take(&t.cert, built).map(|()| settings)
}

fn pair(c: &mut Check<'_>, cert: &Spanned<String>, key: &Spanned<String>) -> Option<tls::Pair> {
    let cert_path = file(c, cert, "cert");
    let key_path = file(c, key, "key");
    let (cert_path, key_path) = (cert_path?, key_path?);
    match tls::load_pair(&cert_path, &key_path) {
        Ok(pair) => Some(pair),
        Err(e @ tls::PairError::Cert(_)) => c.take(cert, Err(e.to_string())),
        Err(e @ tls::PairError::Key(_)) => c.take(key, Err(e.to_string())),
    }
}

fn sni_certs(c: &mut Check<'_>, t: &RawTls) -> Option<Vec<(String, tls::Pair)>> {
    let mut out: Vec<(String, tls::Pair)> = Vec::new();
    let mut ok = true;
    for entry in &t.certs {
        let e = entry.get_ref();
        let name = e.sni.get_ref().to_ascii_lowercase();
        let name = c.take(&e.sni, tls::sni_name(&name).map(|()| name));
        let pair = pair(c, &e.cert, &e.key);
        match (name, pair) {
            (Some(name), Some(_)) if out.iter().any(|(n, _)| *n == name) => {
                c.say(&e.sni, format!("sni {name:?} is given twice"));
                ok = false;
            }
            (Some(name), Some(pair)) => out.push((name, pair)),
            _ => ok = false,
        }
    }
    ok.then_some(out)
}
