//! Topic ACLs: the rule model, placeholder expansion, MQTT topic/filter matching, rule files.
//!
//! Rules are plain data ([`Rule`]); they are compiled once ([`RuleSet::compile`]) with their
//! placeholders kept, shared by every device with the same rules, and checked on the hot path with
//! one device's identity bound at match time ([`DeviceAcl::check`]). Precedence: rules are evaluated in order and the first rule whose action
//! and topic match decides; when none matches the answer is deny (deny by default). The order a
//! caller passes is: device rules (store), tenant rules (store), file rules (`acl-rules/`).

pub mod file;
pub mod topic;

use crate::ids::ClientId;
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// A rule compiled once for every identity: its filter's levels with placeholders kept
/// ([`topic::Level::Var`]), or `None` when it can never match.
#[derive(Debug, Clone)]
struct CompiledRule {
    permission: Permission,
    action: RuleAction,
    source: RuleSource,
    /// The template as written (the EMQX list expands it on demand).
    topic: Box<str>,
    levels: Option<Box<[topic::Level]>>,
    needs: topic::Needs,
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

/// Rules compiled once, placeholders bound at match time: one `RuleSet` serves every device with
/// the same rules (a tenant's stored rules plus the rule files are shared by all its devices).
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    rules: Vec<CompiledRule>,
}

impl RuleSet {
    /// No rule.
    pub const EMPTY: RuleSet = RuleSet { rules: Vec::new() };

    /// Prepares `rules` (kept in the given order) for matching.
    pub fn compile(rules: &[Rule]) -> Self {
        let rules = rules
            .iter()
            .map(|r| {
                let parsed = topic::parse_template(&r.topic);
                CompiledRule {
                    permission: r.permission,
                    action: r.action,
                    source: r.source.clone(),
                    topic: r.topic.as_str().into(),
                    needs: parsed.as_ref().map(|p| p.1).unwrap_or_default(),
                    levels: parsed.map(|p| p.0.into()),
                }
            })
            .collect();
        RuleSet { rules }
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether it holds no rule.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
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

/// One device's ACL: its own rules, then the shared ones, read with its identity. Indices in a
/// verdict count through both lists in that order.
#[derive(Debug, Clone, Copy)]
pub struct DeviceAcl<'a> {
    /// The device's stored rules (usually none).
    pub own: &'a RuleSet,
    /// Its tenant's stored rules, then the file rules.
    pub shared: &'a RuleSet,
    /// Whose placeholders are filled in.
    pub who: Identity<'a>,
}

impl DeviceAcl<'_> {
    /// Decides `action` on `topic` (a topic name for publish, a filter for subscribe; a leading
    /// `$share/<group>/` is stripped). A subscription is allowed only if every topic it can match is.
    pub fn check(&self, action: Action, topic: &str) -> AclVerdict {
        let bind = self.who.bind();
        match action {
            Action::Publish => self.check_publish(topic, &bind),
            Action::Subscribe => self.check_subscribe(topic, &bind),
        }
    }

    fn all(&self) -> impl Iterator<Item = &CompiledRule> {
        self.own.rules.iter().chain(self.shared.rules.iter())
    }

