//! TLS termination with rustls (aws-lc-rs). Certificates and keys are loaded and checked while
//! the config is validated, so a bad file is a config error naming it, never a failure on the
//! first handshake. The server config picks a certificate by SNI, offers `h2` and
//! `http/1.1`, resumes sessions with tickets, and optionally verifies client certificates.
//! It is swapped whole on reload and when the files change; connections keep the config
//! they started with, so none is dropped.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use rustls::{
    RootCertStore, ServerConfig,
    crypto::{CryptoProvider, aws_lc_rs},
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier, danger::ClientCertVerifier},
    sign::CertifiedKey,
};

/// The oldest TLS version offered; TLS 1.0 and 1.1 are never possible.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MinVersion {
    Tls12,
    Tls13,
}

/// Whether clients present certificates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificates are asked for.
    Off,
    /// Asked for and verified if presented; connections without one still proceed.
    Optional,
    /// Required: a connection without a valid client certificate fails the handshake.
    Required,
}

/// A certificate chain with its key, and the files they came from.
#[derive(Clone, Debug)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub certified: Arc<CertifiedKey>,
}

/// Everything a TLS server config is built from, loaded and checked.
#[derive(Clone, Debug)]
pub struct TlsSettings {
    pub default: Pair,
    /// Certificates chosen by SNI (lower-case names).
    pub sni: Vec<(String, Pair)>,
    pub min_version: MinVersion,
    pub client_ca: Option<(PathBuf, Arc<RootCertStore>)>,
    pub client_auth: ClientAuth,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(aws_lc_rs::default_provider())
}

/// What is wrong with a certificate and key pair, by the file to fix.
#[derive(Debug, thiserror::Error)]
pub enum PairError {
    #[error("{0}")]
    Cert(String),
    #[error("{0}")]
    Key(String),
}

/// Loads a PEM certificate chain and its PEM private key, and checks that they belong
/// together. Errors name the file and say what is wrong.
pub fn load_pair(cert: &Path, key: &Path) -> Result<Pair, PairError> {
    let bad_cert =
        |e: &dyn std::fmt::Display| PairError::Cert(format!("certificate {}: {e}", cert.display()));
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad_cert(&e))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad_cert(&e))?;
    if chain.is_empty() {
        return Err(PairError::Cert(format!(
            "certificate {} holds no PEM certificate",
            cert.display()
        )));
    }
    let der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| PairError::Key(format!("private key {}: {e}", key.display())))?;
    let certified = CertifiedKey::from_der(chain, der, &provider()).map_err(|e| {
        PairError::Key(format!(
            "private key {} does not fit certificate {}: {e}",
            key.display(),
            cert.display()
        ))
    })?;
    Ok(Pair { cert: cert.to_owned(), key: key.to_owned(), certified: Arc::new(certified) })
}

