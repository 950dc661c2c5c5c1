//! API keys: `<id>.<secret>`, stored only as hashes (`sha256:<hex>` for the high-entropy keys
//! `secgate token new` makes, or an argon2id PHC string), compared in constant time.
//!
//! The id finds the entry; an unknown id is checked against a dummy hash of the costliest
//! kind configured, so neither the answer nor its timing tells whether an id exists.

use std::{collections::HashMap, sync::Arc, time::Duration};

use argon2::{
    Algorithm, Argon2, Params, PasswordHash, PasswordHasher as _, PasswordVerifier as _, Version,
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use tokio::sync::Semaphore;

/// The costliest argon2 parameters accepted (64 MiB, 4 passes, 4 lanes): a check runs on
/// a blocking thread per request, so its cost is the gateway's.
const MAX_M_COST: u32 = 64 * 1024;
const MAX_T_COST: u32 = 4;
const MAX_P_COST: u32 = 4;

/// How a key is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyHash {
    Sha256([u8; 32]),
    /// An argon2id PHC string (`$argon2id$v=19$m=…`).
    Argon2(String),
}

impl KeyHash {
    /// Parses a stored hash. Errors never repeat the value: an operator may have pasted the
    /// key itself, and problems end up in logs and the audit.
    pub fn parse(s: &str) -> Result<KeyHash, String> {
        if let Some(hex) = s.strip_prefix("sha256:") {
            let bytes = decode_hex(hex).filter(|b| b.len() == 32).ok_or_else(|| {
                "hash: sha256 needs 64 hex digits (see `secgate token hash`)".to_string()
            })?;
            return Ok(KeyHash::Sha256(bytes.try_into().expect("32 bytes")));
        }
        let phc = PasswordHash::new(s).map_err(|e| {
            format!("hash is neither sha256:<hex> nor an argon2id PHC string ({e}); make one with `secgate token hash`")
        })?;
        if phc.algorithm.as_str() != "argon2id" {
            return Err(format!("hash uses {}; only argon2id is accepted", phc.algorithm));
        }
        let params = Params::try_from(&phc).map_err(|e| format!("hash: argon2 parameters: {e}"))?;
        if params.m_cost() > MAX_M_COST
            || params.t_cost() > MAX_T_COST
            || params.p_cost() > MAX_P_COST
        {
            return Err(format!(
                "hash: argon2 parameters m={},t={},p={} exceed m={MAX_M_COST},t={MAX_T_COST},p={MAX_P_COST}; each check would cost every caller that much",
                params.m_cost(),
                params.t_cost(),
                params.p_cost()
            ));
        }
        Ok(KeyHash::Argon2(s.to_owned()))
    }

