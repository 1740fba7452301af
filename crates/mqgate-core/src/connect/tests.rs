//! The CONNECT rule, case by case, without a server: each test builds the facts the gate would
//! gather and reads the decision (verdict and cause).

use secrecy::{ExposeSecret, SecretString};

use super::*;
use crate::connect::{
    allow_by_certificate, check_cert_identity, decide_by_secret, precheck_connect,
};
use crate::ids::ClientId;
use crate::secret::{NewToken, generate_token, hash_password, verify_password, verify_token};
use crate::tests::default_rule as rule;
use crate::vocab::{CredentialKind, TenantId};
use crate::{CredentialView, StoredDigest, Verdict};

const NOW: i64 = 1_800_000_000;
const FINGERPRINT: &str = "ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12";

const DENY_UNKNOWN: ConnectPolicy = ConnectPolicy {
    unknown: UnknownClient::Deny,
    trust_cert_names: false,
};

fn token_cred(id: i64, t: &NewToken, expires_at: Option<i64>) -> CredentialView {
    CredentialView::stored(id, CredentialKind::Token, &t.digest, expires_at)
}

/// `dev-1` of tenant 1 (`acme`), enabled, with a token credential (id 7) of `token`.
fn device(token: &NewToken) -> DeviceView {
    DeviceView::new(
        TenantId(1),
        "acme",
        ClientId::parse("dev-1").unwrap(),
        None,
        true,
        vec![token_cred(7, token, None)],
        &[rule()],
    )
}

/// What the verifier finds for `secret` on `dev` (tokens only: the core's `verify_token`).
fn verified(dev: &DeviceView, secret: &SecretString) -> SecretOutcome {
    SecretOutcome::Verified(verify_token(secret.expose_secret(), &dev.tokens()))
}

/// A certificate the trust decision accepted, identifying `client_id` of tenant `tenant`.
fn cert_for(tenant: i64, client_id: &str, names_only: bool) -> CertOutcome {
    let name = if tenant == 1 { "acme" } else { "other" };
    CertOutcome {
        identity: Ok(CertIdentity::assertion(
            TenantId(tenant),
            name.into(),
            client_id.into(),
            FINGERPRINT.into(),
            NOW + 3600,
            None,
        )),
        names_only,
    }
}

fn rejected(why: CertRejection) -> CertOutcome {
    CertOutcome {
        identity: Err(why),
        names_only: false,
    }
}

fn facts<'a>(dev: Option<&'a DeviceView>) -> ConnectFacts<'a> {
    ConnectFacts {
        device: dev,
        ..ConnectFacts::new(DENY_UNKNOWN, NOW)
    }
}

fn certificate_allow(names_only: bool) -> Decision {
    Decision::allow(Cause::Certificate {
        fingerprint: FINGERPRINT.into(),
        not_after: NOW + 3600,
        names_only,
    })
}

fn credential_allow(credential_id: i64) -> Decision {
    Decision::allow(Cause::Credential {
        credential_id,
        kind: CredentialKind::Token,
        expires_at: None,
    })
}

#[test]
fn certificate_and_secret_both_good_allow_on_the_credential() {
    let t = generate_token();
    let d = device(&t);
    let f = ConnectFacts {
        cert: Some(cert_for(1, "dev-1", false)),
        secret: verified(&d, &t.token),
        ..facts(Some(&d))
    };
    assert_eq!(decide_connect(&f), credential_allow(7));
}

#[test]
fn certificate_plus_a_wrong_secret_is_denied_both_must_hold() {
    let t = generate_token();
    let d = device(&t);
    let f = ConnectFacts {
        cert: Some(cert_for(1, "dev-1", false)),
        secret: verified(&d, &generate_token().token),
        ..facts(Some(&d))
    };
    assert_eq!(decide_connect(&f), Decision::deny(Cause::BadSecret));
}

#[test]
fn certificate_plus_an_expired_credential_is_denied_as_expired() {
    let t = generate_token();
    let mut d = device(&t);
    d.credentials = vec![token_cred(7, &t, Some(NOW))].into();
    let f = ConnectFacts {
        cert: Some(cert_for(1, "dev-1", false)),
        secret: verified(&d, &t.token),
        ..facts(Some(&d))
    };
    assert_eq!(
        decide_connect(&f),
        Decision::deny(Cause::CredentialExpired { credential_id: 7 })
    );
}

