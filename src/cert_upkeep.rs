//! Keeping certificate trust current while serving: reload it when certificates change (any
//! process, through the registry's change feed), fetch imported CAs' CRLs on a schedule, re-sign
//! mqgate CAs' CRLs before they go stale, and report unusable CRLs and expiring certificates.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};

use crate::admin::Admin;
use crate::auth::cert::MAX_DER_BYTES;
use crate::auth::trust::TrustStore;
use crate::clock::secs;
use crate::config::CertConfig;
use crate::gate::Gate;
use crate::registry::{Change, CrlUpdate, Store, StoredCa, Tenant};

/// How often the schedule looks at CAs and expiry.
const TICK: Duration = Duration::from_secs(30);
/// How long a CRL download may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(15);
/// How often expiring certificates are logged while there are any.
const EXPIRY_LOG_EVERY: i64 = 3600;

/// Starts the reload watcher and the schedule; both stop when the gate is dropped.
pub fn spawn(gate: &Arc<Gate>, config: CertConfig) {
    spawn_reloader(gate);
    let weak = Arc::downgrade(gate);
    tokio::spawn(async move {
        let mut state = Upkeep {
            config,
            last_fetch: HashMap::new(),
            last_expiry_log: i64::MIN,
            warned_no_secret: false,
        };
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(gate) = weak.upgrade() else { return };
            if gate.registry().store().is_closed() {
                return;
            }
            state.run_once(&gate).await;
        }
    });
}

fn spawn_reloader(gate: &Arc<Gate>) {
    let mut rx = gate.registry().watch_changes();
    let weak = Arc::downgrade(gate);
    tokio::spawn(async move {
        loop {
            let change = match rx.recv().await {
                Ok(c @ (Change::Certs(_) | Change::Resync)) => c,
                Ok(_) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Change::Resync,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            let Some(gate) = weak.upgrade() else { return };
            if reload_trust(gate.trust(), gate.registry().store()).await {
                gate.trust().announce(change);
            }
        }
    });
}

async fn reload_trust(trust: &TrustStore, store: &Store) -> bool {
    match trust.reload(store).await {
        Ok(()) => {
            tracing::debug!("certificate trust reloaded");
            true
        }
        Err(e) => {
            tracing::error!(error = %e, "reloading certificate trust failed; the previous trust stays in force");
            false
        }
    }
}

struct Upkeep {
    config: CertConfig,
    last_fetch: HashMap<i64, i64>,
    last_expiry_log: i64,
    warned_no_secret: bool,
}

impl Upkeep {
    async fn run_once(&mut self, gate: &Gate) {
        let store = gate.registry().store().clone();
        let now = gate.clock().now();
        let admin = Admin::new(store.clone(), gate.clock().clone());
        let tenants = match store.list_tenants().await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "certificate upkeep: listing tenants failed");
                return;
            }
        };
        let mut changed = false;
        for t in &tenants {
            let cas = match store.list_cas(t.id).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, tenant = %t.name, "certificate upkeep: listing CAs failed");
                    continue;
                }
            };
            for ca in cas.iter().filter(|c| c.key_sealed.is_none()) {
                if let Some(url) = &ca.crl_url
                    && self.fetch_due(ca, now)
                {
                    self.last_fetch.insert(ca.id, now);
                    fetch_crl(&admin, t, ca, url).await;
                    changed = true;
                }
            }
            if cas.iter().any(|c| self.publish_due(c, now)) {
                changed |= self.republish(&admin, t).await;
            }
        }
        if changed && reload_trust(gate.trust(), &store).await {
            gate.trust().announce(Change::Resync);
        }
        self.report(gate.trust(), now);
    }

    fn fetch_due(&self, ca: &StoredCa, now: i64) -> bool {
        fetch_due(
            self.last_fetch.get(&ca.id).copied(),
            ca.crl_next_update,
            now,
            secs(self.config.crl_refresh),
        )
    }

    fn publish_due(&self, ca: &StoredCa, now: i64) -> bool {
        ca.key_sealed.is_some()
            && publish_due(ca.crl_next_update, now, secs(self.config.crl_validity))
    }

    async fn republish(&mut self, admin: &Admin, t: &Tenant) -> bool {
        let sealer = match self.config.sealer() {
            Ok(s) => s,
            Err(_) => {
                if !std::mem::replace(&mut self.warned_no_secret, true) {
                    tracing::warn!(
                        "MQGATE_CA_KEY_SECRET is not set: CRLs of mqgate CAs are not re-signed by this server (mqgate's own checks do not need them; brokers reading the CRL files do)"
                    );
                }
                return false;
            }
        };
        match admin
            .crl_publish(
                Some(&t.name),
                self.config.crl_validity,
                Some(&self.config.crl_dir),
                &sealer,
            )
            .await
        {
            Ok(done) => {
                for p in done {
                    tracing::info!(tenant = %p.tenant, ca = %p.ca, number = p.number, next_update = p.next_update, "CRL re-signed");
                }
                true
            }
            Err(e) => {
                tracing::error!(tenant = %t.name, error = %e, "re-signing CRLs failed");
                false
            }
        }
    }

    fn report(&mut self, trust: &TrustStore, now: i64) {
        let snap = trust.current();
        for ca in snap.ca_status(now) {
            if matches!(ca.crl, "stale" | "unavailable") {
                tracing::error!(tenant = %ca.tenant, ca = %ca.name, state = ca.crl, detail = ca.detail.as_deref().unwrap_or(""), "CRL unusable: certificates of this CA are refused unless crl_failure = allow");
            }
        }
        let expiring = snap.expiring(now + trust.expiry_warning());
        if !expiring.is_empty() && now - self.last_expiry_log >= EXPIRY_LOG_EVERY {
            self.last_expiry_log = now;
            let first: Vec<&str> = expiring
                .iter()
                .take(5)
                .map(|c| c.client_id.as_str())
                .collect();
            tracing::warn!(count = expiring.len(), soonest = ?first, "device certificates expire soon (see `mqgate cert expiring`)");
        }
    }
}

