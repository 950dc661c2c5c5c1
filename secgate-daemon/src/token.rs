//! `secgate token new|hash`: make API keys and the hashes the config stores instead of them.

use serde::Serialize;

use crate::gateway::authn::{
    self,
    api_key::{self, KeyHash},
};

/// A fresh key, its hash and the config entry for it.
#[derive(Debug, Serialize)]
pub struct NewKey {
    pub id: String,
    pub key: String,
    pub hash: String,
    pub config: String,
}

#[derive(Serialize)]
struct Entry<'a> {
    id: &'a str,
    hash: &'a str,
    roles: &'a [String],
}

#[derive(Serialize)]
struct Auth<'a> {
    api_keys: [Entry<'a>; 1],
}

#[derive(Serialize)]
struct Doc<'a> {
    auth: Auth<'a>,
}

/// A new key for `id` (a random id when `None`).
pub fn new(id: Option<&str>, roles: &[String], argon2: bool) -> Result<NewKey, String> {
    let id = match id {
        Some(id) if api_key::valid_id(id) => id.to_owned(),
        Some(id) => return Err(format!("invalid id {id:?}: 1–64 letters, digits, `-` or `_`")),
        None => format!("key-{:08x}", rand::random::<u32>()),
    };
    if let Some(bad) = roles.iter().find(|r| !authn::valid_name(r)) {
        return Err(format!("invalid role {bad:?}: {}", authn::NAME_RULE));
    }
    let key = api_key::new_key(&id);
    let hash = hash(&key, argon2)?;
    let doc = Doc { auth: Auth { api_keys: [Entry { id: &id, hash: &hash, roles }] } };
    let config = toml::to_string(&doc).map_err(|e| format!("formatting the config entry: {e}"))?;
    Ok(NewKey { id, key, hash, config })
}

/// The stored form of `key` (as read from stdin: one trailing newline is dropped).
pub fn hash(key: &str, argon2: bool) -> Result<String, String> {
    let key = key.strip_suffix('\n').map_or(key, |k| k.strip_suffix('\r').unwrap_or(k));
    let Some((id, secret)) = key.split_once('.') else {
        return Err(
            "an API key is <id>.<secret>: the id before the first `.` names its config entry"
                .into(),
        );
    };
    if !api_key::valid_id(id)
        || secret.is_empty()
        || secret.contains('.')
        || key.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(
            "the key is not <id>.<secret> with an id of letters, digits, `-` or `_`, no further `.` (it would read as a JWT) and no spaces"
                .into(),
        );
    }
    Ok(if argon2 { KeyHash::argon2(key) } else { KeyHash::sha256(key) })
}

/// What `token new` prints without `--json`.
pub fn render(k: &NewKey) -> String {
    format!(
        "API key (shown only now; hand it to the client, secgate keeps only its hash):\n  {}\n\nconfig entry:\n{}",
        k.key,
        k.config.lines().map(|l| format!("  {l}\n")).collect::<String>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_verifies_against_its_entry() {
        let k = new(Some("ci-bot"), &["deploy".into()], false).unwrap();
        assert!(
            k.config.contains("[[auth.api_keys]]") && k.config.contains("id = \"ci-bot\""),
            "{}",
            k.config
        );
        assert!(KeyHash::parse(&k.hash).unwrap().verify(&k.key));
        assert_eq!(
            hash(&format!("{}\n", k.key), false).unwrap(),
            k.hash,
            "stdin's newline is not part of the key"
        );
        assert!(!render(&k).is_empty());
    }

    #[test]
    fn bad_input_is_named() {
        assert!(new(Some("bad id"), &[], false).unwrap_err().contains("invalid id"));
        assert!(hash("nodot", false).unwrap_err().contains("<id>.<secret>"));
        assert!(hash("id.", false).is_err());
        assert!(hash("id.se cret", false).is_err());
        assert!(
            hash("id.se.cret", false).unwrap_err().contains("JWT"),
            "a secret with a dot reads as a JWT"
        );
    }
}
