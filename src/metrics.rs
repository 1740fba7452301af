//! Counters for `/metrics` (Prometheus text format). Allows are plain atomics on the hot path;
//! denies, rarer, are counted by cause; refused publishes by tenant.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// The process's counters.
#[derive(Default)]
pub struct Metrics {
    connect_allowed: AtomicU64,
    authorize_allowed: AtomicU64,
    denied: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    rate_limited: Mutex<BTreeMap<String, u64>>,
    broker: [AtomicU64; BROKER_EVENTS.len()],
    outage: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    kicks: Mutex<BTreeMap<&'static str, u64>>,
    read_ahead_fills: AtomicU64,
}

/// The embedded broker's event labels (sessions opened and how they ended, refusals).
pub const BROKER_EVENTS: [&str; 23] = [
    "session_opened",
    "connect_refused",
    "connect_timeout",
    "session_taken_over",
    "publish_refused",
    "subscription_refused",
    "subscription_revoked",
    "client_disconnect",
    "closed",
    "keep_alive_timeout",
    "taken_over",
    "revoked",
    "shutdown",
    "protocol_error",
    "router_closed",
    "will_delayed",
    "session_expired",
    "subscribe_too_many_filters",
    "shared_subscription_refused",
    "subscriptions_exceeded",
    "retained_exceeded",
    "unauthenticated_refused",
    "peer_refused_at_accept",
];

/// Which question a decision answered.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// CONNECT.
    Connect,
    /// PUBLISH / SUBSCRIBE.
    Authorize,
}

