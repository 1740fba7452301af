//! Everything that touches secret bytes, synchronously: device tokens, password hashes
//! (argon2id, legacy bcrypt), [`ct_eq`] (the one constant-time comparison in mqgate), and the
//! proof a verification mints, [`VerifiedSecret`].
//!
//! Device tokens carry ≥ 256 random bits, so a plain SHA-256 digest is as strong as any keyed one
//! and lets every replica verify without sharing a key; checking one costs a hash and a compare.
//! Human-chosen passwords use argon2id (~17 ms here): [`verify_password`] blocks, and mqgate's
//! `auth::secret::SecretVerifier` runs it on the blocking pool behind a semaphore (and remembers
//! successes), so a reconnect storm cannot starve the async threads.

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use base64::Engine;
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::CredentialView;
use crate::vocab::CredentialKind;

/// Prefix of every mqgate device token, so leaked tokens are recognisable by secret scanners.
pub const TOKEN_PREFIX: &str = "mqg_";

/// The one constant-time byte comparison. Unequal lengths return false without comparing bytes;
/// callers compare fixed-length digests, so the length is never the secret, except
/// [`Accepted::is`], whose sender learns at most the length of a secret already accepted.
///
/// The bytes' differences are OR-ed together with no branch on them (a loop the compiler
/// vectorises), and only the result goes through `subtle`'s optimisation barrier (`subtle`'s own
/// slice comparison puts every byte through it: 14 instructions a byte).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y));
    diff.ct_eq(&0).into()
}

/// The internal shared secret brokers present, kept as its SHA-256 so a check hashes only the
/// presented value and compares digests (which also hides the secret's length).
#[derive(Clone)]
pub struct SharedSecret([u8; 32]);

impl SharedSecret {
    /// Wraps the configured secret.
    pub fn new(secret: &SecretString) -> Self {
        SharedSecret(Sha256::digest(secret.expose_secret().as_bytes()).into())
    }

    /// Whether `presented` is the secret, compared in constant time.
    pub fn matches(&self, presented: &str) -> bool {
        ct_eq(&Sha256::digest(presented.as_bytes()), &self.0)
    }

    /// `presented`, kept as [`Accepted`], if it is the secret.
    pub fn accept(&self, presented: &str) -> Option<Accepted> {
        self.matches(presented)
            .then(|| Accepted(presented.as_bytes().to_vec().into()))
    }
}

/// A value [`SharedSecret::accept`] took, kept by the one HTTP connection that presented it, so
/// that the same bytes on that connection's later requests pass without being hashed again (a
/// broker presents the same header on every request of a keep-alive connection; the hash cost
/// ~110 ns of a cached authz answer's ~8 µs, and 3,400 of its 21,000 instructions under valgrind). Anything else presented there is checked against the
/// secret in full. Zeroed when dropped.
pub struct Accepted(secrecy::SecretSlice<u8>);

impl Accepted {
    /// Whether `presented` is the accepted value, compared in constant time ([`ct_eq`]). Raw
    /// bytes will do: equal to a value accepted as text, they are that text.
    pub fn is(&self, presented: &[u8]) -> bool {
        ct_eq(self.0.expose_secret(), presented)
    }
}

impl std::fmt::Debug for Accepted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Accepted(..)")
    }
}

/// A freshly generated device token: shown once, then only its digest is kept.
pub struct NewToken {
    /// The token to hand to the device.
    pub token: SecretString,
    /// What the store keeps (hex SHA-256).
    pub digest: String,
}

/// Generates a device token with 256 random bits.
pub fn generate_token() -> NewToken {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let digest = token_digest(&token);
    NewToken {
        token: token.into(),
        digest,
    }
}

/// The stored form of a token (hex of [`token_digest_bytes`]).
pub fn token_digest(token: &str) -> String {
    hex::encode(token_digest_bytes(token))
}

/// A token's SHA-256 digest, as the hot path compares it.
pub fn token_digest_bytes(token: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"mqgate-token-v1:");
    h.update(token.as_bytes());
    h.finalize().into()
}

/// Hashes an operator-chosen password with argon2id (blocking: call off the async threads).
pub fn hash_password(password: &SecretString) -> Result<String, SecretError> {
    argon2::Argon2::default()
        .hash_password(password.expose_secret().as_bytes())
        .map(|h| h.to_string())
        .map_err(|_| SecretError::Hash)
}

/// Checks that a string is a legacy bcrypt hash mqgate can import (`$2a$`, `$2b$`, `$2y$`).
pub fn validate_bcrypt_hash(hash: &str) -> Result<(), SecretError> {
    // Bytes, not string slices: an operator's paste may hold any UTF-8, and a slice inside a
    // multi-byte character would panic (and the panic message would echo the hash).
    let b = hash.as_bytes();
    let ok = ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p))
        && b.len() == 60
        && b.get(4..6)
            .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
        && b.get(6) == Some(&b'$');
    if ok {
        Ok(())
    } else {
        Err(SecretError::BadBcrypt)
    }
}

