//! Device certificates: parsing what a device or broker presents, issuing from a tenant's CA, and
//! sealing CA private keys at rest.
//!
//! Identity from a certificate: the common name is the MQTT client id; the tenant is bound by a
//! URI subject-alternative name `urn:mqgate:tenant:<name>` (mqgate-issued certificates carry it;
//! the organisation attribute repeats it for brokers that only pass the subject DN). A certificate
//! from an external CA without that binding belongs to its CA's tenant.

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// The URI prefix that binds a certificate to a tenant.
pub const TENANT_URI_PREFIX: &str = "urn:mqgate:tenant:";

/// Largest certificate or CRL mqgate reads (a CRL of ~100k entries fits).
pub const MAX_DER_BYTES: usize = 8 * 1024 * 1024;

/// Why certificate material was refused. Messages name the problem, never key material.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CertError {
    /// Not a parsable X.509 certificate (or PEM around one).
    #[error("not a valid X.509 certificate: {0}")]
    Parse(String),
    /// Parsed, but unusable for the purpose (no common name, not a CA, …).
    #[error("{0}")]
    Unusable(String),
    /// Signing or key handling failed.
    #[error("certificate operation failed: {0}")]
    Crypto(String),
}

/// What mqgate needs from a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// SHA-256 of the DER, lowercase hex.
    pub fingerprint: String,
    /// Serial number, lowercase hex without leading zeros.
    pub serial: String,
    /// Subject DN as text (`CN=…, O=…`).
    pub subject: String,
    /// Issuer DN as text.
    pub issuer: String,
    /// DER of the subject name (to match issuers exactly).
    pub subject_raw: Vec<u8>,
    /// DER of the issuer name.
    pub issuer_raw: Vec<u8>,
    /// The subject's common name, if any.
    pub common_name: Option<String>,
    /// The tenant bound by `urn:mqgate:tenant:<name>`, if any.
    pub bound_tenant: Option<String>,
    /// Validity start, Unix seconds.
    pub not_before: i64,
    /// Validity end, Unix seconds.
    pub not_after: i64,
    /// Whether basic constraints mark it a CA.
    pub is_ca: bool,
}

/// SHA-256 fingerprint of DER bytes, lowercase hex.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// Normalises a DER INTEGER's content bytes (a serial) to lowercase hex without leading zeros.
pub fn serial_hex(raw: &[u8]) -> String {
    let start = raw.iter().position(|b| *b != 0).unwrap_or(raw.len());
    let hex = hex::encode(&raw[start..]);
    if hex.is_empty() { "0".into() } else { hex }
}

/// Parses one DER certificate.
pub fn parse(der: &[u8]) -> Result<CertInfo, CertError> {
    if der.len() > MAX_DER_BYTES {
        return Err(CertError::Parse("certificate too large".into()));
    }
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| CertError::Parse(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CertError::Parse(
            "trailing bytes after the certificate".into(),
        ));
    }
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    let mut bound_tenant = None;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name
                && let Some(t) = uri.strip_prefix(TENANT_URI_PREFIX)
            {
                bound_tenant = Some(t.to_owned());
            }
        }
    }
    Ok(CertInfo {
        fingerprint: fingerprint(der),
        serial: serial_hex(cert.raw_serial()),
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        subject_raw: cert.subject().as_raw().to_vec(),
        issuer_raw: cert.issuer().as_raw().to_vec(),
        common_name,
        bound_tenant,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        is_ca: cert.is_ca(),
    })
}

/// Every certificate in `input`: PEM blocks labelled `CERTIFICATE`, or one raw DER certificate.
pub fn read_certs(input: &[u8]) -> Result<Vec<Vec<u8>>, CertError> {
    read_blocks(input, "CERTIFICATE")
}

/// PEM blocks with `label`, or the whole input as DER when it is not PEM.
pub(crate) fn read_blocks(input: &[u8], label: &str) -> Result<Vec<Vec<u8>>, CertError> {
    if input.len() > MAX_DER_BYTES * 2 {
        return Err(CertError::Parse("input too large".into()));
    }
    if !input.trim_ascii_start().starts_with(b"-----BEGIN") {
        return Ok(vec![input.to_vec()]);
    }
    let mut out = Vec::new();
    for pem in x509_parser::pem::Pem::iter_from_buffer(input) {
        let pem = pem.map_err(|e| CertError::Parse(format!("bad PEM: {e}")))?;
        if pem.label == label {
            out.push(pem.contents);
        }
    }
    if out.is_empty() {
        return Err(CertError::Parse(format!(
            "no {label} block in the PEM input"
        )));
    }
    Ok(out)
}