#[test]
fn a_refused_certificate_denies_even_with_a_good_secret() {
    let t = generate_token();
    let d = device(&t);
    let f = ConnectFacts {
        cert: Some(rejected(CertRejection::Revoked)),
        secret: verified(&d, &t.token),
        ..facts(Some(&d))
    };
    let got = decide_connect(&f);
    assert_eq!(
        got,
        Decision::deny(Cause::CertRejected(CertRejection::Revoked))
    );
    assert_eq!(got.cause.label(), "cert_revoked");
    // Nothing to verify: the certificate already decided.
    let unverified = ConnectFacts {
        secret: SecretOutcome::Unverified,
        ..f
    };
    assert!(secret_to_verify(&unverified).is_none());
}

#[test]
fn a_certificate_alone_allows_and_names_itself() {
    let d = device(&generate_token());
    let f = ConnectFacts {
        cert: Some(cert_for(1, "dev-1", false)),
        ..facts(Some(&d))
    };
    let got = decide_connect(&f);
    assert_eq!(got, certificate_allow(false));
    assert_eq!(got.cause.label(), "certificate");
    assert!(secret_to_verify(&f).is_none());
}

#[test]
fn certificate_names_alone_are_refused_unless_names_only_trust_is_on() {
    let d = device(&generate_token());
    let off = ConnectFacts {
        cert: Some(cert_for(1, "dev-1", true)),
        ..facts(Some(&d))
    };
    assert_eq!(
        decide_connect(&off),
        Decision::deny(Cause::CertRejected(CertRejection::NamesOnly))
    );
    let on = ConnectFacts {
        policy: ConnectPolicy {
            trust_cert_names: true,
            ..DENY_UNKNOWN
        },
        ..off.clone()
    };
    let got = decide_connect(&on);
    assert_eq!(got, certificate_allow(true));
    assert_eq!(got.cause.label(), "certificate_names_only");
}

#[test]
fn certificate_names_with_a_secret_are_decided_by_the_secret() {
    let t = generate_token();
    let d = device(&t);
    let f = ConnectFacts {
        cert: Some(cert_for(1, "dev-1", true)),
        secret: verified(&d, &t.token),
        ..facts(Some(&d))
    };
    assert_eq!(decide_connect(&f), credential_allow(7));
    let wrong = ConnectFacts {
        secret: verified(&d, &generate_token().token),
        ..f
    };
    assert_eq!(decide_connect(&wrong), Decision::deny(Cause::BadSecret));
}

#[test]
fn a_certificate_of_another_tenant_or_device_is_refused() {
    let t = generate_token();
    let d = device(&t);
    for (cert, why) in [
        (cert_for(2, "dev-1", false), CertRejection::WrongTenant),
        (cert_for(1, "dev-2", false), CertRejection::Mismatch),
    ] {
        let alone = ConnectFacts {
            cert: Some(cert.clone()),
            ..facts(Some(&d))
        };
        assert_eq!(
            decide_connect(&alone),
            Decision::deny(Cause::CertRejected(why.clone()))
        );
        // A good secret does not make up for it, and is not even verified.
        let with_secret = ConnectFacts {
            cert: Some(cert),
            secret: SecretOutcome::Unverified,
            ..facts(Some(&d))
        };
        assert!(secret_to_verify(&with_secret).is_none());
        assert_eq!(
            decide_connect(&with_secret),
            Decision::deny(Cause::CertRejected(why))
        );
    }
}

#[test]
fn a_secret_alone_is_verified_then_decides() {
    let t = generate_token();
    let d = device(&t);
    let presented = ConnectFacts {
        secret: SecretOutcome::Unverified,
        ..facts(Some(&d))
    };
    assert!(std::ptr::eq(secret_to_verify(&presented).unwrap(), &d));
    let good = ConnectFacts {
        secret: verified(&d, &t.token),
        ..presented.clone()
    };
    assert_eq!(decide_connect(&good), credential_allow(7));
    assert!(secret_to_verify(&good).is_none());
    let bad = ConnectFacts {
        secret: verified(&d, &generate_token().token),
        ..presented.clone()
    };
    assert_eq!(decide_connect(&bad), Decision::deny(Cause::BadSecret));
}

