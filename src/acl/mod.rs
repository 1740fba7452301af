//! Topic ACLs: the rule model, placeholder expansion, MQTT topic/filter matching, rule files.
//!
//! Rules are plain data ([`Rule`]); a device's rules are compiled once per device
//! ([`CompiledAcl::compile`]) with its identity's placeholders expanded, and checked on the hot path
//! ([`CompiledAcl::check`]). Precedence: rules are evaluated in order and the first rule whose action
//! and topic match decides; when none matches the answer is deny (deny by default). The order a
//! caller passes is: device rules (store), tenant rules (store), file rules (`acl-rules/`).

pub mod file;
pub mod topic;

use crate::core::ids::ClientId;
use serde::{Deserialize, Serialize};

/// What a client wants to do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// PUBLISH to a topic name.
    Publish,
    /// SUBSCRIBE to a topic filter.
    Subscribe,
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// The rule lets the action through.
    Allow,
    /// The rule refuses the action.
    Deny,
}

/// Which actions a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    /// Publish only.
    Publish,
    /// Subscribe only.
    Subscribe,
    /// Both.
    All,
}

/// The names each enum has on the wire, in the store, in rule files and on the command line:
/// one table, read both ways.
macro_rules! names {
    ($ty:ident { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// Its name.
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $name),+ }
            }

            /// Parses its name.
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($name => Some($ty::$variant),)+ _ => None }
            }
        }
    };
}

names!(Action { Publish => "publish", Subscribe => "subscribe" });
names!(Permission { Allow => "allow", Deny => "deny" });
names!(RuleAction { Publish => "publish", Subscribe => "subscribe", All => "all" });

/// Where a rule came from, so a decision can name it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum RuleSource {
    /// A rule stored for one device (`id` is the store's rule id).
    Device {
        /// Store rule id.
        id: i64,
    },
    /// A rule stored for the whole tenant.
    Tenant {
        /// Store rule id.
        id: i64,
    },
    /// A rule from a file under `acl-rules/` (`line` is 1-based, of the rule's `[[rule]]` header).
    File {
        /// File name under `acl-rules/` (shared: every decision names it without copying).
        file: std::sync::Arc<str>,
        /// 1-based line of the rule's `[[rule]]` header.
        line: usize,
    },
}

/// One ACL rule as written by an operator: the topic may hold `${tenant}`, `${clientid}`, `${username}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// Allow or deny.
    pub permission: Permission,
    /// Publish, subscribe or all.
    pub action: RuleAction,
    /// An MQTT topic filter, possibly with placeholders.
    pub topic: String,
    /// Where the rule came from.
    pub source: RuleSource,
}

/// The identity placeholders are expanded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity<'a> {
    /// Tenant name (`${tenant}`).
    pub tenant: &'a str,
    /// MQTT client id (`${clientid}`), parsed by the one rule: it cannot widen a filter.
    pub client_id: &'a ClientId,
    /// MQTT username, if the device has one (`${username}`).
    pub username: Option<&'a str>,
}

/// The outcome of an ACL check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AclVerdict {
    /// The rule at `index` (in the order given to `compile`) decided.
    Matched {
        /// Allow or deny.
        permission: Permission,
        /// Index of the deciding rule in the list passed to `compile`.
        index: usize,
        /// Where that rule came from.
        source: RuleSource,
    },
    /// No rule matched: deny by default.
    NoRule,
    /// The topic (publish) or filter (subscribe) is not valid MQTT.
    InvalidTopic,
}

/// A rule after placeholder expansion: its filter levels, or `None` when it can never match.
#[derive(Debug, Clone)]
struct CompiledRule {
    permission: Permission,
    action: RuleAction,
    source: RuleSource,
    expanded: String,
    levels: Option<Vec<topic::Level>>,
}

impl CompiledRule {
    fn applies_to(&self, action: Action) -> bool {
        matches!(
            (self.action, action),
            (RuleAction::All, _)
                | (RuleAction::Publish, Action::Publish)
                | (RuleAction::Subscribe, Action::Subscribe)
        )
    }
}

/// A device's rules with its placeholders expanded, ready for the hot path.
#[derive(Debug, Clone, Default)]
pub struct CompiledAcl {
    rules: Vec<CompiledRule>,
}

/// Expands `${tenant}`, `${clientid}`, `${username}` in `template`. `None` when a placeholder is
/// unknown, or its value is missing, empty, or holds `+`, `#`, `/` or NUL: such a value could
/// widen the rule, so the rule never matches instead.
pub fn expand(template: &str, who: &Identity<'_>) -> Option<String> {
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some((before, after)) = rest.split_once("${") {
        out.push_str(before);
        let (name, tail) = after.split_once('}')?;
        let value = match name {
            "tenant" => Some(who.tenant),
            "clientid" => Some(who.client_id.as_str()),
            "username" => who.username,
            _ => None,
        }?;
        if value.is_empty() || value.contains(['+', '#', '/', '\0']) {
            return None;
        }
        out.push_str(value);
        rest = tail;
    }
    out.push_str(rest);
    Some(out)
}

