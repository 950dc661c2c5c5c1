//! The host a request is for, and whether this connection may ask for it.
//!
//! Routes match on the path alone, so a request must be for a name the connection was made
//! to: the SNI name when the client sent one, else a name one of the gateway's certificates
//! is for (or an IP literal). Otherwise a client could reach another virtual host of the
//! upstream under the ACL of this one (421). The host is read from `:authority` or the one
//! `Host` header, checked, and forwarded rebuilt from its parts, never as the client wrote it.

use std::sync::Arc;

/// A request's host, normalized: lower case, brackets and one trailing dot removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    pub port: Option<u16>,
}

impl Host {
    pub fn parse(s: &str) -> Result<Host, &'static str> {
        if s.contains('@') {
            return Err("the host carries user information");
        }
        let a = s.parse::<http::uri::Authority>().map_err(|_| "the host is not a host name")?;
        let name = a.host().trim_start_matches('[').trim_end_matches(']');
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        if name.is_empty() {
            return Err("the host is empty");
        }
        Ok(Host { name, port: a.port_u16() })
    }

    /// `name[:port]` for the upstream's `Host` (IPv6 literals in brackets).
    pub fn authority(&self) -> String {
        let name =
            if self.name.contains(':') { format!("[{}]", self.name) } else { self.name.clone() };
        match self.port {
            Some(port) => format!("{name}:{port}"),
            None => name,
        }
    }
}

/// The host of a request from its target's authority (HTTP/2 `:authority`, absolute form)
/// and its `Host` headers; both must name the same host if both are there.
pub fn of_request(
    target: Option<&str>,
    mut headers: impl Iterator<Item = Result<String, ()>>,
) -> Result<Option<Host>, &'static str> {
    let header = headers.next().transpose().map_err(|()| "Host is not text")?;
    if headers.next().is_some() {
        return Err("more than one Host header");
    }
    let target = target.map(Host::parse).transpose()?;
    let header = header.as_deref().map(Host::parse).transpose()?;
    match (target, header) {
        (Some(t), Some(h)) if t.name != h.name => {
            Err("the request target and Host name different hosts")
        }
        (Some(t), _) => Ok(Some(t)),
        (None, h) => Ok(h),
    }
}

/// Which hosts a connection may ask for.
#[derive(Clone, Debug)]
pub enum Expected {
    /// The name from the ClientHello.
    Sni(String),
    /// No SNI: any name the gateway's certificates are for (`*.x` covers one label), or an
    /// IP literal.
    Served(Arc<[String]>),
}

impl Expected {
    pub fn from_sni(sni: Option<&str>, served: &Arc<[String]>) -> Expected {
        match sni {
            Some(s) => Expected::Sni(s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase()),
            None => Expected::Served(served.clone()),
        }
    }

    pub fn allows(&self, name: &str) -> bool {
        match self {
            Expected::Sni(sni) => sni == name,
            Expected::Served(names) => {
                name.parse::<std::net::IpAddr>().is_ok() || names.iter().any(|n| covers(n, name))
            }
        }
    }
}

/// Whether certificate name `pattern` (maybe `*.example.com`) covers `name`.
fn covers(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(rest) => name.split_once('.').is_some_and(|(label, r)| !label.is_empty() && r == rest),
        None => pattern == name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(target: Option<&str>, hosts: &[&str]) -> Result<Option<Host>, &'static str> {
        of_request(target, hosts.iter().map(|h| Ok(h.to_string())))
    }

    #[test]
    fn hosts_are_normalized_and_rebuilt() {
        let h = Host::parse("API.Test.:8443").unwrap();
        assert_eq!((h.name.as_str(), h.port), ("api.test", Some(8443)));
        assert_eq!(h.authority(), "api.test:8443");
        assert_eq!(Host::parse("[FD00::1]").unwrap().authority(), "[fd00::1]");
        assert!(Host::parse("evil@api.test").is_err());
        assert!(Host::parse("api test").is_err());
    }

    #[test]
    fn one_host_per_request() {
        assert_eq!(req(None, &["api.test"]).unwrap().unwrap().name, "api.test");
        assert_eq!(req(Some("api.test:443"), &["API.test"]).unwrap().unwrap().port, Some(443));
        assert!(req(Some("api.test"), &["other.test"]).is_err());
        assert!(req(None, &["api.test", "api.test"]).is_err());
        assert_eq!(req(None, &[]), Ok(None));
    }

    #[test]
    fn a_connection_serves_its_names_only() {
        let served: Arc<[String]> = vec!["api.test".to_string(), "*.apps.test".to_string()].into();
        let sni = Expected::from_sni(Some("API.test."), &served);
        assert!(sni.allows("api.test") && !sni.allows("other.test"));
        let none = Expected::from_sni(None, &served);
        assert!(none.allows("api.test") && none.allows("x.apps.test") && none.allows("198.18.0.1"));
        assert!(
            !none.allows("internal.test")
                && !none.allows("apps.test")
                && !none.allows("a.b.apps.test")
        );
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics(s in "\\PC{0,80}") {
            if let Ok(h) = Host::parse(&s) {
                proptest::prop_assert_eq!(Host::parse(&h.authority()), Ok(h));
            }
        }
    }
}
