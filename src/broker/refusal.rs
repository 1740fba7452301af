//! How a refused CONNECT is answered: the gate's cause mapped to a CONNACK code each MQTT version
//! has. 3.1.1 has five refusal codes; 5.0 has more precise reason codes.
//!
//! | refusal | 3.1.1 | 5.0 |
//! |---|---|---|
//! | unknown client, disabled device, wrong/missing/expired secret, username mismatch | 4 bad username or password | 0x86 |
//! | will topic not allowed, TLS identity mismatch | 5 not authorized | 0x87 |
//! | client id locked out after failed attempts (only known client ids are: so it looks like a bad secret) | 4 bad username or password | 0x86 |
//! | address locked out after failed attempts | 5 not authorized | 0x8A banned |
//! | too many connections (per address, or the broker's limit) | 3 server unavailable | 0x97 quota exceeded |
//! | registry unavailable, verification interrupted, router refused | 3 server unavailable | 0x88 server unavailable |
//! | client id the registry would refuse (empty, over 256 bytes, `+ # / $`, control characters) | 2 identifier rejected | 0x85 |
//! | enhanced authentication (5.0 AUTH method) | 5 not authorized | 0x8C bad authentication method |
//! | 5.0 Receive Maximum or Maximum Packet Size of 0 (MQTT-3.1.2-24 / §3.1.2.11.4: a protocol error) | — | 0x82 protocol error |

use rumqttd::protocol::ConnectReturnCode as Code;

use super::codec::Version;
use crate::core::{Cause, Decision};
use crate::limit::lockout::Locked;

/// Why mqgate refuses a CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The gate said no (or "ignore", which the embedded broker has nobody to pass to).
    Gate(Cause),
    /// The will's topic is not one the device may publish to.
    WillNotAllowed,
    /// A verified TLS identity names another client id.
    IdentityMismatch,
    /// Too many connections from this address, or in all.
    TooManyConnections,
    /// The routing engine did not take the connection.
    Unavailable,
    /// Empty or router-invalid client id.
    BadClientId,
    /// 5.0 enhanced authentication, which mqgate does not offer.
    AuthMethod,
    /// A 5.0 CONNECT property the specification calls a protocol error (Receive Maximum or
    /// Maximum Packet Size of 0).
    ProtocolError,
}

impl Refusal {
    /// The refusal for a non-allow decision.
    pub fn from_decision(d: &Decision) -> Self {
        Refusal::Gate(d.cause.clone())
    }

    /// A short label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Gate(c) => c.label(),
            Refusal::WillNotAllowed => "will_not_allowed",
            Refusal::IdentityMismatch => "identity_mismatch",
            Refusal::TooManyConnections => "too_many_connections",
            Refusal::Unavailable => "unavailable",
            Refusal::BadClientId => "bad_client_id",
            Refusal::AuthMethod => "auth_method",
            Refusal::ProtocolError => "protocol_error",
        }
    }

    /// The CONNACK code for `version` (only codes that version's writer knows).
    pub fn code(&self, version: Version) -> Code {
        use Version::{V4, V5};
        match (self, version) {
            (Refusal::Gate(c), _) if is_credential_failure(c) => Code::BadUserNamePassword,
            (Refusal::Gate(Cause::LockedOut(_)), V5) => Code::Banned,
            (Refusal::Gate(Cause::StoreUnavailable | Cause::Interrupted), V4) => {
                Code::ServiceUnavailable
            }
            (Refusal::Gate(Cause::StoreUnavailable | Cause::Interrupted), V5) => {
                Code::ServerUnavailable
            }
            (Refusal::TooManyConnections | Refusal::Unavailable, V4) => Code::ServiceUnavailable,
            (Refusal::TooManyConnections, V5) => Code::QuotaExceeded,
            (Refusal::Unavailable, V5) => Code::ServerUnavailable,
            (Refusal::BadClientId, _) => Code::ClientIdentifierNotValid,
            (Refusal::AuthMethod, V5) => Code::BadAuthenticationMethod,
            (Refusal::ProtocolError, V5) => Code::ProtocolError,
            _ => Code::NotAuthorized,
        }
    }
}

/// One code for every outcome that would tell a prober whether a client id exists (unknown,
/// disabled, wrong secret, and a client id's lockout or full failure window, which only known
/// client ids have): the audit and the log keep the real cause.
fn is_credential_failure(c: &Cause) -> bool {
    matches!(
        c,
        Cause::UnknownClient
            | Cause::DeviceDisabled
            | Cause::UsernameMismatch
            | Cause::NoSecret
            | Cause::BadSecret
            | Cause::CredentialExpired { .. }
            | Cause::LockedOut(Locked::ClientId { .. } | Locked::Busy { of: "client_id" })
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_failures_are_bad_username_or_password_in_both_versions() {
        for v in [Version::V4, Version::V5] {
            assert_eq!(
                Refusal::Gate(Cause::BadSecret).code(v),
                Code::BadUserNamePassword
            );
            assert_eq!(
                Refusal::Gate(Cause::UnknownClient).code(v),
                Code::BadUserNamePassword
            );
        }
    }

    #[test]
    fn authorization_refusals_are_not_authorized_and_lockouts_banned_in_5() {
        assert_eq!(
            Refusal::Gate(Cause::DeviceDisabled).code(Version::V4),
            Code::BadUserNamePassword,
            "disabled looks like unknown"
        );
        assert_eq!(
            Refusal::WillNotAllowed.code(Version::V5),
            Code::NotAuthorized
        );
        let locked = Refusal::Gate(Cause::LockedOut(Locked::Address { until_ms: 1 }));
        assert_eq!(locked.code(Version::V4), Code::NotAuthorized);
        assert_eq!(locked.code(Version::V5), Code::Banned);
        // Only known client ids are locked out: their lockout looks like a bad secret.
        for locked in [
            Locked::ClientId { until_ms: 1 },
            Locked::Busy { of: "client_id" },
        ] {
            let r = Refusal::Gate(Cause::LockedOut(locked));
            assert_eq!(r.code(Version::V4), Code::BadUserNamePassword);
            assert_eq!(r.code(Version::V5), Code::BadUserNamePassword);
        }
        assert_eq!(
            Refusal::TooManyConnections.code(Version::V5),
            Code::QuotaExceeded
        );
        assert_eq!(
            Refusal::TooManyConnections.code(Version::V4),
            Code::ServiceUnavailable
        );
    }
}