/// Decodes a client certificate as brokers forward it: EMQX `${cert_pem}` and VerneMQ
/// `client_cert` are base64 of the DER; a real PEM block is accepted too.
pub fn decode_forwarded(value: &str) -> Result<Vec<u8>, CertError> {
    let value = value.trim();
    if value.starts_with("-----BEGIN") {
        return read_certs(value.as_bytes())?
            .into_iter()
            .next()
            .ok_or_else(|| CertError::Parse("empty PEM".into()));
    }
    let compact: String = value.split_ascii_whitespace().collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map_err(|_| CertError::Parse("client certificate is neither base64 DER nor PEM".into()))
}

/// DER as a PEM block.
pub fn to_pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn crypto(e: rcgen::Error) -> CertError {
    CertError::Crypto(e.to_string())
}

fn odt(unix: i64) -> Result<time::OffsetDateTime, CertError> {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .map_err(|_| CertError::Unusable("time out of range".into()))
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // no leading zero byte, so the hex form is stable
    SerialNumber::from_slice(&bytes)
}

/// A freshly made certificate with its private key (PKCS#8 PEM).
pub struct Issued {
    /// Certificate DER.
    pub cert_der: Vec<u8>,
    /// Private key, PKCS#8 PEM. Shown once, never stored for device keys.
    pub key_pem: secrecy::SecretString,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued").finish_non_exhaustive()
    }
}

/// Creates a self-signed tenant CA (ECDSA P-256) valid from `now` for `validity_secs`.
pub fn new_ca(tenant: &str, name: &str, now: i64, validity_secs: i64) -> Result<Issued, CertError> {
    let key = KeyPair::generate().map_err(crypto)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("mqgate {tenant} {name}"));
    params
        .distinguished_name
        .push(DnType::OrganizationName, tenant);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial());
    params.not_before = odt(now - 60)?;
    params.not_after = odt(now + validity_secs)?;
    let cert = params.self_signed(&key).map_err(crypto)?;
    Ok(Issued {
        cert_der: cert.der().to_vec(),
        key_pem: key.serialize_pem().into(),
    })
}

/// Loads a CA's signing key and certificate as an rcgen issuer.
pub(crate) fn issuer<'a>(ca_der: &[u8], key_pem: &str) -> Result<Issuer<'a, KeyPair>, CertError> {
    let key = KeyPair::from_pem(key_pem).map_err(crypto)?;
    Issuer::from_ca_cert_der(&CertificateDer::from(ca_der), key).map_err(crypto)
}

/// What a device certificate says.
#[derive(Debug, Clone)]
pub struct DeviceCertSpec<'a> {
    /// Tenant name (bound in the certificate).
    pub tenant: &'a str,
    /// MQTT client id (the common name).
    pub client_id: &'a str,
    /// Validity start, Unix seconds.
    pub not_before: i64,
    /// Validity end, Unix seconds.
    pub not_after: i64,
}

/// Issues a device certificate (ECDSA P-256 key made here) signed by the CA.
pub fn issue_device(
    ca_der: &[u8],
    ca_key_pem: &str,
    spec: &DeviceCertSpec<'_>,
) -> Result<Issued, CertError> {
    let issuer = issuer(ca_der, ca_key_pem)?;
    let key = KeyPair::generate().map_err(crypto)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, spec.client_id);
    params
        .distinguished_name
        .push(DnType::OrganizationName, spec.tenant);
    let uri = format!("{TENANT_URI_PREFIX}{}", spec.tenant);
    params.subject_alt_names =
        vec![SanType::URI(uri.try_into().map_err(|_| {
            CertError::Unusable("tenant name is not URI-safe".into())
        })?)];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = true;
    params.not_before = odt(spec.not_before)?;
    params.not_after = odt(spec.not_after)?;
    let cert = params.signed_by(&key, &issuer).map_err(crypto)?;
    Ok(Issued {
        cert_der: cert.der().to_vec(),
        key_pem: key.serialize_pem().into(),
    })
}

