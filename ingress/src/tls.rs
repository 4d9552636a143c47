//! TLS for the front: a certificate per hostname, picked by SNI; ALPN for
//! HTTP/2 and HTTP/1.1 (and `h3` for QUIC). One crypto provider, aws-lc-rs,
//! the one the deno crates already link, for rustls everywhere.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Why certificates could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{what}: no PEM certificate in it")]
    NoCertificate { what: String },
    #[error("{what}: no usable PEM private key in it: {reason}")]
    BadKey { what: String, reason: String },
    #[error("{what}: {source}")]
    Rustls { what: String, source: rustls::Error },
    #[error("a certificate needs at least one host name")]
    NoHosts,
}

/// The crypto provider of every TLS endpoint of the node.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Certificates by host name. `*.example.com` covers the subdomains of
/// `example.com`; a client without SNI (or with a name nothing covers) gets
/// the first certificate added.
#[derive(Debug, Default)]
pub struct Certificates {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the parent domain (`example.com` for `*.example.com`).
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl Certificates {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a certificate chain and key (PEM) for `hosts`.
    pub fn add_pem(&mut self, hosts: &[String], chain: &[u8], key: &[u8], what: &str) -> Result<(), TlsError> {
        if hosts.is_empty() {
            return Err(TlsError::NoHosts);
        }
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(chain).filter_map(Result::ok).collect();
        if chain.is_empty() {
            return Err(TlsError::NoCertificate { what: what.to_string() });
        }
        let key = PrivateKeyDer::from_pem_slice(key)
            .map_err(|err| TlsError::BadKey { what: what.to_string(), reason: err.to_string() })?;
        let certified = CertifiedKey::from_der(chain, key, &crypto_provider())
            .map_err(|source| TlsError::Rustls { what: what.to_string(), source })?;
        let certified = Arc::new(certified);
        for host in hosts {
            let host = host.trim_end_matches('.').to_ascii_lowercase();
            match host.strip_prefix("*.") {
                Some(parent) => self.wildcard.insert(parent.to_string(), certified.clone()),
                None => self.exact.insert(host, certified.clone()),
            };
        }
        self.default.get_or_insert(certified);
        Ok(())
    }

    /// Adds a certificate chain and key from PEM files.
    pub fn add_files(&mut self, hosts: &[String], chain: &Path, key: &Path) -> Result<(), TlsError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read { path: path.display().to_string(), source })
        };
        self.add_pem(hosts, &read(chain)?, &read(key)?, &chain.display().to_string())
    }

    pub fn is_empty(&self) -> bool {
        self.default.is_none()
    }

    /// The certificate for a server name, as SNI selection picks it.
    pub fn for_name(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = name else { return self.default.clone() };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(exact) = self.exact.get(&name) {
            return Some(exact.clone());
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(wildcard) = self.wildcard.get(parent) {
                return Some(wildcard.clone());
            }
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.for_name(hello.server_name())
    }
}

/// A rustls server configuration over `certificates`, offering `alpn`.
pub fn server_config(certificates: Arc<Certificates>, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls { what: "TLS settings".into(), source })?
        .with_no_client_auth()
        .with_cert_resolver(certificates);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// ALPN of the TCP listener: HTTP/2 first, then HTTP/1.1.
pub const TCP_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn names_pick_certificates() {
        let mut certificates = Certificates::new();
        let (a_cert, a_key) = self_signed(&["a.test"]);
        let (w_cert, w_key) = self_signed(&["*.b.test"]);
        certificates.add_pem(&["a.test".into()], a_cert.as_bytes(), a_key.as_bytes(), "a").unwrap();
        certificates.add_pem(&["*.b.test".into()], w_cert.as_bytes(), w_key.as_bytes(), "b").unwrap();
        let a = certificates.for_name(Some("a.test")).unwrap();
        let w = certificates.for_name(Some("x.B.test")).unwrap();
        assert!(!Arc::ptr_eq(&a, &w));
        // No SNI, or an unknown name: the first certificate.
        assert!(Arc::ptr_eq(&certificates.for_name(None).unwrap(), &a));
        assert!(Arc::ptr_eq(&certificates.for_name(Some("other.test")).unwrap(), &a));
        // A wildcard covers one label only.
        assert!(Arc::ptr_eq(&certificates.for_name(Some("y.x.b.test")).unwrap(), &a));
    }

    #[test]
    fn bad_pem_is_named() {
        let mut certificates = Certificates::new();
        let err = certificates.add_pem(&["a.test".into()], b"nope", b"nope", "a.pem").unwrap_err();
        assert!(err.to_string().contains("a.pem"), "{err}");
        let (cert, _) = self_signed(&["a.test"]);
        let (_, other_key) = self_signed(&["a.test"]);
        let err = certificates.add_pem(&["a.test".into()], cert.as_bytes(), other_key.as_bytes(), "a.pem").unwrap_err();
        assert!(matches!(err, TlsError::Rustls { .. }), "a key that does not match: {err}");
    }
}
