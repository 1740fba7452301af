//! The rustls client-certificate verifier of the mTLS listener: the handshake asks the trust in
//! force, so a revocation applies to the next handshake.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName};

use super::{CertIdentity, CertRejection, TrustStore, snapshot::provider};
use crate::clock::Clock;

/// The rustls client-certificate verifier for mqgate's mTLS listener: a handshake completes only
/// for a certificate [`TrustSnapshot::identify`](super::TrustSnapshot::identify) accepts at that moment (the snapshot in force,
/// so a CRL or revocation change applies to the next handshake without a restart).
pub struct DeviceCertVerifier {
    trust: Arc<TrustStore>,
    clock: Clock,
    algorithms: WebPkiSupportedAlgorithms,
    mandatory: bool,
    on_reject: Option<RejectHook>,
}

/// Called with the end-entity certificate and the reason whenever a handshake is refused (the
/// server records it in the audit trail).
pub type RejectHook = Arc<dyn Fn(&[u8], &CertRejection) + Send + Sync>;

impl DeviceCertVerifier {
    /// A verifier over `trust`, reading time from `clock`.
    pub fn new(trust: Arc<TrustStore>, clock: Clock) -> Self {
        DeviceCertVerifier {
            trust,
            clock,
            algorithms: provider().signature_verification_algorithms,
            mandatory: true,
            on_reject: None,
        }
    }

    /// Whether a client must present a certificate (default: yes). Without one, the connection
    /// carries no certificate identity and CONNECT must authenticate with a secret.
    pub fn mandatory(mut self, mandatory: bool) -> Self {
        self.mandatory = mandatory;
        self
    }

    /// Calls `hook` for every refused certificate.
    pub fn on_reject(mut self, hook: RejectHook) -> Self {
        self.on_reject = Some(hook);
        self
    }

    /// The identity of a connection's verified peer chain (`ServerConnection::peer_certificates`).
    pub fn identity(&self, chain: &[CertificateDer<'_>]) -> Result<CertIdentity, CertRejection> {
        let (ee, rest) = chain
            .split_first()
            .ok_or_else(|| CertRejection::Invalid("no client certificate".into()))?;
        self.trust.current().identify(ee, rest, self.clock.now())
    }
}

impl std::fmt::Debug for DeviceCertVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceCertVerifier")
            .field("mandatory", &self.mandatory)
            .finish_non_exhaustive()
    }
}

impl ClientCertVerifier for DeviceCertVerifier {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints would go stale with the snapshot; clients send their certificate without them.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self
            .trust
            .current()
            .identify(end_entity, intermediates, self.clock.now())
        {
            Ok(_) => Ok(ClientCertVerified::assertion()),
            Err(rejection) => {
                tracing::info!(target: "mqgate::audit", event = "tls_client_refused", cause = rejection.label(), reason = %rejection.explain());
                if let Some(hook) = &self.on_reject {
                    hook(end_entity.as_ref(), &rejection);
                }
                Err(to_rustls(&rejection))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The TLS alert a refusal sends (the core's [`CertRejection`] knows nothing of rustls).
fn to_rustls(rejection: &CertRejection) -> rustls::Error {
    rustls::Error::InvalidCertificate(match rejection {
        CertRejection::Invalid(_) => CertificateError::BadEncoding,
        CertRejection::Untrusted => CertificateError::UnknownIssuer,
        CertRejection::Expired => CertificateError::Expired,
        CertRejection::NotYetValid => CertificateError::NotValidYet,
        CertRejection::Revoked => CertificateError::Revoked,
        CertRejection::CrlUnavailable => CertificateError::UnknownRevocationStatus,
        CertRejection::WrongTenant
        | CertRejection::Mismatch
        | CertRejection::Unknown
        | CertRejection::NamesOnly => CertificateError::ApplicationVerificationFailure,
    })
}