impl Metrics {
    /// Counts an allow.
    pub fn allowed(&self, kind: Kind) {
        let c = match kind {
            Kind::Connect => &self.connect_allowed,
            Kind::Authorize => &self.authorize_allowed,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a deny (or ignore) by its cause label.
    pub fn denied(&self, kind: Kind, cause: &'static str) {
        let kind = match kind {
            Kind::Connect => "connect",
            Kind::Authorize => "authorize",
        };
        *lock(&self.denied).entry((kind, cause)).or_default() += 1;
    }

    /// Counts a decision made while the registry was known unreachable, by verdict.
    pub fn during_outage(&self, kind: Kind, verdict: &'static str) {
        let kind = match kind {
            Kind::Connect => "connect",
            Kind::Authorize => "authorize",
        };
        *lock(&self.outage).entry((kind, verdict)).or_default() += 1;
    }

    /// Counts publishes refused by ingestion limits for `tenant`.
    pub fn rate_limited(&self, tenant: &str, n: u64) {
        *lock(&self.rate_limited)
            .entry(tenant.to_string())
            .or_default() += n;
    }

    /// Counts an embedded-broker event (one of [`BROKER_EVENTS`]; others are not counted).
    pub fn broker_event(&self, event: &'static str) {
        debug_assert!(
            BROKER_EVENTS.contains(&event),
            "unknown broker event {event}"
        );
        if let Some(i) = BROKER_EVENTS.iter().position(|e| *e == event) {
            self.broker[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts an EMQX kick attempt's outcome (`kicked`, `not_connected`, `retried`, `failed`,
    /// `rejected`).
    pub fn emqx_kick(&self, outcome: &'static str) {
        *lock(&self.kicks).entry(outcome).or_default() += 1;
    }

    /// Counts a cache fill started by the HTTP read-ahead of pipelined requests.
    pub fn read_ahead_fill(&self) {
        self.read_ahead_fills.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP mqgate_decisions_total Decisions by kind, verdict and cause.\n# TYPE mqgate_decisions_total counter\n");
        for (kind, c) in [
            ("connect", &self.connect_allowed),
            ("authorize", &self.authorize_allowed),
        ] {
            let n = c.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "mqgate_decisions_total{{kind=\"{kind}\",verdict=\"allow\",cause=\"\"}} {n}"
            );
        }
        for ((kind, cause), n) in lock(&self.denied).iter() {
            let _ = writeln!(
                out,
                "mqgate_decisions_total{{kind=\"{kind}\",verdict=\"deny\",cause=\"{cause}\"}} {n}"
            );
        }
        out.push_str("# HELP mqgate_rate_limited_total Publishes refused by ingestion limits, by tenant.\n# TYPE mqgate_rate_limited_total counter\n");
        for (tenant, n) in lock(&self.rate_limited).iter() {
            let _ = writeln!(
                out,
                "mqgate_rate_limited_total{{tenant=\"{}\"}} {n}",
                escape(tenant)
            );
        }
        out.push_str("# HELP mqgate_broker_events_total Embedded broker sessions and refusals, by event.\n# TYPE mqgate_broker_events_total counter\n");
        for (event, n) in BROKER_EVENTS.iter().zip(&self.broker) {
            let n = n.load(Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(out, "mqgate_broker_events_total{{event=\"{event}\"}} {n}");
            }
        }
        out.push_str("# HELP mqgate_outage_decisions_total Decisions made while the registry was unreachable, by kind and verdict.\n# TYPE mqgate_outage_decisions_total counter\n");
        for ((kind, verdict), n) in lock(&self.outage).iter() {
            let _ = writeln!(
                out,
                "mqgate_outage_decisions_total{{kind=\"{kind}\",verdict=\"{verdict}\"}} {n}"
            );
        }
        out.push_str("# HELP mqgate_emqx_kicks_total EMQX management API kicks (DELETE /api/v5/clients/{clientid}), by outcome.\n# TYPE mqgate_emqx_kicks_total counter\n");
        for (outcome, n) in lock(&self.kicks).iter() {
            let _ = writeln!(out, "mqgate_emqx_kicks_total{{outcome=\"{outcome}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP mqgate_http_read_ahead_fills_total Cache fills started for pipelined EMQX authn requests before their turn.\n# TYPE mqgate_http_read_ahead_fills_total counter\nmqgate_http_read_ahead_fills_total {}",
            self.read_ahead_fills.load(Ordering::Relaxed)
        );
        out
    }
}

/// Prometheus gauges of the trust in force: certificates near expiry per tenant, and each CA's
/// CRL state.
pub fn render_trust(trust: &crate::auth::trust::TrustStore, now: i64) -> String {
    let snap = trust.current();
    let mut out = String::from(
        "# HELP mqgate_certificates_expiring Unrevoked device certificates ending within cert_expiry_warning (expired included), by tenant.\n# TYPE mqgate_certificates_expiring gauge\n",
    );
    let mut per_tenant: BTreeMap<&str, u64> = snap.tenant_names().map(|t| (t, 0)).collect();
    for c in snap.expiring(now + trust.expiry_warning()) {
        *per_tenant
            .entry(snap.tenant_name(c.tenant_id).unwrap_or_default())
            .or_default() += 1;
    }
    for (tenant, n) in per_tenant {
        let tenant = escape(tenant);
        let _ = writeln!(
            out,
            "mqgate_certificates_expiring{{tenant=\"{tenant}\"}} {n}"
        );
    }
    out.push_str("# HELP mqgate_crl_usable Whether each CA's revocation information is usable (0: unavailable or stale).\n# TYPE mqgate_crl_usable gauge\n");
    for ca in snap.ca_status(now) {
        let ok = u8::from(!matches!(ca.crl, "stale" | "unavailable"));
        let (tenant, name) = (escape(&ca.tenant), escape(&ca.name));
        let _ = writeln!(
            out,
            "mqgate_crl_usable{{tenant=\"{tenant}\",ca=\"{name}\",state=\"{}\"}} {ok}",
            ca.crl
        );
    }
    out
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Escapes a label value (tenant names are restricted, but the format must hold regardless).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_in_prometheus_text_format() {
        let m = Metrics::default();
        m.allowed(Kind::Authorize);
        m.allowed(Kind::Authorize);
        m.denied(Kind::Connect, "bad_secret");
        m.rate_limited("acme", 3);
        m.rate_limited("acme", 2);
        let text = m.render();
        assert!(text.contains(
            "mqgate_decisions_total{kind=\"authorize\",verdict=\"allow\",cause=\"\"} 2\n"
        ));
        assert!(text.contains(
            "mqgate_decisions_total{kind=\"connect\",verdict=\"deny\",cause=\"bad_secret\"} 1\n"
        ));
        assert!(text.contains("mqgate_rate_limited_total{tenant=\"acme\"} 5\n"));
    }

    #[test]
    fn decisions_during_an_outage_are_counted_by_kind_and_verdict() {
        let m = Metrics::default();
        m.during_outage(Kind::Connect, "allow");
        m.during_outage(Kind::Connect, "deny");
        m.during_outage(Kind::Connect, "deny");
        let text = m.render();
        assert!(
            text.contains("mqgate_outage_decisions_total{kind=\"connect\",verdict=\"deny\"} 2\n")
        );
        assert!(
            text.contains("mqgate_outage_decisions_total{kind=\"connect\",verdict=\"allow\"} 1\n")
        );
    }
}
