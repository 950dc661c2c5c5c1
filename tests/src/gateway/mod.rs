//! The gateway under test: a real `secgate run` in the gateway namespace with XDP on its
//! veth, TLS on 198.18.0.1:8443 and [fd00:18::1]:8443, a real upstream on its loopback, and
//! a PKI, API keys (made by `secgate token new`) and a JWT issuer of its own.

pub mod client;
pub mod h2raw;
pub mod jwt;
pub mod pki;
pub mod upstream;

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf};

use self::{
    client::{H1, Http, Reply, Tls, request},
    jwt::Issuer,
    pki::{ClientCert, Pki},
    upstream::Upstream,
};
use crate::netns::{Daemon, NEIGHBOUR_IF, NetNs, Topology, addr::GW_V4, secgate_bin};

pub const PORT: u16 = 8443;
/// Plain HTTP sent to the TLS port: the handshake fails as a protocol error.
pub const NOT_TLS: &[u8] = b"GET / HTTP/1.1\r\nHost: api.test\r\n\r\n";
pub const HOST: &str = "api.test";
pub const OTHER_HOST: &str = "other.test";

/// The routes every gateway test runs with.
pub const ROUTES: &str = r#"
[[routes]]
name = "health"
methods = ["GET"]
path = "/health"
auth = ["none"]

[[routes]]
name = "public"
path = "/public/*"
auth = ["none"]
max_body_bytes = 16777216

[[routes]]
name = "upload"
methods = ["POST", "PUT"]
path = "/upload/*"
auth = ["none"]
max_body_bytes = 65536
content_types = ["application/json"]

[[routes]]
name = "admin"
path = "/admin/*"
auth = ["api_key", "jwt", "mtls"]
allow_roles = ["admin"]

[[routes]]
name = "reports"
methods = ["GET"]
path = "/reports/{id}"
auth = ["jwt"]
allow_roles = ["reports:read"]

[[routes]]
name = "ops"
path = "/ops/*"
auth = ["api_key", "jwt"]
allow_principals = ["api_key:ops-bot"]

[[routes]]
name = "internal"
path = "/internal/*"
auth = ["api_key"]
allow_cidrs = ["198.18.0.3/32"]

[[routes]]
name = "closed"
path = "/closed"
auth = ["api_key"]

[[routes]]
name = "limited"
path = "/limited/*"
auth = ["api_key"]
allow_roles = ["admin", "user"]
rate_limit = { per = "principal", rps = 1, burst = 3 }

[[routes]]
name = "svc"
path = "/svc/*"
auth = ["mtls"]
allow_roles = ["admin"]
"#;

/// The JSON Schemas of the `orders` and `profile` routes.
const SCHEMAS: [(&str, &str); 3] = [
    (
        "order.schema.json",
        r#"{"type": "object", "required": ["item", "qty"], "additionalProperties": false,
            "properties": {"item": {"type": "string", "maxLength": 10},
                           "qty": {"type": "integer", "minimum": 1}}}"#,
    ),
    (
        "query.schema.json",
        r#"{"type": "object", "properties": {"limit": {"type": "string", "pattern": "^[0-9]{1,3}$"}}}"#,
    ),
    (
        "profile.schema.json",
        r#"{"type": "object", "required": ["path", "method"], "additionalProperties": false,
            "properties": {"path": {"type": "string"}, "method": {"type": "string"}, "received": {"type": "integer"}}}"#,
    ),
];

/// API keys: id and role.
pub const KEYS: &[(&str, &str)] = &[("admin-key", "admin"), ("user-key", "user"), ("ops-bot", "")];

/// What a test may vary in the config.
#[derive(Clone, Debug)]
pub struct Opts {
    pub client_auth: &'static str,
    pub min_version: &'static str,
    pub upstream: Option<String>,
    pub datapath_extra: &'static str,
    /// Routes after [`ROUTES`], e.g. an open catch-all.
    pub routes_extra: &'static str,
    /// Store the API keys as argon2id hashes instead of sha256 (only at start).
    pub argon2_keys: bool,
    /// `client_ca` other than the test CA.
    pub client_ca: Option<PathBuf>,
    /// Lines added to the `[gateway]` table.
    pub gateway_extra: &'static str,
    /// The `[escalation]` table's lines; `None`: no escalation.
    pub escalation: Option<String>,
    /// A second client namespace (see `Topology::add_neighbour`), XDP on its link too.
    pub neighbour: bool,
    /// Further top-level tables (`[fleet]`…), written last.
    pub tables: String,
}

