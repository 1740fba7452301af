use proptest::prelude::*;
use serde_json::Value;

use super::topic::{self, Level};
use super::*;

fn rule(permission: Permission, action: RuleAction, topic: &str) -> Rule {
    Rule {
        permission,
        action,
        topic: topic.into(),
        source: RuleSource::Tenant { id: 1 },
    }
}

fn id(s: &str) -> ClientId {
    ClientId::parse(s).unwrap()
}

fn who<'a>(client_id: &'a ClientId, username: Option<&'a str>) -> Identity<'a> {
    Identity {
        tenant: "acme",
        client_id,
        username,
    }
}

fn default_acl(client_id: &str) -> CompiledAcl {
    let rules = [rule(
        Permission::Allow,
        RuleAction::All,
        "${tenant}/${clientid}/#",
    )];
    CompiledAcl::compile(&rules, &who(&id(client_id), None))
}

fn allowed(acl: &CompiledAcl, action: Action, topic: &str) -> bool {
    matches!(
        acl.check(action, topic),
        AclVerdict::Matched {
            permission: Permission::Allow,
            ..
        }
    )
}

#[test]
fn the_default_rule_confines_a_device_to_its_subtree() {
    let acl = default_acl("dev-1");
    assert!(allowed(&acl, Action::Publish, "acme/dev-1/telemetry"));
    assert!(allowed(&acl, Action::Subscribe, "acme/dev-1/#"));
    assert!(allowed(
        &acl,
        Action::Subscribe,
        "$share/g/acme/dev-1/cmd/+"
    ));
    assert!(!allowed(&acl, Action::Publish, "acme/dev-2/telemetry"));
    assert!(!allowed(&acl, Action::Subscribe, "acme/+/telemetry"));
    assert!(!allowed(&acl, Action::Subscribe, "#"));
    assert_eq!(acl.check(Action::Publish, "acme/other"), AclVerdict::NoRule);
    assert_eq!(
        acl.check(Action::Publish, "acme/dev-1/+"),
        AclVerdict::InvalidTopic
    );
    assert_eq!(
        acl.check(Action::Subscribe, "acme/#/x"),
        AclVerdict::InvalidTopic
    );
    assert_eq!(
        acl.check(Action::Subscribe, "$share//acme/dev-1/x"),
        AclVerdict::InvalidTopic
    );
}

#[test]
fn hostile_identities_never_widen_their_acl() {
    let by_name = [rule(
        Permission::Allow,
        RuleAction::All,
        "${tenant}/${username}/#",
    )];
    for hostile in ["+", "#", "a/b", "", "a\0b", "acme/+", "#/x"] {
        // Such a client id is not a `ClientId` at all: it never reaches an ACL.
        assert!(ClientId::parse(hostile).is_err(), "{hostile:?}");
        // A username is the device's own text: its placeholder makes the rule never match.
        let acl = CompiledAcl::compile(&by_name, &who(&id("d"), Some(hostile)));
        for t in ["acme/other/x", "acme/x", "acme/a/b/x", "acme/+/x"] {
            assert!(
                !allowed(&acl, Action::Publish, t),
                "{hostile:?} reached {t}"
            );
        }
        assert!(!allowed(&acl, Action::Subscribe, "acme/#"), "{hostile:?}");
        assert_eq!(
            acl.to_emqx().unwrap().len(),
            1,
            "a never-matching rule is not emitted"
        );
    }
    let rules = [rule(Permission::Allow, RuleAction::All, "u/${username}/#")];
    let acl = CompiledAcl::compile(&rules, &who(&id("d"), None));
    assert_eq!(
        acl.check(Action::Publish, "u//x"),
        AclVerdict::NoRule,
        "no username, no match"
    );
}