impl CompiledAcl {
    /// Expands placeholders for `who` and prepares `rules` (kept in the given order) for matching.
    /// A placeholder whose value is empty or holds `+`, `#`, `/` or NUL makes its rule never match.
    pub fn compile(rules: &[Rule], who: &Identity<'_>) -> Self {
        let rules = rules
            .iter()
            .map(|r| {
                let expanded = expand(&r.topic, who);
                let levels = expanded.as_deref().and_then(topic::parse_filter);
                CompiledRule {
                    permission: r.permission,
                    action: r.action,
                    source: r.source.clone(),
                    expanded: expanded.unwrap_or_default(),
                    levels,
                }
            })
            .collect();
        CompiledAcl { rules }
    }

    /// Decides `action` on `topic` (a topic name for publish, a filter for subscribe; a leading
    /// `$share/<group>/` is stripped). A subscription is allowed only if every topic it can match is.
    pub fn check(&self, action: Action, topic: &str) -> AclVerdict {
        match action {
            Action::Publish => self.check_publish(topic),
            Action::Subscribe => self.check_subscribe(topic),
        }
    }

    fn live(
        &self,
        action: Action,
    ) -> impl Iterator<Item = (usize, &CompiledRule, &[topic::Level])> {
        self.rules
            .iter()
            .enumerate()
            .filter(move |(_, r)| r.applies_to(action))
            .filter_map(|(i, r)| r.levels.as_deref().map(|l| (i, r, l)))
    }

    fn check_publish(&self, name: &str) -> AclVerdict {
        if !topic::is_valid_name(name) {
            return AclVerdict::InvalidTopic;
        }
        self.live(Action::Publish)
            .find(|(_, _, levels)| topic::matches(levels, name))
            .map_or(AclVerdict::NoRule, |(i, r, _)| matched(i, r, r.permission))
    }

    /// The first rule covering the whole filter decides; a deny rule overlapping only part of it
    /// decides deny (some topic would be denied); an allow rule overlapping only part decides nothing.
    fn check_subscribe(&self, filter: &str) -> AclVerdict {
        let Some(filter) = topic::strip_share(filter).and_then(topic::parse_filter) else {
            return AclVerdict::InvalidTopic;
        };
        for (i, r, levels) in self.live(Action::Subscribe) {
            if topic::covers(levels, &filter) {
                return matched(i, r, r.permission);
            }
            if r.permission == Permission::Deny && topic::intersects(levels, &filter) {
                return matched(i, r, Permission::Deny);
            }
        }
        AclVerdict::NoRule
    }

    /// The publish rules in EMQX 5.8's authn-response `acl` list format (first match wins, ending
    /// with `deny publish #`), or `None` when they cannot be expressed faithfully (EMQX then asks
    /// authz per topic): EMQX would expand a `${…}` left in an expanded topic, and reads a leading
    /// `eq ` specially.
    ///
    /// Why publish only: EMQX matches a subscription filter against a rule with the filter's own
    /// `+`/`#` as literal words (`emqx_topic:match`), so a rule `allow a/#` grants the filter `a/+`
    /// even where a deny on `a/secret/#` comes first. A list with no subscribe rule leaves every
    /// subscription unmatched (EMQX's `client_info` source passes through), and EMQX asks mqgate's
    /// authz, which checks the whole filter. A topic name has no wildcards, so for publishes both
    /// matchers agree.
    pub fn to_emqx(&self) -> Option<Vec<serde_json::Value>> {
        let mut list = Vec::with_capacity(self.rules.len() + 1);
        let publish_rules = self
            .rules
            .iter()
            .filter(|r| r.levels.is_some() && r.applies_to(Action::Publish));
        for r in publish_rules {
            if r.expanded.contains("${") || r.expanded.starts_with("eq ") {
                return None;
            }
            list.push(serde_json::json!({
                "permission": r.permission.as_str(),
                "action": "publish",
                "topic": r.expanded,
            }));
        }
        list.push(serde_json::json!({ "permission": "deny", "action": "publish", "topic": "#" }));
        Some(list)
    }
}

fn matched(index: usize, r: &CompiledRule, permission: Permission) -> AclVerdict {
    AclVerdict::Matched {
        permission,
        index,
        source: r.source.clone(),
    }
}

#[cfg(test)]
mod tests;
