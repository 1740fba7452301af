//! What the edge refuses before the router sees it, beside the ACL: shared subscriptions (which
//! mqgate does not offer), subscriptions past a session's bound, retained messages past a
//! device's or tenant's bound. Each refusal has the answer a client expects and a metric label.

use std::collections::HashSet;

use rumqttd::protocol::SubscribeReasonCode;

use super::limits::BrokerLimits;

/// Why a subscription filter is refused before the ACL is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterRefusal {
    /// `$share/…`: shared subscriptions are not supported (rumqttd's shared groups could stop
    /// its router; see README, "Shared subscriptions").
    Shared,
    /// The session holds `mqtt_max_subscriptions` already.
    TooManySubscriptions,
}

impl FilterRefusal {
    /// The metric label (one of `BROKER_EVENTS`).
    pub fn label(self) -> &'static str {
        match self {
            FilterRefusal::Shared => "shared_subscription_refused",
            FilterRefusal::TooManySubscriptions => "subscriptions_exceeded",
        }
    }

    /// The 5.0 SUBACK code (3.1.1 has only 0x80 failure).
    pub fn reason_code(self) -> SubscribeReasonCode {
        match self {
            FilterRefusal::Shared => SubscribeReasonCode::SharedSubscriptionsNotSupported,
            FilterRefusal::TooManySubscriptions => SubscribeReasonCode::QuotaExceeded,
        }
    }
}

/// Whether `filter` is refused before the ACL is asked (a filter already held is no new one).
pub fn filter_refusal(
    filter: &str,
    held: &HashSet<String>,
    limits: &BrokerLimits,
) -> Option<FilterRefusal> {
    if filter == "$share" || filter.starts_with("$share/") {
        return Some(FilterRefusal::Shared);
    }
    if held.len() >= limits.max_subscriptions && !held.contains(filter) {
        return Some(FilterRefusal::TooManySubscriptions);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_filters_and_filters_past_the_session_bound_are_refused() {
        let limits = BrokerLimits {
            max_subscriptions: 1,
            ..BrokerLimits::default()
        };
        let mut held = HashSet::new();
        assert_eq!(
            filter_refusal("$share/g/a/#", &held, &limits),
            Some(FilterRefusal::Shared)
        );
        assert_eq!(filter_refusal("a/#", &held, &limits), None);
        held.insert("a/#".to_string());
        assert_eq!(filter_refusal("a/#", &held, &limits), None);
        assert_eq!(
            filter_refusal("b/#", &held, &limits),
            Some(FilterRefusal::TooManySubscriptions)
        );
    }
}