/// Most memory (KiB) and passes an imported argon2id hash may ask of a verify: every verify runs
/// in the shared slow lane, so one device's extravagant parameters must not stall the others'.
const ARGON2_MAX_M_COST: u32 = 256 * 1024;
const ARGON2_MAX_T_COST: u32 = 16;

/// Checks that a string is an argon2id PHC hash mqgate can verify (`$argon2id$v=19$m=…,t=…,p=…$
/// salt$hash`, within [`ARGON2_MAX_M_COST`] / [`ARGON2_MAX_T_COST`]): what a bulk import accepts.
pub fn validate_argon2_hash(hash: &str) -> Result<(), SecretError> {
    let parsed = argon2::PasswordHash::new(hash).map_err(|_| SecretError::BadArgon2)?;
    let params = argon2::Params::try_from(&parsed).map_err(|_| SecretError::BadArgon2)?;
    let ok = parsed.algorithm == argon2::ARGON2ID_IDENT
        && parsed.version.is_none_or(|v| v == 0x13)
        && parsed.salt.is_some()
        && parsed.hash.is_some()
        && params.m_cost() <= ARGON2_MAX_M_COST
        && params.t_cost() <= ARGON2_MAX_T_COST;
    if ok {
        Ok(())
    } else {
        Err(SecretError::BadArgon2)
    }
}

/// Errors of the secret kernel. They never carry secret material.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// argon2id hashing failed.
    #[error("password hashing failed")]
    Hash,
    /// Not a `$2a$/$2b$/$2y$` bcrypt hash of 60 characters.
    #[error("not a bcrypt hash ($2a$, $2b$ or $2y$, 60 characters)")]
    BadBcrypt,
    /// Not an argon2id PHC string mqgate can verify.
    #[error("not an argon2id hash ($argon2id$v=19$m=…,t=…,p=…$salt$hash; m ≤ 262144, t ≤ 16)")]
    BadArgon2,
    /// The blocking pool went away (shutdown), or the verification queue took too long.
    #[error("password verification was interrupted or timed out")]
    Interrupted,
}

/// Proof that a presented secret matched a credential. Its fields are private and only this
/// module mints one ([`verify_token`], [`verify_password`]), so an "allow" on a credential cannot
/// be produced without a verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSecret {
    credential_id: i64,
    kind: CredentialKind,
}

impl VerifiedSecret {
    /// Mints the proof that a presented secret matched `cred`. Only the verifiers of this module
    /// call this, once the comparison succeeded.
    fn matched(cred: &CredentialView) -> Self {
        VerifiedSecret {
            credential_id: cred.id,
            kind: cred.kind,
        }
    }

    /// The credential that matched.
    pub fn credential_id(&self) -> i64 {
        self.credential_id
    }

    /// How that credential is stored (a `Bcrypt` match should be upgraded to argon2id).
    pub fn kind(&self) -> CredentialKind {
        self.kind
    }
}

/// Finds the token credential `presented` is (expired ones too, so a deny can say "expired"):
/// a digest and a constant-time compare per token, microseconds whatever the device.
pub fn verify_token(presented: &str, tokens: &[&CredentialView]) -> Option<VerifiedSecret> {
    if !presented.starts_with(TOKEN_PREFIX) {
        return None;
    }
    let digest = token_digest_bytes(presented);
    tokens
        .iter()
        .find(|c| c.kind == CredentialKind::Token && ct_eq(&digest, c.digest.as_bytes()))
        .map(|c| VerifiedSecret::matched(c))
}

