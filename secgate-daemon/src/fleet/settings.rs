//! What `[fleet]` says, validated: where Redis is, who this node is, what is shared, and
//! what to do while Redis is away. The password is kept out of every `Debug` and `Display`.

use std::fmt;

/// The default `prefix`.
pub const DEFAULT_PREFIX: &str = "secgate";
/// The environment variable the password comes from when no `password_file` is set.
pub const PASSWORD_ENV: &str = "SECGATE_FLEET_PASSWORD";

/// With Redis unreachable, what routes limited fleet-wide do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnUnavailable {
    /// Each node limits them alone (so the fleet admits up to N times the rate).
    Local,
    /// They are refused (503) until Redis is back.
    Closed,
}

impl OnUnavailable {
    pub fn parse(s: &str) -> Result<OnUnavailable, String> {
        match s {
            "local" => Ok(OnUnavailable::Local),
            "closed" => Ok(OnUnavailable::Closed),
            other => Err(format!(
                "invalid fleet.on_unavailable {other:?}: expected \"local\" or \"closed\""
            )),
        }
    }
}

/// A secret that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Secret {
        Secret(s)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Where Redis is, without any credential.
#[derive(Clone, Debug)]
pub struct Target {
    info: redis::ConnectionInfo,
    /// How it is shown in logs and `status`: scheme, host, port, database; never a password.
    shown: String,
}

impl Target {
    /// Parses a `redis://`, `rediss://` or `unix://` URL. A URL carrying a password is
    /// refused without echoing it.
    pub fn parse(url: &str) -> Result<Target, String> {
        use redis::IntoConnectionInfo as _;
        let scheme_ok = ["redis://", "rediss://", "unix://"].iter().any(|s| url.starts_with(s));
        if !scheme_ok {
            return Err("fleet.redis must start with redis://, rediss:// or unix://".into());
        }
        let info = url.into_connection_info().map_err(|e| {
            format!(
                "fleet.redis is not a Redis URL ({}); e.g. \"redis://127.0.0.1:6379/0\"",
                e.detail().unwrap_or(e.category())
            )
        })?;
        if info.redis.password.is_some() {
            return Err("fleet.redis must not carry a password: put it in fleet.password_file or the SECGATE_FLEET_PASSWORD environment variable".into());
        }
        let db = info.redis.db;
        let shown = match &info.addr {
            redis::ConnectionAddr::Tcp(host, port) => format!("redis://{host}:{port}/{db}"),
            redis::ConnectionAddr::TcpTls { host, port, insecure, .. } => {
                if *insecure {
                    return Err("fleet.redis asks for TLS without certificate checks (#insecure): remove it".into());
                }
                format!("rediss://{host}:{port}/{db}")
            }
            redis::ConnectionAddr::Unix(path) => format!("unix://{}?db={db}", path.display()),
        };
        Ok(Target { info, shown })
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.info.addr, redis::ConnectionAddr::TcpTls { .. })
    }

    /// The connection details with `password` set.
    pub fn with_password(&self, password: Option<&Secret>) -> redis::ConnectionInfo {
        let mut info = self.info.clone();
        info.redis.password = password.map(|p| p.expose().to_owned());
        info
    }
}

/// Two targets are the same Redis as the same user.
impl PartialEq for Target {
    fn eq(&self, other: &Target) -> bool {
        self.shown == other.shown && self.info.redis.username == other.info.redis.username
    }
}

impl Eq for Target {}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetSettings {
    pub redis: Target,
    pub node: String,
    pub prefix: String,
    pub share_bans: bool,
    pub share_limits: bool,
    pub on_unavailable: OnUnavailable,
    /// From `password_file`; `None`: the environment variable, if set, at start.
    pub password: Option<Secret>,
    /// From `ca_file` (PEM), for `rediss://`; `None`: the system's CAs.
    pub ca: Option<Vec<u8>>,
}

impl FleetSettings {
    /// The password to authenticate with: the file's, else the environment's.
    pub fn password(&self) -> Option<Secret> {
        self.password
            .clone()
            .or_else(|| std::env::var(PASSWORD_ENV).ok().filter(|p| !p.is_empty()).map(Secret::new))
    }
}

/// Checks a node name: it tags every ban a node shares, and nodes ignore their own.
pub fn node(s: &str) -> Result<String, String> {
    name(s, "fleet.node")
}

/// Checks a key prefix.
pub fn prefix(s: &str) -> Result<String, String> {
    name(s, "fleet.prefix")
}

fn name(s: &str, key: &str) -> Result<String, String> {
    let ok = (1..=64).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!("{key} {s:?} must be 1-64 of A-Z a-z 0-9 . _ -"))
    }
}

/// Reads `ca_file`: PEM with at least one certificate.
pub fn ca_file(path: &str) -> Result<Vec<u8>, String> {
    let pem =
        std::fs::read(path).map_err(|e| format!("fleet.ca_file {path:?} cannot be read: {e}"))?;
    if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
        return Err(format!("fleet.ca_file {path:?} holds no PEM certificate"));
    }
    Ok(pem)
}

/// Reads the password file: its first line, which must not be empty. A file anyone on the
/// host may read is refused, as ssh refuses such keys.
pub fn password_file(path: &str) -> Result<Secret, String> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path)
        .map_err(|e| format!("fleet.password_file {path:?} cannot be read: {e}"))?
        .permissions()
        .mode();
    if mode & 0o004 != 0 {
        return Err(format!(
            "fleet.password_file {path:?} is readable by anyone (mode {:o}): `chmod o-rwx` it",
            mode & 0o777
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("fleet.password_file {path:?} cannot be read: {e}"))?;
    let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
    if line.is_empty() {
        return Err(format!(
            "fleet.password_file {path:?} is empty: write the password on its first line"
        ));
    }
    Ok(Secret::new(line.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_credentials() {
        let t = Target::parse("redis://127.0.0.1:6380/2").unwrap();
        assert_eq!(t.to_string(), "redis://127.0.0.1:6380/2");
        let t = Target::parse("unix:///run/redis.sock").unwrap();
        assert_eq!(t.to_string(), "unix:///run/redis.sock?db=0");
        assert!(
            Target::parse("rediss://cache.example:6379/0")
                .unwrap()
                .to_string()
                .starts_with("rediss://")
        );
    }

    #[test]
    fn a_password_in_the_url_is_refused_without_echoing_it() {
        for url in ["redis://:hunter2@127.0.0.1/0", "redis://user:hunter2@127.0.0.1/0"] {
            let e = Target::parse(url).unwrap_err();
            assert!(e.contains("password_file") && !e.contains("hunter2"), "{e}");
        }
        let e = Target::parse("http://hunter2@x").unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(Target::parse("rediss://h:1/0#insecure").is_err());
    }

    #[test]
    fn secrets_never_print() {
        let s = FleetSettings {
            redis: Target::parse("redis://127.0.0.1/0").unwrap(),
            node: "a".into(),
            prefix: DEFAULT_PREFIX.into(),
            share_bans: true,
            share_limits: true,
            on_unavailable: OnUnavailable::Local,
            password: Some(Secret::new("hunter2".into())),
            ca: None,
        };
        assert!(!format!("{s:?}").contains("hunter2"));
        let info = s.redis.with_password(s.password.as_ref());
        assert_eq!(info.redis.password.as_deref(), Some("hunter2"));
    }

    #[test]
    fn names_are_checked() {
        assert!(node("gw-1.eu_west").is_ok());
        for bad in ["", "a b", "x:y", &"n".repeat(65)] {
            assert!(node(bad).is_err(), "{bad:?}");
        }
    }
}
