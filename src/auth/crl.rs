//! Certificate revocation lists: reading one (signature checked against its CA before any entry
//! is believed) and signing one for an internal CA.

use std::collections::HashSet;

use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

use super::cert::{self, CertError, MAX_DER_BYTES, serial_hex};

/// Why a CRL was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CrlError {
    /// Not a parsable CRL.
    #[error("not a valid CRL: {0}")]
    Parse(String),
    /// Issued by another name than the CA's subject.
    #[error("CRL issuer is not this CA")]
    WrongIssuer,
    /// The signature does not verify with the CA's key.
    #[error("CRL signature does not verify against the CA")]
    BadSignature,
    /// No next-update time: mqgate cannot tell when it goes stale.
    #[error("CRL has no next-update time")]
    NoNextUpdate,
    /// Its next-update time has passed.
    #[error("CRL is past its next-update time ({next_update}, Unix seconds)")]
    Stale {
        /// When it should have been replaced.
        next_update: i64,
    },
    /// Not strictly newer than the CRL already held, and not the same bytes (a replay could
    /// un-revoke a certificate).
    #[error(
        "CRL (number {got}, thisUpdate {got_this_update}) is not newer than the current one (number {have}, thisUpdate {have_this_update})"
    )]
    Rollback {
        /// Number offered (0: none).
        got: u64,
        /// Its thisUpdate, Unix seconds.
        got_this_update: i64,
        /// Number held (0: none).
        have: u64,
        /// Its thisUpdate, Unix seconds.
        have_this_update: i64,
    },
    /// The CA certificate itself is unusable.
    #[error(transparent)]
    Cert(#[from] CertError),
}

/// A CRL whose signature verified against its CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCrl {
    /// DER, as received.
    pub der: Vec<u8>,
    /// thisUpdate, Unix seconds.
    pub this_update: i64,
    /// nextUpdate, Unix seconds.
    pub next_update: i64,
    /// CRL number (0 when absent or larger than 64 bits).
    pub number: u64,
    /// Revoked serials (normalised hex, see [`cert::serial_hex`]).
    pub revoked: HashSet<String>,
}

impl VerifiedCrl {
    /// Whether it is past next-update at `now`.
    pub fn is_stale(&self, now: i64) -> bool {
        now >= self.next_update
    }
}

/// Reads one CRL (PEM `X509 CRL` block or DER) and checks it against the CA certificate `ca_der`:
/// issuer name, signature, a next-update time. Staleness is the caller's call ([`check_fresh`]).
pub fn verify(input: &[u8], ca_der: &[u8]) -> Result<VerifiedCrl, CrlError> {
    let der = cert::read_blocks(input, "X509 CRL")
        .map_err(|e| CrlError::Parse(e.to_string()))?
        .into_iter()
        .next()
        .ok_or_else(|| CrlError::Parse("empty input".into()))?;
    if der.len() > MAX_DER_BYTES {
        return Err(CrlError::Parse("CRL too large".into()));
    }
    let (_, ca) = X509Certificate::from_der(ca_der).map_err(|e| CertError::Parse(e.to_string()))?;
    let (rest, crl) =
        CertificateRevocationList::from_der(&der).map_err(|e| CrlError::Parse(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CrlError::Parse("trailing bytes after the CRL".into()));
    }
    if crl.issuer().as_raw() != ca.subject().as_raw() {
        return Err(CrlError::WrongIssuer);
    }
    crl.verify_signature(ca.public_key())
        .map_err(|_| CrlError::BadSignature)?;
    let next_update = crl.next_update().ok_or(CrlError::NoNextUpdate)?.timestamp();
    let number = crl
        .crl_number()
        .and_then(|n| u64::try_from(n.clone()).ok())
        .unwrap_or(0);
    let revoked = crl
        .iter_revoked_certificates()
        .map(|r| serial_hex(r.raw_serial()))
        .collect();
    let this_update = crl.last_update().timestamp();
    Ok(VerifiedCrl {
        der: der.clone(),
        this_update,
        next_update,
        number,
        revoked,
    })
}

/// Refuses a CRL past its next-update, or one that does not replace the one held (`have`):
/// accepted only when byte-identical to it (a re-fetch) or strictly newer, by CRL number when
/// both carry one, else by thisUpdate. An equal number or time is refused: an on-path attacker
/// could otherwise put back an older CRL still inside its validity and un-revoke a certificate.
pub fn check_fresh(
    crl: &VerifiedCrl,
    now: i64,
    have: Option<&VerifiedCrl>,
) -> Result<(), CrlError> {
    if crl.is_stale(now) {
        return Err(CrlError::Stale {
            next_update: crl.next_update,
        });
    }
    let Some(have) = have.filter(|h| h.der != crl.der) else {
        return Ok(());
    };
    let newer = if crl.number > 0 && have.number > 0 {
        crl.number > have.number
    } else {
        crl.this_update > have.this_update
    };
    if newer {
        Ok(())
    } else {
        Err(CrlError::Rollback {
            got: crl.number,
            got_this_update: crl.this_update,
            have: have.number,
            have_this_update: have.this_update,
        })
    }
}

