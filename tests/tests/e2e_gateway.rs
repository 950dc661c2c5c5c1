//! End to end: the TLS gateway in a network namespace, with XDP on its veth, a real upstream
//! and real TLS clients (rustls, curl, and hand-made bytes where a library would refuse to
//! misbehave).

use std::time::{Duration, Instant};

use secgate_tests::{
    gateway::{
        Gw, HOST, OTHER_HOST, Opts, PORT,
        client::{H1, H2, Http, Reply, Tls, raw, raw_status, request, tcp},
        h2raw,
        jwt::{self, Issuer, claims, hs256, unsigned},
        pki::Pki,
    },
    metrics::{scrape, sum},
    netns::addr::*,
    privileged,
};
use serde_json::json;

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn assert_json_error(r: &Reply, status: u16, code: &str) {
    assert_eq!(r.status, status, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json; charset=utf-8"), "{r:?}");
    let body = r.json();
    assert_eq!(body["error"]["status"], status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
}

#[test]
fn every_auth_method_and_role_is_allowed_or_refused_as_configured() {
    if !privileged("every_auth_method_and_role_is_allowed_or_refused_as_configured") {
        return;
    }
    let gw = Gw::start("gwa", Opts::default());
    let alice = gw.issuer.token(&claims("alice", json!({ "scope": "admin other" })));
    let bob = gw.issuer.token(&claims("bob", json!({ "scope": ["reports:read"] })));
    // A JWT subject that spells an API key id is not that key.
    let fake_bot = gw.issuer.token(&claims("ops-bot", json!({})));
    let svc_a = gw.pki.client("svc-a.clients.test", "svc-a");
    let svc_b = gw.pki.client("svc-b.clients.test", "svc-b");
    let auth = |v: &str| vec![("authorization", bearer(v))];
    let key = |id: &str| auth(gw.key(id));
    let get = |src: &str, path: &str, headers: Vec<(&str, String)>| {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        gw.get(src, path, &h)
    };

    // (source, path, credential, status)
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, String)>, u16);
    let cases: Vec<Case> = vec![
        (CLIENT_V4, "/health", vec![], 200),
        (CLIENT_V4, "/public/x", vec![], 200),
        (CLIENT_V4, "/admin/x", vec![], 401),
        (CLIENT_V4, "/admin/x", key("admin-key"), 200),
        (CLIENT_V4, "/admin/x", vec![("x-api-key", gw.key("admin-key").into())], 200),
        (CLIENT_V4, "/admin/x", key("user-key"), 403),
        (CLIENT_V4, "/admin/x", key("ops-bot"), 403),
        (CLIENT_V4, "/admin/x", auth(&alice), 200),
        (CLIENT_V4, "/admin/x", auth(&bob), 403),
        (CLIENT_V4, "/reports/7", auth(&bob), 200),
        (CLIENT_V4, "/reports/7", auth(&alice), 403),
        (CLIENT_V4, "/reports/7", key("admin-key"), 401),
        (CLIENT_V4, "/reports/7/x", auth(&bob), 404),
        (CLIENT_V4, "/ops/deploy", key("ops-bot"), 200),
        (CLIENT_V4, "/ops/deploy", key("admin-key"), 403),
        (CLIENT_V4, "/ops/deploy", auth(&fake_bot), 403),
        (CLIENT_V4, "/admin/x", [key("admin-key"), key("user-key")].concat(), 400),
        // A JWT-only route: the API key beside the token is not checked, and never forwarded.
        (
            CLIENT_V4,
            "/reports/9",
            [auth(&bob), vec![("x-api-key", gw.key("user-key").into())]].concat(),
            200,
        ),
        (CLIENT_V4, "/internal/x", key("admin-key"), 403),
        (OTHER_V4, "/internal/x", key("user-key"), 200),
        (OTHER_V4, "/internal/x", vec![], 401),
        (CLIENT_V4, "/closed", key("admin-key"), 403),
        (CLIENT_V4, "/svc/x", vec![], 401),
        (CLIENT_V4, "/svc/x", key("admin-key"), 401),
        (CLIENT_V4, "/nowhere", vec![], 404),
    ];
    for (src, path, headers, want) in cases {
        let what =
            format!("{src} {path} {:?}", headers.iter().map(|(k, _)| *k).collect::<Vec<_>>());
        let r = get(src, path, headers);
        assert_eq!(r.status, want, "{what}: {r:?}");
        if want != 200 {
            assert_eq!(r.header("content-type"), Some("application/json; charset=utf-8"), "{what}");
        }
    }
    let r = gw.send(&gw.tls(H1, None), CLIENT_V4, "POST", "/health", &[]);
    assert_json_error(&r, 405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    assert_eq!(gw.send(&gw.tls(H1, None), CLIENT_V4, "HEAD", "/health", &[]).status, 200);
    // A second Host header, and a request for another host than the connection's name.
    let r = gw.get(CLIENT_V4, "/health", &[("host", OTHER_HOST)]);
    assert_json_error(&r, 400, "bad_host");
    let misdirected = gw.rt.block_on(async {
        let mut tls =
            gw.tls(H1, None).connect(&gw.topo.client, CLIENT_V4, gw.addr()).await.unwrap();
        let req =
            format!("GET /health HTTP/1.1\r\nHost: {OTHER_HOST}\r\nConnection: close\r\n\r\n");
        raw(&mut tls, req.as_bytes()).await
    });
    assert_eq!(raw_status(&misdirected), 421, "{}", String::from_utf8_lossy(&misdirected));
    // Without SNI, only names the certificates are for: a hidden virtual host is not one.
    let mut no_sni = (*gw.tls(H1, None).config).clone();
    no_sni.enable_sni = false;
    let no_sni = Tls { config: std::sync::Arc::new(no_sni), sni: HOST.into() };
    for (host, want) in [(HOST, 200), ("internal.test", 421), ("api.test.", 200)] {
        let answer = gw.rt.block_on(async {
            let mut tls = no_sni.connect(&gw.topo.client, CLIENT_V4, gw.addr()).await.unwrap();
            let req = format!("GET /health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
            raw(&mut tls, req.as_bytes()).await
        });
        assert_eq!(raw_status(&answer), want, "no SNI, Host {host}");
    }

    // mTLS: the verified certificate's SAN is the principal.
    let ok = gw.send(&gw.tls(H1, Some(svc_a.clone())), CLIENT_V4, "GET", "/svc/x", &[]);
    assert_eq!(ok.status, 200, "{ok:?}");
    let ok = gw.send(&gw.tls(H2, Some(svc_a)), CLIENT_V4, "GET", "/admin/x", &[]);
    assert_eq!(ok.status, 200, "{ok:?}");
    let r = gw.send(&gw.tls(H1, Some(svc_b)), CLIENT_V4, "GET", "/svc/x", &[]);
    assert_json_error(&r, 403, "forbidden");

    // 401s say only whether a credential came, never which part was wrong.
    let missing = gw.get(CLIENT_V4, "/admin/x", &[]);
    assert_json_error(&missing, 401, "invalid_request");
    assert!(
        missing.header("www-authenticate").is_some_and(|h| h.contains("error=\"invalid_request\""))
    );
    let wrong_secret = format!("admin-key.{}", "A".repeat(43));
    let bad = [wrong_secret.as_str(), "nobody.AAAA", "garbage", "a.b.c"];
    let bodies: Vec<Reply> = bad
        .iter()
        .map(|t| gw.get(CLIENT_V4, "/admin/x", &[("authorization", &bearer(t))]))
        .collect();
    for (t, r) in bad.iter().zip(&bodies) {
        assert_json_error(r, 401, "invalid_token");
        assert!(
            r.header("www-authenticate").is_some_and(|h| h.contains("error=\"invalid_token\"")),
            "{t}"
        );
        assert_eq!(r.header("cache-control"), Some("no-store"));
        assert_eq!(r.body, bodies[0].body, "{t}: the same answer for every bad credential");
    }

    // Both protocols, IPv6, and curl.
    let r = gw.send(
        &gw.tls(H2, None),
        CLIENT_V4,
        "GET",
        "/admin/x",
        &[("authorization", &bearer(gw.key("admin-key")))],
    );
    assert_eq!((r.status, r.version), (200, http::Version::HTTP_2));
    let v6 = gw.rt.block_on(async {
        let addr = std::net::SocketAddr::new(GW_V6.parse().unwrap(), PORT);
        let tls =
            gw.tls(H1, None).connect(&gw.topo.client, CLIENT_V6, addr).await.expect("v6 connect");
        Http::over(tls)
            .await
            .send(request("GET", HOST, "/health", &[], vec![]))
            .await
            .expect("v6 request")
    });
    assert_eq!(v6.status, 200);
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let out = gw
            .topo
            .client
            .command("curl")
            .args(["-sS", flag, "--cacert"])
            .arg(&gw.pki.ca_pem)
            .args([
                "--resolve",
                &format!("{HOST}:{PORT}:{GW_V4}"),
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{http_version}",
            ])
            .args(["-H", &format!("Authorization: Bearer {}", gw.key("admin-key"))])
            .arg(format!("https://{HOST}:{PORT}/admin/curl"))
            .output()
            .expect("curl");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("200 {version}"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // An API key stays with the gateway; a JWT is passed on.
    let seen = gw.up.seen();
    let by_key =
        seen.iter().find(|s| s.path_and_query == "/admin/curl").expect("curl request proxied");
    assert!(!by_key.headers.contains_key("authorization"));
    let by_jwt = seen
        .iter()
        .find(|s| s.headers.get("authorization").is_some())
        .expect("JWT request proxied");
    assert_eq!(by_jwt.headers["authorization"], bearer(&alice));
    assert!(
        seen.iter().all(|s| !s.headers.contains_key("x-api-key")),
        "API keys never go upstream"
    );

    // One audit line per request; no credential in the audit or the daemon's log.
    let audit = std::fs::read_to_string(&gw.daemon.audit).expect("audit log");
    let lines: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit JSON"))
        .filter(|v: &serde_json::Value| v["kind"] == "request")
        .collect();
    let allowed = lines
        .iter()
        .find(|l| {
            l["route"] == "admin" && l["principal"] == "api_key:admin-key" && l["status"] == 200
        })
        .unwrap_or_else(|| panic!("no allowed admin line in {audit}"));
    assert_eq!(allowed["decision"], "allow");
    assert_eq!(allowed["source"], CLIENT_V4);
    assert!(allowed["latency_ms"].as_f64().is_some());
    assert!(
        lines.iter().any(|l| l["status"] == 401
            && l["decision"] == "invalid_token"
            && l["route"] == "admin")
    );
    assert!(lines.iter().any(|l| l["status"] == 403 && l["principal"] == "api_key:user-key"));
    let log = gw.daemon.log_text();
    let mut secrets: Vec<String> = gw.keys.values().cloned().collect();
    secrets.extend(gw.keys.values().map(|k| k.split_once('.').unwrap().1.to_string()));
    secrets.extend([alice.clone(), bob.clone(), wrong_secret.clone()]);
    secrets.extend([&alice, &bob].iter().map(|t| t.rsplit('.').next().unwrap().to_string()));
    for s in &secrets {
        assert!(!audit.contains(s.as_str()), "a credential is in the audit log");
        assert!(!log.contains(s.as_str()), "a credential is in the daemon log");
    }

    assert!(
        sum(
            &gw.topo,
            "secgate_gateway_requests_total",
            &[("route", "admin"), ("status", "200"), ("decision", "allow")]
        ) >= 5.0
    );
    assert!(
        sum(&gw.topo, "secgate_gateway_requests_total", &[("route", "admin"), ("status", "401")])
            >= 5.0
    );
    assert!(
        sum(
            &gw.topo,
            "secgate_gateway_requests_total",
            &[("status", "404"), ("decision", "not_found")]
        ) >= 1.0
    );
    assert!(sum(&gw.topo, "secgate_gateway_tls_handshakes_total", &[("outcome", "ok")]) >= 20.0);
    assert!(sum(&gw.topo, "secgate_gateway_upstream_seconds_count", &[]) >= 10.0);
    let lost =
        secgate_tests::metrics::sample(&scrape(&gw.topo), "secgate_gateway_audit_lost_total", None);
    assert_eq!(lost, 0.0, "no audit line is lost at this rate");
}

/// Tokens that must all be refused: (what, token).
fn jwt_corpus(issuer: &Issuer) -> Vec<(&'static str, String)> {
    let good = claims("mallory", json!({ "scope": "admin" }));
    let head = json!({ "alg": "ES256", "typ": "JWT", "kid": issuer.kid });
    let with = |extra: serde_json::Value| {
        let mut h = head.clone();
        for (k, v) in extra.as_object().unwrap() {
            h[k] = v.clone();
        }
        issuer.sign(&h, &good)
    };
    let claim = |c: serde_json::Value| issuer.token(&claims("mallory", c));
    let stranger = Issuer::new(&issuer.kid);
    let mut tampered = issuer.token(&claims("mallory", json!({ "scope": "user" })));
    let parts: Vec<&str> = tampered.split('.').collect();
    tampered = format!("{}.{}.{}", parts[0], jwt::b64(&good), parts[2]);
    let mut big = json!({ "scope": "admin" });
    big["pad"] = json!("x".repeat(9000));
    let jwk = issuer.jwk();
    vec![
        ("alg none", unsigned(&json!({ "alg": "none", "typ": "JWT" }), &good)),
        ("alg None", unsigned(&json!({ "alg": "None", "typ": "JWT" }), &good)),
        ("alg NONE", unsigned(&json!({ "alg": "NONE", "kid": issuer.kid }), &good)),
        ("alg nOnE", unsigned(&json!({ "alg": "nOnE" }), &good)),
        ("HS256 keyed with the public key PEM", hs256(issuer.public_pem.as_bytes(), &json!({ "alg": "HS256", "kid": issuer.kid }), &good)),
        ("HS256 keyed with the JWK", hs256(jwk.to_string().as_bytes(), &json!({ "alg": "HS256", "kid": issuer.kid }), &good)),
        ("alg ES384 not allowed", with(json!({ "alg": "ES384" }))),
        ("unknown kid", with(json!({ "kid": "k9" }))),
        ("path-like kid", with(json!({ "kid": "../../../../etc/passwd" }))),
        ("kid with a slash", with(json!({ "kid": "keys/k1" }))),
        ("no kid", issuer.sign(&json!({ "alg": "ES256", "typ": "JWT" }), &good)),
        ("jku header", with(json!({ "jku": "https://198.18.0.2/jwks.json" }))),
        ("x5u header", with(json!({ "x5u": "https://198.18.0.2/cert.pem" }))),
        ("embedded jwk signed by it", stranger.sign(&json!({ "alg": "ES256", "kid": issuer.kid, "jwk": stranger.jwk() }), &good)),
        ("x5c header", with(json!({ "x5c": ["MIIB"] }))),
        ("crit header", with(json!({ "crit": ["exp"], "exp": 1 }))),
        ("expired", claim(json!({ "exp": jwt::now() - 3600 }))),
        ("not yet valid", claim(json!({ "nbf": jwt::now() + 3600 }))),
        ("wrong iss", claim(json!({ "iss": "https://evil.test" }))),
        ("wrong aud", claim(json!({ "aud": "someone-else" }))),
        ("exp as a string", claim(json!({ "exp": (jwt::now() + 600).to_string() }))),
        ("no aud", issuer.token(&json!({ "iss": jwt::ISSUER, "sub": "mallory", "exp": jwt::now() + 600, "scope": "admin" }))),
        ("no iss", issuer.token(&json!({ "aud": jwt::AUDIENCE, "sub": "mallory", "exp": jwt::now() + 600, "scope": "admin" }))),
        ("aud a number", claim(json!({ "aud": 5 }))),
        ("iss an empty list", claim(json!({ "iss": [] }))),
        ("no exp", issuer.token(&json!({ "iss": jwt::ISSUER, "aud": jwt::AUDIENCE, "sub": "mallory", "scope": "admin" }))),
        ("signed by another key with our kid", stranger.token(&good)),
        ("payload changed after signing", tampered),
        ("malformed base64 header", format!("!!!.{}.sig", jwt::b64(&good))),
        ("header not JSON", format!("bm90anNvbg.{}.sig", jwt::b64(&good))),
        ("claims not JSON", format!("{}.bm90anNvbg.{}", jwt::b64(&head), "c2ln")),
        ("four parts", format!("{}.extra", issuer.token(&good))),
        ("oversized", issuer.token(&claims("mallory", big))),
    ]
}

#[test]
fn jwt_attacks_are_refused_before_the_upstream() {
    if !privileged("jwt_attacks_are_refused_before_the_upstream") {
        return;
    }
    let gw = Gw::start("gwj", Opts::default());
    let corpus = jwt_corpus(&gw.issuer);
    assert!(corpus.len() >= 20);
    for (what, token) in &corpus {
        let r = gw.get(CLIENT_V4, "/admin/jwt", &[("authorization", &bearer(token))]);
        assert_json_error(&r, 401, "invalid_token");
        assert_eq!(gw.up.count("/admin/jwt"), 0, "{what} reached the upstream");
    }
    // The same request with a good token goes through: the corpus fails for its flaw alone.
    let good = gw.issuer.token(&claims("mallory", json!({ "scope": "admin" })));
    assert_eq!(gw.get(CLIENT_V4, "/admin/jwt", &[("authorization", &bearer(&good))]).status, 200);
    assert_eq!(gw.up.count("/admin/jwt"), 1);
    // No token of the corpus, nor its signature, is written anywhere.
    let (audit, log) = (std::fs::read_to_string(&gw.daemon.audit).unwrap(), gw.daemon.log_text());
    assert!(log.contains("DEBUG"), "the daemon logs at debug level here");
    for (what, token) in corpus.iter().chain([&("good", good.clone())]) {
        let signature = token.rsplit('.').next().unwrap();
        for s in [token.as_str(), signature].into_iter().filter(|s| s.len() >= 16) {
            assert!(
                !audit.contains(s) && !log.contains(s),
                "{what}: a token is in the audit or log"
            );
        }
    }
}

#[test]
fn path_tricks_never_reach_a_forbidden_route() {
    if !privileged("path_tricks_never_reach_a_forbidden_route") {
        return;
    }
    // An open catch-all last: a trick that escapes the admin route's ACL would reach the
    // upstream through it, instead of ending as a 404.
    let catch_all = "\n[[routes]]\nname = \"rest\"\npath = \"/*\"\nauth = [\"none\"]\n";
    // Keys as argon2id hashes here: their checks run on blocking threads, tested end to end.
    let gw =
        Gw::start("gwp", Opts { routes_extra: catch_all, argon2_keys: true, ..Opts::default() });
    let user = format!("Authorization: Bearer {}\r\n", gw.key("user-key"));
    // (request target, extra header lines, status)
    let corpus: Vec<(&str, String, u16)> = vec![
        ("/admin/x", String::new(), 401),
        ("/admin/x", user.clone(), 403),
        ("/%61dmin/x", String::new(), 401),
        ("/%61%64%6d%69%6e/x", user.clone(), 403),
        ("//admin/x", String::new(), 401),
        ("/public/../admin/x", String::new(), 401),
        ("/public/%2e%2e/admin/x", user.clone(), 403),
        ("/public/%2E%2E/admin/x", String::new(), 401),
        ("/public/.%2e/admin/x", String::new(), 401),
        ("/./admin/./x", String::new(), 401),
        ("/public/..%2fadmin/x", String::new(), 400),
        ("/public%2f..%2fadmin/x", String::new(), 400),
        ("/admin%2fx", String::new(), 400),
        ("/public/%5c../admin/x", String::new(), 400),
        ("/public/\\../admin/x", String::new(), 400),
        ("/%C0%AFadmin/x", String::new(), 400),
        ("/public/%C0%AE%C0%AE/admin/x", String::new(), 400),
        ("/public/%252e%252e/admin/x", String::new(), 400),
        ("/public/%25%32%65%25%32%65/admin/x", String::new(), 400),
        ("/%2561dmin/x", String::new(), 400),
        ("/admin;/x", String::new(), 400),
        ("/public/..;/admin/x", String::new(), 400),
        ("/admin%00/x", String::new(), 400),
        ("/public/%2e%2e/%2e%2e/admin", String::new(), 400),
        // Case is kept (RFC 3986 paths are case-sensitive): these are other resources.
        ("/ADMIN/x", String::new(), 200),
        ("/Admin/x", user.clone(), 200),
        ("/admin%2Fx", user.clone(), 400),
        ("/public/x", "X-Original-URL: /admin/x\r\nX-Rewrite-URL: /admin/x\r\n".into(), 200),
        ("https://api.test/admin/x", String::new(), 401),
        ("/public/x?/../admin/x", String::new(), 200),
    ];
    assert!(corpus.len() >= 20);
    for (target, extra, want) in &corpus {
        let response = gw.rt.block_on(async {
            let mut tls = gw
                .tls(H1, None)
                .connect(&gw.topo.client, CLIENT_V4, gw.addr())
                .await
                .expect("connect");
            let req = format!(
                "GET {target} HTTP/1.1\r\nHost: {HOST}\r\n{extra}Connection: close\r\n\r\n"
            );
            raw(&mut tls, req.as_bytes()).await
        });
        assert_eq!(
            raw_status(&response),
            *want,
            "{target}: {}",
            String::from_utf8_lossy(&response)
        );
    }
    for seen in gw.up.seen() {
        let path = seen.path_and_query.split('?').next().unwrap();
        let case_variant = path == "/ADMIN/x" || path == "/Admin/x";
        assert!(
            case_variant || (!path.to_ascii_lowercase().contains("admin") && !path.contains('%')),
            "{seen:?} reached the upstream"
        );
        assert!(
            !seen.headers.contains_key("x-original-url")
                && !seen.headers.contains_key("x-rewrite-url")
        );
    }
    assert_eq!(gw.up.count("/public/x"), 2, "the two harmless requests were proxied");
}

/// A TLS ClientHello as a TLS 1.0 or 1.1 client sends it: no supported_versions extension.
fn legacy_client_hello(minor: u8) -> Vec<u8> {
    let mut sni = vec![0x00];
    sni.extend((HOST.len() as u16).to_be_bytes());
    sni.extend(HOST.as_bytes());
    let mut sni_list = (sni.len() as u16).to_be_bytes().to_vec();
    sni_list.extend(sni);
    let mut ext = vec![0x00, 0x00];
    ext.extend((sni_list.len() as u16).to_be_bytes());
    ext.extend(sni_list);
    let mut body = vec![0x03, minor];
    body.extend([7u8; 32]);
    body.push(0);
    body.extend([0x00, 0x04, 0xc0, 0x13, 0x00, 0x2f]);
    body.extend([0x01, 0x00]);
    body.extend((ext.len() as u16).to_be_bytes());
    body.extend(ext);
    let mut hs = vec![0x01, 0];
    hs.extend((body.len() as u16).to_be_bytes());
    hs.extend(body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend((hs.len() as u16).to_be_bytes());
    record.extend(hs);
    record
}

/// Sends `bytes` on a plain TCP connection and returns what comes back within 3 s.
fn plain_exchange(gw: &Gw, src: &str, dst: std::net::SocketAddr, bytes: &[u8]) -> Vec<u8> {
    gw.rt.block_on(async {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        // A refused source is accepted and reset at once; the reset may already be there
        // when the connect completes. Any other failure (refused, timeout) is a test failure.
        let mut s = match tcp(&gw.topo.client, src, dst) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Vec::new(),
            other => other.expect("TCP connect"),
        };
        let _ = s.write_all(bytes).await;
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(Ok(n @ 1..)) =
            tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await
        {
            out.extend_from_slice(&buf[..n]);
        }
        out
    })
}

/// A real rustls ClientHello for `api.test`.
fn client_hello(tls: &Tls) -> Vec<u8> {
    let name = rustls::pki_types::ServerName::try_from(HOST).unwrap();
    let mut conn = rustls::ClientConnection::new(tls.config.clone(), name).expect("client");
    let mut out = Vec::new();
    conn.write_tls(&mut out).expect("client hello");
    out
}

fn peer_cert(gw: &Gw, tls: &Tls) -> Vec<u8> {
    gw.rt.block_on(async {
        let s = tls.connect(&gw.topo.client, CLIENT_V4, gw.addr()).await.expect("connect");
        s.get_ref().1.peer_certificates().expect("server certificate")[0].to_vec()
    })
}

/// Whether a request over a connection made with `tls` fails (in the handshake, or at the
/// first read under TLS 1.3, where the server judges the client's certificate after the
/// client has finished).
fn refused(gw: &Gw, tls: &Tls) -> bool {
    gw.rt.block_on(async {
        let Ok(stream) = tls.connect(&gw.topo.client, CLIENT_V4, gw.addr()).await else {
            return true;
        };
        let (mut send, conn) =
            match hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await
            {
                Ok(pair) => pair,
                Err(_) => return true,
            };
        tokio::spawn(conn);
        send.send_request(request("GET", HOST, "/health", &[], vec![])).await.is_err()
    })
}

#[test]
fn tls_versions_sni_and_client_certificates() {
    if !privileged("tls_versions_sni_and_client_certificates") {
        return;
    }
    let mut gw = Gw::start("gwt", Opts::default());
    for minor in [1, 2] {
        let answer = plain_exchange(&gw, CLIENT_V4, gw.addr(), &legacy_client_hello(minor));
        assert!(!answer.is_empty(), "TLS 1.{}: the server answers with an alert", minor - 1);
        assert_eq!(
            answer[0],
            0x15,
            "TLS 1.{}: an alert record, never a ServerHello: {answer:?}",
            minor - 1
        );
    }
    assert!(
        sum(&gw.topo, "secgate_gateway_tls_handshakes_total", &[("outcome", "incompatible")])
            >= 2.0
    );
    let tls12 = Tls::with_versions(&gw.pki.ca_pem, HOST, H1, None, &[&rustls::version::TLS12]);
    assert!(!refused(&gw, &tls12), "TLS 1.2 is accepted with min_version 1.2");

    // SNI picks the certificate; an unknown name gets the default one.
    assert_eq!(peer_cert(&gw, &gw.tls(H1, None)), gw.api_der);
    let other = Tls::new(&gw.pki.ca_pem, OTHER_HOST, H1, None);
    assert_eq!(peer_cert(&gw, &other), gw.other_der);

    // Optional client certificates: none is fine, a valid one names the principal.
    let svc_a = gw.pki.client("svc-a.clients.test", "svc-a");
    assert_eq!(gw.get(CLIENT_V4, "/health", &[]).status, 200);
    let r = gw.send(&gw.tls(H1, None), CLIENT_V4, "GET", "/svc/x", &[]);
    assert_json_error(&r, 401, "invalid_request");
    assert_eq!(
        gw.send(&gw.tls(H1, Some(svc_a.clone())), CLIENT_V4, "GET", "/svc/x", &[]).status,
        200
    );
    let rogue_ca = Pki::new(&gw.dir.join("rogue"), "rogue");
    let rogue = rogue_ca.client("svc-a.clients.test", "svc-a");
    assert!(
        refused(&gw, &gw.tls(H1, Some(rogue.clone()))),
        "a certificate from another CA fails even when optional"
    );

    // Tickets resume sessions, and the certificate a ticket brings back is verified again:
    // once its CA is no longer trusted, a resumed session carries no principal.
    let resumed =
        |gw: &Gw| sum(&gw.topo, "secgate_gateway_tls_handshakes_total", &[("outcome", "resumed")]);
    let resuming = gw.tls(H1, Some(svc_a.clone()));
    assert_eq!(gw.send(&resuming, CLIENT_V4, "GET", "/svc/x", &[]).status, 200);
    let before = resumed(&gw);
    assert_eq!(gw.send(&resuming, CLIENT_V4, "GET", "/svc/x", &[]).status, 200);
    assert!(resumed(&gw) > before, "the second connection resumed its session");
    let (code, _, err) =
        gw.reload(&Opts { client_ca: Some(rogue_ca.ca_pem.clone()), ..Opts::default() });
    assert_eq!(code, 0, "{err}");
    let before = resumed(&gw);
    let r = gw.send(&resuming, CLIENT_V4, "GET", "/svc/x", &[]);
    assert!(resumed(&gw) > before, "resumed across the reload: tickets outlive it");
    assert_json_error(&r, 401, "invalid_request");

    // Required: no certificate, no connection.
    let (code, _, err) = gw.reload(&Opts { client_auth: "required", ..Opts::default() });
    assert_eq!(code, 0, "{err}");
    assert!(refused(&gw, &gw.tls(H1, None)), "no client certificate under client_auth = required");
    assert!(refused(&gw, &gw.tls(H1, Some(rogue))));
    assert_eq!(
        gw.send(&gw.tls(H2, Some(svc_a.clone())), CLIENT_V4, "GET", "/svc/x", &[]).status,
        200
    );
    assert!(
        sum(&gw.topo, "secgate_gateway_tls_handshakes_total", &[("outcome", "no_certificate")])
            >= 1.0
    );

    // min_version 1.3 turns TLS 1.2 clients away.
    let (code, _, err) = gw.reload(&Opts { min_version: "1.3", ..Opts::default() });
    assert_eq!(code, 0, "{err}");
    assert!(refused(&gw, &tls12), "TLS 1.2 is refused with min_version 1.3");
    assert_eq!(gw.get(CLIENT_V4, "/health", &[]).status, 200);
}

#[test]
fn a_banned_source_is_closed_before_any_tls_byte() {
    if !privileged("a_banned_source_is_closed_before_any_tls_byte") {
        return;
    }
    // Monitor mode: XDP lets the banned packets through, so the gateway must refuse them.
    let limits = "\n[gateway.limits]\nmax_connections_per_source = 3\n";
    let gw = Gw::start(
        "gwb",
        Opts { datapath_extra: "mode = \"monitor\"", routes_extra: limits, ..Opts::default() },
    );
    let hello = client_hello(&gw.tls(H1, None));
    let answer = plain_exchange(&gw, CLIENT_V4, gw.addr(), &hello);
    assert_eq!(answer.first(), Some(&0x16), "not banned: a ServerHello comes back");

    // One source holds at most 3 connections; the next is reset at accept, others are served.
    let held: Vec<Http> = gw.rt.block_on(async {
        let mut held = Vec::new();
        for _ in 0..3 {
            let tls =
                gw.tls(H2, None).connect(&gw.topo.client, CLIENT_V4, gw.addr()).await.unwrap();
            held.push(Http::over(tls).await);
        }
        held
    });
    assert!(plain_exchange(&gw, CLIENT_V4, gw.addr(), &hello).is_empty(), "a 4th connection");
    assert!(
        sum(
            &gw.topo,
            "secgate_gateway_connections_closed_total",
            &[("reason", "source_connection_limit")]
        ) >= 1.0
    );
    assert_eq!(gw.get(OTHER_V4, "/health", &[]).status, 200, "another source is served");

    // A ban cuts the connections the source already has, within a second or so.
    let mut open = held;
    let ok = gw.rt.block_on(open[0].send(request("GET", HOST, "/health", &[], vec![])));
    assert_eq!(ok.expect("an open connection").status, 200);
    gw.daemon.ok(&["ban", "add", CLIENT_V4]);
    std::thread::sleep(Duration::from_millis(2500));
    for conn in &mut open {
        let after = gw.rt.block_on(conn.send(request("GET", HOST, "/health", &[], vec![])));
        assert!(after.is_err(), "a banned source's open connection is cut: {after:?}");
    }
    gw.daemon.ok(&["ban", "add", "fd00:18::/64"]);
    let before = sum(&gw.topo, "secgate_gateway_connections_closed_total", &[("reason", "banned")]);
    assert!(before >= 3.0, "the three cut connections are counted");
    assert!(
        plain_exchange(&gw, CLIENT_V4, gw.addr(), &hello).is_empty(),
        "banned: not one byte back"
    );
    let v6 = std::net::SocketAddr::new(GW_V6.parse().unwrap(), PORT);
    assert!(
        plain_exchange(&gw, CLIENT_V6, v6, &hello).is_empty(),
        "a banned /64: not one byte back"
    );
    assert_eq!(
        sum(&gw.topo, "secgate_gateway_connections_closed_total", &[("reason", "banned")]) - before,
        2.0
    );
    let stats = gw.daemon.json(&["stats", "--json"]);
    assert!(
        stats["reasons"]["deny"]["packets"].as_u64().unwrap() > 0,
        "XDP saw them as banned: {stats}"
    );
    assert_eq!(
        plain_exchange(&gw, OTHER_V4, gw.addr(), &hello).first(),
        Some(&0x16),
        "others are served"
    );
    gw.daemon.ok(&["allow", "add", CLIENT_V4]);
    assert_eq!(gw.get(CLIENT_V4, "/health", &[]).status, 200, "the allowlist wins over a ban");
    gw.daemon.ok(&["allow", "del", CLIENT_V4]);
    gw.daemon.ok(&["ban", "del", CLIENT_V4]);
    assert_eq!(gw.get(CLIENT_V4, "/health", &[]).status, 200, "lifting the ban lets it back");
}

#[test]
fn certificates_are_replaced_without_dropping_connections() {
    if !privileged("certificates_are_replaced_without_dropping_connections") {
        return;
    }
    let gw = Gw::start("gwc", Opts::default());
    let tls = gw.tls(H1, None);
    gw.rt.block_on(async {
        let stream = tls.connect(&gw.topo.client, CLIENT_V4, gw.addr()).await.expect("connect");
        assert_eq!(
            stream.get_ref().1.peer_certificates().unwrap()[0].as_ref(),
            gw.api_der.as_slice()
        );
        let mut open = Http::over(stream).await;
        let first =
            open.send(request("GET", HOST, "/public/open", &[], vec![])).await.expect("first");
        assert_eq!(first.status, 200);

        // New files on disk: new connections get them, without a reload.
        let (_, _, fresh) = gw.pki.server("api", &[HOST]);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = tls.connect(&gw.topo.client, CLIENT_V4, gw.addr()).await.expect("connect");
            if s.get_ref().1.peer_certificates().unwrap()[0].as_ref() == fresh.as_slice() {
                break;
            }
            assert!(Instant::now() < deadline, "the new certificate was not picked up");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let again =
            open.send(request("GET", HOST, "/public/open", &[], vec![])).await.expect("still open");
        assert_eq!(again.status, 200, "the connection opened before the change keeps working");
    });
    // A broken certificate file is refused and the working one stays.
    std::fs::write(gw.dir.join("api.pem"), "not a certificate").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        gw.get(CLIENT_V4, "/health", &[]).status,
        200,
        "served with the last good certificate"
    );
    assert!(gw.daemon.log_text().contains("cannot be used, the old ones stay"));
    let (code, _, err) = gw.daemon.cli(&["reload"]);
    assert_ne!(code, 0, "a reload with a broken certificate is refused");
    assert!(err.contains("api.pem"), "the error names the file: {err}");
    // And `secgate reload` takes a fixed one at once.
    let (_, _, third) = gw.pki.server("api", &[HOST]);
    gw.daemon.ok(&["reload"]);
    assert_eq!(peer_cert(&gw, &tls), third);
}

/// The daemon's resident memory, in KiB.
fn rss_kib(gw: &Gw) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", gw.daemon.pid())).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn oversized_and_mistyped_requests_never_reach_the_upstream() {
    if !privileged("oversized_and_mistyped_requests_never_reach_the_upstream") {
        return;
    }
    let gw = Gw::start("gwv", Opts::default());
    let json = "Content-Type: application/json\r\n";
    let many_headers: String = (0..101).map(|i| format!("X-H{i}: 1\r\n")).collect();
    let long_uri = format!("/public/{}", "a".repeat(9000));
    // (method, target, extra header lines, body, status)
    let corpus: Vec<(&str, String, String, Vec<u8>, u16)> = vec![
        ("POST", "/upload/x".into(), format!("{json}Content-Length: 70000\r\n"), vec![], 413),
        (
            "POST",
            "/upload/x".into(),
            "Content-Type: text/plain\r\nContent-Length: 2\r\n".into(),
            b"{}".to_vec(),
            415,
        ),
        ("POST", "/upload/x".into(), "Content-Length: 2\r\n".into(), b"{}".to_vec(), 415),
        (
            "POST",
            "/upload/x".into(),
            "Content-Type: application/json-seq\r\nContent-Length: 2\r\n".into(),
            b"{}".to_vec(),
            415,
        ),
        (
            "POST",
            "/upload/x".into(),
            "Content-Type: application\r\nContent-Length: 2\r\n".into(),
            b"{}".to_vec(),
            415,
        ),
        ("GET", "/public/x".into(), many_headers, vec![], 431),
        ("GET", long_uri, String::new(), vec![], 414),
        ("POST", "/public/x".into(), "Content-Length: 16777217\r\n".into(), vec![], 413),
    ];
    for (method, target, extra, body, want) in &corpus {
        let answer = gw.rt.block_on(async {
            let mut tls =
                gw.tls(H1, None).connect(&gw.topo.client, CLIENT_V4, gw.addr()).await.unwrap();
            let mut req = format!(
                "{method} {target} HTTP/1.1\r\nHost: {HOST}\r\n{extra}Connection: close\r\n\r\n"
            )
            .into_bytes();
            req.extend_from_slice(body);
            raw(&mut tls, &req).await
        });
        assert_eq!(
            raw_status(&answer),
            *want,
            "{method} {}: {}",
            &target[..target.len().min(40)],
            String::from_utf8_lossy(&answer)
        );
    }
    assert!(gw.up.seen().is_empty(), "the upstream saw {:?}", gw.up.seen());
    // The gateway's own 431 (the framing scan refuses the head before hyper parses it):
    // JSON, with the security headers.
    let answer = gw.rt.block_on(async {
        let mut tls =
            gw.tls(H1, None).connect(&gw.topo.client, CLIENT_V4, gw.addr()).await.unwrap();
        let many: String = (0..150).map(|i| format!("X-H{i}: 1\r\n")).collect();
        let req =
            format!("GET /public/x HTTP/1.1\r\nHost: {HOST}\r\n{many}Connection: close\r\n\r\n");
        raw(&mut tls, req.as_bytes()).await
    });
    let text = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(
        text.contains("\"too_many_headers\"") && text.contains("strict-transport-security"),
        "{text}"
    );
    let ok = gw.send(
        &gw.tls(H2, None),
        CLIENT_V4,
        "POST",
        "/upload/x",
        &[("content-type", "application/json; charset=utf-8")],
    );
    assert_eq!(ok.status, 200, "a typed body within the limit: {ok:?}");

    // A 1 GiB upload without a declared length, on h2 and h1: cut at the route's 64 KiB
    // with 413 while the daemon's memory stays put. (On HTTP/1.1 the client may see only the
    // reset that follows the 413 while it is still sending; the audit shows the 413.)
    let before = rss_kib(&gw);
    for (alpn, path) in [(H2, "/upload/big-h2"), (H1, "/upload/big-h1")] {
        let status = gw.rt.block_on(async {
            let tls =
                gw.tls(alpn, None).connect(&gw.topo.client, CLIENT_V4, gw.addr()).await.unwrap();
            streaming_upload(tls, path, 1 << 30).await
        });
        assert!(status == Some(413) || (alpn == H1 && status.is_none()), "{alpn:?}: {status:?}");
    }
    std::thread::sleep(Duration::from_millis(300));
    let audit = std::fs::read_to_string(&gw.daemon.audit).unwrap();
    for path in ["/upload/big-h2", "/upload/big-h1"] {
        assert!(
            audit.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).any(
                |l| l["path"] == path && l["status"] == 413 && l["decision"] == "payload_too_large"
            ),
            "{path}: no 413 in the audit"
        );
    }
    let grown = rss_kib(&gw).saturating_sub(before);
    eprintln!("daemon resident memory: {before} KiB before the uploads, grew by {grown} KiB");
    assert!(grown < 32 * 1024, "the daemon grew by {grown} KiB refusing two 1 GiB uploads");
    assert!(
        gw.up.seen().iter().all(|s| s.body_bytes <= 65536),
        "never more than the limit upstream"
    );
}

