//! The config file as written: serde-shaped, every field documented with its unit and
//! default. Numbers are `i64` and choices are strings so that out-of-range values and typos
//! reach validation, which reports all of them with their lines, instead of stopping serde at
//! the first one.

use serde::Deserialize;
use toml::Spanned;

pub type S<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
pub struct RawConfig {
    /// Directory for runtime state. Default `/var/lib/secgate`.
    pub state_dir: Option<S<String>>,
    pub datapath: RawDatapath,
    #[serde(default)]
    pub control: RawControl,
    #[serde(default)]
    pub metrics: RawMetrics,
    #[serde(default)]
    pub audit: RawAudit,
    /// The TLS gateway. Absent: the daemon runs the datapath alone.
    pub gateway: Option<S<RawGateway>>,
    /// How gateway callers prove who they are.
    pub auth: Option<S<RawAuth>>,
    /// The gateway's routes, matched in order.
    #[serde(default)]
    pub routes: Vec<S<RawRoute>>,
    /// Banning sources that keep offending. Absent: nobody is banned automatically.
    pub escalation: Option<S<RawEscalation>>,
    /// Sharing bans and limits with other gateways through Redis. Absent: this gateway is
    /// on its own.
    pub fleet: Option<S<RawFleet>>,
}

#[derive(Debug, Deserialize)]
pub struct RawFleet {
    /// `redis://host:port/db`, `rediss://host:port/db` (TLS) or `unix:///path/redis.sock`.
    /// Required. Never with a password: see `password_file`.
    pub redis: S<String>,
    /// This gateway's name, unique in the fleet: 1–64 of `A-Z a-z 0-9 . _ -`. Required.
    pub node: S<String>,
    /// What every key and channel of this fleet starts with. Default `secgate`.
    pub prefix: Option<S<String>>,
    /// What the fleet shares: `bans`, `limits`. Default both.
    pub share: Option<S<Vec<S<String>>>>,
    /// With Redis unreachable, `local` limits routes with `scope = "fleet"` on this node
    /// alone; `closed` refuses them (503). Default `local`.
    pub on_unavailable: Option<S<String>>,
    /// A file holding the Redis password (`AUTH`), read at start and on reload. Else the
    /// `SECGATE_FLEET_PASSWORD` environment variable, else none.
    pub password_file: Option<S<String>>,
    /// With `rediss://`: a PEM file of the CAs Redis's certificate is checked against.
    /// Default: the system's trusted CAs.
    pub ca_file: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
pub struct RawEscalation {
    /// Offences are counted over this sliding window. Default `1m`.
    pub window: Option<S<String>>,
    /// Failed authentications (bad credentials, refused by an ACL) in the window that ban a
    /// source; 0 never bans for them. Default 10.
    pub auth_failures: Option<S<i64>>,
    /// Invalid requests (limits, types, schemas, framing, slowloris) in the window; 0 off.
    /// Default 20.
    pub validation_failures: Option<S<i64>>,
    /// Requests answered 429 in the window; 0 off. Default 100.
    pub rate_limited: Option<S<i64>>,
    /// Failed TLS handshakes in the window; 0 off. Default 20.
    pub tls_failures: Option<S<i64>>,
    /// The datapath's over-limit events (at most one per source per `event_interval`) in the
    /// window; 0 off. Default 0: packets' source addresses can be forged where the network
    /// does not filter them, so a forged flood could ban the address it names.
    pub overlimit_events: Option<S<i64>>,
    /// A first ban's length. Default `10m`.
    pub ban_ttl: Option<S<String>>,
    /// Each further ban of the same source lasts this many times the last one, 1–100.
    /// Default 2.
    pub ttl_factor: Option<S<toml::Value>>,
    /// No ban lasts longer. Default `1d`.
    pub max_ttl: Option<S<String>>,
    /// `enforce` bans; `monitor` only logs, audits and counts who would be banned.
    /// Default `enforce`.
    pub mode: Option<S<String>>,
    /// Bans a whole prefix once this many of its addresses each got halfway to a threshold
    /// within the window.
    pub widen: Option<S<RawWiden>>,
}

#[derive(Debug, Deserialize)]
pub struct RawWiden {
    /// The IPv4 prefix length to widen to, 8–32. Default 24.
    pub v4_prefix: Option<S<i64>>,
    /// The IPv6 prefix length to widen to, 16–128. Default 48.
    pub v6_prefix: Option<S<i64>>,
    /// How many distinct offending addresses in one prefix ban the prefix, 2–1024.
    pub sources: S<i64>,
}

#[derive(Debug, Deserialize)]
pub struct RawDatapath {
    /// Interfaces to attach the XDP program to. Required, at least one.
    pub interfaces: S<Vec<S<String>>>,
    /// `auto` (native, falling back to skb with a warning), `native` or `skb`. Default `auto`.
    pub attach: Option<S<String>>,
    /// `enforce` or `monitor`. Default `enforce`.
    pub mode: Option<S<String>>,
    /// `kernel` (leave NAPI polling as the kernel has it) or `threaded` (move it to kernel
    /// threads on every attached interface). Default `kernel`.
    pub napi: Option<S<String>>,
    /// Prefix length an IPv4 source is grouped by for rate limiting, 1–32. Default 32.
    pub ipv4_prefix: Option<S<i64>>,
    /// Prefix length an IPv6 source is grouped by for rate limiting, 1–128. Default 64.
    pub ipv6_prefix: Option<S<i64>>,
    /// Sources the limiter table holds without evicting (beyond, the bucket nearest to
    /// lapsing goes). Default 262144.
    pub max_sources: Option<S<i64>>,
    /// `drop` or `pass` malformed IP packets (always counted). Default `drop`.
    pub malformed: Option<S<String>>,
    /// Limit for packets no override matches. Default: none (unlimited).
    pub default_limit: Option<S<RawRate>>,
    /// `limit` or `drop` non-first IP fragments (they carry no ports, so no port override
    /// can match them). Default `limit`.
    pub fragments: Option<S<String>>,
    /// Limit for non-first fragments, in a bucket of their own per source. Default: the
    /// default limit.
    pub fragment_limit: Option<S<RawRate>>,
    /// Per-protocol/port overrides.
    #[serde(default)]
    pub limits: Vec<S<RawOverride>>,
    /// Sources never limited or denied (CIDR or bare address).
    #[serde(default)]
    pub allow: Vec<S<String>>,
    /// Sources always dropped (CIDR or bare address).
    #[serde(default)]
    pub deny: Vec<S<String>>,
    /// bpffs directory for the pinned link and maps. Default `/sys/fs/bpf/secgate`.
    pub pin_path: Option<S<String>>,
    /// Minimum gap between over-limit events for one source, e.g. `"1s"`. Default `1s`.
    pub event_interval: Option<S<String>>,
    /// Over-limit events per second per CPU at most. Default 1000.
    pub events_per_sec: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
pub struct RawRate {
    /// Packets per second, 1–1000000000.
    pub pps: S<i64>,
    /// Packets allowed back to back, 1–16777216.
    pub burst: S<i64>,
}

#[derive(Debug, Deserialize)]
pub struct RawOverride {
    /// `tcp`, `udp` or `icmp` (ICMP and ICMPv6).
    pub protocol: S<String>,
    /// Destination port, 1–65535 (TCP and UDP only). Default: any port.
    pub port: Option<S<i64>>,
    /// Only TCP SYNs (connection attempts). Default false.
    #[serde(default)]
    pub syn_only: bool,
    pub pps: S<i64>,
    pub burst: S<i64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawControl {
    /// Control socket path. Default `/run/secgate/control.sock`.
    pub socket: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawMetrics {
    /// Address of the Prometheus text endpoint (`/metrics`). Default `127.0.0.1:9477`.
    pub listen: Option<S<String>>,
    /// Serve metrics at all. Default true.
    pub enabled: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawAudit {
    /// JSON-lines audit log of every control change and gateway request. Default
    /// `/var/log/secgate/audit.log`.
    pub path: Option<S<String>>,
}

/// One string or a list of them (`listen = "…"` or `listen = ["…", "…"]`). Hand-written:
/// serde's untagged enums lose the spans `toml::Spanned` needs.
#[derive(Debug)]
pub struct OneOrMany(pub Vec<String>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<OneOrMany, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = OneOrMany;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or a list of strings")
            }

            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![s.to_owned()]))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<OneOrMany, A::Error> {
                let mut items = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    items.push(s);
                }
                Ok(OneOrMany(items))
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Debug, Deserialize)]
pub struct RawGateway {
    /// Addresses the gateway accepts TLS on, `IP:PORT`: one or a list.
    pub listen: S<OneOrMany>,
    /// Where requests go: `http://host:port`.
    pub upstream: S<String>,
    pub tls: S<RawTls>,
    /// A connection with no request in flight, or whose bytes have not moved, for this long
    /// is closed gracefully (and dropped after as long again). Default `60s`.
    pub idle_timeout: Option<S<String>>,
    /// The upstream must send its response headers within this. Default `30s`.
    pub upstream_timeout: Option<S<String>>,
    /// The TLS handshake must finish within this. Default `10s`.
    pub handshake_timeout: Option<S<String>>,
    #[serde(default)]
    pub limits: RawGatewayLimits,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawGatewayLimits {
    /// A request's headers must arrive within this (slowloris). Default `10s`.
    pub header_timeout: Option<S<String>>,
    /// Bytes of request headers at most (HTTP/1.1 head, HTTP/2 header list), 8192–1048576.
    /// Default 16384.
    pub max_header_bytes: Option<S<i64>>,
    /// Concurrent HTTP/2 streams per connection, 1–1000. Default 100.
    pub max_concurrent_streams: Option<S<i64>>,
    /// Open client connections at most; more are closed right after `accept`, 1–1000000.
    /// Default 10000.
    pub max_connections: Option<S<i64>>,
    /// Open client connections from one source (an IPv4 address or an IPv6 /64) at most,
    /// 1–1000000. Default 256.
    pub max_connections_per_source: Option<S<i64>>,
    /// Header fields in one request at most, 1–1000. Default 100.
    pub max_headers: Option<S<i64>>,
    /// Bytes of a request's path and query at most, 256–65536. Default 8192.
    pub max_uri_bytes: Option<S<i64>>,
    /// Bytes of a request body at most (routes may set their own), 1–2^40. Default 1 MiB.
    pub max_body_bytes: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
pub struct RawTls {
    /// PEM certificate chain served when no `certs` entry matches the SNI name.
    pub cert: S<String>,
    /// Its PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: S<String>,
    /// `"1.2"` or `"1.3"`. Default `"1.2"`; nothing older is possible.
    pub min_version: Option<S<String>>,
    /// PEM CA certificates client certificates must chain to (mTLS).
    pub client_ca: Option<S<String>>,
    /// `"optional"` or `"required"` (only with `client_ca`). Default `"required"`.
    pub client_auth: Option<S<String>>,
    /// Certificates chosen by the SNI name the client asks for.
    #[serde(default)]
    pub certs: Vec<S<RawSniCert>>,
}

#[derive(Debug, Deserialize)]
pub struct RawSniCert {
    /// The server name, e.g. `api.example.com`, or `*.example.com` for one label below it.
    pub sni: S<String>,
    pub cert: S<String>,
    pub key: S<String>,
}

#[derive(Debug, Deserialize)]
pub struct RawAuth {
    #[serde(default)]
    pub api_keys: Vec<S<RawApiKey>>,
    /// A header that carries API keys besides `Authorization: Bearer`, e.g. `X-Api-Key`.
    pub header: Option<S<String>>,
    pub jwt: Option<S<RawJwt>>,
    pub mtls: Option<S<RawMtls>>,
}

#[derive(Debug, Deserialize)]
pub struct RawApiKey {
    /// The part of the key before its first `.`: letters, digits, `-`, `_`.
    pub id: S<String>,
    /// `sha256:<hex>` or an argon2id PHC string (`secgate token new` / `token hash`).
    pub hash: S<String>,
    #[serde(default)]
    pub roles: Vec<S<String>>,
}

#[derive(Debug, Deserialize)]
pub struct RawJwt {
    /// Required `iss`.
    pub issuer: S<String>,
    /// Accepted `aud` values (at least one).
    pub audiences: S<Vec<S<String>>>,
    /// Accepted `alg` values, e.g. `["RS256"]`; never `none`.
    pub algorithms: S<Vec<S<String>>>,
    /// A JWKS file (RSA/EC/Ed25519 public keys, each with a `kid`).
    pub jwks_file: Option<S<String>>,
    /// A file holding an HMAC secret of at least 32 bytes (HS algorithms).
    pub secret_file: Option<S<String>>,
    /// The claim holding roles: an array of strings or a space-separated string. Default
    /// `roles`.
    pub roles_claim: Option<S<String>>,
    /// Clock skew tolerated on `exp` and `nbf`, up to 5m. Default `30s`.
    pub leeway: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
pub struct RawMtls {
    /// `"san"` (first DNS subject alternative name) or `"cn"` (subject common name). Default
    /// `"san"`.
    pub principal: Option<S<String>>,
    /// Roles of each certificate principal.
    #[serde(default)]
    pub roles: std::collections::BTreeMap<String, Vec<S<String>>>,
}

#[derive(Debug, Deserialize)]
pub struct RawRoute {
    /// Unique; names the route in metrics and the audit: letters, digits, `.`, `_`, `-`.
    pub name: S<String>,
    /// Methods the route takes, e.g. `["GET", "POST"]`. Default: any.
    pub methods: Option<S<Vec<S<String>>>>,
    /// `/exact`, `/prefix/*` or `/users/{id}`, in normalized form.
    pub path: S<String>,
    /// Accepted methods: `"api_key"`, `"jwt"`, `"mtls"`, or `["none"]` for an open route.
    /// Default: every method configured in `[auth]`.
    pub auth: Option<S<Vec<S<String>>>>,
    #[serde(default)]
    pub allow_roles: Vec<S<String>>,
    #[serde(default)]
    pub allow_principals: Vec<S<String>>,
    /// Sources the route may be called from. Default: anywhere.
    #[serde(default)]
    pub allow_cidrs: Vec<S<String>>,
    /// Keep the upstream's own `Cache-Control` on its 401 and 403 answers instead of
    /// replacing it with `no-store`. Default false.
    #[serde(default)]
    pub keep_upstream_cache_control: bool,
    /// This route's body limit in bytes, instead of `[gateway.limits] max_body_bytes`.
    pub max_body_bytes: Option<S<i64>>,
    /// Media types a request body may have, e.g. `["application/json"]` (415 otherwise).
    /// Default: any.
    pub content_types: Option<S<Vec<S<String>>>>,
    /// A JSON Schema file (draft 2020-12) request bodies must match (422 otherwise).
    pub body_schema: Option<S<String>>,
    /// A JSON Schema file the query parameters must match, as an object of strings (a
    /// repeated parameter: an array of strings).
    pub query_schema: Option<S<String>>,
    /// A JSON Schema file successful responses must match; one that does not, or is not
    /// JSON, is not forwarded (502).
    pub response_schema: Option<S<String>>,
    /// Requests per second and burst, counted per `"principal"`, `"source"` or `"route"`.
    pub rate_limit: Option<S<RawRateLimit>>,
}

#[derive(Debug, Deserialize)]
pub struct RawRateLimit {
    pub per: S<String>,
    pub rps: S<i64>,
    pub burst: S<i64>,
    /// `node` (this gateway counts alone) or `fleet` (one count across every gateway
    /// sharing `limits`). Default `node`.
    pub scope: Option<S<String>>,
}