/// One revoked certificate for [`sign`].
#[derive(Debug, Clone)]
pub struct Revoked {
    /// Serial, normalised hex.
    pub serial: String,
    /// When it was revoked, Unix seconds.
    pub at: i64,
}

/// Signs a CRL for the CA (`ca_der` + its key) listing `revoked`.
pub fn sign(
    ca_der: &[u8],
    ca_key_pem: &str,
    revoked: &[Revoked],
    number: u64,
    this_update: i64,
    next_update: i64,
) -> Result<Vec<u8>, CrlError> {
    let issuer = cert::issuer(ca_der, ca_key_pem)?;
    let time = |t: i64| {
        time::OffsetDateTime::from_unix_timestamp(t)
            .map_err(|_| CrlError::Parse("time out of range".into()))
    };
    let mut revoked_certs = Vec::with_capacity(revoked.len());
    for r in revoked {
        let bytes = hex::decode(if r.serial.len() % 2 == 1 {
            format!("0{}", r.serial)
        } else {
            r.serial.clone()
        })
        .map_err(|_| CrlError::Parse(format!("stored serial {:?} is not hex", r.serial)))?;
        revoked_certs.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(&bytes),
            revocation_time: time(r.at)?,
            reason_code: None,
            invalidity_date: None,
        });
    }
    let params = CertificateRevocationListParams {
        this_update: time(this_update)?,
        next_update: time(next_update)?,
        crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let crl = params
        .signed_by(&issuer)
        .map_err(|e| CrlError::Cert(CertError::Crypto(e.to_string())))?;
    Ok(crl.der().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::cert::{DeviceCertSpec, issue_device, new_ca, parse};
    use secrecy::ExposeSecret;

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn signed_crls_verify_against_their_ca_only() {
        let ca = new_ca("acme", "devices", NOW, 86400).unwrap();
        let other = new_ca("acme", "other", NOW, 86400).unwrap();
        let dev = issue_device(
            &ca.cert_der,
            ca.key_pem.expose_secret(),
            &DeviceCertSpec {
                tenant: "acme",
                client_id: "d1",
                not_before: NOW,
                not_after: NOW + 60,
            },
        )
        .unwrap();
        let serial = parse(&dev.cert_der).unwrap().serial;
        let revoked = [Revoked {
            serial: serial.clone(),
            at: NOW,
        }];
        let der = sign(
            &ca.cert_der,
            ca.key_pem.expose_secret(),
            &revoked,
            7,
            NOW,
            NOW + 3600,
        )
        .unwrap();
        let crl = verify(&der, &ca.cert_der).unwrap();
        assert!(crl.revoked.contains(&serial));
        assert_eq!((crl.number, crl.next_update), (7, NOW + 3600));
        let pem = cert::to_pem("X509 CRL", &der);
        assert_eq!(verify(pem.as_bytes(), &ca.cert_der).unwrap(), crl);
        assert_eq!(verify(&der, &other.cert_der), Err(CrlError::WrongIssuer));
        assert!(check_fresh(&crl, NOW, None).is_ok());
        assert!(
            check_fresh(&crl, NOW, Some(&crl)).is_ok(),
            "the same bytes again"
        );
        assert!(matches!(
            check_fresh(&crl, NOW + 3600, None),
            Err(CrlError::Stale { .. })
        ));
        let key = ca.key_pem.expose_secret();
        let signed = |number, this_update| {
            let der = sign(&ca.cert_der, key, &[], number, this_update, NOW + 3600).unwrap();
            verify(&der, &ca.cert_der).unwrap()
        };
        for (number, this_update, ok) in [
            (8, NOW - 10, true),
            (7, NOW + 10, false),
            (6, NOW + 10, false),
            (0, NOW, false),
            (0, NOW + 1, true),
        ] {
            let offered = signed(number, this_update);
            assert_eq!(
                check_fresh(&offered, NOW, Some(&crl)).is_ok(),
                ok,
                "#{number} at {this_update} after #7 at {NOW}"
            );
        }

        // The same issuer name but another key: the signature gives it away.
        let mut forged = der.clone();
        let n = forged.len();
        forged[n - 5] ^= 0x55;
        assert!(matches!(
            verify(&forged, &ca.cert_der),
            Err(CrlError::BadSignature | CrlError::Parse(_))
        ));
    }

    #[test]
    fn garbage_is_an_error() {
        let ca = new_ca("acme", "devices", NOW, 86400).unwrap();
        assert!(matches!(
            verify(b"junk", &ca.cert_der),
            Err(CrlError::Parse(_))
        ));
        assert!(verify(&[], &ca.cert_der).is_err());
    }
}
