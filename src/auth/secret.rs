//! The async half of secret checking: [`SecretVerifier`] runs the core's password verify on the
//! blocking pool behind a semaphore and a timeout (so a reconnect storm cannot starve the async
//! threads), and remembers a success under an HMAC of a per-process key (never the password) so
//! reconnects within the TTL do no hashing. Everything that touches secret bytes synchronously
//! (tokens, hashing, [`ct_eq`], the [`VerifiedSecret`] proof) lives in the core's `secret` module,
//! re-exported here.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hmac::{KeyInit, Mac};
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

use crate::core::{CredentialView, StoredDigest};
use crate::registry::CredentialKind;

pub use mqgate_core::secret::{
    Accepted, NewToken, SecretError, SharedSecret, TOKEN_PREFIX, VerifiedSecret, ct_eq,
    generate_token, hash_password, token_digest, token_digest_bytes, validate_argon2_hash,
    validate_bcrypt_hash, verify_password, verify_token,
};

/// Verifies presented secrets against a device's credentials.
#[derive(Clone)]
pub struct SecretVerifier {
    slow_lane: Arc<tokio::sync::Semaphore>,
    slow_timeout: Duration,
    remembered: moka::future::Cache<[u8; 32], VerifiedSecret>,
    process_key: Arc<[u8; 32]>,
    slow_verifies: Arc<AtomicU64>,
}

impl SecretVerifier {
    /// `concurrency` bounds simultaneous argon2/bcrypt verifies, each of which (queueing included)
    /// may take `timeout`; successes are remembered for `ttl`.
    pub fn new(concurrency: usize, ttl: Duration, timeout: Duration) -> Self {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        SecretVerifier {
            slow_lane: Arc::new(tokio::sync::Semaphore::new(concurrency.max(1))),
            slow_timeout: timeout,
            remembered: moka::future::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(ttl)
                .build(),
            process_key: Arc::new(key),
            slow_verifies: Arc::default(),
        }
    }

    /// argon2/bcrypt verifies started so far (each costs ~17 ms of a core): what the brute-force
    /// limits must keep small.
    pub fn slow_verifies(&self) -> u64 {
        self.slow_verifies.load(Ordering::Relaxed)
    }

    /// Finds the credential `presented` matches. Tokens are checked against every token credential
    /// (expired ones too, so a deny can say "expired"); passwords only against `password_candidates`.
    pub async fn verify(
        &self,
        presented: &SecretString,
        tokens: &[&CredentialView],
        password_candidates: &[&CredentialView],
    ) -> Result<Option<VerifiedSecret>, SecretError> {
        if let Some(v) = verify_token(presented.expose_secret(), tokens) {
            return Ok(Some(v));
        }
        for cred in password_candidates {
            if let Some(v) = self.verify_password(presented, cred).await? {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    /// Spends what a password verify costs, for a CONNECT that has no password to check (unknown
    /// client id, disabled device, token-only device): otherwise its quick refusal would tell a
    /// prober which client ids exist. Verifies against a hash of a random password, in the same
    /// lane and under the same timeout as a real verify; the result is ignored.
    pub async fn dummy_verify(&self, presented: &SecretString) {
        static DUMMY: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
        let hash = DUMMY.get_or_init(|| {
            let mut bytes = [0u8; 32];
            rand::rng().fill_bytes(&mut bytes);
            hash_password(&hex::encode(bytes).into()).ok()
        });
        let Some(hash) = hash else { return };
        let cred = CredentialView {
            id: 0,
            kind: CredentialKind::Argon2,
            digest: StoredDigest::Text(hash.as_str().into()),
            expires_at: None,
        };
        let _ = self.verify_password(presented, &cred).await;
    }

    async fn verify_password(
        &self,
        presented: &SecretString,
        cred: &CredentialView,
    ) -> Result<Option<VerifiedSecret>, SecretError> {
        let memo = self.memo_key(presented, cred);
        if let Some(proof) = self.remembered.get(&memo).await {
            return Ok(Some(proof));
        }
        let (pw, cred) = (presented.clone(), cred.clone());
        let lane = Arc::clone(&self.slow_lane);
        let started = Arc::clone(&self.slow_verifies);
        let verify = async move {
            let _permit = lane.acquire_owned().await.ok()?;
            started.fetch_add(1, Ordering::Relaxed);
            cred.digest.as_text()?;
            tokio::task::spawn_blocking(move || mqgate_core::secret::verify_password(&pw, &cred))
                .await
                .ok()
        };
        let proof = tokio::time::timeout(self.slow_timeout, verify)
            .await
            .ok()
            .flatten()
            .ok_or(SecretError::Interrupted)?;
        if let Some(proof) = &proof {
            self.remembered.insert(memo, proof.clone()).await;
        }
        Ok(proof)
    }

    /// HMAC(process key, credential id ‖ stored hash ‖ password): what a remembered success is
    /// keyed by. It changes when the stored hash does and is useless outside this process.
    fn memo_key(&self, presented: &SecretString, cred: &CredentialView) -> [u8; 32] {
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(&self.process_key[..])
            .expect("HMAC accepts any key length");
        mac.update(&cred.id.to_be_bytes());
        mac.update(cred.digest.as_bytes());
        mac.update(&[0]);
        mac.update(presented.expose_secret().as_bytes());
        mac.finalize().into_bytes().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(id: i64, kind: CredentialKind, digest: String) -> CredentialView {
        CredentialView::stored(id, kind, &digest, None)
    }

    #[tokio::test]
    async fn argon2_and_legacy_bcrypt_passwords_verify_and_wrong_ones_do_not() {
        let pw: SecretString = "correct horse".into();
        let argon = hash_password(&pw).unwrap();
        assert!(argon.starts_with("$argon2id$"));
        let bc = bcrypt::hash_with_salt("correct horse", 4, [7u8; 16])
            .unwrap()
            .format_for_version(bcrypt::Version::TwoY);
        validate_bcrypt_hash(&bc).unwrap();
        let creds = [
            cred(1, CredentialKind::Argon2, argon),
            cred(2, CredentialKind::Bcrypt, bc),
        ];
        let refs: Vec<_> = creds.iter().collect();
        let v = SecretVerifier::new(2, Duration::from_secs(60), Duration::from_secs(30));
        let got = v.verify(&pw, &[], &refs).await.unwrap().unwrap();
        assert_eq!(got.credential_id(), 1);
        let got = v.verify(&pw, &[], &refs[1..]).await.unwrap().unwrap();
        assert_eq!(got.kind(), CredentialKind::Bcrypt);
        assert!(
            v.verify(&"wrong".into(), &[], &refs)
                .await
                .unwrap()
                .is_none()
        );
    }
}