#[test]
fn first_matching_rule_wins_and_names_itself() {
    let rules = [
        rule(
            Permission::Deny,
            RuleAction::Publish,
            "acme/${clientid}/secret",
        ),
        rule(Permission::Allow, RuleAction::All, "acme/${clientid}/#"),
    ];
    let acl = CompiledAcl::compile(&rules, &who(&id("d"), None));
    assert!(matches!(
        acl.check(Action::Publish, "acme/d/secret"),
        AclVerdict::Matched {
            permission: Permission::Deny,
            index: 0,
            ..
        }
    ));
    assert!(matches!(
        acl.check(Action::Subscribe, "acme/d/secret"),
        AclVerdict::Matched {
            permission: Permission::Allow,
            index: 1,
            ..
        }
    ));
    assert!(matches!(
        acl.check(Action::Publish, "acme/d/other"),
        AclVerdict::Matched {
            permission: Permission::Allow,
            index: 1,
            ..
        }
    ));
}

#[test]
fn a_subscription_partly_covered_by_a_deny_is_denied() {
    let rules = [
        rule(Permission::Deny, RuleAction::All, "acme/d/secret"),
        rule(Permission::Allow, RuleAction::All, "acme/d/#"),
    ];
    let acl = CompiledAcl::compile(&rules, &who(&id("d"), None));
    assert!(!allowed(&acl, Action::Subscribe, "acme/d/#"));
    assert!(!allowed(&acl, Action::Subscribe, "acme/d/+"));
    assert!(allowed(&acl, Action::Subscribe, "acme/d/public/#"));
}

#[test]
fn the_emqx_list_keeps_publish_rules_in_order_and_ends_with_deny_publish_all() {
    let rules = [
        rule(
            Permission::Deny,
            RuleAction::Subscribe,
            "acme/${clientid}/x",
        ),
        rule(
            Permission::Allow,
            RuleAction::Publish,
            "${tenant}/${clientid}/#",
        ),
    ];
    let list = CompiledAcl::compile(&rules, &who(&id("d"), None))
        .to_emqx()
        .unwrap();
    assert_eq!(
        list,
        vec![
            serde_json::json!({"permission": "allow", "action": "publish", "topic": "acme/d/#"}),
            serde_json::json!({"permission": "deny", "action": "publish", "topic": "#"}),
        ]
    );
    let odd = CompiledAcl::compile(
        &[rule(Permission::Allow, RuleAction::All, "${username}")],
        &who(&id("d"), Some("${x}")),
    );
    assert!(
        odd.to_emqx().is_none(),
        "EMQX would expand a ${{…}} in the topic"
    );
}

#[test]
fn the_emqx_list_grants_no_subscription_around_a_deny() {
    let rules = [
        rule(Permission::Deny, RuleAction::Subscribe, "t/dev-1/secret/#"),
        rule(Permission::Allow, RuleAction::All, "t/dev-1/#"),
    ];
    let acl = CompiledAcl::compile(&rules, &who(&id("dev-1"), None));
    let list = acl.to_emqx().unwrap();
    for f in ["t/dev-1/#", "t/dev-1/+", "t/dev-1/+/x", "t/dev-1/secret/a"] {
        assert_eq!(emqx_decide(&list, Action::Subscribe, f), None, "{f}");
    }
    assert_eq!(emqx_publish(&list, "t/dev-1/secret/a"), "allow");
    assert_eq!(emqx_publish(&list, "t/dev-2/a"), "deny");
}

// ---- property tests ----

/// A straightforward recursive matcher, written from the spec, to check `topic::matches`.
fn reference_match(filter: &[&str], topic: &[&str]) -> bool {
    match (filter.first(), topic.first()) {
        (Some(&"#"), _) => true,
        (Some(&"+"), Some(_)) => reference_match(&filter[1..], &topic[1..]),
        (Some(f), Some(t)) => f == t && reference_match(&filter[1..], &topic[1..]),
        (None, None) => true,
        _ => false,
    }
}

fn spec_match(filter: &str, topic: &str) -> bool {
    let f: Vec<&str> = filter.split('/').collect();
    let t: Vec<&str> = topic.split('/').collect();
    if topic.starts_with('$') && matches!(f[0], "+" | "#") {
        return false;
    }
    reference_match(&f, &t)
}

fn level() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_string()),
        Just("b".to_string()),
        Just("".to_string()),
        Just("$s".to_string())
    ]
}

