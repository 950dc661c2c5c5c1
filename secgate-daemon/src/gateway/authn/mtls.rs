//! Client certificates as principals: a certificate the TLS layer verified against
//! `client_ca` names its holder by its first DNS subject alternative name or its subject CN.

use x509_parser::{extensions::GeneralName, prelude::FromDer as _};

/// Which part of a verified client certificate names the principal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrincipalFrom {
    /// The first DNS subject alternative name.
    San,
    /// The subject's common name.
    Cn,
}

/// The principal a verified certificate (DER) names, if it names one.
pub fn principal(cert: &[u8], from: PrincipalFrom) -> Option<String> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(cert).ok()?;
    match from {
        PrincipalFrom::San => {
            cert.subject_alternative_name().ok().flatten()?.value.general_names.iter().find_map(
                |n| match n {
                    GeneralName::DNSName(name) => Some((*name).to_owned()),
                    _ => None,
                },
            )
        }
        PrincipalFrom::Cn => {
            cert.subject().iter_common_name().next()?.as_str().ok().map(str::to_owned)
        }
    }
}
