//! API keys: `<id>.<secret>`, stored only as hashes (`sha256:<hex>` for the high-entropy keys
//! `secgate token new` makes, or an argon2id PHC string), compared in constant time.
//!
//! The id finds the entry; an unknown id is checked against a dummy hash of the costliest
//! kind configured, so neither the answer nor its timing tells whether an id exists.

use std::collections::HashMap;

use argon2::{
    Algorithm, Argon2, Params, PasswordHash, PasswordHasher as _, PasswordVerifier as _, Version,
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// How a key is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyHash {
    Sha256([u8; 32]),
    /// An argon2id PHC string (`$argon2id$v=19$m=…`).
    Argon2(String),
}

impl KeyHash {
    pub fn parse(s: &str) -> Result<KeyHash, String> {
        if let Some(hex) = s.strip_prefix("sha256:") {
            let bytes = decode_hex(hex).filter(|b| b.len() == 32).ok_or_else(|| {
                format!("hash {s:?}: sha256 needs 64 hex digits (see `secgate token hash`)")
            })?;
            return Ok(KeyHash::Sha256(bytes.try_into().expect("32 bytes")));
        }
        let phc = PasswordHash::new(s).map_err(|e| {
            format!("hash {s:?} is neither sha256:<hex> nor an argon2id PHC string ({e})")
        })?;
        if phc.algorithm.as_str() != "argon2id" {
            return Err(format!("hash {s:?} uses {}; only argon2id is accepted", phc.algorithm));
        }
        Ok(KeyHash::Argon2(s.to_owned()))
    }

    /// Whether `key` is the key this hash was made from, in constant time.
    pub fn verify(&self, key: &str) -> bool {
        match self {
            KeyHash::Sha256(want) => {
                bool::from(Sha256::digest(key.as_bytes()).as_slice().ct_eq(want))
            }
            KeyHash::Argon2(phc) => PasswordHash::new(phc)
                .is_ok_and(|h| Argon2::default().verify_password(key.as_bytes(), &h).is_ok()),
        }
    }

    /// The `sha256:<hex>` form of `key`.
    pub fn sha256(key: &str) -> String {
        let digest = Sha256::digest(key.as_bytes());
        format!("sha256:{}", digest.iter().map(|b| format!("{b:02x}")).collect::<String>())
    }

    /// An argon2id PHC string for `key`, with a fresh salt.
    pub fn argon2(key: &str) -> String {
        argon2_with(Params::default(), key)
    }
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect()
}

