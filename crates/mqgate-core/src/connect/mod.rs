//! The CONNECT rule, whole: given what the gate gathered (a lockout in force, the device or its
//! absence, the username, what the trust decision made of a client certificate, what became of a
//! presented secret, the policy), [`decide_connect`] says allow / deny / ignore and why.
//!
//! The rule, in order (the first that applies decides):
//! 1. a lockout in force (client id, address, or no slow-verify slot left): deny, `locked_out`;
//! 2. unknown client id: deny, or ignore when the policy says so; disabled device: deny; a bound
//!    username not presented: deny; neither a secret nor a certificate presented: deny
//!    (`no_secret`);
//! 3. a certificate presented: refused by trust → deny with its rejection; for another tenant or
//!    another client id → deny; with a secret as well → **both must hold** (the secret decides,
//!    as in 4); alone → allow (`certificate`), except names only (the broker verified it) when
//!    names-only trust is off;
//! 4. a secret alone: it must match an active credential of the device (`credential`), else deny
//!    (`bad_secret`, `credential_expired`; `interrupted` when the verifier could not finish).
//!
//! The gate gathers lazily (no registry read for a locked client id, no hashing for a device the
//! rule refuses anyway): [`password_verify_ahead`] says when to reserve a slow-verify slot, and
//! [`secret_to_verify`] whether the decision hinges on the secret, and against which device.

use crate::cert::{CertIdentity, CertRejection};
use crate::secret::VerifiedSecret;
use crate::vocab::Locked;
use crate::{Cause, Decision, DeviceView, UnknownClient, unknown_client};

/// The gate's CONNECT policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectPolicy {
    /// What to answer for a client id the registry does not know.
    pub unknown: UnknownClient,
    /// Allow on a certificate's names alone (the broker verified the certificate): the operator's
    /// statement that every CA the broker trusts is one mqgate would trust for these devices.
    pub trust_cert_names: bool,
}

/// What became of the secret (password or device token) a client presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretOutcome {
    /// None was presented (an empty one counts as none).
    Absent,
    /// One was presented and not verified: it proves nothing.
    Unverified,
    /// It was verified: the credential it matched, if any.
    Verified(Option<VerifiedSecret>),
    /// The verifier could not finish (shutdown, or its queue's timeout).
    Interrupted,
}

impl SecretOutcome {
    /// Whether a secret was presented at all.
    pub fn is_presented(&self) -> bool {
        !matches!(self, SecretOutcome::Absent)
    }
}

/// A client certificate a client presented, and what the trust decision made of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertOutcome {
    /// The device it identifies, or why it identifies none.
    pub identity: Result<CertIdentity, CertRejection>,
    /// Only its names were presented (EMQX `${cert_common_name}`): the broker verified it, not
    /// mqgate.
    pub names_only: bool,
}

/// Everything the CONNECT rule reads, as the gate gathered it.
#[derive(Debug, Clone)]
pub struct ConnectFacts<'a> {
    /// A lockout in force for this client id or address, or the refusal of a slow-verify slot
    /// (then nothing else needs gathering).
    pub locked: Option<Locked>,
    /// The device, `None` when the registry does not know the client id.
    pub device: Option<&'a DeviceView>,
    /// The MQTT username presented.
    pub username: Option<&'a str>,
    /// The client certificate presented, if any.
    pub cert: Option<CertOutcome>,
    /// The secret presented, if any, and its verification.
    pub secret: SecretOutcome,
    /// The policy.
    pub policy: ConnectPolicy,
    /// Unix seconds (credential expiry).
    pub now: i64,
}

impl<'a> ConnectFacts<'a> {
    /// Nothing gathered yet: no lockout, a client id the registry does not know, nothing
    /// presented.
    pub fn new(policy: ConnectPolicy, now: i64) -> Self {
        ConnectFacts {
            locked: None,
            device: None,
            username: None,
            cert: None,
            secret: SecretOutcome::Absent,
            policy,
            now,
        }
    }
}

/// Decides a CONNECT (the rule in the module's documentation). A secret the decision hinges on
/// that was never verified ([`SecretOutcome::Unverified`]) proves nothing: deny, `bad_secret`.
pub fn decide_connect(f: &ConnectFacts<'_>) -> Decision {
    match step(f) {
        Step::Decided(d) => d,
        Step::Secret(dev) => match &f.secret {
            SecretOutcome::Verified(proof) => decide_by_secret(dev, proof.as_ref(), f.now),
            SecretOutcome::Interrupted => Decision::deny(Cause::Interrupted),
            SecretOutcome::Unverified | SecretOutcome::Absent => Decision::deny(Cause::BadSecret),
        },
    }
}

/// The device whose credentials the presented secret must be verified against, when the
/// decision hinges on a secret not verified yet (`None`: decide without verifying).
pub fn secret_to_verify<'a>(f: &ConnectFacts<'a>) -> Option<&'a DeviceView> {
    if f.secret != SecretOutcome::Unverified {
        return None;
    }
    match step(f) {
        Step::Secret(dev) => Some(dev),
        Step::Decided(_) => None,
    }
}