impl Default for Opts {
    fn default() -> Opts {
        Opts {
            client_auth: "optional",
            min_version: "1.2",
            upstream: None,
            datapath_extra: "",
            routes_extra: "",
            argon2_keys: false,
            client_ca: None,
            gateway_extra: "",
            escalation: None,
            neighbour: false,
            tables: String::new(),
        }
    }
}

pub struct Gw {
    pub daemon: Daemon,
    /// The second client's namespace, with `Opts::neighbour`.
    pub neighbour: Option<NetNs>,
    pub up: Upstream,
    pub topo: Topology,
    pub rt: tokio::runtime::Runtime,
    pub pki: Pki,
    pub issuer: Issuer,
    /// API keys by id, as `secgate token new` printed them.
    pub keys: BTreeMap<String, String>,
    /// Their `[[auth.api_keys]]` entries.
    key_entries: String,
    pub dir: PathBuf,
    pub api_der: Vec<u8>,
    pub other_der: Vec<u8>,
}

/// `secgate token new --id ID [--role R] [--argon2] --json`.
pub fn token_new(id: &str, role: &str, argon2: bool) -> serde_json::Value {
    let mut cmd = std::process::Command::new(secgate_bin());
    cmd.args(["token", "new", "--id", id, "--json"]);
    if !role.is_empty() {
        cmd.args(["--role", role]);
    }
    if argon2 {
        cmd.arg("--argon2");
    }
    let out = cmd.output().expect("secgate token new");
    assert!(out.status.success(), "token new: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("token new --json")
}

impl Gw {
    pub fn start(tag: &str, opts: Opts) -> Gw {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let topo = Topology::new(tag);
        let up = Upstream::start(&rt, &topo.gw);
        let dir = std::env::temp_dir().join(format!("secgate-gw-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let pki = Pki::new(&dir, "main");
        let (_, _, api_der) = pki.server("api", &[HOST]);
        let (_, _, other_der) = pki.server("other", &[OTHER_HOST]);
        let issuer = Issuer::new("k1");
        std::fs::write(
            dir.join("jwks.json"),
            serde_json::json!({ "keys": [issuer.jwk()] }).to_string(),
        )
        .expect("jwks");
        for (file, schema) in SCHEMAS {
            std::fs::write(dir.join(file), schema).expect("schema");
        }
        let mut keys = BTreeMap::new();
        let mut key_entries = String::new();
        for (id, role) in KEYS {
            let made = token_new(id, role, opts.argon2_keys);
            keys.insert(id.to_string(), made["key"].as_str().expect("key").to_string());
            key_entries.push_str(made["config"].as_str().expect("config"));
            key_entries.push('\n');
        }
        let extra = config_text(&dir, &pki.ca_pem, &key_entries, &up, &opts);
        let neighbour = opts.neighbour.then(|| topo.add_neighbour(tag));
        let mut interfaces = vec![topo.gw_if.as_str()];
        if neighbour.is_some() {
            interfaces.push(NEIGHBOUR_IF);
        }
        let daemon = Daemon::start_on(&topo, &interfaces, tag, opts.datapath_extra, extra);
        Gw {
            daemon,
            neighbour,
            up,
            topo,
            rt,
            pki,
            issuer,
            keys,
            key_entries,
            dir,
            api_der,
            other_der,
        }
    }

    /// The gateway's part of the config.
    pub fn config(&self, opts: &Opts) -> String {
        let ca = opts.client_ca.as_deref().unwrap_or(&self.pki.ca_pem);
        config_text(&self.dir, ca, &self.key_entries, &self.up, opts)
    }

    /// Rewrites the config with `opts` and reloads; returns the CLI's (code, stdout, stderr).
    pub fn reload(&mut self, opts: &Opts) -> (i32, String, String) {
        self.daemon.extra = self.config(opts);
        let mut interfaces = vec![self.topo.gw_if.as_str()];
        if self.neighbour.is_some() {
            interfaces.push(NEIGHBOUR_IF);
        }
        self.daemon.write_config_for(&interfaces, opts.datapath_extra);
        self.daemon.cli(&["reload"])
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(GW_V4.parse().unwrap(), PORT)
    }

    /// A client trusting the test CA, for `api.test`, offering `alpn`.
    pub fn tls(&self, alpn: &[&[u8]], cert: Option<ClientCert>) -> Tls {
        Tls::new(&self.pki.ca_pem, HOST, alpn, cert)
    }

    /// One request on a fresh HTTP/1.1 connection from `src`.
    pub fn get(&self, src: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.send(&self.tls(H1, None), src, "GET", path, headers)
    }

    /// One request on a fresh HTTP/1.1 connection from `src`, an address of `ns`.
    pub fn get_in(&self, ns: &NetNs, src: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        let tls = self.tls(H1, None);
        self.rt.block_on(async {
            let stream = tls.connect(ns, src, self.addr()).await.expect("TLS connect");
            let mut http = Http::over(stream).await;
            http.send(request("GET", HOST, path, headers, Vec::new())).await.expect("request")
        })
    }

    /// One request on a fresh connection made with `tls` from `src`.
    pub fn send(
        &self,
        tls: &Tls,
        src: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Reply {
        self.rt.block_on(async {
            let stream =
                tls.connect(&self.topo.client, src, self.addr()).await.expect("TLS connect");
            let mut http = Http::over(stream).await;
            http.send(request(method, HOST, path, headers, Vec::new())).await.expect("request")
        })
    }

    pub fn key(&self, id: &str) -> &str {
        &self.keys[id]
    }
}

/// The gateway's config tables for `opts`, naming the files in `dir`.
fn config_text(
    dir: &std::path::Path,
    ca: &std::path::Path,
    key_entries: &str,
    up: &Upstream,
    opts: &Opts,
) -> String {
    let d = |f: &str| dir.join(f).display().to_string();
    let upstream = opts.upstream.clone().unwrap_or_else(|| format!("http://{}", up.addr));
    format!(
        r#"
[gateway]
listen = ["{GW_V4}:{PORT}", "[fd00:18::1]:{PORT}"]
upstream = "{upstream}"
upstream_timeout = "1s"
{gateway_extra}

[gateway.tls]
cert = "{api_pem}"
key = "{api_key}"
min_version = "{min}"
client_ca = "{ca}"
client_auth = "{client_auth}"

[[gateway.tls.certs]]
sni = "{OTHER_HOST}"
cert = "{other_pem}"
key = "{other_key}"

[auth]
header = "X-Api-Key"

{keys}
[auth.jwt]
issuer = "{iss}"
audiences = ["{aud}"]
algorithms = ["ES256"]
jwks_file = "{jwks}"
roles_claim = "scope"
leeway = "5s"

[auth.mtls]
principal = "san"
roles = {{ "svc-a.clients.test" = ["admin"], "svc-b.clients.test" = ["user"] }}

[[routes]]
name = "orders"
methods = ["GET", "POST"]
path = "/orders/*"
auth = ["none"]
content_types = ["application/json"]
body_schema = "{order_schema}"
query_schema = "{query_schema}"

[[routes]]
name = "profile"
path = "/profile/*"
auth = ["none"]
response_schema = "{profile_schema}"
{ROUTES}{routes_extra}"#,
        routes_extra = opts.routes_extra,
        gateway_extra = opts.gateway_extra,
        api_pem = d("api.pem"),
        api_key = d("api.key"),
        min = opts.min_version,
        ca = ca.display(),
        client_auth = opts.client_auth,
        other_pem = d("other.pem"),
        other_key = d("other.key"),
        keys = key_entries,
        iss = jwt::ISSUER,
        aud = jwt::AUDIENCE,
        jwks = d("jwks.json"),
        order_schema = d("order.schema.json"),
        query_schema = d("query.schema.json"),
        profile_schema = d("profile.schema.json"),
    ) + &opts.escalation.as_ref().map_or(String::new(), |e| format!("\n[escalation]\n{e}\n"))
        + &opts.tables
}

impl Drop for Gw {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
