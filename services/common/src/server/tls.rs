//! rustls server configuration and client certificate identity.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use super::ServerError;
use crate::config::TlsSettings;

/// The verified client certificate of a TLS connection, in every request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// Subject common name, when the certificate has one.
    pub common_name: Option<String>,
    /// The leaf certificate, DER-encoded.
    pub der: Vec<u8>,
}

/// Builds the acceptor: h2 and http/1.1 by ALPN, optional client auth when a CA is set.
pub(super) fn acceptor(tls: &TlsSettings) -> Result<tokio_rustls::TlsAcceptor, ServerError> {
    let err = |what: &str, path: &std::path::Path, e: &dyn std::fmt::Display| {
        ServerError::Tls(format!("{what} {}: {e}", path.display()))
    };
    let certs = CertificateDer::pem_file_iter(&tls.cert)
        .map_err(|e| err("cannot read certificate", &tls.cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err("bad certificate", &tls.cert, &e))?;
    if certs.is_empty() {
        return Err(ServerError::Tls(format!(
            "no certificate in {}",
            tls.cert.display()
        )));
    }
    let key =
        PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| err("cannot read key", &tls.key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Tls(e.to_string()))?;
    let builder = match &tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca)
                .map_err(|e| err("cannot read client CA", ca, &e))?
            {
                let cert = cert.map_err(|e| err("bad client CA", ca, &e))?;
                roots.add(cert).map_err(|e| err("bad client CA", ca, &e))?;
            }
            // Optional client auth: FleetLock clients without certificates must still connect.
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| err("bad client CA", ca, &e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| err("certificate and key do not match", &tls.cert, &e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Extracts the verified client certificate, if the client sent one.
pub(super) fn peer_identity(conn: &rustls::ServerConnection) -> Option<PeerIdentity> {
    let leaf = conn.peer_certificates()?.first()?;
    let common_name = x509_parser::parse_x509_certificate(leaf.as_ref())
        .ok()
        .and_then(|(_, cert)| {
            cert.subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok().map(str::to_string))
        });
    Some(PeerIdentity {
        common_name,
        der: leaf.to_vec(),
    })
}
