//! Whether a live session is still admitted after the registry changed.

use super::{Cause, Decision, DeviceView};
use crate::cert::CertRejection;

/// Re-decides an admitted session: the device must still exist and be enabled, the credential
/// it connected with (when it connected with one) must still be there and active at `now`, and
/// a certificate it presented must still be trusted (`certificate`, asked only when all else
/// holds: revocation lists and CA removals; `Ok` for a session without one).
pub fn decide_session(
    device: Option<&DeviceView>,
    credential_id: Option<i64>,
    now: i64,
    certificate: impl FnOnce() -> Result<(), CertRejection>,
) -> Decision {
    let d = decide_device_session(device, credential_id, now);
    if !d.is_allow() {
        return d;
    }
    match certificate() {
        Ok(()) => d,
        Err(rejected) => Decision::deny(Cause::CertRejected(rejected)),
    }
}

fn decide_device_session(
    device: Option<&DeviceView>,
    credential_id: Option<i64>,
    now: i64,
) -> Decision {
    let Some(device) = device else {
        return Decision::deny(Cause::UnknownClient);
    };
    if !device.enabled {
        return Decision::deny(Cause::DeviceDisabled);
    }
    let Some(id) = credential_id else {
        // Admitted without a stored credential (a TLS identity): the device's state decides.
        return Decision::allow(Cause::DeviceStands);
    };
    match device.credentials.iter().find(|c| c.id == id) {
        Some(c) if c.is_active(now) => Decision::allow(Cause::Credential {
            credential_id: c.id,
            kind: c.kind,
            expires_at: c.expires_at,
        }),
        _ => Decision::deny(Cause::CredentialExpired { credential_id: id }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CredentialView;
    use crate::vocab::{CredentialKind, TenantId};

    fn device(enabled: bool, expires_at: Option<i64>) -> DeviceView {
        let cred = CredentialView {
            id: 7,
            kind: CredentialKind::Token,
            digest: crate::StoredDigest::Text("".into()),
            expires_at,
        };
        DeviceView::new(
            TenantId(1),
            "t",
            crate::ids::ClientId::parse("c").unwrap(),
            None,
            enabled,
            vec![cred],
            &[],
        )
    }

    fn trusted() -> Result<(), CertRejection> {
        Ok(())
    }

    #[test]
    fn a_revoked_certificate_ends_a_session_and_is_asked_only_when_the_rest_holds() {
        let revoked = || Err(CertRejection::Revoked);
        let d = decide_session(Some(&device(true, None)), None, 100, revoked);
        assert_eq!(
            d,
            Decision::deny(Cause::CertRejected(CertRejection::Revoked))
        );
        let asked = std::cell::Cell::new(false);
        let off = decide_session(Some(&device(false, None)), None, 100, || {
            asked.set(true);
            Ok(())
        });
        assert_eq!(off.cause, Cause::DeviceDisabled);
        assert!(
            !asked.get(),
            "the certificate is not checked for a device that is gone"
        );
    }

    #[test]
    fn a_session_stays_while_device_and_credential_hold() {
        assert!(decide_session(Some(&device(true, None)), Some(7), 100, trusted).is_allow());
    }

    #[test]
    fn a_session_without_a_credential_stands_on_the_device_alone() {
        let d = decide_session(Some(&device(true, None)), None, 100, trusted);
        assert_eq!(d, Decision::allow(Cause::DeviceStands));
        let off = decide_session(Some(&device(false, None)), None, 100, trusted);
        assert_eq!(off.cause, Cause::DeviceDisabled);
    }

    #[test]
    fn removal_disabling_and_revocation_end_a_session() {
        assert_eq!(
            decide_session(None, Some(7), 100, trusted).cause,
            Cause::UnknownClient
        );
        assert_eq!(
            decide_session(Some(&device(false, None)), Some(7), 100, trusted).cause,
            Cause::DeviceDisabled
        );
        let revoked = decide_session(Some(&device(true, Some(100))), Some(7), 100, trusted);
        assert_eq!(revoked.cause, Cause::CredentialExpired { credential_id: 7 });
        let gone = decide_session(Some(&device(true, None)), Some(8), 100, trusted);
        assert!(!gone.is_allow());
    }
}