#[test]
fn an_unverified_or_interrupted_secret_proves_nothing() {
    let d = device(&generate_token());
    let unverified = ConnectFacts {
        secret: SecretOutcome::Unverified,
        ..facts(Some(&d))
    };
    assert_eq!(
        decide_connect(&unverified),
        Decision::deny(Cause::BadSecret)
    );
    let interrupted = ConnectFacts {
        secret: SecretOutcome::Interrupted,
        ..facts(Some(&d))
    };
    assert_eq!(
        decide_connect(&interrupted),
        Decision::deny(Cause::Interrupted)
    );
}

#[test]
fn a_password_secret_alone_allows_on_its_argon2_credential() {
    let pw: SecretString = "correct horse".into();
    let mut d = device(&generate_token());
    d.credentials = vec![CredentialView {
        id: 9,
        kind: CredentialKind::Argon2,
        digest: StoredDigest::Text(hash_password(&pw).unwrap().into()),
        expires_at: None,
    }]
    .into();
    let f = ConnectFacts {
        secret: SecretOutcome::Verified(verify_password(&pw, &d.credentials[0])),
        ..facts(Some(&d))
    };
    assert_eq!(
        decide_connect(&f),
        Decision::allow(Cause::Credential {
            credential_id: 9,
            kind: CredentialKind::Argon2,
            expires_at: None,
        })
    );
}

#[test]
fn nothing_presented_is_denied() {
    let d = device(&generate_token());
    let f = facts(Some(&d));
    assert_eq!(decide_connect(&f), Decision::deny(Cause::NoSecret));
    assert!(secret_to_verify(&f).is_none());
    assert!(!password_verify_ahead(&f));
}

#[test]
fn an_unknown_client_is_denied_or_ignored_as_the_policy_says() {
    for cert in [None, Some(cert_for(1, "dev-1", false))] {
        let deny = ConnectFacts {
            cert: cert.clone(),
            secret: SecretOutcome::Unverified,
            ..facts(None)
        };
        assert_eq!(decide_connect(&deny), Decision::deny(Cause::UnknownClient));
        assert!(secret_to_verify(&deny).is_none());
        let ignore = ConnectFacts {
            policy: ConnectPolicy {
                unknown: UnknownClient::Ignore,
                trust_cert_names: false,
            },
            ..deny
        };
        let got = decide_connect(&ignore);
        assert_eq!(got.verdict, Verdict::Ignore);
        assert_eq!(got.cause, Cause::UnknownClient);
    }
}

#[test]
fn a_disabled_device_is_denied_whatever_it_presents_and_costs_no_verify() {
    let t = generate_token();
    let mut d = device(&t);
    d.enabled = false;
    for (cert, secret) in [
        (Some(cert_for(1, "dev-1", false)), SecretOutcome::Absent),
        (None, SecretOutcome::Unverified),
        (None, verified(&d, &t.token)),
        (Some(cert_for(1, "dev-1", false)), verified(&d, &t.token)),
    ] {
        let f = ConnectFacts {
            cert,
            secret,
            ..facts(Some(&d))
        };
        assert_eq!(decide_connect(&f), Decision::deny(Cause::DeviceDisabled));
        assert!(secret_to_verify(&f).is_none());
        assert!(!password_verify_ahead(&f));
    }
}

#[test]
fn a_bound_username_must_be_presented_even_with_a_certificate() {
    let t = generate_token();
    let mut d = device(&t);
    d.username = Some("alice".into());
    let bob = ConnectFacts {
        username: Some("bob"),
        cert: Some(cert_for(1, "dev-1", false)),
        ..facts(Some(&d))
    };
    assert_eq!(
        decide_connect(&bob),
        Decision::deny(Cause::UsernameMismatch)
    );
    let alice = ConnectFacts {
        username: Some("alice"),
        ..bob
    };
    assert_eq!(decide_connect(&alice), certificate_allow(false));
}