/// Whether a slow (password) verify may follow: no lockout, the checks before any secret pass, a
/// secret was presented and the device has active password credentials. The gate takes the
/// failure slot first (whatever the certificate says), so concurrent attempts cannot all reach
/// the hash before the first failure is counted.
pub fn password_verify_ahead(f: &ConnectFacts<'_>) -> bool {
    f.locked.is_none()
        && f.secret.is_presented()
        && precheck_connect(f.device, f.username, true, f.policy.unknown)
            .is_ok_and(|dev| !dev.password_candidates(f.now).is_empty())
}

/// Where the rule stands before the secret's verification is read.
enum Step<'a> {
    /// Decided without the secret.
    Decided(Decision),
    /// The secret decides, against this device.
    Secret(&'a DeviceView),
}

fn step<'a>(f: &ConnectFacts<'a>) -> Step<'a> {
    if let Some(locked) = &f.locked {
        return Step::Decided(Decision::deny(Cause::LockedOut(locked.clone())));
    }
    let presented = f.secret.is_presented() || f.cert.is_some();
    let dev = match precheck_connect(f.device, f.username, presented, f.policy.unknown) {
        Ok(dev) => dev,
        Err(d) => return Step::Decided(d),
    };
    let Some(cert) = &f.cert else {
        return if f.secret.is_presented() {
            Step::Secret(dev)
        } else {
            Step::Decided(Decision::deny(Cause::NoSecret))
        };
    };
    let id = match &cert.identity {
        Ok(id) => id,
        Err(rejected) => {
            return Step::Decided(Decision::deny(Cause::CertRejected(rejected.clone())));
        }
    };
    if let Err(d) = check_cert_identity(dev, id) {
        return Step::Decided(d);
    }
    if f.secret.is_presented() {
        // Certificate plus secret: both must hold.
        Step::Secret(dev)
    } else if cert.names_only && !f.policy.trust_cert_names {
        // Names alone prove nothing about the issuer: any CA in the broker's bundle could have
        // signed them.
        Step::Decided(Decision::deny(Cause::CertRejected(
            CertRejection::NamesOnly,
        )))
    } else {
        Step::Decided(allow_by_certificate(id, cert.names_only))
    }
}

/// The checks a CONNECT passes before any secret is verified (so a disabled or unknown device
/// costs no hashing). `Err` carries the final decision.
pub(crate) fn precheck_connect<'d>(
    device: Option<&'d DeviceView>,
    username: Option<&str>,
    has_secret: bool,
    unknown: UnknownClient,
) -> Result<&'d DeviceView, Decision> {
    let Some(device) = device else {
        return Err(unknown_client(unknown));
    };
    if !device.enabled {
        return Err(Decision::deny(Cause::DeviceDisabled));
    }
    if let Some(bound) = &device.username
        && username != Some(&**bound)
    {
        return Err(Decision::deny(Cause::UsernameMismatch));
    }
    if !has_secret {
        return Err(Decision::deny(Cause::NoSecret));
    }
    Ok(device)
}

/// Decides a CONNECT on its secret once it was verified: `proof` is the credential that matched,
/// if any.
pub(crate) fn decide_by_secret(
    device: &DeviceView,
    proof: Option<&VerifiedSecret>,
    now: i64,
) -> Decision {
    let Some(proof) = proof else {
        return Decision::deny(Cause::BadSecret);
    };
    match device.credential(proof.credential_id()) {
        Some(c) if c.is_active(now) => Decision::allow(Cause::Credential {
            credential_id: c.id,
            kind: c.kind,
            expires_at: c.expires_at,
        }),
        Some(c) => Decision::deny(Cause::CredentialExpired {
            credential_id: c.id,
        }),
        None => Decision::deny(Cause::BadSecret),
    }
}

/// Checks that a certificate identity belongs to the connecting `device`: same tenant, same
/// client id. `Err` carries the deny.
pub(crate) fn check_cert_identity(device: &DeviceView, id: &CertIdentity) -> Result<(), Decision> {
    if id.tenant() != device.tenant.id {
        return Err(Decision::deny(Cause::CertRejected(
            CertRejection::WrongTenant,
        )));
    }
    if id.client_id() != device.client_id.as_str() {
        return Err(Decision::deny(Cause::CertRejected(CertRejection::Mismatch)));
    }
    Ok(())
}

/// The allow for a device identified by certificate alone.
pub(crate) fn allow_by_certificate(id: &CertIdentity, names_only: bool) -> Decision {
    Decision::allow(Cause::Certificate {
        fingerprint: id.fingerprint().to_string(),
        not_after: id.not_after(),
        names_only,
    })
}

#[cfg(test)]
mod tests;