fn topic_name() -> impl Strategy<Value = String> {
    prop::collection::vec(level(), 1..5)
        .prop_map(|l| l.join("/"))
        .prop_filter("a topic name is not empty", |t| !t.is_empty())
}

fn filter() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop_oneof![3 => level(), 1 => Just("+".to_string())], 1..5),
        any::<bool>(),
    )
        .prop_map(|(mut l, hash)| {
            if hash {
                l.push("#".into());
            }
            l.join("/")
        })
        .prop_filter("a filter is not empty", |f| !f.is_empty())
}

fn rules() -> impl Strategy<Value = Vec<Rule>> {
    let perm = prop_oneof![Just(Permission::Allow), Just(Permission::Deny)];
    let act = prop_oneof![
        Just(RuleAction::Publish),
        Just(RuleAction::Subscribe),
        Just(RuleAction::All)
    ];
    prop::collection::vec((perm, act, filter()), 0..6)
        .prop_map(|v| v.into_iter().map(|(p, a, t)| rule(p, a, &t)).collect())
}

/// EMQX's `emqx_topic:match(Name, Filter)` (apps/emqx/src/emqx_topic.erl), word for word: the
/// name's own `+`/`#` are plain words that only equal the same word; a filter word `+` takes any one
/// word, a final `#` the rest (none included); a name starting with `$` never matches a filter
/// starting with `+` or `#`.
fn emqx_match(name: &str, filter: &str) -> bool {
    if name.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    fn words(n: &[&str], f: &[&str]) -> bool {
        match (n.split_first(), f.split_first()) {
            (None, None) => true,
            (Some((h, nt)), Some((w, ft))) if h == w => words(nt, ft),
            (Some((_, nt)), Some((&"+", ft))) => words(nt, ft),
            (_, Some((&"#", []))) => true,
            _ => false,
        }
    }
    let n: Vec<&str> = name.split('/').collect();
    let f: Vec<&str> = filter.split('/').collect();
    words(&n, &f)
}

/// EMQX's `client_info` authz source over an authn `acl` list (`emqx_authz_rule:matches`): rules in
/// order, the first whose action and topic match decides; none matching passes through
/// (`None`: EMQX asks the next source, mqgate's authz endpoint).
fn emqx_decide(list: &[Value], action: Action, topic: &str) -> Option<&'static str> {
    list.iter().find_map(|r| {
        let applies = match r["action"].as_str().unwrap() {
            "all" => true,
            "publish" => action == Action::Publish,
            _ => action == Action::Subscribe,
        };
        (applies && emqx_match(topic, r["topic"].as_str().unwrap())).then(|| {
            if r["permission"] == "allow" {
                "allow"
            } else {
                "deny"
            }
        })
    })
}

fn emqx_publish(list: &[Value], topic: &str) -> &'static str {
    emqx_decide(list, Action::Publish, topic).unwrap_or("nomatch")
}

fn levels(f: &str) -> Vec<Level> {
    topic::parse_filter(f).unwrap()
}

