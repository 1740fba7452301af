use super::*;
use crate::acl::{RuleAction, RuleSource};
use crate::connect::{decide_by_secret, precheck_connect};
use crate::secret::{VerifiedSecret, generate_token, verify_token};
use secrecy::{ExposeSecret, SecretString};

const NOW: i64 = 1_800_000_000;

/// The shipped default rule (`acl-rules/default.toml`), as a file rule.
pub(crate) fn default_rule() -> Rule {
    Rule {
        permission: Permission::Allow,
        action: RuleAction::All,
        topic: "${tenant}/${clientid}/#".into(),
        source: RuleSource::File {
            file: "default.toml".into(),
            line: 1,
        },
    }
}

fn device(creds: Vec<CredentialView>) -> DeviceView {
    DeviceView::new(
        TenantId(1),
        "acme",
        ids::ClientId::parse("dev-1").unwrap(),
        None,
        true,
        creds,
        &[default_rule()],
    )
}

fn token_cred(id: i64, digest: String, expires_at: Option<i64>) -> CredentialView {
    CredentialView::stored(id, CredentialKind::Token, &digest, expires_at)
}

/// What the gate's verifier finds for a token (tokens are checked by the core's `verify_token`).
fn proof_for(d: &DeviceView, secret: &SecretString) -> Option<VerifiedSecret> {
    verify_token(secret.expose_secret(), &d.tokens())
}

#[test]
fn a_valid_token_is_allowed_and_names_its_credential() {
    let t = generate_token();
    let d = device(vec![token_cred(7, t.digest, None)]);
    let p = proof_for(&d, &t.token);
    let got = decide_by_secret(&d, p.as_ref(), NOW);
    assert!(got.is_allow());
    assert!(matches!(
        got.cause,
        Cause::Credential {
            credential_id: 7,
            ..
        }
    ));
}

#[test]
fn a_rotated_token_works_until_its_grace_ends_then_is_denied_as_expired() {
    let old = generate_token();
    let d = device(vec![token_cred(1, old.digest, Some(NOW + 60))]);
    let p = proof_for(&d, &old.token);
    assert!(decide_by_secret(&d, p.as_ref(), NOW + 59).is_allow());
    let late = decide_by_secret(&d, p.as_ref(), NOW + 60);
    assert_eq!(
        late,
        Decision::deny(Cause::CredentialExpired { credential_id: 1 })
    );
}

#[test]
fn a_wrong_secret_is_denied() {
    let t = generate_token();
    let d = device(vec![token_cred(1, t.digest, None)]);
    let p = proof_for(&d, &generate_token().token);
    assert_eq!(
        decide_by_secret(&d, p.as_ref(), NOW),
        Decision::deny(Cause::BadSecret)
    );
}

#[test]
fn unknown_clients_are_denied_by_default_and_ignored_when_configured() {
    let deny = precheck_connect(None, None, true, UnknownClient::Deny).unwrap_err();
    assert_eq!(deny, Decision::deny(Cause::UnknownClient));
    let ignore = precheck_connect(None, None, true, UnknownClient::Ignore).unwrap_err();
    assert_eq!(ignore.verdict, Verdict::Ignore);
}

#[test]
fn a_disabled_device_is_denied_before_any_secret_is_checked() {
    let mut d = device(vec![]);
    d.enabled = false;
    let got = precheck_connect(Some(&d), None, true, UnknownClient::Deny).unwrap_err();
    assert_eq!(got, Decision::deny(Cause::DeviceDisabled));
    let got = decide_authz(
        Some(&d),
        Action::Publish,
        "acme/dev-1/x",
        UnknownClient::Deny,
    );
    assert_eq!(got, Decision::deny(Cause::DeviceDisabled));
}

#[test]
fn a_bound_username_must_match() {
    let mut d = device(vec![]);
    d.username = Some("alice".into());
    assert!(precheck_connect(Some(&d), Some("alice"), true, UnknownClient::Deny).is_ok());
    let got = precheck_connect(Some(&d), Some("bob"), true, UnknownClient::Deny).unwrap_err();
    assert_eq!(got, Decision::deny(Cause::UsernameMismatch));
    let got = precheck_connect(Some(&d), None, true, UnknownClient::Deny).unwrap_err();
    assert_eq!(got, Decision::deny(Cause::UsernameMismatch));
}

#[test]
fn the_default_rule_allows_the_own_subtree_and_nothing_else() {
    let d = device(vec![]);
    let own = decide_authz(
        Some(&d),
        Action::Publish,
        "acme/dev-1/telemetry",
        UnknownClient::Deny,
    );
    assert!(own.is_allow());
    let other = decide_authz(
        Some(&d),
        Action::Publish,
        "acme/dev-2/telemetry",
        UnknownClient::Deny,
    );
    assert_eq!(other, Decision::deny(Cause::Acl(AclVerdict::NoRule)));
    assert_eq!(other.cause.explain(), "no rule: deny by default");
    let wide = decide_authz(Some(&d), Action::Subscribe, "acme/#", UnknownClient::Deny);
    assert!(!wide.is_allow());
}

#[test]
fn only_a_publish_the_acl_allows_draws_a_token_and_an_empty_bucket_denies_it() {
    let d = device(vec![]);
    let draws = std::cell::Cell::new(0);
    let dry = |_: &DeviceView| {
        draws.set(draws.get() + 1);
        Err(crate::vocab::LimitScope::Tenant)
    };
    let own = "acme/dev-1/telemetry";
    let limited = decide_authz_metered(Some(&d), Action::Publish, own, UnknownClient::Deny, dry);
    assert_eq!(
        limited,
        Decision::deny(Cause::RateLimited(crate::vocab::LimitScope::Tenant))
    );
    let other = "acme/dev-2/telemetry";
    let refused = decide_authz_metered(Some(&d), Action::Publish, other, UnknownClient::Deny, dry);
    assert_eq!(refused, Decision::deny(Cause::Acl(AclVerdict::NoRule)));
    let sub = decide_authz_metered(Some(&d), Action::Subscribe, own, UnknownClient::Deny, dry);
    assert!(sub.is_allow(), "a subscribe draws nothing");
    assert_eq!(draws.get(), 1, "drawn for the allowed publish only");
    let unknown = decide_authz_metered(None, Action::Publish, own, UnknownClient::Deny, dry);
    assert_eq!(unknown, Decision::deny(Cause::UnknownClient));
    let full = decide_authz_metered(Some(&d), Action::Publish, own, UnknownClient::Deny, |_| {
        Ok(())
    });
    assert_eq!(
        full,
        decide_authz(Some(&d), Action::Publish, own, UnknownClient::Deny)
    );
}
