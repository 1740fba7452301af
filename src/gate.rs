//! The one async entry every transport calls: cache → verify → core → audit.
//!
//! Transports translate their wire format into a [`ConnectRequest`] or an authorization call and
//! translate the [`Decision`] back; everything else (fetching the device, verifying secrets off the
//! async threads, upgrading legacy hashes, recording the outcome) happens here, once.

pub mod brute;

pub use brute::spawn_lockout_feed;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::acl::Action;
use crate::audit::sink::AuditSink;
use crate::audit::{AuditEvent, AuditRecord};
use crate::auth::secret::{self, SecretVerifier, VerifiedSecret};
use crate::auth::trust::{CertIdentity, CertRejection, CrlFailure, TrustStore};
use crate::clock::Clock;
use crate::core::ids::ClientId;
use crate::core::{
    self, Cause, CertOutcome, ConnectFacts, ConnectPolicy, Decision, DeviceView, SecretOutcome,
    UnknownClient, Verdict,
};
use crate::limit::ingest::{IngestLimiter, LimitDefaults, LimitScope};
use crate::limit::lockout::{FailureGuard, Locked, LockoutEntry, LockoutPolicy, Reserved};
use crate::metrics::{Kind as MetricKind, Metrics};
use crate::registry::cache::CachedRegistry;
use crate::registry::{Change, CredentialKind};

/// A client certificate as a transport received it.
#[derive(Debug, Clone)]
pub enum PresentedCert {
    /// The certificate itself (DER), e.g. EMQX `${cert_pem}`: mqgate verifies it.
    Der(Vec<u8>),
    /// Only its names (EMQX `${cert_common_name}` / `${cert_subject}`): the broker verified it.
    Names {
        /// Common name.
        common_name: Option<String>,
        /// Subject DN.
        subject: Option<String>,
    },
    /// Verified by mqgate's own TLS listener.
    Verified(CertIdentity),
}

/// A CONNECT as any transport sees it. `Debug` never shows the secret.
#[derive(Debug)]
pub struct ConnectRequest {
    /// MQTT client id, parsed where the transport received it (an id that cannot work never
    /// reaches the gate).
    pub client_id: ClientId,
    /// MQTT username, if sent.
    pub username: Option<String>,
    /// MQTT password / device token, if sent.
    pub secret: Option<SecretString>,
    /// The device's address as the broker saw it.
    pub peer: Option<String>,
    /// The client certificate, when the device connected over TLS with one.
    pub cert: Option<PresentedCert>,
}

/// A CONNECT decision and the device it concerned (for broker-specific extras).
#[derive(Debug, Clone)]
pub struct ConnectOutcome {
    /// The decision.
    pub decision: Decision,
    /// The device, when known.
    pub device: Option<Arc<DeviceView>>,
}

/// Policy knobs of the gate.
#[derive(Debug, Clone, Copy)]
pub struct GateOptions {
    /// Answer for unknown client ids.
    pub unknown: UnknownClient,
    /// Brute-force thresholds.
    pub lockout: LockoutPolicy,
    /// Ingestion limit defaults.
    pub limits: LimitDefaults,
    /// Allow on a certificate's names alone (no certificate mqgate could verify): the operator's
    /// statement that every CA the broker trusts is one mqgate would trust for these devices.
    pub trust_cert_names: bool,
}

/// The gate: shared by every transport.
pub struct Gate {
    registry: Arc<CachedRegistry>,
    verifier: SecretVerifier,
    clock: Clock,
    unknown: UnknownClient,
    trust_cert_names: bool,
    guard: Mutex<FailureGuard>,
    limiter: IngestLimiter,
    audit: Option<Arc<AuditSink>>,
    metrics: Metrics,
    trust: Arc<TrustStore>,
    deadline: Duration,
    fault: Arc<crate::fault::Fault>,
    refusals: crate::audit::refusals::RefusalTally,
    shared: Option<brute::Shared>,
}

