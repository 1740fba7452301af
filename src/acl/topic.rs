//! MQTT topic names and filters (MQTT 3.1.1 §4.7, 5.0 §4.7): validation, matching, and the two
//! filter-to-filter relations a subscription check needs (`covers`, `intersects`).

/// One level of a parsed filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Level {
    /// A literal level (may be empty: `a//b`).
    Lit(String),
    /// `+`: exactly one level.
    Plus,
    /// `#`: any number of levels, including none (so `a/#` matches `a`); always last.
    Hash,
}

/// Longest topic or filter MQTT can carry.
pub const MAX_LEN: usize = 65_535;

/// A valid topic name: non-empty, no wildcards, no NUL, at most 65535 bytes.
pub fn is_valid_name(topic: &str) -> bool {
    let b = topic.as_bytes();
    !b.is_empty() && b.len() <= MAX_LEN && memchr::memchr3(b'+', b'#', 0, b).is_none()
}

/// Whether `s` holds a wildcard character. Byte search (SIMD): a level may be 64 KiB long, and
/// `str::contains` with a set of chars decodes it char by char (this was most of the broker's time
/// under a flood of maximum-size SUBSCRIBEs).
fn has_wildcard(s: &str) -> bool {
    memchr::memchr2(b'+', b'#', s.as_bytes()).is_some()
}

/// Parses a topic filter; `None` if it is not valid MQTT.
pub fn parse_filter(filter: &str) -> Option<Vec<Level>> {
    let b = filter.as_bytes();
    if b.is_empty() || b.len() > MAX_LEN || memchr::memchr(0, b).is_some() {
        return None;
    }
    let parts: Vec<&str> = filter.split('/').collect();
    let last = parts.len() - 1;
    parts
        .iter()
        .enumerate()
        .map(|(i, p)| match *p {
            "+" => Some(Level::Plus),
            "#" if i == last => Some(Level::Hash),
            p if has_wildcard(p) => None,
            p => Some(Level::Lit(p.to_string())),
        })
        .collect()
}

/// Strips a leading `$share/<group>/` from a subscription filter; `None` if it is malformed.
pub fn strip_share(filter: &str) -> Option<&str> {
    let Some(rest) = filter.strip_prefix("$share/") else {
        return Some(filter);
    };
    let (group, inner) = rest.split_once('/')?;
    let ok = !group.is_empty() && !has_wildcard(group) && !inner.is_empty();
    ok.then_some(inner)
}

/// Whether a filter's first level is a wildcard (such filters never match `$` topics).
fn leads_with_wildcard(f: &[Level]) -> bool {
    matches!(f.first(), Some(Level::Plus | Level::Hash))
}

/// Whether every topic the filter matches starts with `$`.
fn only_dollar(f: &[Level]) -> bool {
    matches!(f.first(), Some(Level::Lit(s)) if s.starts_with('$'))
}

/// Whether topic name `topic` matches filter `f`.
pub fn matches(f: &[Level], topic: &str) -> bool {
    if topic.starts_with('$') && leads_with_wildcard(f) {
        return false;
    }
    let mut levels = topic.split('/');
    for l in f {
        match l {
            Level::Hash => return true,
            Level::Plus => {
                if levels.next().is_none() {
                    return false;
                }
            }
            Level::Lit(s) => {
                if levels.next() != Some(s.as_str()) {
                    return false;
                }
            }
        }
    }
    levels.next().is_none()
}

/// Whether every topic matching `f` also matches `r`.
pub fn covers(r: &[Level], f: &[Level]) -> bool {
    if leads_with_wildcard(r) && only_dollar(f) {
        return false;
    }
    let mut i = 0;
    loop {
        match (r.get(i), f.get(i)) {
            (Some(Level::Hash), _) => return true,
            (_, Some(Level::Hash)) => return false,
            (None, None) => return true,
            (None, Some(_)) | (Some(_), None) => return false,
            (Some(Level::Plus), Some(_)) => {}
            (Some(Level::Lit(a)), Some(Level::Lit(b))) if a == b => {}
            (Some(Level::Lit(_)), Some(_)) => return false,
        }
        i += 1;
    }
}

