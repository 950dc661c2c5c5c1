//! Who is calling: a verified client certificate, an API key, or a JWT, as the route allows,
//! becomes a [`Principal`]. A failure says only whether a credential was missing or invalid;
//! why it was invalid goes to the log and the audit, never to the client.

pub mod api_key;
pub mod jwt;
pub mod mtls;

use std::collections::{BTreeSet, HashMap};

use http::{HeaderMap, HeaderName, header::AUTHORIZATION};

use self::{api_key::ApiKeys, jwt::JwtSettings, mtls::PrincipalFrom};

/// What a role or principal name may be.
pub const NAME_RULE: &str = "non-empty, at most 256 characters, no spaces or control characters";

/// Whether `s` may name a role or a principal (see [`NAME_RULE`]).
pub fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 256 && !s.chars().any(|ch| ch.is_whitespace() || ch.is_control())
}

/// How a principal proved who it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    ApiKey,
    Jwt,
    Mtls,
}

impl Method {
    /// As written in `auth` lists and before the `:` of an `allow_principals` entry.
    pub fn name(self) -> &'static str {
        match self {
            Method::ApiKey => "api_key",
            Method::Jwt => "jwt",
            Method::Mtls => "mtls",
        }
    }

    pub fn from_name(name: &str) -> Option<Method> {
        [Method::ApiKey, Method::Jwt, Method::Mtls].into_iter().find(|m| m.name() == name)
    }
}

/// The authentication methods a route accepts (`none` is an empty set).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Methods {
    pub api_key: bool,
    pub jwt: bool,
    pub mtls: bool,
}

impl Methods {
    pub fn none(&self) -> bool {
        !(self.api_key || self.jwt || self.mtls)
    }

    pub fn contains(&self, m: Method) -> bool {
        match m {
            Method::ApiKey => self.api_key,
            Method::Jwt => self.jwt,
            Method::Mtls => self.mtls,
        }
    }
}

/// An authenticated caller. Its name is only meaningful with the method that proved it: an
/// API key id, a JWT `sub` and a certificate name live in different namespaces, so that a
/// token with `sub: "ops-bot"` is not the API key `ops-bot`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub id: String,
    pub roles: BTreeSet<String>,
    pub via: Method,
}

impl Principal {
    /// `method:id`, as `allow_principals` and the audit write it.
    pub fn qualified(&self) -> String {
        format!("{}:{}", self.via.name(), self.id)
    }
}

/// Why a request could not be authenticated.
#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    /// No credential the route accepts was sent (`invalid_request`).
    Missing,
    /// One was sent and failed; the reason is for the log only (`invalid_token`).
    Invalid(String),
    /// A token with a good signature that has expired or is not valid yet (`invalid_token`,
    /// but not counted against the client: stale tokens are an honest mistake).
    Lapsed(String),
    /// More than one credential header of a kind: the upstream might read another one than
    /// the gateway checked (400).
    Ambiguous(&'static str),
    /// Key checks are saturated; try again (503).
    Busy,
}

#[derive(Clone, Debug)]
pub struct MtlsSettings {
    pub principal: PrincipalFrom,
    pub roles: HashMap<String, Vec<String>>,
}

/// The configured authenticators.
#[derive(Clone, Debug, Default)]
pub struct Authenticator {
    pub api_keys: ApiKeys,
    /// Where API keys may come besides `Authorization: Bearer`.
    pub api_key_header: Option<HeaderName>,
    pub jwt: Option<JwtSettings>,
    pub mtls: Option<MtlsSettings>,
}

impl Authenticator {
    /// Authenticates a request by the first credential the route accepts: a client
    /// certificate, then an API key header, then a bearer token (a JWT if it has three parts,
    /// else an API key).
    pub async fn authenticate(
        &self,
        accept: &Methods,
        headers: &HeaderMap,
        client_cert: Option<&[u8]>,
    ) -> Result<Principal, Failure> {
        if headers.get_all(AUTHORIZATION).iter().nth(1).is_some() {
            return Err(Failure::Ambiguous("more than one Authorization header"));
        }
        if let Some(h) = &self.api_key_header
            && headers.get_all(h).iter().nth(1).is_some()
        {
            return Err(Failure::Ambiguous("more than one API key header"));
        }
        if accept.mtls
            && let (Some(settings), Some(cert)) = (&self.mtls, client_cert)
        {
            let id = mtls::principal(cert, settings.principal).ok_or_else(|| {
                Failure::Invalid("the client certificate names no principal".into())
            })?;
            let roles = settings.roles.get(&id).cloned().unwrap_or_default();
            return Ok(Principal { id, roles: roles.into_iter().collect(), via: Method::Mtls });
        }
        let from_header = self.api_key_header.as_ref().and_then(|h| headers.get(h));
        if let Some(value) = from_header.filter(|_| accept.api_key) {
            let key =
                value.to_str().map_err(|_| Failure::Invalid("the API key is not text".into()))?;
            return self.api_key(key).await;
        }
        let Some(auth) = headers.get(AUTHORIZATION) else { return Err(Failure::Missing) };
        let token = auth
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .ok_or_else(|| Failure::Invalid("Authorization is not a bearer token".into()))?;
        let looks_like_jwt = token.matches('.').count() == 2;
        match (looks_like_jwt, accept.jwt, accept.api_key) {
            (true, true, _) => self.jwt(token),
            (false, _, true) => self.api_key(token).await,
            _ => Err(Failure::Invalid("a kind of credential this route does not accept".into())),
        }
    }

    async fn api_key(&self, presented: &str) -> Result<Principal, Failure> {
        let key = self
            .api_keys
            .authenticate(presented)
            .await
            .map_err(|api_key::Busy| Failure::Busy)?
            .ok_or_else(|| Failure::Invalid("unknown API key id or wrong secret".into()))?;
        let roles = key.roles.iter().cloned().collect();
        Ok(Principal { id: key.id.clone(), roles, via: Method::ApiKey })
    }

    fn jwt(&self, token: &str) -> Result<Principal, Failure> {
        let settings =
            self.jwt.as_ref().ok_or_else(|| Failure::Invalid("no JWT configured".into()))?;
        let verified = settings.verify(token).map_err(|e| match e {
            jwt::JwtError::Lapsed(why) => Failure::Lapsed(why),
            e => Failure::Invalid(e.to_string()),
        })?;
        Ok(Principal {
            id: verified.subject,
            roles: verified.roles.into_iter().collect(),
            via: Method::Jwt,
        })
    }
}
