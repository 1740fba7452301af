//! The mTLS listener: rustls (ring) with client certificates checked by the device-certificate
//! verifier (tenant CAs, mqgate's revocations, current CRLs — the same decision as EMQX's
//! `cert_pem` path). The handshake runs in the connection's own task under a timeout, so a silent
//! or slow client never holds the accept loop; a refused certificate never completes it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::{Broker, TlsIdentity};
use crate::auth::trust::DeviceCertVerifier;

/// Whether the TLS listener requires a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCerts {
    /// Every client presents a certificate the verifier accepts (the default).
    Required,
    /// Clients may connect without one and authenticate with a token or password instead; a
    /// certificate that is presented must still pass.
    Optional,
}

/// The TLS listener's configuration (`mqtts_*` keys).
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// Address to listen on.
    pub addr: SocketAddr,
    /// Server certificate chain, PEM.
    pub cert_file: PathBuf,
    /// Server private key, PEM.
    pub key_file: PathBuf,
    /// Client certificate policy.
    pub client_certs: ClientCerts,
    /// Time a client has to complete the TLS handshake.
    pub handshake_timeout: Duration,
}

/// Why the TLS listener cannot start.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A certificate or key file is missing or unreadable.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong (never the key material).
        reason: String,
    },
    /// rustls refused the certificate/key pair.
    #[error("server certificate and key do not make a TLS configuration: {0}")]
    Config(String),
}

fn file_err(path: &Path, reason: impl ToString) -> TlsSetupError {
    TlsSetupError::File {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// The acceptor for `settings`, client certificates checked by `verifier` (built with
/// [`DeviceCertVerifier::mandatory`] matching `settings.client_certs`).
pub fn acceptor(
    settings: &TlsSettings,
    verifier: Arc<DeviceCertVerifier>,
) -> Result<TlsAcceptor, TlsSetupError> {
    let chain = CertificateDer::pem_file_iter(&settings.cert_file)
        .map_err(|e| file_err(&settings.cert_file, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(&settings.cert_file, e))?;
    if chain.is_empty() {
        return Err(file_err(&settings.cert_file, "no CERTIFICATE block"));
    }
    let key = PrivateKeyDer::from_pem_file(&settings.key_file)
        .map_err(|_| file_err(&settings.key_file, "no readable PEM private key"))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| TlsSetupError::Config(e.to_string()))?
    .with_client_cert_verifier(verifier)
    .with_single_cert(chain, key)
    .map_err(|e| TlsSetupError::Config(e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

impl Broker {
    /// Accepts TLS connections on `listener` until shutdown; each handshake runs in its own task.
    pub async fn serve_tls(
        self: Arc<Self>,
        listener: TcpListener,
        acceptor: TlsAcceptor,
        verifier: Arc<DeviceCertVerifier>,
        handshake_timeout: Duration,
    ) {
        let mut shutdown = self.shutdown.clone();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        // Over the per-address or the pre-CONNECT cap: closed at once.
                        let Some(arrival) = self.arrive(peer) else { continue };
                        let _ = stream.set_nodelay(true);
                        let me = Arc::clone(&self);
                        let (acceptor, verifier) = (acceptor.clone(), Arc::clone(&verifier));
                        tokio::spawn(async move {
                            let timeout = handshake_timeout;
                            me.handshake(stream, peer, arrival, acceptor, &verifier, timeout).await;
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "MQTT TLS accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = shutdown.changed() => return,
            }
        }
    }

    async fn handshake(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        arrival: super::Arrival,
        acceptor: TlsAcceptor,
        verifier: &DeviceCertVerifier,
        timeout: Duration,
    ) {
        let tls = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::info!(%peer, error = %e, "TLS handshake refused");
                return;
            }
            Err(_) => {
                tracing::info!(%peer, "TLS handshake timed out");
                return;
            }
        };
        let chain: Vec<CertificateDer<'static>> = tls
            .get_ref()
            .1
            .peer_certificates()
            .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default();
        let identity = if chain.is_empty() {
            None
        } else {
            // The verifier accepted this chain a moment ago; asking again yields the identity
            // (from the snapshot's memo) and catches a revocation that landed in between.
            match verifier.identity(&chain) {
                Ok(identity) => Some(TlsIdentity { identity, chain }),
                Err(r) => {
                    // A resumed TLS session skips the verifier: a certificate revoked since is
                    // caught here, and audited like a refused handshake.
                    tracing::info!(%peer, cause = r.label(), "TLS client refused after handshake");
                    self.gate.record_tls_refusal(chain[0].as_ref(), &r);
                    return;
                }
            }
        };
        self.handle(tls, peer, identity, arrival).await;
    }
}
