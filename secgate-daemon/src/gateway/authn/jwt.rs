//! JWT bearer tokens, verified with jsonwebtoken against keys from a JWKS file (chosen by
//! `kid`) or a shared secret.
//!
//! Before the library sees a token, the header is read here and refused if it could steer
//! the verification: an algorithm outside the allowlist (`none` in any casing among them),
//! one whose family does not match the key (`HS256` keyed with an RSA or EC public key), a
//! `kid` that is unknown or not a plain name, keys or key locations carried in the token
//! (`jku`, `x5u`, `jwk`, `x5c`), and `crit` extensions. Then jsonwebtoken checks the
//! signature, `exp` (required and numeric), `nbf`, `iss` and `aud`, with the leeway.

use std::{collections::HashSet, path::Path, time::Duration};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::JwkSet};
use serde_json::Value;

/// Longest token considered, in bytes: far above real ones, far below what would make
/// decoding it a cost.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Where the verification keys come from.
#[derive(Clone)]
pub enum JwtKeys {
    /// From a JWKS file, by `kid`.
    Jwks(Vec<Jwk>),
    /// A shared secret, for the HS algorithms.
    Secret(DecodingKey),
}

/// A signature key from the JWKS.
#[derive(Clone)]
pub struct Jwk {
    kid: String,
    /// The only algorithm the key may verify, when the JWKS says (`alg`).
    alg: Option<Algorithm>,
    key: DecodingKey,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwtKeys::Jwks(keys) => f.debug_list().entries(keys.iter().map(|k| &k.kid)).finish(),
            JwtKeys::Secret(_) => f.write_str("Secret(..)"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct JwtSettings {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub keys: JwtKeys,
    pub roles_claim: String,
    pub leeway: Duration,
}

/// Why a token was refused; never shown to the client, only logged and audited.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("token longer than {MAX_TOKEN_BYTES} bytes")]
    TooLong,
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("algorithm {0:?} is not allowed")]
    Algorithm(String),
    #[error("the token carries {0}, which is never trusted")]
    Forbidden(&'static str),
    #[error("unknown or invalid kid")]
    Kid,
    #[error("the algorithm does not fit the key")]
    KeyFamily,
    #[error("{0}")]
    Rejected(String),
    /// Signed by a trusted key, but expired or not yet valid: an honest client's stale
    /// token, not a guess.
    #[error("{0}")]
    Lapsed(String),
}

/// What a verified token says about its holder.
#[derive(Debug, PartialEq, Eq)]
pub struct Verified {
    pub subject: String,
    pub roles: Vec<String>,
}

/// Parses an algorithm name as configured; `none` cannot be one.
pub fn algorithm(name: &str) -> Result<Algorithm, String> {
    if name.eq_ignore_ascii_case("none") {
        return Err("algorithm \"none\" is never allowed".into());
    }
    name.parse().map_err(|_| format!("unknown JWT algorithm {name:?}"))
}

/// Loads a JWKS file: every key needs a `kid`.
pub fn load_jwks(path: &Path) -> Result<JwtKeys, String> {
    let text = std::fs::read(path).map_err(|e| format!("jwks_file {}: {e}", path.display()))?;
    let set: JwkSet =
        serde_json::from_slice(&text).map_err(|e| format!("jwks_file {}: {e}", path.display()))?;
    let bad = |why: String| format!("jwks_file {}: {why}", path.display());
    let mut keys: Vec<Jwk> = Vec::new();
    for jwk in &set.keys {
        let kid = jwk.common.key_id.clone().filter(|k| valid_kid(k)).ok_or_else(|| {
            bad("every key needs a kid of letters, digits, `.`, `_` or `-`".into())
        })?;
        if keys.iter().any(|k| k.kid == kid) {
            return Err(bad(format!("kid {kid:?} is given twice; kids must tell keys apart")));
        }
        if !for_signatures(&jwk.common) {
            continue;
        }
        let alg = match &jwk.common.key_algorithm {
            None => None,
            Some(a) => match a.to_string().parse::<Algorithm>() {
                Ok(alg) => Some(alg),
                Err(_) => continue,
            },
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| bad(format!("key {kid}: {e}")))?;
        keys.push(Jwk { kid, alg, key });
    }
    if keys.is_empty() {
        return Err(bad("holds no signature key".into()));
    }
    Ok(JwtKeys::Jwks(keys))
}

/// Whether a JWKS key may verify signatures: not one marked for encryption only.
fn for_signatures(common: &jsonwebtoken::jwk::CommonParameters) -> bool {
    use jsonwebtoken::jwk::{KeyOperations, PublicKeyUse};
    let by_use =
        !matches!(common.public_key_use, Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_)));
    let by_ops =
        common.key_operations.as_ref().is_none_or(|ops| ops.contains(&KeyOperations::Verify));
    by_use && by_ops
}