/// The decision deadline unless [`Gate::with_decision_timeout`] says otherwise (below EMQX's
/// default `request_timeout` of 5 s).
pub const DECISION_TIMEOUT: Duration = Duration::from_secs(2);

impl Gate {
    /// Builds the gate.
    pub fn new(
        registry: Arc<CachedRegistry>,
        verifier: SecretVerifier,
        clock: Clock,
        options: GateOptions,
    ) -> Self {
        Gate {
            registry,
            verifier,
            clock,
            unknown: options.unknown,
            trust_cert_names: options.trust_cert_names,
            guard: Mutex::new(FailureGuard::new(options.lockout)),
            limiter: IngestLimiter::new(options.limits),
            audit: None,
            metrics: Metrics::default(),
            trust: Arc::new(TrustStore::new(CrlFailure::Deny, 0)),
            deadline: DECISION_TIMEOUT,
            fault: Arc::default(),
            refusals: Default::default(),
            shared: None,
        }
    }

    /// Every CONNECT and authorization answer arrives within `deadline`, whatever the store or
    /// the password queue do: past it the answer is a deny. The registry's own fill deadline
    /// must be shorter (the app gives it three quarters), so a store that does not answer is
    /// seen as down rather than merely cut off here.
    pub fn with_decision_timeout(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Writes what the audit queue holds until `deadline` (shutdown); returns how many entries
    /// could not be confirmed written (still queued or in a failing write), and how many the full
    /// queue had dropped.
    pub async fn finish_audit(&self, deadline: tokio::time::Instant) -> (u64, u64) {
        match &self.audit {
            Some(sink) => {
                sink.flush_until(deadline).await;
                (sink.pending(), sink.dropped())
            }
            None => (0, 0),
        }
    }

    /// Audit entries not yet written (see [`Gate::finish_audit`]).
    pub fn audit_pending(&self) -> u64 {
        self.audit.as_ref().map_or(0, |s| s.pending())
    }

    /// The process's fatal fault (raised when the embedded router dies).
    pub fn fault(&self) -> &Arc<crate::fault::Fault> {
        &self.fault
    }

    /// The decision counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Writes the audit events queued so far (before the store closes at shutdown).
    pub async fn flush_audit(&self) {
        if let Some(sink) = &self.audit {
            sink.flush().await;
        }
    }

    /// Records outcomes in the audit chain through `sink`.
    pub fn with_audit(mut self, sink: Arc<AuditSink>) -> Self {
        self.audit = Some(sink);
        self
    }

    /// Decides certificates against `trust`.
    pub fn with_trust(mut self, trust: Arc<TrustStore>) -> Self {
        self.trust = trust;
        self
    }

    /// The clock decisions are made with.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The certificate trust in force.
    pub fn trust(&self) -> &Arc<TrustStore> {
        &self.trust
    }

    /// Records an operator action taken through the server (rule reload, lockout clear).
    pub fn record_admin(&self, action: &str, subject: &str) {
        tracing::info!(target: "mqgate::audit", event = "admin", action, subject);
        let event = AuditEvent::Admin {
            action: action.into(),
            subject: subject.into(),
        };
        self.audit(None, event);
    }

    /// Records how an EMQX kick ended (see [`crate::kicker`]).
    pub fn record_kick(&self, tenant: i64, client_id: &str, reason: &str, outcome: &'static str) {
        let event = AuditEvent::Kick {
            client_id: client_id.into(),
            reason: reason.into(),
            outcome,
        };
        self.audit(Some(tenant), event);
    }

    fn audit(&self, tenant: Option<i64>, event: AuditEvent) {
        if let Some(sink) = &self.audit {
            sink.record(AuditRecord {
                at_ms: self.clock.now_ms(),
                tenant,
                event,
            });
        }
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, FailureGuard> {
        self.guard.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Current lockouts (`mqgate lockout list`).
    pub fn lockouts(&self) -> Vec<LockoutEntry> {
        self.guard().list(self.clock.now_ms())
    }

    /// Clears a client id's or address's lockout (`mqgate lockout clear`), here and, through
    /// the registry, on every replica.
    pub async fn clear_lockout(&self, key: &str) -> bool {
        let cleared = self.guard().clear(key);
        let shared = self.clear_shared(key).await;
        self.record_admin("lockout.clear", key);
        cleared || shared
    }

    /// Forgets idle brute-force state and full buckets, and records the publishes refused for
    /// rate since the last sweep, one audit line per tenant (called periodically).
    pub fn sweep(&self) {
        let now = self.clock.now_ms();
        self.guard().sweep(now);
        self.limiter.sweep(now);
        for (tenant, refused) in self.limiter.take_refused() {
            tracing::warn!(target: "mqgate::audit", event = "rate_limited", tenant = tenant.0, refused, "publishes refused by ingestion limits");
            self.audit(Some(tenant.0), AuditEvent::RateLimited { refused });
        }
        self.sweep_refusals();
    }

    /// Records the refused publishes and subscriptions counted (not recorded one by one) since
    /// the last sweep, and logs the audit events dropped meanwhile, once per sweep.
    fn sweep_refusals(&self) {
        for more in self.refusals.take() {
            let (client_id, action, refused) = (more.client_id, more.action, more.refused);
            tracing::info!(target: "mqgate::audit", event = "denied_more", %client_id, action, refused, "more refusals since the first");
            let event = AuditEvent::DeniedMore {
                client_id,
                action,
                refused,
            };
            self.audit(None, event);
        }
        if let Some(sink) = &self.audit {
            for (kind, dropped) in sink.take_dropped() {
                tracing::error!(kind, dropped, "audit queue full: events dropped");
            }
        }
    }

    /// `mqgate_audit_dropped_total`, `mqgate_familiar_writes_dropped_total`,
    /// `mqgate_shared_failure_writes_skipped_total` and `mqgate_familiar_writes_pending` for
    /// `/metrics`.
    pub fn render_audit_metrics(&self) -> String {
        let audit = self
            .audit
            .as_ref()
            .map(|s| s.render_metrics())
            .unwrap_or_default();
        format!(
            "{audit}# HELP mqgate_familiar_writes_dropped_total Familiar-address writes the registry did not get.\n\
             # TYPE mqgate_familiar_writes_dropped_total counter\n\
             mqgate_familiar_writes_dropped_total {}\n\
             # HELP mqgate_shared_failure_writes_skipped_total Failed attempts counted in this process only (shared failure-write budget spent).\n\
             # TYPE mqgate_shared_failure_writes_skipped_total counter\n\
             mqgate_shared_failure_writes_skipped_total {}\n\
             # HELP mqgate_familiar_writes_pending Familiar-address writes queued or held back while the cache fills from the registry.\n\
             # TYPE mqgate_familiar_writes_pending gauge\n\
             mqgate_familiar_writes_pending {}\n",
            self.familiar_dropped(),
            self.shared_writes_skipped(),
            self.familiar_pending()
        )
    }

    /// Whether ingestion limits apply to `device` (then EMQX must ask per publish, so its authn
    /// answer carries no `acl` list).
    pub fn limits_apply(&self, device: &DeviceView) -> bool {
        self.limiter
            .effective(device.device_rate(), device.tenant_rate())
            != (None, None)
    }

    /// The registry behind the gate.
    pub fn registry(&self) -> &Arc<CachedRegistry> {
        &self.registry
    }

    /// Decides a CONNECT, within the decision deadline (past it: a deny, `interrupted`).
    pub async fn connect(&self, req: ConnectRequest) -> ConnectOutcome {
        let late = ConnectRequest {
            client_id: req.client_id.clone(),
            username: None,
            secret: None,
            peer: req.peer.clone(),
            cert: None,
        };
        match tokio::time::timeout(self.deadline, self.decide_connect(req)).await {
            Ok(outcome) => outcome,
            Err(_) => {
                tracing::warn!(client_id = %late.client_id, "no CONNECT decision within the deadline");
                self.record_connect(&late, None, Decision::deny(Cause::Interrupted))
            }
        }
    }

    async fn decide_connect(&self, req: ConnectRequest) -> ConnectOutcome {
        // A CONNECT outcome is always audited: while the audit trail lags, CONNECTs wait for it
        // (briefly, and not while the registry is down and nothing drains it).
        if let Some(sink) = &self.audit
            && !self.registry.health().is_down()
        {
            let _ = sink.room().await;
        }
        let peer = req.peer.as_deref().unwrap_or("unknown");
        let client_id = req.client_id.as_str();
        let policy = ConnectPolicy {
            unknown: self.unknown,
            trust_cert_names: self.trust_cert_names,
        };
        let locked = self.guard().check(client_id, peer, self.clock.now_ms());
        if let Some(locked) = locked {
            // A client id's lockout spares the device's familiar addresses, which another
            // replica, or this one before a restart, may have seen. The refusal is immediate,
            // also for a password-style secret: a dummy verify here, as an unknown id gets, would
            // let a flood of a locked id from many addresses reach argon2 once per attempt.
            let spared = matches!(locked, Locked::ClientId { .. })
                && self.familiar_in_store(client_id, peer).await;
            if !spared {
                let facts = ConnectFacts {
                    locked: Some(locked),
                    ..ConnectFacts::new(policy, self.clock.now())
                };
                return self.record_connect(&req, None, core::decide_connect(&facts));
            }
        }
        let device = match self.registry.device(client_id).await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, client_id = %req.client_id, "registry lookup failed");
                return self.record_connect(&req, None, Decision::deny(Cause::StoreUnavailable));
            }
        };
        let secret = req
            .secret
            .as_ref()
            .filter(|s| !s.expose_secret().is_empty());
        let mut facts = ConnectFacts {
            device: device.as_deref(),
            username: req.username.as_deref(),
            cert: req.cert.as_ref().map(|c| self.identify(client_id, c)),
            secret: match secret {
                Some(_) => SecretOutcome::Unverified,
                None => SecretOutcome::Absent,
            },
            ..ConnectFacts::new(policy, self.clock.now())
        };
        // A password verify is slow: its failure slot is taken before it starts, so concurrent
        // attempts cannot all reach the hash before the first failure is counted.
        let slot = if core::password_verify_ahead(&facts) {
            match self.reserve_known(client_id, peer).await {
                Ok(slot) => Some(slot),
                Err(locked) => {
                    facts.locked = Some(locked);
                    let d = core::decide_connect(&facts);
                    return self.record_connect(&req, device, d);
                }
            }
        } else {
            None
        };
        if let Some(secret) = secret
            && let Some(dev) = core::secret_to_verify(&facts)
        {
            let now = self.clock.now();
            facts.secret = self.verify_secret(dev, secret, now).await;
            facts.now = now;
        }
        let decision = core::decide_connect(&facts);
        if let (Some(dev), Some(secret), SecretOutcome::Verified(Some(proof))) =
            (facts.device, secret, &facts.secret)
            && proof.kind() == CredentialKind::Bcrypt
            && decision.is_allow()
        {
            self.upgrade_legacy_hash(dev, proof.clone(), secret.clone());
        }
        let slot = match (slot, secret) {
            (None, Some(secret)) if looks_like_a_password(secret, &decision) => {
                self.pad_refusal(device.is_some().then_some(client_id), peer, secret)
                    .await
            }
            (slot, _) => slot,
        };
        self.count(device.as_deref(), client_id, peer, &decision, slot)
            .await;
        self.record_connect(&req, device, decision)
    }