/// Whether an imported CA's CRL should be fetched now: never fetched by this server, or the
/// refresh interval is over, or the held CRL ends within one refresh interval (then every tick
/// until a fresh one arrives).
fn fetch_due(last: Option<i64>, next_update: Option<i64>, now: i64, refresh: i64) -> bool {
    let Some(last) = last else { return true };
    let interval_over = now - last >= refresh;
    let nearly_stale = next_update.is_none_or(|n| n - now <= refresh);
    interval_over || (nearly_stale && now - last >= TICK.as_secs() as i64)
}

/// Whether an mqgate CA's CRL should be re-signed: none yet, or half its validity is gone.
fn publish_due(next_update: Option<i64>, now: i64, validity: i64) -> bool {
    next_update.is_none_or(|n| n - now <= validity / 2)
}

async fn fetch_crl(admin: &Admin, t: &Tenant, ca: &StoredCa, url: &str) {
    match download(url).await {
        Ok(body) => match admin.accept_crl(t.id, ca, &body).await {
            Ok(crl) => {
                tracing::info!(tenant = %t.name, ca = %ca.name, number = crl.number, next_update = crl.next_update, "CRL fetched")
            }
            Err(e) => {
                tracing::error!(tenant = %t.name, ca = %ca.name, %url, error = %e, "fetched CRL refused")
            }
        },
        Err(why) => {
            tracing::error!(tenant = %t.name, ca = %ca.name, %url, error = %why, "CRL fetch failed");
            let note = format!("fetch failed: {why}");
            if let Err(e) = admin
                .store()
                .update_ca_crl(t.id, ca.id, CrlUpdate::Refused(&note))
                .await
            {
                tracing::warn!(error = %e, "recording the CRL fetch failure failed");
            }
        }
    }
}

/// GETs `url` (plain HTTP), at most [`MAX_DER_BYTES`] of body, within [`FETCH_TIMEOUT`].
pub async fn download(url: &str) -> Result<Bytes, String> {
    let uri: http::Uri = url.parse().map_err(|_| "not a URL".to_string())?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<Bytes>>();
    let fetch = async {
        let resp = client.get(uri).await.map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status()));
        }
        Limited::new(resp.into_body(), MAX_DER_BYTES * 2)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| e.to_string())
    };
    tokio::time::timeout(FETCH_TIMEOUT, fetch)
        .await
        .map_err(|_| "timed out".to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3600;

    #[test]
    fn crls_are_fetched_on_schedule_and_before_they_go_stale() {
        let now = 1_800_000_000;
        assert!(fetch_due(None, None, now, H), "first round fetches");
        assert!(!fetch_due(Some(now - 60), Some(now + 7 * 24 * H), now, H));
        assert!(
            fetch_due(Some(now - H), Some(now + 7 * 24 * H), now, H),
            "interval over"
        );
        // Next update within the refresh interval: every tick, not every hour.
        assert!(fetch_due(Some(now - 30), Some(now + 600), now, H));
        assert!(!fetch_due(Some(now - 10), Some(now + 600), now, H));
        assert!(
            fetch_due(Some(now - 30), None, now, H),
            "no CRL yet: keep trying"
        );
    }

    #[test]
    fn own_crls_are_re_signed_at_half_life() {
        let now = 1_800_000_000;
        let week = 7 * 24 * H;
        assert!(publish_due(None, now, week));
        assert!(!publish_due(Some(now + week), now, week));
        assert!(publish_due(Some(now + week / 2), now, week));
        assert!(publish_due(Some(now - 1), now, week));
    }
}