proptest! {
    #[test]
    fn matching_agrees_with_the_spec(f in filter(), t in topic_name()) {
        prop_assert_eq!(topic::matches(&levels(&f), &t, &topic::Bind::NONE), spec_match(&f, &t));
    }

    #[test]
    fn covers_is_sound_and_intersects_is_complete(r in filter(), f in filter(), ts in prop::collection::vec(topic_name(), 1..40)) {
        let (rl, fl) = (levels(&r), levels(&f));
        for t in &ts {
            if topic::covers(&rl, &fl, &topic::Bind::NONE) && spec_match(&f, t) {
                prop_assert!(spec_match(&r, t), "{} covers {} but not {}", r, f, t);
            }
            if spec_match(&f, t) && spec_match(&r, t) {
                prop_assert!(topic::intersects(&rl, &fl, &topic::Bind::NONE), "{} and {} share {}", r, f, t);
            }
        }
    }

    #[test]
    fn an_allowed_subscription_only_reaches_allowed_topics(rs in rules(), f in filter(), ts in prop::collection::vec(topic_name(), 1..40)) {
        let rs: Vec<Rule> = rs.into_iter().map(|mut r| { r.action = RuleAction::All; r }).collect();
        let acl = CompiledAcl::compile(&rs, &who(&id("d"), None));
        if allowed(&acl, Action::Subscribe, &f) {
            for t in ts.iter().filter(|t| spec_match(&f, t)) {
                prop_assert!(allowed(&acl, Action::Publish, t), "sub {} allowed but {} is not", f, t);
            }
        }
    }

    #[test]
    fn the_emqx_list_agrees_with_the_authz_answer(rs in rules(), ts in prop::collection::vec(topic_name(), 1..40)) {
        let acl = CompiledAcl::compile(&rs, &who(&id("d"), None));
        let list = acl.to_emqx().unwrap();
        for r in &list {
            prop_assert!(matches!(r["permission"].as_str(), Some("allow" | "deny")));
            prop_assert!(matches!(r["action"].as_str(), Some("publish" | "subscribe" | "all")));
            prop_assert!(topic::parse_filter(r["topic"].as_str().unwrap()).is_some());
        }
        for t in &ts {
            let ours = if allowed(&acl, Action::Publish, t) { "allow" } else { "deny" };
            let theirs = match emqx_publish(&list, t) { "nomatch" => "deny", v => v };
            prop_assert_eq!(ours, theirs, "topic {}", t);
        }
    }

    #[test]
    fn emqx_never_allows_from_the_list_what_authz_denies(rs in rules(), f in filter(), t in topic_name()) {
        let acl = CompiledAcl::compile(&rs, &who(&id("d"), None));
        let list = acl.to_emqx().unwrap();
        // A PUBLISH carries a topic name: EMQX refuses one with a wildcard before authz
        // (`emqx_packet:check`), so a publish is only ever matched with a name.
        for (action, topic) in [(Action::Subscribe, &f), (Action::Publish, &t)] {
            // EMQX asks mqgate when the list does not decide: then the answers are the same.
            let emqx = emqx_decide(&list, action, topic);
            if emqx == Some("allow") {
                prop_assert!(allowed(&acl, action, topic), "EMQX allows {:?} {} from {:?}", action, topic, list);
            }
        }
    }
}

// ---- rules compiled once, bound at match time, against the per-device expansion ----

/// The evaluation before rules were shared: every template expanded for one identity, then parsed
/// and matched as a concrete filter (what each device used to hold compiled).
fn per_device_check(rules: &[Rule], who: &Identity<'_>, action: Action, t: &str) -> AclVerdict {
    let none = topic::Bind::NONE;
    let live = rules
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            matches!(
                (r.action, action),
                (RuleAction::All, _)
                    | (RuleAction::Publish, Action::Publish)
                    | (RuleAction::Subscribe, Action::Subscribe)
            )
        })
        .filter_map(|(i, r)| {
            let levels = expand(&r.topic, who).and_then(|e| topic::parse_filter(&e))?;
            Some((i, r, levels))
        });
    let hit = |i: usize, r: &Rule, permission| AclVerdict::Matched {
        permission,
        index: i,
        source: r.source.clone(),
    };
    match action {
        Action::Publish => {
            if !topic::is_valid_name(t) {
                return AclVerdict::InvalidTopic;
            }
            for (i, r, levels) in live {
                if topic::matches(&levels, t, &none) {
                    return hit(i, r, r.permission);
                }
            }
        }
        Action::Subscribe => {
            let Some(f) = topic::strip_share(t).and_then(topic::parse_filter) else {
                return AclVerdict::InvalidTopic;
            };
            for (i, r, levels) in live {
                if topic::covers(&levels, &f, &none) {
                    return hit(i, r, r.permission);
                }
                if r.permission == Permission::Deny && topic::intersects(&levels, &f, &none) {
                    return hit(i, r, Permission::Deny);
                }
            }
        }
    }
    AclVerdict::NoRule
}

