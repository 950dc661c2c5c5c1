//! `[gateway]`, `[auth]` and `[[routes]]` validation with real certificate files: every
//! problem is reported at its line, files are read while checking, none is lost.

use std::path::PathBuf;

use super::*;

/// A directory of certificate, key and secret files, removed when dropped.
struct Files(PathBuf);

impl Files {
    fn new(name: &str) -> Files {
        let dir = std::env::temp_dir().join(format!("secgate-cfg-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (stem, host) in [("api", "api.test"), ("other", "other.test")] {
            let pair = rcgen::generate_simple_self_signed(vec![host.to_owned()]).unwrap();
            std::fs::write(dir.join(format!("{stem}.pem")), pair.cert.pem()).unwrap();
            std::fs::write(dir.join(format!("{stem}.key")), pair.signing_key.serialize_pem())
                .unwrap();
        }
        std::fs::write(dir.join("broken.pem"), "-----BEGIN CERTIFICATE-----\nnot base64\n")
            .unwrap();
        std::fs::write(dir.join("secret"), "a-shared-secret-of-more-than-32-bytes\n").unwrap();
        std::fs::write(dir.join("short"), "too short\n").unwrap();
        std::fs::write(dir.join("jwks.json"), JWKS).unwrap();
        std::fs::write(dir.join("schema.json"), r#"{"type": "object"}"#).unwrap();
        std::fs::write(dir.join("bad-schema.json"), r#"{"type": 12}"#).unwrap();
        Files(dir)
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Public keys only (RFC 7517's EC example and an RSA modulus); they verify nothing here.
const JWKS: &str = r#"{"keys": [
  {"kty": "EC", "crv": "P-256", "kid": "ec-1",
   "x": "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4", "y": "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"},
  {"kty": "RSA", "kid": "rsa-1", "e": "AQAB",
   "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"}
]}"#;

const KEY_HASH: &str = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn good(f: &Files) -> String {
    format!(
        r#"
[datapath]
interfaces = ["eth0"]
[gateway]
listen = ["198.18.0.1:443", "[fd00::1]:443"]
upstream = "http://127.0.0.1:8080"
[gateway.tls]
cert = "{api}"
key = "{api_key}"
client_ca = "{other}"
client_auth = "optional"
[[gateway.tls.certs]]
sni = "other.test"
cert = "{other}"
key = "{other_key}"
[auth]
[[auth.api_keys]]
id = "ci"
hash = "{KEY_HASH}"
roles = ["deploy"]
[auth.jwt]
issuer = "https://issuer.test"
audiences = ["api"]
algorithms = ["HS256"]
secret_file = "{secret}"
[auth.mtls]
principal = "cn"
[[routes]]
name = "health"
path = "/health"
auth = ["none"]
[[routes]]
name = "deploy"
methods = ["POST"]
path = "/deploy/{{app}}"
allow_roles = ["deploy"]
"#,
        api = f.path("api.pem"),
        api_key = f.path("api.key"),
        other = f.path("other.pem"),
        other_key = f.path("other.key"),
        secret = f.path("secret"),
    )
}

#[test]
fn a_full_gateway_config_parses() {
    let f = Files::new("good");
    let cfg = Config::parse(&good(&f)).unwrap_or_else(|p| panic!("{p:#?}"));
    let g = cfg.gateway.expect("a gateway");
    assert_eq!(g.listen.len(), 2);
    assert_eq!(g.routes.len(), 2);
    assert_eq!(g.timeouts, crate::gateway::settings::DEFAULT_TIMEOUTS);
    assert!(
        Config::parse(GOOD_DATAPATH_ONLY).unwrap().gateway.is_none(),
        "no [gateway], no gateway"
    );
}

const GOOD_DATAPATH_ONLY: &str = "[datapath]\ninterfaces = [\"eth0\"]\n";

/// The 1-based line of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap_or_else(|| panic!("{needle} not in text"))
        + 1
}

fn replace(text: &str, edits: &[(&str, &str)]) -> String {
    edits.iter().fold(text.to_owned(), |t, (from, to)| {
        assert!(t.contains(from), "{from} not in config");
        t.replacen(from, to, 1)
    })
}

#[test]
fn every_gateway_problem_is_reported_with_its_line_and_file() {
    let f = Files::new("bad");
    let missing = f.path("missing.pem");
    let other_key = format!("key = \"{}\"", f.path("other.key"));
    let bad = replace(
        &good(&f),
        &[
            ("\"[fd00::1]:443\"", "\"nope\""),
            ("http://127.0.0.1:8080", "https://127.0.0.1:8443"),
            ("client_auth = \"optional\"", "client_auth = \"optional\"\nmin_version = \"1.1\""),
            (&format!("cert = \"{}\"", f.path("api.pem")), &format!("cert = \"{missing}\"")),
            (&other_key, &format!("key = \"{}\"", f.path("api.key"))),
            (KEY_HASH, "sha256:abc"),
            ("[\"HS256\"]", "[\"HS256\", \"none\"]"),
            ("auth = [\"none\"]", "auth = [\"oauth\"]"),
            ("name = \"deploy\"", "name = \"health\""),
        ],
    );
    let problems = Config::parse(&bad).expect_err("invalid");
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    let want = [
        ("\"nope\"", "\"nope\""),
        ("https://", "only http://"),
        ("min_version", "\"1.1\""),
        ("missing.pem", "missing.pem"),
        ("key = ", "does not fit certificate"),
        ("sha256:abc", "64 hex digits"),
        ("algorithms", "\"none\""),
        ("oauth", "\"oauth\""),
        ("name = \"health\"\nmethods", "given twice"),
    ];
    for (at, needle) in want {
        let line = match at {
            "key = " => line_of(&bad, "sni =") + 2,
            "name = \"health\"\nmethods" => {
                bad.lines()
                    .collect::<Vec<_>>()
                    .iter()
                    .rposition(|l| *l == "name = \"health\"")
                    .unwrap()
                    + 1
            }
            _ => line_of(&bad, at),
        };
        let prefix = format!("line {line}:");
        assert!(
            text.iter().any(|t| t.starts_with(&prefix) && t.contains(needle)),
            "missing {prefix} {needle} in {text:#?}"
        );
    }
    assert_eq!(problems.len(), want.len(), "{text:#?}");
}

#[test]
fn broken_and_unreadable_files_are_named() {
    let f = Files::new("files");
    let cases = [
        (f.path("api.pem"), f.path("broken.pem"), "broken.pem"),
        (f.path("secret"), f.path("short"), "at least 32 bytes"),
        (f.path("other.pem"), f.path("api.key"), "client_ca"),
    ];
    for (from, to, needle) in cases {
        let text = good(&f).replacen(&format!("\"{from}\""), &format!("\"{to}\""), 1);
        let problems = Config::parse(&text).expect_err(needle);
        let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert!(shown.iter().any(|p| p.contains(needle)), "{needle}: {shown:#?}");
    }
}

/// The example's commented gateway section, uncommented with real files in place of its
/// paths, is a valid config: what operators copy works.
#[test]
fn the_example_gateway_section_is_valid_uncommented() {
    let f = Files::new("example");
    let example = include_str!("../../../secgate.example.toml");
    let start = example.find("\n# [gateway]\n").expect("a commented [gateway] section") + 1;
    let uncommented: String = example[start..]
        .lines()
        .map(|l| if l == "#" { "" } else { l.strip_prefix("# ").unwrap_or(l) })
        .map(|l| format!("{l}\n"))
        .collect();
    let text = replace(
        &format!("{}{uncommented}", &example[..start]),
        &[
            ("/etc/secgate/tls/api.example.com.pem", &f.path("api.pem")),
            ("/etc/secgate/tls/api.example.com.key", &f.path("api.key")),
            ("/etc/secgate/tls/clients-ca.pem", &f.path("other.pem")),
            ("/etc/secgate/tls/admin.example.com.pem", &f.path("other.pem")),
            ("/etc/secgate/tls/admin.example.com.key", &f.path("other.key")),
            ("/etc/secgate/jwks.json", &f.path("jwks.json")),
            ("/etc/secgate/schemas/deploy.json", &f.path("schema.json")),
            ("/etc/secgate/schemas/deploy-query.json", &f.path("schema.json")),
            ("/etc/secgate/schemas/deploy-answer.json", &f.path("schema.json")),
            ("/etc/secgate/redis.password", &f.path("redis.pw")),
        ],
    );
    std::fs::write(f.path("redis.pw"), "example\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        let private = std::fs::Permissions::from_mode(0o600);
        std::fs::set_permissions(f.path("redis.pw"), private).unwrap();
    }
    let cfg = Config::parse(&text).unwrap_or_else(|p| panic!("{p:#?}\n{text}"));
    let e = cfg.escalation.as_ref().expect("the escalation section is in force");
    assert_eq!(e.widen.map(|w| w.sources), Some(8));
    assert_eq!(cfg.fleet.as_ref().map(|f| f.node.as_str()), Some("gw-1"));
    let g = cfg.gateway.expect("the gateway section is in force");
    assert_eq!((g.listen.len(), g.routes.len()), (2, 3));
}

#[test]
fn auth_and_routes_need_a_gateway() {
    let text = format!(
        "{GOOD_DATAPATH_ONLY}[auth]\nheader = \"X-Api-Key\"\n[[routes]]\nname = \"r\"\npath = \"/\"\nauth = [\"none\"]\n"
    );
    let shown: Vec<String> =
        Config::parse(&text).unwrap_err().iter().map(ToString::to_string).collect();
    assert!(
        shown.iter().any(|p| p.starts_with("line 3:") && p.contains("add a [gateway]")),
        "{shown:#?}"
    );
    assert!(
        shown
            .iter()
            .any(|p| p.starts_with("line 5:") && p.contains("[[routes]] are for the gateway")),
        "{shown:#?}"
    );
}

#[test]
fn request_limits_and_content_types_are_checked() {
    let f = Files::new("limits");
    let text = replace(
        &good(&f),
        &[
            (
                "[gateway.tls]",
                "[gateway.limits]\nmax_headers = 0\nmax_uri_bytes = 100\nmax_body_bytes = 4096\n[gateway.tls]",
            ),
            (
                "allow_roles = [\"deploy\"]",
                "allow_roles = [\"deploy\"]\nmax_body_bytes = 0\ncontent_types = [\"application/json; charset=utf-8\", \"json\", \"Text/Plain\"]",
            ),
        ],
    );
    let shown: Vec<String> =
        Config::parse(&text).unwrap_err().iter().map(ToString::to_string).collect();
    for needle in [
        "max_headers 0",
        "max_uri_bytes 100",
        "max_body_bytes 0",
        "\"application/json; charset=utf-8\"",
        "\"json\"",
    ] {
        assert!(shown.iter().any(|p| p.contains(needle)), "{needle}: {shown:#?}");
    }
    assert_eq!(shown.len(), 5, "Text/Plain is fine, the 4096-byte limit too: {shown:#?}");
}

#[test]
fn schemas_are_compiled_at_load() {
    let f = Files::new("schemas");
    let text = replace(
        &good(&f),
        &[(
            "allow_roles = [\"deploy\"]",
            &format!(
                "allow_roles = [\"deploy\"]\nbody_schema = \"{}\"\nquery_schema = \"{}\"\nresponse_schema = \"schema.json\"",
                f.path("bad-schema.json"),
                f.path("missing.json")
            ),
        )],
    );
    let shown: Vec<String> =
        Config::parse(&text).unwrap_err().iter().map(ToString::to_string).collect();
    assert!(
        shown.iter().any(|p| p.contains("body_schema")
            && p.contains("bad-schema.json")
            && p.contains("not a valid JSON Schema")),
        "{shown:#?}"
    );
    assert!(
        shown.iter().any(|p| p.contains("query_schema") && p.contains("missing.json")),
        "{shown:#?}"
    );
    assert!(
        shown.iter().any(|p| p.contains("response_schema") && p.contains("absolute path")),
        "{shown:#?}"
    );
    assert_eq!(shown.len(), 3, "{shown:#?}");
}

#[test]
fn rate_limits_are_checked() {
    let f = Files::new("rates");
    let text = replace(
        &good(&f),
        &[
            (
                "auth = [\"none\"]",
                "auth = [\"none\"]\nrate_limit = { per = \"principal\", rps = 1, burst = 1 }",
            ),
            (
                "allow_roles = [\"deploy\"]",
                "allow_roles = [\"deploy\"]\nrate_limit = { per = \"ip\", rps = 0, burst = 5 }",
            ),
        ],
    );
    let shown: Vec<String> =
        Config::parse(&text).unwrap_err().iter().map(ToString::to_string).collect();
    for needle in ["no caller has a principal", "\"ip\"", "rps 0"] {
        assert!(shown.iter().any(|p| p.contains(needle)), "{needle}: {shown:#?}");
    }
    assert_eq!(shown.len(), 3, "{shown:#?}");
}

#[test]
fn gateway_timeouts_are_bounded() {
    let f = Files::new("timeouts");
    let text = good(&f).replacen(
        "[gateway.tls]",
        "idle_timeout = \"2h\"\n[gateway.limits]\nheader_timeout = \"0s\"\n[gateway.tls]",
        1,
    );
    let shown: Vec<String> =
        Config::parse(&text).unwrap_err().iter().map(ToString::to_string).collect();
    assert!(shown.iter().any(|p| p.contains("\"2h\" is longer than 1h")), "{shown:#?}");
    assert!(shown.iter().any(|p| p.contains("longer than zero")), "{shown:#?}");
    let text = good(&f).replacen("[gateway.tls]", "idle_timeout = \"20s\"\n[gateway.tls]", 1);
    let shown: Vec<String> =
        Config::parse(&text).unwrap_err().iter().map(ToString::to_string).collect();
    assert!(shown.iter().any(|p| p.contains("must be longer than upstream_timeout")), "{shown:#?}");
}

#[test]
fn relative_paths_are_refused() {
    let f = Files::new("relative");
    let text = good(&f).replacen(&f.path("api.key"), "api.key", 1);
    let shown: Vec<String> =
        Config::parse(&text).unwrap_err().iter().map(ToString::to_string).collect();
    assert!(shown.iter().any(|p| p.contains("must be an absolute path")), "{shown:#?}");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
    /// Byte mutations of a full gateway config never panic, and a rejection always says why.
    #[test]
    fn mutated_gateway_config_is_handled(pos in 0usize..2000, byte in proptest::num::u8::ANY) {
        let f = Files::new("mutated");
        let text = good(&f);
        let mut bytes = text.as_bytes().to_vec();
        let at = pos % bytes.len();
        bytes[at] = byte;
        if let Ok(s) = String::from_utf8(bytes)
            && let Err(problems) = Config::parse(&s)
        {
            proptest::prop_assert!(!problems.is_empty());
            proptest::prop_assert!(problems.iter().all(|p| !p.message.is_empty()));
        }
    }
}

#[test]
fn keys_share_one_hash_cost_and_principals_name_their_method() {
    let f = Files::new("costs");
    let argon2 = crate::gateway::authn::api_key::KeyHash::argon2("ci.secret");
    // A second key, hashed with argon2 next to the sha256 one, before [auth.jwt].
    let entry = format!("[[auth.api_keys]]\nid = \"slow\"\nhash = \"{argon2}\"\nroles = []\n");
    let text = good(&f).replacen("[auth.jwt]", &format!("{entry}[auth.jwt]"), 1);
    let shown: Vec<String> =
        Config::parse(&text).unwrap_err().iter().map(ToString::to_string).collect();
    assert!(shown.iter().any(|p| p.contains("same kind of hash")), "{shown:#?}");
    assert_eq!(shown.len(), 1, "{shown:#?}");

    let text = replace(
        &good(&f),
        &[(
            "allow_roles = [\"deploy\"]",
            "auth = [\"api_key\"]\nallow_principals = [\"ci\", \"mtls:svc\", \"api_key:ci\"]",
        )],
    );
    let shown: Vec<String> =
        Config::parse(&text).unwrap_err().iter().map(ToString::to_string).collect();
    assert!(shown.iter().any(|p| p.contains("\"ci\" must say how it is proven")), "{shown:#?}");
    assert!(
        shown.iter().any(|p| p.contains("\"mtls:svc\" can never call this route")),
        "{shown:#?}"
    );
    assert_eq!(shown.len(), 2, "{shown:#?}");
}

#[test]
fn fleet_settings_are_checked_and_keep_the_password_out_of_sight() {
    let f = Files::new("fleet");
    let pw = f.0.join("redis.pw");
    std::fs::write(&pw, "hunter2-fleet\n").unwrap();
    let private = |p: &std::path::Path, mode| {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    private(&pw, 0o644);
    let open = format!(
        "{}[fleet]\nredis = \"redis://198.18.0.9/0\"\nnode = \"a\"\npassword_file = \"{}\"\n",
        good(&f),
        pw.display()
    );
    let e = Config::parse(&open).unwrap_err().iter().map(ToString::to_string).collect::<Vec<_>>();
    assert!(e.iter().any(|p| p.contains("readable by anyone")), "{e:#?}");
    private(&pw, 0o640);
    let fleet = format!(
        "[fleet]\nredis = \"redis://198.18.0.9:6380/1\"\nnode = \"gw-a\"\npassword_file = \"{}\"\n",
        pw.display()
    );
    let scoped = replace(
        &good(&f),
        &[(
            "allow_roles = [\"deploy\"]",
            "allow_roles = [\"deploy\"]\nrate_limit = { per = \"principal\", rps = 5, burst = 5, scope = \"fleet\" }",
        )],
    );
    let cfg = Config::parse(&format!("{scoped}{fleet}")).unwrap();
    let s = cfg.fleet.unwrap();
    assert_eq!((s.node.as_str(), s.prefix.as_str()), ("gw-a", "secgate"));
    assert!(s.share_bans && s.share_limits);
    assert_eq!(s.redis.to_string(), "redis://198.18.0.9:6380/1");
    assert_eq!(s.password().unwrap().expose(), "hunter2-fleet");
    assert!(!format!("{s:?}").contains("hunter2"));

    let shown = |text: String| -> Vec<String> {
        Config::parse(&text).unwrap_err().iter().map(ToString::to_string).collect()
    };
    let problems = shown(scoped.clone());
    assert!(problems.iter().any(|p| p.contains("needs [fleet]")), "{problems:#?}");
    let bans_only = shown(format!("{scoped}{fleet}share = [\"bans\"]\n"));
    assert!(bans_only.iter().any(|p| p.contains("needs [fleet]")), "{bans_only:#?}");
    let bad = format!(
        "{}[fleet]\nredis = \"redis://:hunter2@198.18.0.9/0\"\nnode = \"a b\"\nshare = [\"bans\", \"maps\"]\non_unavailable = \"open\"\npassword_file = \"/nonexistent/pw\"\n",
        good(&f)
    );
    let problems = shown(bad);
    for needle in
        ["must not carry a password", "fleet.node", "\"maps\"", "\"open\"", "/nonexistent/pw"]
    {
        assert!(problems.iter().any(|p| p.contains(needle)), "{needle}: {problems:#?}");
    }
    assert!(problems.iter().all(|p| !p.contains("hunter2")), "{problems:#?}");
    assert_eq!(problems.len(), 5, "{problems:#?}");
}