/// Seals CA private keys at rest: ChaCha20-Poly1305 under a key derived from the configured
/// `ca_key_secret` by argon2id (memory-hard, so a stolen database plus a guessable secret is not
/// a cheap offline search) with a random salt per sealed key, and the CA's fingerprint as
/// associated data (a sealed key moved to another CA's row does not open). Keys sealed by the
/// first format (one HMAC of the secret, no salt) still open; [`KeySealer::is_legacy`] tells the
/// caller to seal them again.
pub struct KeySealer {
    secret: secrecy::SecretString,
    legacy: ring::aead::LessSafeKey,
}

impl std::fmt::Debug for KeySealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeySealer")
    }
}

/// `1 || nonce || ciphertext+tag`, key = HMAC-SHA256(secret, label): readable, never written.
const SEAL_V1_HMAC: u8 = 1;
/// `2 || salt || nonce || ciphertext+tag`, key = argon2id(secret, salt).
const SEAL_V2_ARGON2: u8 = 2;
const SALT_LEN: usize = 16;

fn aead_key(bytes: &[u8]) -> Result<ring::aead::LessSafeKey, CertError> {
    let unbound = ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, bytes)
        .map_err(|_| CertError::Crypto("sealing key of the wrong length".into()))?;
    Ok(ring::aead::LessSafeKey::new(unbound))
}

