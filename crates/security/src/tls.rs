//! TLS on every Weir port (`security.ssl.*`): one certificate and key per process, one CA that
//! every peer's certificate must chain to, and optionally mutual TLS (servers also require a
//! client certificate from that CA).
//!
//! - gRPC (the JobManager's services, the data plane): [`Tls::grpc_server`] and
//!   [`Tls::grpc_client`]. tonic applies a client TLS configuration only to `https://` URLs and
//!   talks plaintext to `http://` ones, so every URL a TLS process dials goes through
//!   [`Tls::url`].
//! - HTTP (REST and the web UI, `/metrics`): [`TlsListener`], an axum listener that completes
//!   each handshake on its own task (a slow or silent client delays no one else) and hands on
//!   the connections that succeed.

use crate::SecurityError;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// Largest PEM file read.
const MAX_PEM_BYTES: u64 = 1 << 20;
/// The longest a TLS handshake may take on an HTTP port.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a process's TLS material is (`security.ssl.cert`, `.key`, `.ca`, `.mutual`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// This process's certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The CA every peer's certificate must chain to (PEM).
    pub ca: PathBuf,
    /// Servers require a client certificate from that CA; clients present theirs.
    pub mutual: bool,
}

/// Loaded and checked TLS material.
#[derive(Clone)]
pub struct Tls {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    ca_pem: Vec<u8>,
    mutual: bool,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("mutual", &self.mutual)
            .finish_non_exhaustive()
    }
}

fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>, SecurityError> {
    let err = |reason: String| SecurityError::File {
        path: path.to_path_buf(),
        reason: format!("{what}: {reason}"),
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_PEM_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| err(e.to_string()))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(err(format!("more than {MAX_PEM_BYTES} bytes")));
    }
    Ok(bytes)
}

fn certs(
    pem: &[u8],
    path: &Path,
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, SecurityError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| SecurityError::File {
            path: path.to_path_buf(),
            reason: format!("{what}: not PEM certificates: {e}"),
        })?;
    if certs.is_empty() {
        return Err(SecurityError::File {
            path: path.to_path_buf(),
            reason: format!("{what}: no certificate in it"),
        });
    }
    Ok(certs)
}

impl Tls {
    /// Reads and checks `files`; errors name the file and the key it came from.
    pub fn load(files: &TlsFiles) -> Result<Self, SecurityError> {
        // tonic's TLS uses the process-wide rustls provider; with more than one compiled in
        // (object storage brings another) none is chosen by itself.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let cert_pem = read_pem(&files.cert, "security.ssl.cert")?;
        let key_pem = read_pem(&files.key, "security.ssl.key")?;
        let ca_pem = read_pem(&files.ca, "security.ssl.ca")?;
        certs(&cert_pem, &files.cert, "security.ssl.cert")?;
        certs(&ca_pem, &files.ca, "security.ssl.ca")?;
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| SecurityError::File {
            path: files.key.clone(),
            reason: format!("security.ssl.key: not a PEM private key: {e}"),
        })?;
        let tls = Self {
            cert_pem,
            key_pem,
            ca_pem,
            mutual: files.mutual,
        };
        // The key must belong to the certificate: rustls checks when it builds a config.
        tls.rustls_server().map_err(|reason| SecurityError::File {
            path: files.cert.clone(),
            reason,
        })?;
        Ok(tls)
    }

    /// Whether servers require client certificates.
    pub fn mutual(&self) -> bool {
        self.mutual
    }

    /// A gRPC server's configuration.
    pub fn grpc_server(&self) -> ServerTlsConfig {
        let config = ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            // A peer that connects and never completes the handshake lets go of it.
            .timeout(HANDSHAKE_TIMEOUT);
        if self.mutual {
            config.client_ca_root(Certificate::from_pem(&self.ca_pem))
        } else {
            config
        }
    }

    /// A gRPC client's configuration: trusts only the CA; presents this process's certificate
    /// with mutual TLS.
    pub fn grpc_client(&self) -> ClientTlsConfig {
        let config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca_pem));
        if self.mutual {
            config.identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
        } else {
            config
        }
    }

    /// `url` with the `https` scheme (a `host:port` gets one); see the module doc.
    pub fn url(url: &str) -> String {
        match url.split_once("://") {
            Some((_, rest)) => format!("https://{rest}"),
            None => format!("https://{url}"),
        }
    }

    /// The rustls configuration of an HTTP server.
    pub fn rustls_server(&self) -> Result<Arc<rustls::ServerConfig>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = if self.mutual {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(
                &self.ca_pem,
                Path::new("security.ssl.ca"),
                "security.ssl.ca",
            )
            .map_err(|e| e.to_string())?
            {
                roots.add(c).map_err(|e| format!("security.ssl.ca: {e}"))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| format!("security.ssl.ca: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let chain = certs(
            &self.cert_pem,
            Path::new("security.ssl.cert"),
            "security.ssl.cert",
        )
        .map_err(|e| e.to_string())?;
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem)
            .map_err(|e| format!("security.ssl.key: {e}"))?;
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| format!("the certificate and key do not go together: {e}"))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// An axum listener that serves TLS: see the module doc.
pub struct TlsListener {
    local: SocketAddr,
    accepted: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        SocketAddr,
    )>,
}

impl TlsListener {
    /// Accepts on `listener`, completing handshakes with `config`.
    pub fn new(
        listener: tokio::net::TcpListener,
        config: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, accepted) = tokio::sync::mpsc::channel(64);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    return;
                }
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self { local, accepted })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(c) => c,
            // The accept loop ended: no connection will ever come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_or_an_address_gets_the_https_scheme() {
        assert_eq!(Tls::url("http://127.0.0.1:6123"), "https://127.0.0.1:6123");
        assert_eq!(Tls::url("127.0.0.1:7000"), "https://127.0.0.1:7000");
        assert_eq!(Tls::url("https://h:1"), "https://h:1");
    }

    #[test]
    fn missing_or_foreign_files_are_errors_naming_the_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let files = TlsFiles {
            cert: junk.clone(),
            key: junk.clone(),
            ca: dir.path().join("missing.pem"),
            mutual: false,
        };
        let e = Tls::load(&files).unwrap_err().to_string();
        assert!(e.contains("junk.pem") || e.contains("missing.pem"), "{e}");
        assert!(e.contains("security.ssl."), "{e}");
    }
}