/// The EMQX list as each device used to render it from its expanded rules.
fn per_device_emqx(rules: &[Rule], who: &Identity<'_>) -> Option<Vec<Value>> {
    let mut list = Vec::new();
    for r in rules {
        let Some(e) = expand(&r.topic, who) else {
            continue;
        };
        let publish = matches!(r.action, RuleAction::All | RuleAction::Publish);
        if topic::parse_filter(&e).is_none() || !publish {
            continue;
        }
        if e.contains("${") || e.starts_with("eq ") {
            return None;
        }
        list.push(serde_json::json!({"permission": r.permission.as_str(), "action": "publish", "topic": e}));
    }
    list.push(serde_json::json!({"permission": "deny", "action": "publish", "topic": "#"}));
    Some(list)
}

/// Template levels: placeholders alone, inside text, unknown, unclosed, beside wildcards.
const TEMPLATE_LEVELS: &[&str] = &[
    "a",
    "",
    "$s",
    "+",
    "#",
    "${tenant}",
    "${clientid}",
    "${username}",
    "x${clientid}y",
    "${tenant}${clientid}",
    "${bad}",
    "${clientid",
    "a+${clientid}",
    "eq ${username}",
];

const TENANTS: &[&str] = &["acme", "t.1"];
const CLIENT_IDS: &[&str] = &["d", "dev-1", "a", "é"];
const USERNAMES: &[Option<&str>] = &[
    None,
    Some("u"),
    Some(""),
    Some("+"),
    Some("a/b"),
    Some("$x"),
    Some("${tenant}"),
    Some("a\0"),
    Some("d"),
];

fn template() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(TEMPLATE_LEVELS), 1..5).prop_map(|l| l.join("/"))
}

fn template_rules() -> impl Strategy<Value = Vec<Rule>> {
    let perm = prop_oneof![Just(Permission::Allow), Just(Permission::Deny)];
    let act = prop_oneof![
        Just(RuleAction::Publish),
        Just(RuleAction::Subscribe),
        Just(RuleAction::All)
    ];
    prop::collection::vec((perm, act, template()), 0..6)
        .prop_map(|v| v.into_iter().map(|(p, a, t)| rule(p, a, &t)).collect())
}

/// Topics and filters whose levels are often the identity's own values (else nothing matches).
fn probe(who: (usize, usize, usize)) -> impl Strategy<Value = String> {
    let (t, c, u) = who;
    let words: Vec<String> = vec![
        "a".into(),
        "".into(),
        "$s".into(),
        "+".into(),
        "#".into(),
        TENANTS[t].into(),
        CLIENT_IDS[c].into(),
        USERNAMES[u].unwrap_or("u").into(),
        format!("x{}y", CLIENT_IDS[c]),
        format!("{}{}", TENANTS[t], CLIENT_IDS[c]),
        format!("eq {}", USERNAMES[u].unwrap_or("u")),
    ];
    prop::collection::vec(prop::sample::select(words), 1..5).prop_map(|l| l.join("/"))
}

fn identity() -> impl Strategy<Value = (usize, usize, usize)> {
    (0..TENANTS.len(), 0..CLIENT_IDS.len(), 0..USERNAMES.len())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// One compiled rule set, shared and bound at match time, gives every device exactly the
    /// answer its own expanded rules gave, for every action and topic, and the same EMQX list.
    #[test]
    fn rules_compiled_once_answer_as_each_devices_own_expansion(
        (who, rs, probes) in identity().prop_flat_map(|w| (Just(w), template_rules(), prop::collection::vec(probe(w), 1..12)))
    ) {
        let (t, c, u) = who;
        let client = id(CLIENT_IDS[c]);
        let who = Identity { tenant: TENANTS[t], client_id: &client, username: USERNAMES[u] };
        // Split anywhere between the device's own rules and the shared ones: indices run on.
        let split = rs.len() / 2;
        let (own, shared) = (RuleSet::compile(&rs[..split]), RuleSet::compile(&rs[split..]));
        let acl = DeviceAcl { own: &own, shared: &shared, who };
        for p in &probes {
            for action in [Action::Publish, Action::Subscribe] {
                prop_assert_eq!(acl.check(action, p), per_device_check(&rs, &who, action, p), "{:?} {}", action, p);
            }
        }
        prop_assert_eq!(acl.to_emqx(), per_device_emqx(&rs, &who));
    }
}