/// Loads a shared secret (the file's bytes, a trailing newline dropped); at least 32 bytes.
pub fn load_secret(path: &Path) -> Result<JwtKeys, String> {
    let mut bytes =
        std::fs::read(path).map_err(|e| format!("secret_file {}: {e}", path.display()))?;
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
    }
    if bytes.len() < 32 {
        return Err(format!("secret_file {}: a secret needs at least 32 bytes", path.display()));
    }
    Ok(JwtKeys::Secret(DecodingKey::from_secret(&bytes)))
}

/// A `kid` that is a plain name: no path, no traversal, nothing to inject.
fn valid_kid(kid: &str) -> bool {
    (1..=128).contains(&kid.len())
        && !kid.contains("..")
        && kid.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl JwtSettings {
    pub fn verify(&self, token: &str) -> Result<Verified, JwtError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(JwtError::TooLong);
        }
        let header = header(token)?;
        let alg_name =
            header.get("alg").and_then(Value::as_str).ok_or(JwtError::Malformed("no alg"))?;
        let alg = self
            .algorithms
            .iter()
            .copied()
            .find(|a| format!("{a:?}") == alg_name)
            .ok_or_else(|| JwtError::Algorithm(alg_name.chars().take(16).collect()))?;
        for field in ["jku", "x5u", "jwk", "x5c", "crit"] {
            if header.contains_key(field) {
                return Err(JwtError::Forbidden(field));
            }
        }
        let (key, pinned) = self.key(header.get("kid"))?;
        if key.family() != alg.family() || pinned.is_some_and(|p| p != alg) {
            return Err(JwtError::KeyFamily);
        }
        let mut validation = Validation::new(alg);
        validation.leeway = self.leeway.as_secs();
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&self.audiences);
        // jsonwebtoken compares iss and aud only when they are present and well typed; a token
        // without them (minted for another API of the same issuer) must not pass.
        validation.required_spec_claims =
            ["exp", "sub", "iss", "aud"].into_iter().map(String::from).collect::<HashSet<_>>();
        validation.validate_nbf = true;
        let data = jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, key, &validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature
                | jsonwebtoken::errors::ErrorKind::ImmatureSignature => {
                    JwtError::Lapsed(e.to_string())
                }
                _ => JwtError::Rejected(e.to_string()),
            })?;
        let subject =
            data.claims.get("sub").and_then(Value::as_str).ok_or(JwtError::Malformed("sub"))?;
        Ok(Verified {
            subject: subject.to_owned(),
            roles: roles(data.claims.get(&self.roles_claim)),
        })
    }

    /// The key the token names, and the one algorithm it is limited to, if any.
    fn key(&self, kid: Option<&Value>) -> Result<(&DecodingKey, Option<Algorithm>), JwtError> {
        let kid = match kid {
            None => None,
            Some(v) => Some(v.as_str().filter(|k| valid_kid(k)).ok_or(JwtError::Kid)?),
        };
        match &self.keys {
            JwtKeys::Secret(key) => Ok((key, None)),
            JwtKeys::Jwks(keys) => {
                let kid = kid.ok_or(JwtError::Kid)?;
                keys.iter().find(|k| k.kid == kid).map(|k| (&k.key, k.alg)).ok_or(JwtError::Kid)
            }
        }
    }
}