    /// What checking this hash costs, to compare keys: `sha256`, or the argon2 parameters.
    pub fn cost(&self) -> String {
        match self {
            KeyHash::Sha256(_) => "sha256".into(),
            KeyHash::Argon2(phc) => {
                PasswordHash::new(phc).ok().and_then(|h| Params::try_from(&h).ok()).map_or_else(
                    || "argon2id".into(),
                    |p| format!("argon2id m={},t={},p={}", p.m_cost(), p.t_cost(), p.p_cost()),
                )
            }
        }
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
#[derive(Clone, Debug)]
pub struct ApiKeys {
    by_id: HashMap<String, ApiKey>,
    /// Checked when the id is unknown, as costly as the configured hashes (config validation
    /// makes them all cost the same, see [`KeyHash::cost`]).
    dummy: KeyHash,
    /// Argon2 checks run off the async workers, this many at once; the rest wait.
    slow: Arc<Semaphore>,
}

/// How long a request waits for an argon2 slot before it is refused as busy: a flood of
/// made-up keys must not queue without bound.
const ARGON2_WAIT: Duration = Duration::from_secs(2);

/// All argon2 slots stayed taken for [`ARGON2_WAIT`].
#[derive(Debug, PartialEq, Eq)]
pub struct Busy;

impl Default for ApiKeys {
    fn default() -> ApiKeys {
        ApiKeys::new(Vec::new())
    }
}

impl ApiKeys {
    pub fn new(keys: Vec<ApiKey>) -> ApiKeys {
        let dummy = costliest_params(&keys).map_or(KeyHash::Sha256([0; 32]), |params| {
            KeyHash::Argon2(argon2_with(params, "dummy"))
        });
        // Half the cores at most: the async workers need the rest to keep serving.
        let slots = std::thread::available_parallelism().map_or(1, |n| (usize::from(n) / 2).max(1));
        ApiKeys {
            by_id: keys.into_iter().map(|k| (k.id.clone(), k)).collect(),
            dummy,
            slow: Arc::new(Semaphore::new(slots)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The key `presented` is, if it is one of ours. An unknown id is checked against the
    /// dummy hash, so that the answer takes as long either way.
    pub async fn authenticate(&self, presented: &str) -> Result<Option<&ApiKey>, Busy> {
        let id = presented.split_once('.').map_or("", |(id, _)| id);
        let key = self.by_id.get(id);
        let hash = key.map_or(&self.dummy, |k| &k.hash);
        let ok = match hash {
            KeyHash::Sha256(_) => hash.verify(presented),
            KeyHash::Argon2(_) => {
                let slot = tokio::time::timeout(ARGON2_WAIT, self.slow.clone().acquire_owned())
                    .await
                    .map_err(|_| Busy)?
                    .expect("the semaphore is never closed");
                let (hash, presented) = (hash.clone(), presented.to_owned());
                tokio::task::spawn_blocking(move || {
                    let _slot = slot;
                    hash.verify(&presented)
                })
                .await
                .unwrap_or(false)
            }
        };
        Ok(key.filter(|_| ok))
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

    fn key(id: &str, hash: &str) -> ApiKey {
        ApiKey { id: id.into(), hash: KeyHash::parse(hash).unwrap(), roles: vec!["deploy".into()] }
    }

    #[tokio::test]
    async fn keys_verify_against_their_hashes_only() {
        let k = new_key("ci-bot");
        assert!(k.starts_with("ci-bot.") && k.len() > 40);
        for hash in [KeyHash::sha256(&k), KeyHash::argon2(&k)] {
            let keys = ApiKeys::new(vec![key("ci-bot", &hash)]);
            assert_eq!(keys.authenticate(&k).await.unwrap().map(|k| k.id.as_str()), Some("ci-bot"));
            for wrong in
                [format!("{k}x"), "ci-bot.wrong".into(), "nobody.x".into(), "no-dot".into()]
            {
                assert_eq!(keys.authenticate(&wrong).await, Ok(None), "{hash}: {wrong}");
            }
        }
    }

    #[test]
    fn an_unknown_id_costs_as_much_as_a_known_one() {
        let params = Params::new(32 * 1024, 3, 1, None).unwrap();
        let keys = ApiKeys::new(vec![key("slow", &argon2_with(params, "slow.k"))]);
        let KeyHash::Argon2(dummy) = &keys.dummy else {
            panic!("an argon2 dummy: {:?}", keys.dummy)
        };
        let dummy = KeyHash::Argon2(dummy.clone());
        assert_eq!(dummy.cost(), "argon2id m=32768,t=3,p=1");
        assert_eq!(dummy.cost(), keys.by_id["slow"].hash.cost());
        let fast = ApiKeys::new(vec![key("fast", &KeyHash::sha256("fast.k"))]);
        assert_eq!(fast.dummy.cost(), "sha256");
    }

    /// A flood of made-up keys waits for the argon2 slots and is turned away once they stay
    /// busy; every slot comes back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn argon2_checks_are_bounded() {
        let keys = Arc::new(ApiKeys::new(vec![key("k", &KeyHash::argon2("k.secret"))]));
        let slots = keys.slow.available_permits();
        let held: Vec<_> =
            (0..slots).map(|_| keys.slow.clone().try_acquire_owned().unwrap()).collect();
        let started = tokio::time::Instant::now();
        assert_eq!(keys.authenticate("x.guess").await, Err(Busy), "all slots taken");
        assert!(started.elapsed() >= ARGON2_WAIT);
        drop(held);
        let flood: Vec<_> = (0..8)
            .map(|i| {
                let keys = keys.clone();
                tokio::spawn(async move {
                    keys.authenticate(&format!("x{i}.guess")).await.map(|k| k.map(|k| k.id.clone()))
                })
            })
            .collect();
        let mut answered = 0;
        for f in flood {
            if let Ok(found) = f.await.unwrap() {
                assert!(found.is_none());
                answered += 1;
            }
        }
        assert!(answered >= slots, "at least one round of checks ran");
        assert_eq!(keys.slow.available_permits(), slots, "every slot returned");
    }

    #[test]
    fn bad_hashes_are_named_without_echoing_them() {
        let pasted_key = new_key("oops");
        let e = KeyHash::parse(&pasted_key).unwrap_err();
        assert!(e.contains("neither") && !e.contains(&pasted_key), "{e}");
        assert!(KeyHash::parse("sha256:abc").unwrap_err().contains("64 hex digits"));
        let argon2i = "$argon2i$v=19$m=16,t=2,p=1$c2FsdHNhbHQ$L4Sp1lqCt/Ml3m+FQgD+5w";
        assert!(KeyHash::parse(argon2i).unwrap_err().contains("only argon2id"));
        let costly = argon2_with(Params::new(MAX_M_COST * 2, 1, 1, None).unwrap(), "x");
        assert!(KeyHash::parse(&costly).unwrap_err().contains("exceed"));
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics(s in "\\PC{0,120}") {
            let _ = KeyHash::parse(&s);
            let _ = KeyHash::Sha256([0; 32]).verify(&s);
        }
    }
}