/// Checks `presented` against a password credential (argon2id or bcrypt). Blocking (~17 ms for
/// argon2id): call it off the async threads.
pub fn verify_password(presented: &SecretString, cred: &CredentialView) -> Option<VerifiedSecret> {
    let pw = presented.expose_secret().as_bytes();
    let hash = cred.digest.as_text()?;
    let ok = match cred.kind {
        CredentialKind::Argon2 => argon2::Argon2::default().verify_password(pw, hash).is_ok(),
        CredentialKind::Bcrypt => bcrypt::verify(pw, hash).unwrap_or(false),
        CredentialKind::Token => false,
    };
    ok.then(|| VerifiedSecret::matched(cred))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(id: i64, kind: CredentialKind, digest: String) -> CredentialView {
        CredentialView::stored(id, kind, &digest, None)
    }

    #[test]
    fn tokens_carry_256_bits_and_verify_only_against_their_own_digest() {
        let a = generate_token();
        let b = generate_token();
        assert!(a.token.expose_secret().len() >= TOKEN_PREFIX.len() + 43);
        assert_ne!(a.digest, b.digest);
        let creds = [
            cred(1, CredentialKind::Token, b.digest.clone()),
            cred(2, CredentialKind::Token, a.digest.clone()),
        ];
        let refs: Vec<_> = creds.iter().collect();
        assert_eq!(
            verify_token(a.token.expose_secret(), &refs)
                .unwrap()
                .credential_id(),
            2
        );
        assert!(verify_token("mqg_wrong", &refs).is_none());
    }

    #[test]
    fn shared_secret_compare_rejects_prefixes_and_accepts_equal() {
        let s = SharedSecret::new(&"0123456789abcdef0123456789abcdef".into());
        assert!(s.matches("0123456789abcdef0123456789abcdef"));
        assert!(!s.matches("0123456789abcdef"));
        assert!(!s.matches(""));
    }

    proptest::proptest! {
        #[test]
        fn ct_eq_is_byte_equality(
            a in proptest::collection::vec(proptest::num::u8::ANY, 0..80),
            flip in proptest::option::of((0usize..80, 1u8..=255)),
            cut in proptest::option::of(0usize..80),
        ) {
            let mut b = a.clone();
            if let Some((i, x)) = flip && let Some(byte) = b.get_mut(i) {
                *byte ^= x;
            }
            if let Some(n) = cut {
                b.truncate(n);
            }
            proptest::prop_assert_eq!(ct_eq(&a, &b), a == b);
            proptest::prop_assert!(ct_eq(&a, &a));
        }
    }

    #[test]
    fn only_the_secret_is_accepted_and_an_accepted_value_is_only_itself() {
        let s = SharedSecret::new(&"0123456789abcdef0123456789abcdef".into());
        assert!(s.accept("0123456789abcdef0123456789abcdeF").is_none());
        assert!(s.accept("").is_none());
        let a = s.accept("0123456789abcdef0123456789abcdef").unwrap();
        assert!(a.is(b"0123456789abcdef0123456789abcdef"));
        for other in [
            "0123456789abcdef0123456789abcdeF",
            "0123456789abcdef0123456789abcde",
            "0123456789abcdef0123456789abcdef0",
            "",
        ] {
            assert!(!a.is(other.as_bytes()), "{other:?}");
        }
        assert_eq!(format!("{a:?}"), "Accepted(..)");
    }

    #[test]
    fn argon2_and_legacy_bcrypt_passwords_verify_against_their_own_credential_only() {
        let pw: SecretString = "correct horse".into();
        let argon = cred(1, CredentialKind::Argon2, hash_password(&pw).unwrap());
        let bc = bcrypt::hash_with_salt("correct horse", 4, [7u8; 16])
            .unwrap()
            .format_for_version(bcrypt::Version::TwoY);
        let bc = cred(2, CredentialKind::Bcrypt, bc);
        assert_eq!(verify_password(&pw, &argon).unwrap().credential_id(), 1);
        assert_eq!(
            verify_password(&pw, &bc).unwrap().kind(),
            CredentialKind::Bcrypt
        );
        assert!(verify_password(&"wrong".into(), &argon).is_none());
        assert!(verify_password(&"wrong".into(), &bc).is_none());
        // A token digest is never a password, whatever is presented.
        let t = generate_token();
        let token = cred(3, CredentialKind::Token, t.digest);
        assert!(verify_password(&t.token, &token).is_none());
    }

    #[test]
    fn bcrypt_import_rejects_non_bcrypt_strings() {
        assert!(validate_bcrypt_hash("$argon2id$v=19$...").is_err());
        assert!(validate_bcrypt_hash("plaintext").is_err());
        // A multi-byte character where the cost digits are: refused, not a panic.
        let odd = format!("$2b$1é{}", "x".repeat(53));
        assert_eq!(odd.len(), 60);
        assert!(validate_bcrypt_hash(&odd).is_err());
    }

    #[test]
    fn argon2_import_takes_argon2id_phc_strings_only() {
        let good = hash_password(&"correct horse".into()).unwrap();
        validate_argon2_hash(&good).unwrap();
        for bad in [
            "",
            "plaintext",
            "$2b$12$abcdefghijklmnopqrstuu5ZL8CdGm9t0x1TiNpJxW0wtHqNrBpdW",
            &good.replace("argon2id", "argon2i"),
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ",
            "$argon2id$v=19$m=4194304,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA",
            "$argon2id$v=19$m=19456,t=100,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA",
        ] {
            assert!(validate_argon2_hash(bad).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn bcrypt_validation_never_panics(s in "\\PC{0,70}", prefix in "\\$2[aby]\\$") {
            let _ = validate_bcrypt_hash(&s);
            let _ = validate_bcrypt_hash(&format!("{prefix}{s}"));
        }

        #[test]
        fn argon2_validation_never_panics(s in "\\PC{0,120}") {
            let _ = validate_argon2_hash(&s);
            let _ = validate_argon2_hash(&format!("$argon2id$v=19$m=19456,t=2,p=1${s}"));
        }
    }
}