/// The token's header as a JSON object (exactly three dot-separated base64url parts).
fn header(token: &str) -> Result<serde_json::Map<String, Value>, JwtError> {
    let mut parts = token.split('.');
    let (Some(head), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed("not three parts"));
    };
    let bytes = URL_SAFE_NO_PAD.decode(head).map_err(|_| JwtError::Malformed("header base64"))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(JwtError::Malformed("header JSON")),
    }
}

/// Roles from the claim: an array of strings, or one space-separated string (OAuth `scope`).
fn roles(claim: Option<&Value>) -> Vec<String> {
    match claim {
        Some(Value::Array(items)) => {
            items.iter().filter_map(Value::as_str).map(str::to_owned).collect()
        }
        Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn none_is_never_an_algorithm() {
        for name in ["none", "None", "NONE", "nOnE"] {
            assert!(algorithm(name).is_err(), "{name}");
        }
        assert_eq!(algorithm("RS256"), Ok(Algorithm::RS256));
        assert!(algorithm("RS257").is_err());
    }

    #[test]
    fn kids_are_plain_names() {
        assert!(valid_kid("key-2024.1"));
        for bad in ["", "../etc/passwd", "a/b", "a..b", "k\u{0}", &"k".repeat(129)] {
            assert!(!valid_kid(bad), "{bad:?}");
        }
    }

    #[test]
    fn roles_come_as_array_or_scope() {
        assert_eq!(roles(Some(&serde_json::json!(["a", "b", 3]))), ["a", "b"]);
        assert_eq!(roles(Some(&serde_json::json!("read write"))), ["read", "write"]);
        assert!(roles(Some(&serde_json::json!({"a": 1}))).is_empty());
    }

    const SECRET: [u8; 32] = [7; 32];

    fn hs256(keys: JwtKeys, algorithms: Vec<Algorithm>) -> JwtSettings {
        JwtSettings {
            issuer: "https://issuer.test".into(),
            audiences: vec!["api".into()],
            algorithms,
            keys,
            roles_claim: "roles".into(),
            leeway: Duration::ZERO,
        }
    }

    fn signed(header: &jsonwebtoken::Header, claims: &Value) -> String {
        jsonwebtoken::encode(header, claims, &jsonwebtoken::EncodingKey::from_secret(&SECRET))
            .unwrap()
    }

    /// A token with `header` and any payload and signature: refused before the signature.
    fn unsigned(header: &Value) -> String {
        format!("{}.e30.c2ln", URL_SAFE_NO_PAD.encode(header.to_string()))
    }

    #[test]
    fn iss_and_aud_must_be_present_and_right() {
        let settings =
            hs256(JwtKeys::Secret(DecodingKey::from_secret(&SECRET)), vec![Algorithm::HS256]);
        let exp = jsonwebtoken::get_current_timestamp() + 600;
        let head = jsonwebtoken::Header::new(Algorithm::HS256);
        let good =
            serde_json::json!({"sub": "a", "exp": exp, "iss": "https://issuer.test", "aud": "api"});
        assert!(settings.verify(&signed(&head, &good)).is_ok());
        let mut cases = vec![];
        for (field, value) in [
            ("aud", None),
            ("iss", None),
            ("aud", Some(serde_json::json!(5))),
            ("aud", Some(serde_json::json!([]))),
            ("iss", Some(serde_json::json!([]))),
            ("aud", Some(serde_json::json!("other-api"))),
        ] {
            let mut claims = good.clone();
            match value {
                None => drop(claims.as_object_mut().unwrap().remove(field)),
                Some(v) => claims[field] = v,
            }
            cases.push((field, claims));
        }
        for (field, claims) in cases {
            assert!(
                matches!(settings.verify(&signed(&head, &claims)), Err(JwtError::Rejected(_))),
                "{field}: {claims}"
            );
        }
        let mut head = head;
        head.kid = Some("../../etc/passwd".into());
        assert_eq!(
            settings.verify(&signed(&head, &good)),
            Err(JwtError::Kid),
            "a path-like kid, even with a secret"
        );
    }

    #[test]
    fn a_key_verifies_only_its_family_and_its_pinned_algorithm() {
        let ec = rcgen::KeyPair::generate().unwrap();
        let public = DecodingKey::from_ec_pem(ec.public_key_pem().as_bytes()).unwrap();
        let keys = JwtKeys::Jwks(vec![
            Jwk { kid: "ec".into(), alg: None, key: public.clone() },
            Jwk { kid: "ec-384".into(), alg: Some(Algorithm::ES384), key: public },
        ]);
        let settings = hs256(keys, vec![Algorithm::ES256, Algorithm::HS256]);
        let confused = unsigned(&serde_json::json!({"alg": "HS256", "kid": "ec"}));
        assert_eq!(
            settings.verify(&confused),
            Err(JwtError::KeyFamily),
            "HS256 keyed with an EC public key"
        );
        let pinned = unsigned(&serde_json::json!({"alg": "ES256", "kid": "ec-384"}));
        assert_eq!(settings.verify(&pinned), Err(JwtError::KeyFamily), "the JWKS pins ES384");
        let fits = unsigned(&serde_json::json!({"alg": "ES256", "kid": "ec"}));
        assert!(
            matches!(settings.verify(&fits), Err(JwtError::Rejected(_))),
            "reaches the signature check"
        );
    }

    #[test]
    fn jwks_files_keep_signature_keys_and_name_their_problems() {
        let dir = std::env::temp_dir().join(format!("secgate-jwks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ec = |kid: &str, extra: &str| {
            format!(
                r#"{{"kty":"EC","crv":"P-256","kid":"{kid}"{extra},"x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4","y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"}}"#
            )
        };
        let load = |keys: &[String]| {
            let path = dir.join("jwks.json");
            std::fs::write(&path, format!(r#"{{"keys":[{}]}}"#, keys.join(","))).unwrap();
            load_jwks(&path)
        };
        let kids = |keys: JwtKeys| match keys {
            JwtKeys::Jwks(k) => k.into_iter().map(|k| k.kid).collect::<Vec<_>>(),
            JwtKeys::Secret(_) => unreachable!(),
        };
        let mixed = [
            ec("sig", ""),
            ec("enc", r#","use":"enc""#),
            ec("wrap", r#","key_ops":["wrapKey"]"#),
            ec("oaep", r#","alg":"RSA-OAEP""#),
        ];
        assert_eq!(kids(load(&mixed).unwrap()), ["sig"]);
        assert!(load(&[ec("a", ""), ec("a", "")]).unwrap_err().contains("given twice"));
        assert!(load(&[ec("enc", r#","use":"enc""#)]).unwrap_err().contains("no signature key"));
        assert!(load(&[ec("../x", "")]).unwrap_err().contains("kid"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    proptest::proptest! {
        /// Any string is refused or accepted without a panic.
        #[test]
        fn verify_never_panics(token in "[A-Za-z0-9_.=-]{0,200}|\\PC{0,50}") {
            let settings = JwtSettings {
                issuer: "i".into(),
                audiences: vec!["a".into()],
                algorithms: vec![Algorithm::HS256],
                keys: JwtKeys::Secret(DecodingKey::from_secret(&[7; 32])),
                roles_claim: "roles".into(),
                leeway: Duration::ZERO,
            };
            let _ = settings.verify(&token);
        }
    }
}
