//! HTTPS for the listeners an operator reaches over a network: a certificate
//! and key the operator gives, or one made at first start and kept, and a
//! listener whose connections are TLS.
//!
//! Handshakes run beside the accept loop, each with a deadline, and at most
//! [`MAX_HANDSHAKES`] at once: a client that opens connections and never
//! speaks holds up neither the others nor the listener.

use std::{
    io::Write,
    net::SocketAddr,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::serve::Listener;
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_rustls::{server::TlsStream, TlsAcceptor};
use tracing::{debug, info};

use crate::error::AgentError;

/// Handshakes in flight at most; a connection beyond them is closed.
pub const MAX_HANDSHAKES: usize = 64;
/// How long a client has to finish its handshake.
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);

/// Where a listener's certificate and key are (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Why a listener has no TLS.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} {}: {source}", path.display())]
    File {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} holds no PEM certificate (-----BEGIN CERTIFICATE-----): give the certificate file, or remove it and {} so that one is made", cert.display(), key.display())]
    NoCertificate { cert: PathBuf, key: PathBuf },
    #[error("{} holds no PEM private key: give the key of the certificate, or remove it and {} so that a pair is made", key.display(), cert.display())]
    NoKey { cert: PathBuf, key: PathBuf },
    #[error("only one of {} and {} exists: give both, or remove the other so that a pair is made", cert.display(), key.display())]
    HalfPair { cert: PathBuf, key: PathBuf },
    #[error("the certificate {} and key {} do not make a TLS server: {source}", cert.display(), key.display())]
    Rustls {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("making a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

impl From<TlsError> for AgentError {
    fn from(e: TlsError) -> Self {
        AgentError::Io {
            what: "setting up HTTPS".into(),
            source: std::io::Error::other(e),
        }
    }
}

/// The TLS server of `files`: read from them, or, when neither exists, made
/// for `names` (host names and addresses the certificate is valid for),
/// written there (the key readable by its owner only) and used from then on.
/// Returns the configuration and the certificate's SHA-256 fingerprint.
pub fn server_config(
    files: &TlsFiles,
    names: &[String],
) -> Result<(Arc<rustls::ServerConfig>, String), TlsError> {
    let (c, k) = (files.cert.exists(), files.key.exists());
    if c != k {
        return Err(TlsError::HalfPair {
            cert: files.cert.clone(),
            key: files.key.clone(),
        });
    }
    if !c {
        generate(files, names)?;
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| pem_error(e, "reading the certificate", &files.cert))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem_error(e, "reading the certificate", &files.cert))?;
    let Some(first) = certs.first() else {
        return Err(TlsError::NoCertificate {
            cert: files.cert.clone(),
            key: files.key.clone(),
        });
    };
    let fingerprint = fingerprint(first);
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
            cert: files.cert.clone(),
            key: files.key.clone(),
        },
        e => pem_error(e, "reading the key", &files.key),
    })?;
    let rustls_error = |source| TlsError::Rustls {
        cert: files.cert.clone(),
        key: files.key.clone(),
        source,
    };
    // ring, not aws-lc-rs: it cross-builds for the ARM boards with the gcc alone.
    #[allow(deprecated)]
    let provider = rustls::crypto::ring::default_provider();
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .map_err(rustls_error)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(rustls_error)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((Arc::new(cfg), fingerprint))
}

fn pem_error(e: rustls::pki_types::pem::Error, what: &'static str, path: &Path) -> TlsError {
    TlsError::File {
        what,
        path: path.to_path_buf(),
        source: match e {
            rustls::pki_types::pem::Error::Io(io) => io,
            other => std::io::Error::new(std::io::ErrorKind::InvalidData, other.to_string()),
        },
    }
}

/// SHA-256 of a certificate as `AB:CD:...`, what a browser shows to compare.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    d.as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn generate(files: &TlsFiles, names: &[String]) -> Result<(), TlsError> {
    let made = rcgen::generate_simple_self_signed(names.to_vec())?;
    for path in [&files.cert, &files.key] {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| TlsError::File {
                what: "creating the folder of",
                path: path.clone(),
                source,
            })?;
        }
    }
    write_new(&files.key, made.key_pair.serialize_pem().as_bytes(), 0o600)?;
    write_new(&files.cert, made.cert.pem().as_bytes(), 0o644)?;
    info!(cert = %files.cert.display(), key = %files.key.display(), names = ?names, "made a self-signed certificate for HTTPS");
    Ok(())
}

/// Writes a file that must not exist yet, with `mode` from its first byte.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    let err = |source| TlsError::File {
        what: "writing",
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)
}

/// Connections that failed or timed out in their handshake, or came while
/// [`MAX_HANDSHAKES`] were in flight.
#[derive(Debug, Default)]
pub struct TlsCounts {
    pub failed: AtomicU64,
    pub turned_away: AtomicU64,
}

/// A listener whose connections have finished their TLS handshake.
pub struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    pub counts: Arc<TlsCounts>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsListener {
    /// Accepts on `inner` and hands on each connection once its handshake
    /// with `cfg` is done.
    pub fn new<L>(mut inner: L, cfg: Arc<rustls::ServerConfig>) -> std::io::Result<Self>
    where
        L: Listener<Io = TcpStream, Addr = SocketAddr>,
    {
        let local = inner.local_addr()?;
        let (tx, rx) = tokio::sync::mpsc::channel(MAX_HANDSHAKES);
        let acceptor = TlsAcceptor::from(cfg);
        let counts = Arc::new(TlsCounts::default());
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        let c = counts.clone();
        let task = tokio::spawn(async move {
            loop {
                let (tcp, addr) = inner.accept().await;
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    c.turned_away.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let (acceptor, tx, c) = (acceptor.clone(), tx.clone(), c.clone());
                tokio::spawn(async move {
                    let done = tokio::time::timeout(HANDSHAKE_DEADLINE, acceptor.accept(tcp)).await;
                    drop(slot);
                    match done {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, addr)).await;
                        }
                        Ok(Err(e)) => {
                            c.failed.fetch_add(1, Ordering::Relaxed);
                            debug!(%addr, "TLS handshake failed: {e}");
                        }
                        Err(_) => {
                            c.failed.fetch_add(1, Ordering::Relaxed);
                            debug!(%addr, "TLS handshake not finished in time");
                        }
                    }
                });
            }
        });
        Ok(Self {
            rx,
            local,
            counts,
            task,
        })
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The acceptor ended (its listener failed, which its watcher reports).
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

    fn files(dir: &Path) -> TlsFiles {
        TlsFiles {
            cert: dir.join("tls/cert.pem"),
            key: dir.join("tls/key.pem"),
        }
    }

    #[test]
    fn a_pair_is_made_once_with_a_private_key_and_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(dir.path());
        let (_, first) = server_config(&f, &["localhost".into()]).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&f.key).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "the key is its owner's only");
        let (_, again) = server_config(&f, &["localhost".into()]).unwrap();
        assert_eq!(
            first, again,
            "the second start uses the first one's certificate"
        );
        assert_eq!(first.len(), 32 * 3 - 1);
    }

    #[test]
    fn half_a_pair_or_a_file_that_is_not_pem_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(dir.path());
        std::fs::create_dir_all(f.cert.parent().unwrap()).unwrap();
        std::fs::write(&f.cert, "not a certificate").unwrap();
        let e = server_config(&f, &[]).unwrap_err().to_string();
        assert!(e.contains("only one of"), "{e}");
        std::fs::write(&f.key, "not a key").unwrap();
        let e = server_config(&f, &[]).unwrap_err().to_string();
        assert!(e.contains("no PEM certificate"), "{e}");
    }
}
