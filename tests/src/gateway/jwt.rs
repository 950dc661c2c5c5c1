//! A JWT issuer for tests: an ES256 key, its JWKS, and tokens with any header or claims,
//! signed properly or forged.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey};
use rcgen::KeyPair;
use serde_json::{Value, json};

pub const ISSUER: &str = "https://issuer.test";
pub const AUDIENCE: &str = "secgate-api";

pub struct Issuer {
    pub kid: String,
    key: EncodingKey,
    /// The public key as PEM: what an algorithm-confusion attack uses as an HMAC secret.
    pub public_pem: String,
    /// The raw public key (uncompressed point), for the JWKS.
    public_raw: Vec<u8>,
}

pub fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// Claims that pass every check, for `sub` with `extra` merged in.
pub fn claims(sub: &str, extra: Value) -> Value {
    let mut c =
        json!({ "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "exp": now() + 600, "iat": now() });
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            c.insert(k.clone(), v.clone());
        }
    }
    c
}

impl Issuer {
    pub fn new(kid: &str) -> Issuer {
        let pair = KeyPair::generate().expect("ES256 key");
        let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("encoding key");
        Issuer {
            kid: kid.into(),
            key,
            public_pem: pair.public_key_pem(),
            public_raw: pair.public_key_raw().to_vec(),
        }
    }

    /// The issuer's key as a JWK (P-256: x and y from the uncompressed point).
    pub fn jwk(&self) -> Value {
        let (x, y) = self.public_raw[1..].split_at(32);
        json!({ "kty": "EC", "crv": "P-256", "kid": self.kid, "use": "sig", "alg": "ES256",
                "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y) })
    }

    /// `header.claims` signed with ES256.
    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        let message = format!("{}.{}", b64(header), b64(claims));
        let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &self.key, Algorithm::ES256)
            .expect("sign");
        format!("{message}.{sig}")
    }

    /// A valid token for `claims`.
    pub fn token(&self, claims: &Value) -> String {
        self.sign(&json!({ "alg": "ES256", "typ": "JWT", "kid": self.kid }), claims)
    }
}

/// `header.claims` signed with HS256 under `secret`.
pub fn hs256(secret: &[u8], header: &Value, claims: &Value) -> String {
    let message = format!("{}.{}", b64(header), b64(claims));
    let key = EncodingKey::from_secret(secret);
    let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).expect("sign");
    format!("{message}.{sig}")
}

/// `header.claims.` with no signature.
pub fn unsigned(header: &Value, claims: &Value) -> String {
    format!("{}.{}.", b64(header), b64(claims))
}