/// Loads the CA certificates client certificates must chain to.
pub fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("client_ca {}: {e}", path.display()))?
    {
        let cert = cert.map_err(|e| format!("client_ca {}: {e}", path.display()))?;
        roots.add(cert).map_err(|e| format!("client_ca {}: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("client_ca {} holds no PEM certificate", path.display()));
    }
    Ok(Arc::new(roots))
}

impl TlsSettings {
    /// Every file the settings were loaded from, for change detection.
    pub fn files(&self) -> Vec<PathBuf> {
        let pairs = std::iter::once(&self.default).chain(self.sni.iter().map(|(_, p)| p));
        pairs
            .flat_map(|p| [p.cert.clone(), p.key.clone()])
            .chain(self.client_ca.iter().map(|(path, _)| path.clone()))
            .collect()
    }

    /// The same settings loaded again from their files (after the files changed).
    pub fn reload(&self) -> Result<TlsSettings, String> {
        let again = |p: &Pair| load_pair(&p.cert, &p.key).map_err(|e| e.to_string());
        Ok(TlsSettings {
            default: again(&self.default)?,
            sni: self
                .sni
                .iter()
                .map(|(n, p)| Ok((n.clone(), again(p)?)))
                .collect::<Result<_, String>>()?,
            min_version: self.min_version,
            client_ca: match &self.client_ca {
                Some((path, _)) => Some((path.clone(), load_roots(path)?)),
                None => None,
            },
            client_auth: self.client_auth,
        })
    }

    /// The DNS names the certificates are for (their SANs) and the SNI names configured,
    /// lower case.
    pub fn served_names(&self) -> Vec<String> {
        let pairs = std::iter::once(&self.default).chain(self.sni.iter().map(|(_, p)| p));
        let mut names: Vec<String> = pairs
            .filter_map(|p| p.certified.cert.first())
            .filter_map(|der| {
                x509_parser::parse_x509_certificate(der).ok().map(|(_, c)| dns_names(&c))
            })
            .flatten()
            .chain(self.sni.iter().map(|(n, _)| n.clone()))
            .map(|n| n.to_ascii_lowercase())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The verifier of client certificates, when they are asked for.
    pub fn client_verifier(&self) -> Result<Option<Arc<dyn ClientCertVerifier>>, String> {
        let (Some((_, roots)), auth) = (&self.client_ca, self.client_auth) else { return Ok(None) };
        if auth == ClientAuth::Off {
            return Ok(None);
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider());
        let verifier =
            if auth == ClientAuth::Optional { verifier.allow_unauthenticated() } else { verifier };
        verifier.build().map(Some).map_err(|e| format!("client_ca: {e}"))
    }

    /// The rustls server config.
    pub fn server_config(
        &self,
        tickets: Arc<dyn rustls::server::ProducesTickets>,
    ) -> Result<Arc<ServerConfig>, String> {
        let versions: &[&rustls::SupportedProtocolVersion] = match self.min_version {
            MinVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            MinVersion::Tls13 => &[&rustls::version::TLS13],
        };
        let builder = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .map_err(|e| format!("TLS versions: {e}"))?;
        let builder = match self.client_verifier()? {
            Some(verifier) => builder.with_client_cert_verifier(verifier),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(Arc::new(BySni {
            default: self.default.certified.clone(),
            sni: self.sni.iter().map(|(n, p)| (n.clone(), p.certified.clone())).collect(),
        }));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config.ticketer = tickets;
        Ok(Arc::new(config))
    }
}

fn dns_names(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok(Some(san)) = cert.subject_alternative_name() else { return Vec::new() };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(name) => Some((*name).to_owned()),
            _ => None,
        })
        .collect()
}

/// Session-ticket keys (rotated by rustls), shared by every config the gateway builds.
pub fn ticketer() -> Result<Arc<dyn rustls::server::ProducesTickets>, String> {
    aws_lc_rs::Ticketer::new().map_err(|e| format!("session tickets: {e}"))
}

/// The certificate for the SNI name the client asked for, else the default one.
#[derive(Debug)]
struct BySni {
    default: Arc<CertifiedKey>,
    sni: Vec<(String, Arc<CertifiedKey>)>,
}

impl BySni {
    /// The exact name's certificate, else that of a wildcard one label up.
    fn lookup(&self, name: &str) -> Option<&Arc<CertifiedKey>> {
        let find = |want: &str| self.sni.iter().find(|(s, _)| s == want).map(|(_, k)| k);
        find(name).or_else(|| find(&format!("*.{}", name.split_once('.')?.1)))
    }
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name().map(str::to_ascii_lowercase);
        let chosen = name.as_deref().and_then(|n| self.lookup(n));
        Some(chosen.unwrap_or(&self.default).clone())
    }
}

/// Checks that `name` (lower case) can be asked for by SNI: a DNS name, or `*.` and a DNS
/// name for one label below it.
pub fn sni_name(name: &str) -> Result<(), String> {
    let host = name.strip_prefix("*.").unwrap_or(name);
    let label = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if host.len() <= 253 && host.split('.').all(label) {
        Ok(())
    } else {
        Err(format!(
            "invalid sni {name:?}: expected a DNS name like api.example.com or *.example.com"
        ))
    }
}

/// When each file last changed, to notice new certificates without a reload.
pub fn stamps(files: &[PathBuf]) -> Vec<Option<(SystemTime, u64)>> {
    files
        .iter()
        .map(|f| std::fs::metadata(f).ok().and_then(|m| Some((m.modified().ok()?, m.len()))))
        .collect()
}