/// Whether `id` may name a key: it is the part before the first `.` of the key.
pub fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A fresh random key for `id`: 256 bits of secret.
pub fn new_key(id: &str) -> String {
    let secret: [u8; 32] = rand::random();
    format!("{id}.{}", URL_SAFE_NO_PAD.encode(secret))
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKey {
    pub id: String,
    pub hash: KeyHash,
    pub roles: Vec<String>,
}

/// The configured keys, by id.
#[derive(Clone, Debug, Default)]
pub struct ApiKeys {
    by_id: HashMap<String, ApiKey>,
    /// Checked when the id is unknown, as costly as the costliest configured hash.
    dummy: Option<KeyHash>,
}

impl ApiKeys {
    pub fn new(keys: Vec<ApiKey>) -> ApiKeys {
        let dummy = costliest_params(&keys).map_or(KeyHash::Sha256([0; 32]), |params| {
            KeyHash::Argon2(argon2_with(params, "dummy"))
        });
        ApiKeys { by_id: keys.into_iter().map(|k| (k.id.clone(), k)).collect(), dummy: Some(dummy) }
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The key `presented` is, if it is one of ours.
    pub fn authenticate(&self, presented: &str) -> Option<&ApiKey> {
        let id = presented.split_once('.').map_or("", |(id, _)| id);
        match self.by_id.get(id) {
            Some(key) => key.hash.verify(presented).then_some(key),
            None => {
                if let Some(dummy) = &self.dummy {
                    let _ = dummy.verify(presented);
                }
                None
            }
        }
    }
}

/// The argon2 parameters of the configured hash that costs the most to check, so that
/// checking an unknown id takes as long as checking the slowest real one.
fn costliest_params(keys: &[ApiKey]) -> Option<Params> {
    keys.iter()
        .filter_map(|k| match &k.hash {
            KeyHash::Argon2(phc) => {
                PasswordHash::new(phc).ok().and_then(|h| Params::try_from(&h).ok())
            }
            KeyHash::Sha256(_) => None,
        })
        .max_by_key(|p| u64::from(p.m_cost()) * u64::from(p.t_cost()) * u64::from(p.p_cost()))
}

fn argon2_with(params: Params, key: &str) -> String {
    let bytes: [u8; 16] = rand::random();
    let salt =
        argon2::password_hash::SaltString::encode_b64(&bytes).expect("16 bytes make a valid salt");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(key.as_bytes(), &salt)
        .expect("argon2 hashes any input with valid parameters")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_verify_against_their_hashes_only() {
        let key = new_key("ci-bot");
        assert!(key.starts_with("ci-bot.") && key.len() > 40);
        for hash in [KeyHash::sha256(&key), KeyHash::argon2(&key)] {
            let parsed = KeyHash::parse(&hash).unwrap();
            assert!(parsed.verify(&key), "{hash}");
            assert!(!parsed.verify(&format!("{key}x")), "{hash}");
        }
        let keys = ApiKeys::new(vec![ApiKey {
            id: "ci-bot".into(),
            hash: KeyHash::parse(&KeyHash::sha256(&key)).unwrap(),
            roles: vec!["deploy".into()],
        }]);
        assert_eq!(keys.authenticate(&key).map(|k| k.id.as_str()), Some("ci-bot"));
        assert!(keys.authenticate("ci-bot.wrong").is_none());
        assert!(keys.authenticate("nobody.x").is_none());
        assert!(keys.authenticate("no-dot").is_none());
    }

    #[test]
    fn an_unknown_id_costs_as_much_as_the_slowest_known_key() {
        let params = Params::new(32 * 1024, 3, 1, None).unwrap();
        let slow = ApiKey {
            id: "slow".into(),
            hash: KeyHash::Argon2(argon2_with(params, "slow.k")),
            roles: vec![],
        };
        let fast = ApiKey {
            id: "fast".into(),
            hash: KeyHash::parse(&KeyHash::argon2("fast.k")).unwrap(),
            roles: vec![],
        };
        let keys = ApiKeys::new(vec![fast, slow]);
        let Some(KeyHash::Argon2(dummy)) = &keys.dummy else {
            panic!("an argon2 dummy: {:?}", keys.dummy)
        };
        let dummy = Params::try_from(&PasswordHash::new(dummy).unwrap()).unwrap();
        assert_eq!((dummy.m_cost(), dummy.t_cost(), dummy.p_cost()), (32 * 1024, 3, 1));
        assert!(keys.authenticate("slow.k").is_some());
    }

    #[test]
    fn bad_hashes_are_named() {
        assert!(KeyHash::parse("sha256:abc").unwrap_err().contains("64 hex digits"));
        assert!(KeyHash::parse("md5:abc").unwrap_err().contains("neither"));
        let argon2i = "$argon2i$v=19$m=16,t=2,p=1$c2FsdHNhbHQ$L4Sp1lqCt/Ml3m+FQgD+5w";
        assert!(KeyHash::parse(argon2i).unwrap_err().contains("only argon2id"));
    }

    proptest::proptest! {
        #[test]
        fn parsing_and_checking_never_panic(s in "\\PC{0,120}") {
            let _ = KeyHash::parse(&s);
            let _ = ApiKeys::new(vec![]).authenticate(&s);
        }
    }
}