impl KeySealer {
    /// Keeps the configured secret (keys are derived per sealed key, with its salt).
    pub fn new(secret: &str) -> Self {
        use hmac::{KeyInit, Mac};
        let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
            .expect("HMAC takes keys of any length");
        mac.update(b"mqgate ca key sealing v1");
        let derived = mac.finalize().into_bytes();
        let unbound = ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, &derived)
            .expect("32-byte key");
        KeySealer {
            secret: secret.into(),
            legacy: ring::aead::LessSafeKey::new(unbound),
        }
    }

    fn derive(&self, salt: &[u8]) -> Result<ring::aead::LessSafeKey, CertError> {
        use secrecy::ExposeSecret;
        let mut out = [0u8; 32];
        argon2::Argon2::default()
            .hash_password_into(self.secret.expose_secret().as_bytes(), salt, &mut out)
            .map_err(|_| CertError::Crypto("deriving the CA sealing key failed".into()))?;
        aead_key(&out)
    }

    /// Seals `plaintext` in the current format (argon2id with a fresh salt; ~20 ms).
    pub fn seal(&self, aad: &str, plaintext: &[u8]) -> Result<Vec<u8>, CertError> {
        let salt: [u8; SALT_LEN] = rand::random();
        let nonce_bytes: [u8; 12] = rand::random();
        let nonce = ring::aead::Nonce::assume_unique_for_key(nonce_bytes);
        let mut buf = plaintext.to_vec();
        self.derive(&salt)?
            .seal_in_place_append_tag(nonce, ring::aead::Aad::from(aad.as_bytes()), &mut buf)
            .map_err(|_| CertError::Crypto("sealing the CA key failed".into()))?;
        let mut out = Vec::with_capacity(1 + SALT_LEN + 12 + buf.len());
        out.push(SEAL_V2_ARGON2);
        out.extend_from_slice(&salt);
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&buf);
        Ok(out)
    }

    /// Whether `sealed` is in the first (HMAC-derived) format and should be sealed again.
    pub fn is_legacy(sealed: &[u8]) -> bool {
        sealed.first() == Some(&SEAL_V1_HMAC)
    }

    /// Opens what [`KeySealer::seal`] (or the first format) produced with the same secret and `aad`.
    pub fn open(&self, aad: &str, sealed: &[u8]) -> Result<Vec<u8>, CertError> {
        let wrong = || {
            CertError::Crypto(
                "the CA key does not open: wrong ca_key_secret, or the stored key was altered"
                    .into(),
            )
        };
        let (key, rest) = match sealed.split_first() {
            Some((&SEAL_V1_HMAC, rest)) => (None, rest),
            Some((&SEAL_V2_ARGON2, rest)) if rest.len() > SALT_LEN => {
                let (salt, rest) = rest.split_at(SALT_LEN);
                (Some(self.derive(salt)?), rest)
            }
            _ => return Err(wrong()),
        };
        if rest.len() < 12 + 16 {
            return Err(wrong());
        }
        let (nonce, ciphertext) = rest.split_at(12);
        let nonce = ring::aead::Nonce::try_assume_unique_for_key(nonce).map_err(|_| wrong())?;
        let mut buf = ciphertext.to_vec();
        let plain = key
            .as_ref()
            .unwrap_or(&self.legacy)
            .open_in_place(nonce, ring::aead::Aad::from(aad.as_bytes()), &mut buf)
            .map_err(|_| wrong())?;
        Ok(plain.to_vec())
    }

    /// Seals `plaintext` the first way (HMAC-derived key): only to test that such keys still open.
    #[doc(hidden)]
    pub fn seal_legacy(&self, aad: &str, plaintext: &[u8]) -> Vec<u8> {
        let nonce_bytes: [u8; 12] = rand::random();
        let nonce = ring::aead::Nonce::assume_unique_for_key(nonce_bytes);
        let mut buf = plaintext.to_vec();
        let _ = self.legacy.seal_in_place_append_tag(
            nonce,
            ring::aead::Aad::from(aad.as_bytes()),
            &mut buf,
        );
        let mut out = vec![SEAL_V1_HMAC];
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&buf);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn issued_device_certificates_carry_client_id_and_tenant() {
        let ca = new_ca("acme", "devices", NOW, 86400 * 365).unwrap();
        let ca_info = parse(&ca.cert_der).unwrap();
        assert!(ca_info.is_ca);
        use secrecy::ExposeSecret;
        let spec = DeviceCertSpec {
            tenant: "acme",
            client_id: "sensor-1",
            not_before: NOW,
            not_after: NOW + 3600,
        };
        let dev = issue_device(&ca.cert_der, ca.key_pem.expose_secret(), &spec).unwrap();
        let info = parse(&dev.cert_der).unwrap();
        assert_eq!(info.common_name.as_deref(), Some("sensor-1"));
        assert_eq!(info.bound_tenant.as_deref(), Some("acme"));
        assert_eq!(info.issuer_raw, ca_info.subject_raw);
        assert_eq!((info.not_before, info.not_after), (NOW, NOW + 3600));
        assert!(!info.is_ca);
        assert_eq!(info.fingerprint, fingerprint(&dev.cert_der));
        let pem = to_pem("CERTIFICATE", &dev.cert_der);
        assert_eq!(
            read_certs(pem.as_bytes()).unwrap(),
            vec![dev.cert_der.clone()]
        );
        let b64 = base64::engine::general_purpose::STANDARD.encode(&dev.cert_der);
        assert_eq!(decode_forwarded(&b64).unwrap(), dev.cert_der);
        assert_eq!(decode_forwarded(&pem).unwrap(), dev.cert_der);
    }

    #[test]
    fn sealed_keys_open_only_with_the_same_secret_and_ca() {
        let a = KeySealer::new("a-secret-that-is-long-enough-0123456789");
        let sealed = a.seal("fp1", b"private key").unwrap();
        assert!(!KeySealer::is_legacy(&sealed));
        let old = a.seal_legacy("fp1", b"private key");
        assert!(KeySealer::is_legacy(&old));
        assert_eq!(a.open("fp1", &old).unwrap(), b"private key");
        assert!(
            KeySealer::new("another-secret-that-is-long-enough-0123")
                .open("fp1", &old)
                .is_err()
        );
        assert_eq!(a.open("fp1", &sealed).unwrap(), b"private key");
        assert!(a.open("fp2", &sealed).is_err());
        let b = KeySealer::new("another-secret-that-is-long-enough-0123");
        assert!(b.open("fp1", &sealed).is_err());
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(a.open("fp1", &tampered).is_err());
    }

    #[test]
    fn garbage_is_a_parse_error_not_a_panic() {
        assert!(matches!(parse(b"nope"), Err(CertError::Parse(_))));
        assert!(decode_forwarded("%%%").is_err());
        assert!(
            read_certs(b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n").is_err()
        );
    }

    proptest::proptest! {
        #[test]
        fn no_input_panics_the_parsers(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2048), flip in 0usize..4096) {
            let _ = parse(&bytes);
            let _ = read_certs(&bytes);
            let _ = decode_forwarded(&String::from_utf8_lossy(&bytes));
            // A real certificate with one byte changed.
            let mut der = sample_der().to_vec();
            let i = flip % der.len();
            der[i] ^= bytes.first().copied().unwrap_or(1) | 1;
            let _ = parse(&der);
        }
    }

    fn sample_der() -> &'static [u8] {
        static DER: std::sync::LazyLock<Vec<u8>> =
            std::sync::LazyLock::new(|| new_ca("t", "c", NOW, 60).unwrap().cert_der);
        &DER
    }

    #[test]
    fn serials_normalise() {
        assert_eq!(serial_hex(&[0, 0x12, 0xab]), "12ab");
        assert_eq!(serial_hex(&[0]), "0");
    }
}