#[test]
fn schemas_judge_bodies_queries_and_answers() {
    if !privileged("schemas_judge_bodies_queries_and_answers") {
        return;
    }
    let gw = Gw::start("gws", Opts::default());
    let json = [("content-type", "application/json")];
    let post = |body: &str| {
        gw.rt.block_on(async {
            let tls =
                gw.tls(H2, None).connect(&gw.topo.client, CLIENT_V4, gw.addr()).await.unwrap();
            Http::over(tls)
                .await
                .send(request("POST", HOST, "/orders/new", &json, body.as_bytes().to_vec()))
                .await
                .unwrap()
        })
    };
    assert_eq!(post(r#"{"item": "book", "qty": 2}"#).status, 200);
    // A schema route that takes bodies gets one (an empty body would read as `{}`).
    assert_json_error(&post(""), 400, "bad_json");
    let deep = format!("{{\"item\": {}{}}}", "[".repeat(100), "]".repeat(100));
    for (body, status, code) in [
        (r#"{"item": "book", "qty":"#, 400, "bad_json"),
        ("\u{feff}{}", 400, "bad_json"),
        (deep.as_str(), 400, "bad_json"),
        (
            r#"{"item": "<img src=x onerror=alert(1)>", "qty": "lots", "admin": true}"#,
            422,
            "schema_violation",
        ),
        (r#"[]"#, 422, "schema_violation"),
        (r#"{"item": "book", "qty": 0}"#, 422, "schema_violation"),
        // Parsers disagree on which of two values counts: refused, whatever they are.
        (r#"{"item": "book", "qty": 1, "qty": -5}"#, 400, "bad_json"),
    ] {
        let r = post(body);
        assert_json_error(&r, status, code);
        let text = String::from_utf8_lossy(&r.body);
        assert!(!text.contains("<img") && !text.contains("lots"), "nothing echoed: {text}");
    }
    // What the schema judges is what the upstream reads: JSON, and not compressed.
    let send = |headers: &[(&str, &str)]| {
        gw.rt.block_on(async {
            let tls =
                gw.tls(H2, None).connect(&gw.topo.client, CLIENT_V4, gw.addr()).await.unwrap();
            let body = br#"{"item": "book", "qty": 2}"#.to_vec();
            Http::over(tls)
                .await
                .send(request("POST", HOST, "/orders/new", headers, body))
                .await
                .unwrap()
        })
    };
    let gzip = [("content-type", "application/json"), ("content-encoding", "gzip")];
    assert_json_error(&send(&gzip), 415, "unsupported_media_type");
    let r = post(r#"{"item": "<img src=x onerror=alert(1)>", "qty": "lots", "admin": true}"#);
    let pointers: Vec<String> = r.json()["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["pointer"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        pointers.contains(&"/item".to_owned()) && pointers.contains(&"/qty".to_owned()),
        "{pointers:?}"
    );

    // Query parameters, as strings.
    assert_eq!(gw.get(CLIENT_V4, "/orders/list?limit=20", &[]).status, 200);
    assert_json_error(&gw.get(CLIENT_V4, "/orders/list?limit=all", &[]), 422, "schema_violation");
    assert_json_error(
        &gw.get(CLIENT_V4, "/orders/list?limit=1&limit=2", &[]),
        422,
        "schema_violation",
    );
    assert_eq!(gw.up.count("/orders/"), 2, "only the two valid requests were proxied");

    // Answers: one with a field the schema does not allow is withheld.
    assert_eq!(gw.get(CLIENT_V4, "/profile/me", &[]).status, 200);
    let leak = gw.get(CLIENT_V4, "/profile/leak", &[]);
    assert_json_error(&leak, 502, "response_invalid");
    assert!(
        !String::from_utf8_lossy(&leak.body).contains("078-05"),
        "the upstream's body is not sent"
    );
    assert_json_error(&gw.get(CLIENT_V4, "/profile/untyped", &[]), 502, "response_invalid");
}

#[test]
fn ambiguous_framing_is_refused_and_the_connection_closed() {
    if !privileged("ambiguous_framing_is_refused_and_the_connection_closed") {
        return;
    }
    let gw = Gw::start("gwr", Opts::default());
    let h = format!("Host: {HOST}\r\n");
    let corpus: Vec<(&str, String)> = vec![
        (
            "differing CLs",
            format!(
                "POST /public/a HTTP/1.1\r\n{h}Content-Length: 1\r\nContent-Length: 2\r\n\r\nab"
            ),
        ),
        ("CL list", format!("POST /public/a HTTP/1.1\r\n{h}Content-Length: 1, 2\r\n\r\nab")),
        (
            "TE not chunked",
            format!("POST /public/a HTTP/1.1\r\n{h}Transfer-Encoding: gzip\r\n\r\nab"),
        ),
        (
            "TE chunked twice",
            format!(
                "POST /public/a HTTP/1.1\r\n{h}Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n"
            ),
        ),
        (
            "bad chunk size",
            format!(
                "POST /public/a HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n"
            ),
        ),
        (
            "chunk without CRLF",
            format!(
                "POST /public/a HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n\r\n2\r\nabXX0\r\n\r\n"
            ),
        ),
        ("obs-fold", format!("GET /public/a HTTP/1.1\r\n{h}X-A: 1\r\n  folded\r\n\r\n")),
        ("space before colon", format!("GET /public/a HTTP/1.1\r\n{h}X-A : 1\r\n\r\n")),
        ("bare CR", format!("GET /public/a HTTP/1.1\r\n{h}X-A: 1\rX-B: 2\r\n\r\n")),
        ("NUL in a header", format!("GET /public/a HTTP/1.1\r\n{h}X-A: 1\0\r\n\r\n")),
        ("no Host", "GET /public/a HTTP/1.1\r\n\r\n".to_string()),
        (
            "CL and TE",
            format!(
                "POST /public/a HTTP/1.1\r\n{h}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            ),
        ),
        (
            "TE and CL",
            format!(
                "POST /public/a HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"
            ),
        ),
        ("bare LF", format!("GET /public/a HTTP/1.1\n{h}\n")),
        ("bare LF in a field", format!("GET /public/a HTTP/1.1\r\n{h}X-A: 1\nX-B: 2\r\n\r\n")),
        (
            "TE on HTTP/1.0",
            format!("POST /public/a HTTP/1.0\r\n{h}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ),
    ];
    let mut wrong = Vec::new();
    for (what, req) in &corpus {
        let answer = gw.rt.block_on(async {
            let mut tls =
                gw.tls(H1, None).connect(&gw.topo.client, CLIENT_V4, gw.addr()).await.unwrap();
            // A second, valid request after the first: it must never be answered.
            let mut bytes = req.clone().into_bytes();
            bytes.extend_from_slice(format!("GET /public/smuggled HTTP/1.1\r\n{h}\r\n").as_bytes());
            raw(&mut tls, &bytes).await
        });
        let text = String::from_utf8_lossy(&answer).to_ascii_lowercase();
        let statuses = text.matches("http/1.1 ").count();
        let safe = text.contains("content-type: application/json; charset=utf-8")
            && text.contains("x-content-type-options: nosniff")
            && text.contains("connection: close")
            && (text.contains(r#""code":"bad_framing""#) || *what == "no Host");
        if raw_status(&answer) != 400 || statuses != 1 || !safe {
            wrong
                .push(format!("{what}: {statuses} answers, first {}: {text}", raw_status(&answer)));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    // After a pipelined good request, a refused head gets its 400 once the 200 is out.
    let answer = gw.rt.block_on(async {
        let mut tls =
            gw.tls(H1, None).connect(&gw.topo.client, CLIENT_V4, gw.addr()).await.unwrap();
        let bytes = format!(
            "GET /public/first HTTP/1.1\r\n{h}\r\nGET /public/a HTTP/1.1\n{h}\nGET /public/smuggled HTTP/1.1\r\n{h}\r\n"
        );
        raw(&mut tls, bytes.as_bytes()).await
    });
    let text = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    let statuses: Vec<&str> =
        text.match_indices("http/1.1 ").map(|(i, _)| &text[i + 9..i + 12]).collect();
    assert_eq!(statuses, ["200", "400"], "{text}");
    assert!(text.contains(r#""code":"bad_framing""#), "{text}");
    assert_eq!(gw.up.count("/public/first"), 1);
    // Bodies stream, so a chunked body that breaks midway has begun upstream: that request
    // is aborted there (the gateway answers 400). Nothing else, and nothing smuggled, arrives.
    assert_eq!(gw.up.count("/public/smuggled"), 0, "a smuggled request was answered upstream");
    assert!(gw.up.count("/public/a") <= 2, "the upstream saw {:?}", gw.up.seen());
}

/// POSTs `total` bytes of JSON-typed body without a declared length, in 64 KiB chunks, and
/// returns the status of the answer (the gateway may answer before the body ends).
async fn streaming_upload(
    tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    path: &str,
    total: usize,
) -> Option<u16> {
    use http_body_util::BodyExt as _;
    let chunks = futures::stream::iter((0..total / 65536).map(|_| {
        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(bytes::Bytes::from(vec![
            b' ';
            65536
        ])))
    }));
    let body = http_body_util::StreamBody::new(chunks).boxed();
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("https://{HOST}{path}"))
        .header("host", HOST)
        .header("content-type", "application/json")
        .body(body)
        .unwrap();
    let response = Http::over(tls).await.head(req).await.ok()?;
    Some(response.status().as_u16())
}

#[test]
fn a_principal_over_its_rate_limit_gets_429s_while_others_pass() {
    if !privileged("a_principal_over_its_rate_limit_gets_429s_while_others_pass") {
        return;
    }
    let gw = Gw::start("gwl", Opts::default());
    let (admin, user) = (bearer(gw.key("admin-key")), bearer(gw.key("user-key")));
    let statuses: Vec<u16> = (0..6)
        .map(|_| gw.get(CLIENT_V4, "/limited/x", &[("authorization", &admin)]).status)
        .collect();
    assert_eq!(&statuses[..3], &[200, 200, 200], "the burst passes: {statuses:?}");
    assert!(statuses[3..].iter().all(|&s| s == 429), "then 429s: {statuses:?}");
    let r = gw.get(CLIENT_V4, "/limited/x", &[("authorization", &admin)]);
    assert_json_error(&r, 429, "rate_limited");
    let retry: u64 = r.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    assert_eq!(r.header("ratelimit-policy"), Some("\"limited\";q=3;w=3"));
    assert_eq!(r.header("ratelimit"), Some(format!("\"limited\";r=0;t={retry}").as_str()));
    for _ in 0..3 {
        assert_eq!(
            gw.get(CLIENT_V4, "/limited/x", &[("authorization", &user)]).status,
            200,
            "another principal"
        );
    }
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(
        gw.get(CLIENT_V4, "/limited/x", &[("authorization", &admin)]).status,
        200,
        "refilled"
    );
    assert!(
        sum(&gw.topo, "secgate_gateway_requests_total", &[("route", "limited"), ("status", "429")])
            >= 3.0
    );
}

#[test]
fn every_response_carries_the_security_headers() {
    if !privileged("every_response_carries_the_security_headers") {
        return;
    }
    let gw = Gw::start("gwh", Opts::default());
    let admin = bearer(gw.key("admin-key"));
    // (path, credential, status, content type, cache-control)
    type Case<'a> = (&'a str, Option<&'a str>, u16, &'a str, Option<&'a str>);
    let cases: [Case; 6] = [
        ("/public/x", None, 200, "application/json", None),
        ("/public/untyped", None, 200, "application/octet-stream", Some("max-age=60")),
        ("/public/deny", None, 401, "application/octet-stream", Some("no-store")),
        ("/admin/x", None, 401, "application/json; charset=utf-8", Some("no-store")),
        ("/admin/x", Some(admin.as_str()), 200, "application/json", None),
        ("/nowhere", None, 404, "application/json; charset=utf-8", None),
    ];
    for alpn in [H1, H2] {
        for (path, credential, status, content_type, cache) in cases {
            let headers: Vec<(&str, &str)> =
                credential.iter().map(|c| ("authorization", *c)).collect();
            let r = gw.send(&gw.tls(alpn, None), CLIENT_V4, "GET", path, &headers);
            let what = format!("{alpn:?} {path}");
            assert_eq!(r.status, status, "{what}");
            assert_eq!(
                r.header("strict-transport-security"),
                Some("max-age=31536000; includeSubDomains"),
                "{what}"
            );
            assert_eq!(r.header("x-content-type-options"), Some("nosniff"), "{what}");
            assert_eq!(
                r.header("content-security-policy"),
                Some("default-src 'none'; frame-ancestors 'none'"),
                "{what}"
            );
            assert_eq!(r.header("referrer-policy"), Some("no-referrer"), "{what}");
            assert_eq!(r.header("content-type"), Some(content_type), "{what}");
            assert_eq!(r.header("cache-control"), cache, "{what}");
            assert!(r.header("server").is_none() && r.header("x-powered-by").is_none(), "{what}");
        }
    }
}

#[test]
fn a_slowloris_client_is_cut_by_the_header_timeout() {
    if !privileged("a_slowloris_client_is_cut_by_the_header_timeout") {
        return;
    }
    let limits = "\n[gateway.limits]\nheader_timeout = \"1s\"\n";
    let gw = Gw::start("gwo", Opts { routes_extra: limits, ..Opts::default() });
    let (open_for, answer) = gw.rt.block_on(async {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut tls =
            gw.tls(H1, None).connect(&gw.topo.client, CLIENT_V4, gw.addr()).await.unwrap();
        let started = Instant::now();
        tls.write_all(format!("GET /public/x HTTP/1.1\r\nHost: {HOST}\r\n").as_bytes())
            .await
            .unwrap();
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        // One header line every 300 ms, for at most 10 s: the head never ends.
        while started.elapsed() < Duration::from_secs(10) {
            if tls.write_all(b"X-Slow: 1\r\n").await.is_err() {
                break;
            }
            match tokio::time::timeout(Duration::from_millis(300), tls.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => break,
                Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        }
        (started.elapsed(), answer)
    });
    assert!(open_for < Duration::from_secs(5), "still open after {open_for:?}");
    assert!(open_for >= Duration::from_millis(900), "cut before the timeout: {open_for:?}");
    assert!(!String::from_utf8_lossy(&answer).contains("200"), "never answered as a request");
    assert_eq!(gw.get(CLIENT_V4, "/health", &[]).status, 200, "others (and it, anew) are served");
}

#[test]
fn a_client_that_stops_reading_is_cut_as_idle() {
    if !privileged("a_client_that_stops_reading_is_cut_as_idle") {
        return;
    }
    let gw = Gw::start("gwi", Opts { gateway_extra: "idle_timeout = \"2s\"", ..Opts::default() });
    let open_for = gw.rt.block_on(async {
        let tls = gw.tls(H2, None).connect(&gw.topo.client, CLIENT_V4, gw.addr()).await.unwrap();
        h2raw::stalled_reader(tls, HOST, "/public/big", Duration::from_secs(15)).await
    });
    let open_for = open_for.expect("pings and a stalled response kept the connection open");
    assert!(open_for >= Duration::from_secs(2), "not before idle_timeout: {open_for:?}");
    assert_eq!(gw.get(CLIENT_V4, "/health", &[]).status, 200, "the source is not punished");
}

#[test]
fn http2_floods_are_cut_while_others_are_served() {
    if !privileged("http2_floods_are_cut_while_others_are_served") {
        return;
    }
    let gw = Gw::start("gwf", Opts::default());
    let h2 = gw.tls(H2, None);
    let (rapid, continuation, served) = gw.rt.block_on(async {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let good = {
            let stream = h2.connect(&gw.topo.client, OTHER_V4, gw.addr()).await.expect("connect");
            let mut http = Http::over(stream).await;
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let r = http.send(request("GET", HOST, "/public/good", &[], vec![])).await;
                    statuses.push(r.map(|r| r.status).unwrap_or(0));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                statuses
            })
        };
        let flood = h2.connect(&gw.topo.client, CLIENT_V4, gw.addr()).await.expect("connect");
        let rapid = h2raw::flood(flood, h2raw::rapid_reset(HOST, "/public/rr", 20_000)).await;
        let flood = h2.connect(&gw.topo.client, CLIENT_V4, gw.addr()).await.expect("connect");
        let continuation =
            h2raw::flood(flood, h2raw::continuation_flood(HOST, "/public/cont", 200_000)).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (rapid, continuation, good.await.expect("good client"))
    });
    assert!(rapid.closed && rapid.written < 20_000, "rapid reset is cut: {rapid:?}");
    assert!(
        gw.up.count("/public/rr") <= 200,
        "{} reset requests reached the upstream",
        gw.up.count("/public/rr")
    );
    assert!(
        continuation.closed && continuation.written < 200_000,
        "CONTINUATION flood is cut: {continuation:?}"
    );
    assert_eq!(gw.up.count("/public/cont"), 0);
    assert!(served.len() >= 10 && served.iter().all(|&s| s == 200), "the other client: {served:?}");
    assert!(gw.get(CLIENT_V4, "/health", &[]).status == 200, "the flooder may connect again");
}

#[test]
fn proxying_streams_rewrites_headers_and_reports_upstream_failures() {
    if !privileged("proxying_streams_rewrites_headers_and_reports_upstream_failures") {
        return;
    }
    let mut gw = Gw::start("gwx", Opts::default());
    let body = vec![b'u'; 8 << 20];
    for alpn in [H1, H2] {
        let (up, down) = gw.rt.block_on(async {
            let stream = gw
                .tls(alpn, None)
                .connect(&gw.topo.client, CLIENT_V4, gw.addr())
                .await
                .expect("connect");
            let mut http = Http::over(stream).await;
            let up = http
                .send(request("POST", HOST, "/public/upload", &[], body.clone()))
                .await
                .expect("upload");
            let down = http
                .send(request("GET", HOST, "/public/big", &[], vec![]))
                .await
                .expect("download");
            (up, down)
        });
        assert_eq!(up.json()["received"], body.len(), "{alpn:?}");
        assert_eq!(down.body.len(), secgate_tests::gateway::upstream::BIG_BYTES, "{alpn:?}");
        // Streamed, not buffered: the first chunk is here before the upstream sent the rest.
        gw.up.drip_done.store(false, std::sync::atomic::Ordering::SeqCst);
        let first = gw.rt.block_on(async {
            let stream =
                gw.tls(alpn, None).connect(&gw.topo.client, CLIENT_V4, gw.addr()).await.unwrap();
            Http::over(stream)
                .await
                .first_chunk(request("GET", HOST, "/public/drip", &[], vec![]))
                .await
        });
        assert_eq!(first.expect("drip").as_ref(), b"first", "{alpn:?}");
        assert!(
            !gw.up.drip_done.load(std::sync::atomic::Ordering::SeqCst),
            "{alpn:?}: the gateway waited for the whole body"
        );
    }
    gw.up.clear();
    let r = gw.get(
        CLIENT_V4,
        "/public/headers",
        &[
            ("x-forwarded-for", "203.0.113.9"),
            ("forwarded", "for=203.0.113.9"),
            ("x-forwarded-proto", "http"),
            ("connection", "x-secret"),
            ("x-secret", "1"),
        ],
    );
    assert_eq!(r.status, 200);
    assert!(
        r.header("x-up-hop").is_none() && r.header("keep-alive").is_none(),
        "hop-by-hop headers stay upstream: {r:?}"
    );
    assert_eq!(r.header("x-upstream"), Some("yes"));
    let seen = gw.up.seen().pop().expect("proxied");
    assert_eq!(seen.headers["x-forwarded-for"], CLIENT_V4);
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert_eq!(seen.headers["host"], HOST, "the checked host, rebuilt");
    let forwarded = seen.headers["forwarded"].to_str().unwrap();
    assert!(forwarded.starts_with(&format!("for={CLIENT_V4};proto=https")), "{forwarded}");
    assert!(!seen.headers.contains_key("x-secret") && !seen.headers.contains_key("connection"));

    let slow = gw.get(CLIENT_V4, "/public/slow", &[]);
    assert_json_error(&slow, 504, "gateway_timeout");
    // A request the client gives up on (its h2 stream reset) is still audited.
    gw.rt.block_on(async {
        let tls = gw.tls(H2, None).connect(&gw.topo.client, CLIENT_V4, gw.addr()).await.unwrap();
        let mut h2 = Http::over(tls).await;
        let wait = Duration::from_millis(300);
        let gave_up = tokio::time::timeout(
            wait,
            h2.send(request("GET", HOST, "/public/slow?gave-up", &[], vec![])),
        );
        assert!(gave_up.await.is_err(), "the upstream takes 3 s");
        tokio::time::sleep(Duration::from_millis(500)).await;
    });
    let audit = std::fs::read_to_string(&gw.daemon.audit).expect("audit");
    assert!(
        audit.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).any(|l| {
            l["path"] == "/public/slow" && l["decision"] == "cancelled" && l["status"] == 499
        }),
        "no cancelled line in {audit}"
    );
    let (code, _, err) =
        gw.reload(&Opts { upstream: Some("http://127.0.0.1:1".into()), ..Opts::default() });
    assert_eq!(code, 0, "{err}");
    assert_json_error(&gw.get(CLIENT_V4, "/public/x", &[]), 502, "bad_gateway");
    assert!(
        sum(
            &gw.topo,
            "secgate_gateway_requests_total",
            &[("status", "502"), ("decision", "bad_gateway")]
        ) >= 1.0
    );

    // Listen addresses are bound once: a reload that changes them is refused, nothing changes.
    let mut moved =
        gw.config(&Opts::default()).replace(&format!("{GW_V4}:{PORT}"), &format!("{GW_V4}:9443"));
    std::mem::swap(&mut gw.daemon.extra, &mut moved);
    gw.daemon.write_config(&gw.topo.gw_if, "");
    let (code, _, err) = gw.daemon.cli(&["reload"]);
    assert_ne!(code, 0);
    assert!(err.contains("listen") && err.contains("restart"), "{err}");
    assert_json_error(&gw.get(CLIENT_V4, "/public/x", &[]), 502, "bad_gateway");
}