    /// A refusal that checked no password costs a dummy verify, under the same failure slots as
    /// a real one (so probing with it is as limited as guessing). Refused slots skip the pad: the
    /// answer is then the immediate refusal every client id gets when busy.
    async fn pad_refusal(
        &self,
        client_id: Option<&str>,
        peer: &str,
        secret: &SecretString,
    ) -> Option<Slot<'_>> {
        let slot = self.reserve(client_id, peer).ok()?;
        self.verifier.dummy_verify(secret).await;
        Some(slot)
    }

    /// [`Gate::reserve`] for a known client id: a full client-id window spares the device's
    /// familiar addresses known to the registry.
    async fn reserve_known(&self, client_id: &str, peer: &str) -> Result<Slot<'_>, Locked> {
        match self.reserve(Some(client_id), peer) {
            Err(Locked::Busy { of: "client_id" })
                if self.familiar_in_store(client_id, peer).await =>
            {
                self.reserve(Some(client_id), peer)
            }
            taken => taken,
        }
    }

    fn reserve(&self, client_id: Option<&str>, peer: &str) -> Result<Slot<'_>, Locked> {
        let taken = self.guard().reserve(client_id, peer, self.clock.now_ms())?;
        Ok(Slot {
            gate: self,
            taken: Some(taken),
            peer: peer.to_string(),
        })
    }

    /// argon2/bcrypt verifies started so far (tests and benchmarks watch the brute-force cost).
    pub fn password_verifies(&self) -> u64 {
        self.verifier.slow_verifies()
    }

    /// What the trust in force makes of a presented certificate.
    fn identify(&self, client_id: &str, cert: &PresentedCert) -> CertOutcome {
        let now = self.clock.now();
        let identity = match cert {
            PresentedCert::Der(der) => self.trust.current().identify(der, &[], now),
            PresentedCert::Names {
                common_name,
                subject,
            } => self.trust.current().identify_by_names(
                client_id,
                common_name.as_deref(),
                subject.as_deref(),
                now,
            ),
            PresentedCert::Verified(id) => Ok(id.clone()),
        };
        CertOutcome {
            identity,
            names_only: matches!(cert, PresentedCert::Names { .. }),
        }
    }

    /// Runs the secret verifiers (token digests here, passwords on the blocking pool) against
    /// the device's credentials as of `now`.
    async fn verify_secret(
        &self,
        dev: &DeviceView,
        secret: &SecretString,
        now: i64,
    ) -> SecretOutcome {
        match self
            .verifier
            .verify(secret, &dev.tokens(), &dev.password_candidates(now))
            .await
        {
            Ok(proof) => SecretOutcome::Verified(proof),
            Err(e) => {
                tracing::warn!(error = %e, "secret verification interrupted");
                SecretOutcome::Interrupted
            }
        }
    }

    /// Re-hashes a legacy bcrypt password as argon2id after it verified, in the background.
    fn upgrade_legacy_hash(&self, dev: &DeviceView, proof: VerifiedSecret, secret: SecretString) {
        let registry = Arc::clone(&self.registry);
        let (tenant, client_id) = (dev.tenant_id(), dev.client_id.to_string());
        tokio::spawn(async move {
            let hashed = tokio::task::spawn_blocking(move || secret::hash_password(&secret)).await;
            let Ok(Ok(hash)) = hashed else {
                tracing::warn!(%client_id, "argon2id re-hash of a bcrypt password failed");
                return;
            };
            let store = registry.store();
            let id = proof.credential_id();
            match store
                .replace_credential_digest(tenant, id, CredentialKind::Argon2, &hash)
                .await
            {
                Ok(()) => {
                    tracing::info!(target: "mqgate::audit", event = "credential_upgraded", tenant = tenant.0, %client_id, credential_id = id, "bcrypt hash upgraded to argon2id");
                    registry
                        .invalidate(&Change::Device { tenant, client_id })
                        .await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, %client_id, "storing the upgraded hash failed")
                }
            }
        });
    }

    /// Draws an allowed publish from the device's and tenant's buckets.
    fn draw(&self, dev: &DeviceView) -> Result<(), LimitScope> {
        let limits = self.limiter.effective(dev.device_rate(), dev.tenant_rate());
        if limits == (None, None) {
            // No bucket to draw from: no clock read either (the embedded broker's hot path).
            return Ok(());
        }
        let taken = self.limiter.take(
            dev.tenant_id(),
            dev.client_id.as_str(),
            limits,
            self.clock.now_ms(),
        );
        if taken.is_err() {
            self.metrics.rate_limited(dev.tenant_name(), 1);
        }
        taken
    }

    fn count_decision(&self, kind: MetricKind, d: &Decision) {
        if self.registry.health().is_down() {
            self.metrics.during_outage(kind, d.verdict.as_str());
        }
        if d.is_allow() {
            self.metrics.allowed(kind);
        } else {
            self.metrics.denied(kind, d.cause.label());
        }
    }

    /// Feeds the brute-force guard: successes make the address familiar, failures count, a
    /// verify that could not finish counts against the address. The reserved slot is given back
    /// in the same lock, so no other attempt sees the window without this outcome.
    /// The failures counted here are counted in the registry too, and a new familiar address is
    /// queued for it (`gate::brute`).
    async fn count(
        &self,
        device: Option<&DeviceView>,
        client_id: &str,
        peer: &str,
        decision: &Decision,
        slot: Option<Slot<'_>>,
    ) {
        let now = self.clock.now_ms();
        let (locked, shared) = self.count_here(device, client_id, peer, decision, slot, now);
        let locked = match shared {
            Some(counted) => self.share_failure(counted, peer, now, locked).await,
            None => locked,
        };
        self.record_lockout(client_id, peer, locked);
    }

    /// The in-memory half of [`Gate::count`]: returns the lockout it caused and, for a failure
    /// to share, the client id its count took (`Some(None)`: the address alone).
    fn count_here<'c>(
        &self,
        device: Option<&DeviceView>,
        client_id: &'c str,
        peer: &str,
        decision: &Decision,
        slot: Option<Slot<'_>>,
        now: i64,
    ) -> (Option<Locked>, Option<Option<&'c str>>) {
        let mut guard = self.guard();
        if let Some(taken) = slot.and_then(|mut s| s.taken.take()) {
            guard.release(taken);
        }
        if decision.is_allow() {
            if guard.record_success(client_id, peer, now)
                && let Some(dev) = device
            {
                self.remember(dev, peer, now);
            }
            (None, None)
        } else if decision.cause == Cause::Interrupted {
            (guard.record_address_failure(peer, now), Some(None))
        } else if decision.verdict == Verdict::Deny && decision.cause.is_auth_failure() {
            let known = (decision.cause != Cause::UnknownClient).then_some(client_id);
            let counted = known.filter(|c| !guard.is_familiar(c, peer, now));
            (guard.record_failure(known, peer, now), Some(counted))
        } else {
            (None, None)
        }
    }

    fn record_lockout(&self, client_id: &str, peer: &str, locked: Option<Locked>) {
        {
            if let Some(locked) = locked {
                tracing::warn!(target: "mqgate::audit", event = "lockout", %client_id, peer, ?locked, "too many failed authentications");
                let scope = match locked {
                    Locked::ClientId { .. } => "client_id",
                    Locked::Address { .. } | Locked::Busy { .. } => "address",
                };
                let event = AuditEvent::Lockout {
                    client_id: client_id.into(),
                    peer: peer.into(),
                    scope,
                };
                self.audit(None, event);
            }
        }
    }

    fn record_connect(
        &self,
        req: &ConnectRequest,
        device: Option<Arc<DeviceView>>,
        decision: Decision,
    ) -> ConnectOutcome {
        let reason = decision.cause.explain();
        tracing::info!(
            target: "mqgate::audit",
            event = "connect",
            client_id = %req.client_id,
            tenant = device.as_ref().map(|d| d.tenant_id().0),
            peer = req.peer.as_deref().unwrap_or(""),
            verdict = ?decision.verdict,
            cause = decision.cause.label(),
            reason = %reason,
        );
        self.count_decision(MetricKind::Connect, &decision);
        self.audit(
            device.as_ref().map(|d| d.tenant_id().0),
            AuditEvent::Connect {
                client_id: req.client_id.to_string(),
                peer: req.peer.clone().unwrap_or_default(),
                verdict: decision.verdict.as_str(),
                cause: decision.cause.label(),
                reason,
            },
        );
        ConnectOutcome { decision, device }
    }

    /// Records a client certificate refused during a TLS handshake (the device never reached
    /// CONNECT): counted and audited like a refused CONNECT, under the certificate's common name.
    pub fn record_tls_refusal(&self, end_entity: &[u8], rejection: &CertRejection) {
        let client_id = crate::auth::cert::parse(end_entity)
            .ok()
            .and_then(|i| i.common_name)
            .unwrap_or_default();
        let decision = Decision::deny(Cause::CertRejected(rejection.clone()));
        self.count_decision(MetricKind::Connect, &decision);
        self.audit(
            None,
            AuditEvent::Connect {
                client_id,
                peer: String::new(),
                verdict: decision.verdict.as_str(),
                cause: decision.cause.label(),
                reason: format!("TLS handshake refused: {}", rejection.explain()),
            },
        );
    }

    /// Decides a PUBLISH or SUBSCRIBE by `client_id` on `topic`, within the decision deadline.
    pub async fn authorize(&self, client_id: &ClientId, action: Action, topic: &str) -> Decision {
        if let Some(decision) = self.authorize_cached(client_id, action, topic) {
            return decision;
        }
        // The miss path's future (fill, single flight, store query, deadline timer) is boxed, so
        // a caller's future that holds this one stays small.
        let lookup = Box::pin(tokio::time::timeout(
            self.deadline,
            self.registry.device(client_id.as_str()),
        ))
        .await;
        let device = match lookup.unwrap_or(Err(crate::registry::StoreError::Unavailable(
            "no answer within the decision deadline",
        ))) {
            Ok(device) => device,
            Err(e) => {
                tracing::error!(error = %e, %client_id, "registry lookup failed");
                let decision = Decision::deny(Cause::StoreUnavailable);
                return self.record_authorize(client_id.as_str(), action, topic, decision);
            }
        };
        self.decide_authorize(client_id, device.as_deref(), action, topic)
    }

    /// [`Gate::authorize`] when the cache holds the client id's entry (a device or a known
    /// unknown): the same decision, counted and audited alike, without awaiting; `None` (and
    /// nothing counted) when the cache does not know the client id.
    pub fn authorize_cached(
        &self,
        client_id: &ClientId,
        action: Action,
        topic: &str,
    ) -> Option<Decision> {
        let decision = self.registry.with_cached(client_id.as_str(), |device| {
            self.decide(device.map(Arc::as_ref), action, topic)
        })?;
        Some(self.record_authorize(client_id.as_str(), action, topic, decision))
    }

    fn decide_authorize(
        &self,
        client_id: &ClientId,
        device: Option<&DeviceView>,
        action: Action,
        topic: &str,
    ) -> Decision {
        let decision = self.decide(device, action, topic);
        self.record_authorize(client_id.as_str(), action, topic, decision)
    }

    /// The decision on a PUBLISH or SUBSCRIBE, its bucket drawn from (not yet counted or audited).
    fn decide(&self, device: Option<&DeviceView>, action: Action, topic: &str) -> Decision {
        core::decide_authz_metered(device, action, topic, self.unknown, |dev| self.draw(dev))
    }

    /// Decides a PUBLISH or SUBSCRIBE of a device the caller holds (the embedded broker keeps
    /// each live session's view and refreshes it on every registry change that concerns it, so
    /// its hot path skips the cache lookup). Same decision, buckets, metrics and audit as
    /// [`Gate::authorize`].
    pub fn authorize_device(&self, device: &DeviceView, action: Action, topic: &str) -> Decision {
        self.decide_authorize(&device.client_id, Some(device), action, topic)
    }

    fn record_authorize(
        &self,
        client_id: &str,
        action: Action,
        topic: &str,
        decision: Decision,
    ) -> Decision {
        self.count_decision(MetricKind::Authorize, &decision);
        // Rate-limit refusals are audited in aggregate by `sweep`, not per message; other
        // refusals in full once per device, action and sweep interval, then counted.
        if !decision.is_allow()
            && !matches!(decision.cause, Cause::RateLimited(_))
            && self.refusals.first(client_id, action.as_str())
        {
            let reason = decision.cause.explain();
            tracing::info!(
                target: "mqgate::audit",
                event = "authorize",
                %client_id,
                ?action,
                topic,
                verdict = ?decision.verdict,
                cause = decision.cause.label(),
                reason = %reason,
            );
            let event = AuditEvent::Denied {
                client_id: client_id.into(),
                action: action.as_str(),
                topic: topic.into(),
                cause: decision.cause.label(),
                reason,
            };
            self.audit(None, event);
        }
        decision
    }

    /// Re-decides a live session of the embedded broker after a registry change: `Allow` while
    /// the device is enabled and the credential it connected with still works, with the device's
    /// current view (`None`: keep the one held, the store could not be asked). A deny is logged
    /// and audited as a CONNECT-kind decision ("live session ended").
    pub async fn recheck_session(
        &self,
        client_id: &str,
        peer: &str,
        credential_id: Option<i64>,
        cert_chain: Option<&[rustls::pki_types::CertificateDer<'static>]>,
    ) -> (Decision, Option<Arc<DeviceView>>) {
        let device = match self.registry.device(client_id).await {
            Ok(d) => d,
            Err(e) => {
                // Keep the session: an unreachable store is not a revocation.
                tracing::warn!(error = %e, %client_id, "registry lookup failed on session re-check");
                return (Decision::allow(Cause::StoreUnavailable), None);
            }
        };
        let now = self.clock.now();
        // A certificate session also needs its certificate still trusted (revocation, CRLs).
        let certificate = || match cert_chain.and_then(|c| c.split_first()) {
            Some((ee, rest)) => self.trust.current().identify(ee, rest, now).map(drop),
            None => Ok(()),
        };
        let decision = core::decide_session(device.as_deref(), credential_id, now, certificate);
        if !decision.is_allow() {
            let reason = format!("live session ended: {}", decision.cause.explain());
            tracing::info!(target: "mqgate::audit", event = "session_revoked", %client_id, peer, cause = decision.cause.label(), reason = %reason);
            self.count_decision(MetricKind::Connect, &decision);
            let event = AuditEvent::Connect {
                client_id: client_id.into(),
                peer: peer.into(),
                verdict: decision.verdict.as_str(),
                cause: decision.cause.label(),
                reason,
            };
            self.audit(device.as_ref().map(|d| d.tenant_id().0), event);
        }
        (decision, device)
    }
}

/// A failure slot reserved for one slow verify. Dropped unsettled (the transport gave up on the
/// answer mid-verify) it counts as a failure of the address, like a timeout.
struct Slot<'a> {
    gate: &'a Gate,
    taken: Option<Reserved>,
    peer: String,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if let Some(taken) = self.taken.take() {
            let now = self.gate.clock.now_ms();
            let mut guard = self.gate.guard();
            guard.release(taken);
            guard.record_address_failure(&self.peer, now);
        }
    }
}

/// Whether a refusal must look like a password check from outside: a secret that is not an
/// mqgate token (those are checked in microseconds for every device alike) was presented and
/// refused for a reason that otherwise answers at once (unknown, disabled, token-only device).
fn looks_like_a_password(secret: &SecretString, decision: &Decision) -> bool {
    !secret.expose_secret().starts_with(secret::TOKEN_PREFIX)
        && matches!(
            decision.cause,
            Cause::UnknownClient
                | Cause::DeviceDisabled
                | Cause::BadSecret
                | Cause::UsernameMismatch
        )
}