#[test]
fn a_lockout_refuses_whatever_is_presented() {
    let t = generate_token();
    let d = device(&t);
    let locks = [
        Locked::ClientId { until_ms: 1 },
        Locked::Address { until_ms: 2 },
        Locked::Busy { of: "client_id" },
    ];
    for locked in locks {
        let f = ConnectFacts {
            locked: Some(locked.clone()),
            cert: Some(cert_for(1, "dev-1", false)),
            secret: verified(&d, &t.token),
            ..facts(Some(&d))
        };
        let got = decide_connect(&f);
        assert_eq!(got, Decision::deny(Cause::LockedOut(locked.clone())));
        assert_eq!(got.cause.label(), "locked_out");
        // Before the registry was asked (the gate skips the lookup): the same answer.
        let early = ConnectFacts {
            locked: Some(locked.clone()),
            ..ConnectFacts::new(DENY_UNKNOWN, NOW)
        };
        assert_eq!(
            decide_connect(&early),
            Decision::deny(Cause::LockedOut(locked))
        );
        assert!(secret_to_verify(&f).is_none());
        assert!(!password_verify_ahead(&f));
    }
}

#[test]
fn a_slow_verify_is_ahead_only_for_a_presented_secret_and_an_active_password() {
    let t = generate_token();
    let mut d = device(&t);
    let token_only = ConnectFacts {
        secret: SecretOutcome::Unverified,
        ..facts(Some(&d))
    };
    assert!(!password_verify_ahead(&token_only));
    let password = |id, expires_at| CredentialView {
        id,
        kind: CredentialKind::Argon2,
        digest: StoredDigest::Text("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into()),
        expires_at,
    };
    d.credentials = vec![token_cred(7, &t, None), password(8, Some(NOW))].into();
    let expired = ConnectFacts {
        secret: SecretOutcome::Unverified,
        ..facts(Some(&d))
    };
    assert!(!password_verify_ahead(&expired));
    d.credentials = vec![token_cred(7, &t, None), password(8, None)].into();
    let active = ConnectFacts {
        secret: SecretOutcome::Unverified,
        ..facts(Some(&d))
    };
    assert!(password_verify_ahead(&active));
    // Taken whatever the certificate says (the slot is reserved before the certificate is read).
    let refused_cert = ConnectFacts {
        cert: Some(rejected(CertRejection::Untrusted)),
        ..active.clone()
    };
    assert!(password_verify_ahead(&refused_cert));
    let no_secret = ConnectFacts {
        secret: SecretOutcome::Absent,
        cert: Some(cert_for(1, "dev-1", false)),
        ..active
    };
    assert!(!password_verify_ahead(&no_secret));
}

/// The CONNECT match as `gate.rs` wrote it before the rule moved here, transcribed: the oracle
/// the rule is held to. `secret` is what verifying the presented secret gives (`Err`: the
/// verifier could not finish), `None` when none was presented.
fn gate_before_the_move(
    f: &ConnectFacts<'_>,
    secret: Option<&Result<Option<VerifiedSecret>, ()>>,
) -> (Decision, bool) {
    let checked = precheck_connect(
        f.device,
        f.username,
        secret.is_some() || f.cert.is_some(),
        f.policy.unknown,
    );
    let slot = matches!((&checked, secret), (Ok(dev), Some(_)) if !dev.password_candidates(f.now).is_empty());
    let verify_and_decide = |dev, s: &Result<Option<VerifiedSecret>, ()>| match s {
        Ok(proof) => decide_by_secret(dev, proof.as_ref(), f.now),
        Err(()) => Decision::deny(Cause::Interrupted),
    };
    let identity = f.cert.as_ref().map(|c| c.identity.clone());
    let names_only = f.cert.as_ref().is_some_and(|c| c.names_only);
    let decision = match (checked, identity, secret) {
        (Err(d), _, _) => d,
        (Ok(_), Some(Err(rejected)), _) => Decision::deny(Cause::CertRejected(rejected)),
        (Ok(dev), Some(Ok(id)), secret) => match check_cert_identity(dev, &id) {
            Err(d) => d,
            Ok(()) => match secret {
                Some(s) => verify_and_decide(dev, s),
                None if names_only && !f.policy.trust_cert_names => {
                    Decision::deny(Cause::CertRejected(CertRejection::NamesOnly))
                }
                None => allow_by_certificate(&id, names_only),
            },
        },
        (Ok(dev), None, Some(s)) => verify_and_decide(dev, s),
        (Ok(_), None, None) => Decision::deny(Cause::NoSecret),
    };
    (decision, slot)
}

/// Every combination of device, username, certificate, secret outcome and policy: the rule
/// decides exactly as the gate's match did (verdict and cause), reserves a slow-verify slot
/// exactly when it did, verifies the secret only when the decision hinges on it, and never
/// allows without a proof.
#[test]
fn the_rule_decides_every_combination_as_the_gate_did_and_never_allows_without_a_proof() {
    let (t7, t8) = (generate_token(), generate_token());
    let base = DeviceView::new(
        TenantId(1),
        "acme",
        ClientId::parse("dev-1").unwrap(),
        None,
        true,
        vec![token_cred(7, &t7, None), token_cred(8, &t8, Some(NOW))],
        &[rule()],
    );
    let mut disabled = base.clone();
    disabled.enabled = false;
    let mut bound = base.clone();
    bound.username = Some("alice".into());
    let mut with_password = base.clone();
    let mut creds = base.credentials.to_vec();
    creds.push(CredentialView {
        id: 9,
        kind: CredentialKind::Argon2,
        digest: StoredDigest::Text("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into()),
        expires_at: None,
    });
    with_password.credentials = creds.into();
    let devices = [
        None,
        Some(&base),
        Some(&disabled),
        Some(&bound),
        Some(&with_password),
    ];
    let certs = [
        None,
        Some(cert_for(1, "dev-1", false)),
        Some(cert_for(1, "dev-1", true)),
        Some(cert_for(2, "dev-1", false)),
        Some(cert_for(1, "dev-2", true)),
        Some(rejected(CertRejection::Revoked)),
        Some(rejected(CertRejection::CrlUnavailable)),
    ];
    let proof = |t: &NewToken| verify_token(t.token.expose_secret(), &base.tokens());
    let secrets = [
        None,
        Some(Ok(proof(&t7))),
        Some(Ok(proof(&t8))),
        Some(Ok(None)),
        Some(Err(())),
    ];
    let mut cases = 0;
    for device in devices {
        for username in [None, Some("alice")] {
            for cert in &certs {
                for secret in &secrets {
                    for unknown in [UnknownClient::Deny, UnknownClient::Ignore] {
                        for trust_cert_names in [false, true] {
                            let mut f = ConnectFacts {
                                device,
                                username,
                                cert: cert.clone(),
                                secret: match secret {
                                    Some(_) => SecretOutcome::Unverified,
                                    None => SecretOutcome::Absent,
                                },
                                ..ConnectFacts::new(
                                    ConnectPolicy {
                                        unknown,
                                        trust_cert_names,
                                    },
                                    NOW,
                                )
                            };
                            let (want, slot) = gate_before_the_move(&f, secret.as_ref());
                            let case = format!("{device:?} {username:?} {cert:?} {secret:?}");
                            assert_eq!(password_verify_ahead(&f), slot, "{case}");
                            // As the gate does it: verify only when the rule asks.
                            if let Some(dev) = secret_to_verify(&f) {
                                assert!(std::ptr::eq(dev, device.unwrap()), "{case}");
                                f.secret = match secret {
                                    Some(Ok(p)) => SecretOutcome::Verified(p.clone()),
                                    Some(Err(())) => SecretOutcome::Interrupted,
                                    None => unreachable!("nothing presented, nothing to verify"),
                                };
                            }
                            let got = decide_connect(&f);
                            assert_eq!(got, want, "{case}");
                            if got.is_allow() {
                                let by_secret =
                                    matches!(secret, Some(Ok(Some(p))) if p.credential_id() == 7);
                                let by_cert = matches!(&got.cause, Cause::Certificate { .. })
                                    && secret.is_none();
                                assert!(by_secret || by_cert, "allowed without a proof: {case}");
                            }
                            // A lockout refuses every one of them.
                            f.locked = Some(Locked::Busy { of: "address" });
                            assert_eq!(decide_connect(&f).cause.label(), "locked_out", "{case}");
                            cases += 1;
                        }
                    }
                }
            }
        }
    }
    assert_eq!(cases, 5 * 2 * 7 * 5 * 2 * 2);
}
