//! Topic ACLs: the rule model, placeholder expansion, MQTT topic/filter matching, rule files.
//!
//! Rules are plain data ([`Rule`]); a device's rules are compiled once per device
//! ([`CompiledAcl::compile`]) with its identity's placeholders expanded, and checked on the hot path
//! ([`CompiledAcl::check`]). Precedence: rules are evaluated in order and the first rule whose action
//! and topic match decides; when none matches the answer is deny (deny by default). The order a
//! caller passes is: device rules (store), tenant rules (store), file rules (`acl-rules/`).

pub mod file;
pub mod topic;

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
        /// File name under `acl-rules/`.
        file: String,
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
    /// MQTT client id (`${clientid}`).
    pub client_id: &'a str,
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

/// A device's rules with its placeholders expanded, ready for the hot path.
#[derive(Debug, Clone, Default)]
pub struct CompiledAcl {
    rules: Vec<Rule>,
}

impl CompiledAcl {
    /// Expands placeholders for `who` and prepares `rules` (kept in the given order) for matching.
    /// A placeholder whose value is empty or holds `+`, `#`, `/` or NUL makes its rule never match.
    pub fn compile(rules: &[Rule], who: &Identity<'_>) -> Self {
        let _ = who;
        CompiledAcl {
            rules: rules.to_vec(),
        }
    }

    /// Decides `action` on `topic` (a topic name for publish, a filter for subscribe; a leading
    /// `$share/<group>/` is stripped). A subscription is allowed only if every topic it can match is.
    pub fn check(&self, action: Action, topic: &str) -> AclVerdict {
        let _ = (action, topic, &self.rules);
        todo!("acl helper")
    }

    /// The rules in EMQX 5.8's authn-response `acl` list format (first match wins, ending with a
    /// deny-all), or `None` when they cannot be expressed faithfully (EMQX then asks authz per topic).
    pub fn to_emqx(&self) -> Option<Vec<serde_json::Value>> {
        todo!("acl helper")
    }
}