    fn live<'b>(
        &'b self,
        action: Action,
        bind: &'b topic::Bind<'_>,
    ) -> impl Iterator<Item = (usize, &'b CompiledRule, &'b [topic::Level])> {
        self.all()
            .enumerate()
            .filter(move |(_, r)| r.applies_to(action) && bind.satisfies(r.needs))
            .filter_map(|(i, r)| r.levels.as_deref().map(|l| (i, r, l)))
    }

    fn check_publish(&self, name: &str, bind: &topic::Bind<'_>) -> AclVerdict {
        if !topic::is_valid_name(name) {
            return AclVerdict::InvalidTopic;
        }
        self.live(Action::Publish, bind)
            .find(|(_, _, levels)| topic::matches(levels, name, bind))
            .map_or(AclVerdict::NoRule, |(i, r, _)| matched(i, r, r.permission))
    }

    /// The first rule covering the whole filter decides; a deny rule overlapping only part of it
    /// decides deny (some topic would be denied); an allow rule overlapping only part decides nothing.
    fn check_subscribe(&self, filter: &str, bind: &topic::Bind<'_>) -> AclVerdict {
        let Some(filter) = topic::strip_share(filter).and_then(topic::parse_filter) else {
            return AclVerdict::InvalidTopic;
        };
        for (i, r, levels) in self.live(Action::Subscribe, bind) {
            if topic::covers(levels, &filter, bind) {
                return matched(i, r, r.permission);
            }
            if r.permission == Permission::Deny && topic::intersects(levels, &filter, bind) {
                return matched(i, r, Permission::Deny);
            }
        }
        AclVerdict::NoRule
    }

    /// The publish rules in EMQX 5.8's authn-response `acl` list format (first match wins, ending
    /// with `deny publish #`), or `None` when they cannot be expressed faithfully (EMQX then asks
    /// authz per topic): EMQX would expand a `${…}` left in an expanded topic, and reads a leading
    /// `eq ` specially. Rendered on demand (once per CONNECT), not kept per device.
    ///
    /// Why publish only: EMQX matches a subscription filter against a rule with the filter's own
    /// `+`/`#` as literal words (`emqx_topic:match`), so a rule `allow a/#` grants the filter `a/+`
    /// even where a deny on `a/secret/#` comes first. A list with no subscribe rule leaves every
    /// subscription unmatched (EMQX's `client_info` source passes through), and EMQX asks mqgate's
    /// authz, which checks the whole filter. A topic name has no wildcards, so for publishes both
    /// matchers agree.
    pub fn to_emqx(&self) -> Option<Vec<serde_json::Value>> {
        let rules = self.emqx_rules()?;
        Some(rules.iter().map(EmqxRule::to_json).collect())
    }

    /// [`DeviceAcl::to_emqx`] as typed rules, serialized straight into an answer.
    pub fn emqx_rules(&self) -> Option<Vec<EmqxRule>> {
        let bind = self.who.bind();
        let mut list = Vec::new();
        let publish_rules = self.all().filter(|r| {
            r.levels.is_some() && r.applies_to(Action::Publish) && bind.satisfies(r.needs)
        });
        for r in publish_rules {
            let expanded = expand(&r.topic, &self.who)?;
            if expanded.contains("${") || expanded.starts_with("eq ") {
                return None;
            }
            list.push(EmqxRule {
                permission: r.permission.as_str(),
                action: "publish",
                topic: expanded,
            });
        }
        list.push(EmqxRule {
            permission: "deny",
            action: "publish",
            topic: "#".into(),
        });
        Some(list)
    }
}

/// One rule of EMQX's `acl` list in an authn answer (its `client_info` authorizer's shape).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EmqxRule {
    /// `allow` or `deny`.
    pub permission: &'static str,
    /// Always `publish` (see [`DeviceAcl::to_emqx`]).
    pub action: &'static str,
    /// The topic filter, placeholders bound.
    pub topic: String,
}

impl EmqxRule {
    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "permission": self.permission,
            "action": self.action,
            "topic": self.topic,
        })
    }
}

impl Identity<'_> {
    fn bind(&self) -> topic::Bind<'_> {
        topic::Bind::new(self.tenant, self.client_id.as_str(), self.username)
    }
}

/// A rule list bound to one owned identity (the `acl check` command, tests): the same evaluation
/// as the hot path's [`DeviceAcl`].
#[derive(Debug, Clone)]
pub struct CompiledAcl {
    rules: RuleSet,
    none: RuleSet,
    tenant: String,
    client_id: ClientId,
    username: Option<String>,
}

impl CompiledAcl {
    /// Prepares `rules` (kept in the given order) for `who`.
    pub fn compile(rules: &[Rule], who: &Identity<'_>) -> Self {
        CompiledAcl {
            rules: RuleSet::compile(rules),
            none: RuleSet::default(),
            tenant: who.tenant.to_string(),
            client_id: who.client_id.clone(),
            username: who.username.map(str::to_string),
        }
    }

    fn bound(&self) -> DeviceAcl<'_> {
        DeviceAcl {
            own: &self.rules,
            shared: &self.none,
            who: Identity {
                tenant: &self.tenant,
                client_id: &self.client_id,
                username: self.username.as_deref(),
            },
        }
    }

    /// See [`DeviceAcl::check`].
    pub fn check(&self, action: Action, topic: &str) -> AclVerdict {
        self.bound().check(action, topic)
    }

    /// See [`DeviceAcl::to_emqx`].
    pub fn to_emqx(&self) -> Option<Vec<serde_json::Value>> {
        self.bound().to_emqx()
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