/// Whether some topic matches both `r` and `f`.
pub fn intersects(r: &[Level], f: &[Level]) -> bool {
    if (leads_with_wildcard(r) && only_dollar(f)) || (leads_with_wildcard(f) && only_dollar(r)) {
        return false;
    }
    let mut i = 0;
    loop {
        match (r.get(i), f.get(i)) {
            (Some(Level::Hash), _) | (_, Some(Level::Hash)) => return true,
            (None, None) => return true,
            (None, Some(_)) | (Some(_), None) => return false,
            (Some(Level::Lit(a)), Some(Level::Lit(b))) if a != b => return false,
            _ => {}
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(f: &str, t: &str) -> bool {
        matches(&parse_filter(f).unwrap(), t)
    }

    fn cov(r: &str, f: &str) -> bool {
        covers(&parse_filter(r).unwrap(), &parse_filter(f).unwrap())
    }

    fn int(r: &str, f: &str) -> bool {
        intersects(&parse_filter(r).unwrap(), &parse_filter(f).unwrap())
    }

    #[test]
    fn the_specs_multi_level_wildcard_examples_hold() {
        for t in [
            "sport/tennis/player1",
            "sport/tennis/player1/ranking",
            "sport/tennis/player1/score/wimbledon",
        ] {
            assert!(m("sport/tennis/player1/#", t), "{t}");
        }
        assert!(m("sport/#", "sport"), "# includes the parent level");
        assert!(m("#", "anything/at/all"));
        assert!(!m("sport/#", "sports"));
    }

    #[test]
    fn the_specs_single_level_wildcard_examples_hold() {
        assert!(m("sport/tennis/+", "sport/tennis/player1"));
        assert!(!m("sport/tennis/+", "sport/tennis/player1/ranking"));
        assert!(!m("sport/+", "sport"));
        assert!(m("sport/+", "sport/"));
        assert!(m("+/+", "/finance"));
        assert!(m("/+", "/finance"));
        assert!(!m("+", "/finance"));
    }

    #[test]
    fn dollar_topics_are_not_matched_by_leading_wildcards() {
        assert!(!m("#", "$SYS/broker/clients"));
        assert!(!m("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(m("$SYS/#", "$SYS/broker/clients"));
        assert!(m("$SYS/monitor/+", "$SYS/monitor/Clients"));
        assert!(!cov("#", "$SYS/#"));
        assert!(!int("#", "$SYS/#"));
        assert!(int("$SYS/#", "$SYS/+"));
    }

    #[test]
    fn invalid_filters_and_names_are_refused() {
        for f in [
            "sport/tennis#",
            "sport+",
            "#/a",
            "a/#/b",
            "",
            "a\0b",
            "++",
            "a/b#",
        ] {
            assert!(parse_filter(f).is_none(), "{f:?}");
        }
        for t in ["a/+", "a/#", "", "a\0"] {
            assert!(!is_valid_name(t), "{t:?}");
        }
        assert!(is_valid_name("a//b"));
        assert!(parse_filter("a//+").is_some());
    }

    #[test]
    fn shared_subscriptions_are_stripped_and_malformed_ones_refused() {
        assert_eq!(strip_share("$share/g/a/b/#"), Some("a/b/#"));
        assert_eq!(strip_share("a/b"), Some("a/b"));
        assert_eq!(strip_share("$share//a"), None);
        assert_eq!(strip_share("$share/g"), None);
        assert_eq!(strip_share("$share/g/"), None);
        assert_eq!(strip_share("$share/g+/a"), None);
    }

    #[test]
    fn covers_and_intersects_follow_the_topic_sets() {
        assert!(cov("a/#", "a/b/#"));
        assert!(cov("a/#", "a"));
        assert!(cov("a/+", "a/b"));
        assert!(cov("a/+/c", "a/+/c"));
        assert!(!cov("a/+", "a/#"));
        assert!(!cov("a/b", "a/+"));
        assert!(!cov("a/+", "a"));
        assert!(int("a/+", "a/#"));
        assert!(int("a/b", "+/b"));
        assert!(!int("a/b", "a/c"));
        assert!(!int("a/+", "a/b/c"));
        assert!(int("a/#", "a"));
    }
}
