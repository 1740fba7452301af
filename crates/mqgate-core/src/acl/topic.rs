//! MQTT topic names and filters (MQTT 3.1.1 §4.7, 5.0 §4.7): validation, matching, and the two
//! filter-to-filter relations a subscription check needs (`covers`, `intersects`).

/// One level of a parsed filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Level {
    /// A literal level (may be empty: `a//b`).
    Lit(Box<str>),
    /// `+`: exactly one level.
    Plus,
    /// `#`: any number of levels, including none (so `a/#` matches `a`); always last.
    Hash,
    /// A level of a rule's template holding placeholders (`d-${clientid}`), read with a [`Bind`]
    /// at match time: one compiled rule serves every device. Never produced by [`parse_filter`].
    Var(Box<[Piece]>),
}

/// A part of a [`Level::Var`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Literal text (no wildcard, no `/`, no NUL).
    Lit(Box<str>),
    /// `${tenant}`.
    Tenant,
    /// `${clientid}`.
    ClientId,
    /// `${username}`.
    Username,
}

/// The placeholder values a [`Level::Var`] is read with; each is `None` when missing or unusable
/// (empty, or holding `+ # /` or NUL: such a value could widen a filter), and a rule needing a
/// `None` value never matches (see [`Needs`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Bind<'a> {
    /// `${tenant}`.
    pub tenant: Option<&'a str>,
    /// `${clientid}`.
    pub client_id: Option<&'a str>,
    /// `${username}`.
    pub username: Option<&'a str>,
}

impl<'a> Bind<'a> {
    /// No placeholder values: for concrete filters, which hold no [`Level::Var`].
    pub const NONE: Bind<'static> = Bind {
        tenant: None,
        client_id: None,
        username: None,
    };

    /// The values, each kept only when it cannot widen a filter.
    pub fn new(tenant: &'a str, client_id: &'a str, username: Option<&'a str>) -> Self {
        Bind {
            tenant: usable(tenant),
            client_id: usable(client_id),
            username: username.and_then(usable),
        }
    }

    fn value(&self, p: &Piece) -> Option<&'a str> {
        match p {
            Piece::Lit(_) => None,
            Piece::Tenant => self.tenant,
            Piece::ClientId => self.client_id,
            Piece::Username => self.username,
        }
    }

    /// Whether every placeholder in `needs` has a usable value.
    pub fn satisfies(&self, needs: Needs) -> bool {
        (!needs.tenant || self.tenant.is_some())
            && (!needs.client_id || self.client_id.is_some())
            && (!needs.username || self.username.is_some())
    }
}

/// One plain pass: the values are names and ids, short, and read on every decision (two SIMD
/// searches cost more in set-up than this scan).
fn usable(v: &str) -> Option<&str> {
    let ok = !v.is_empty() && !v.bytes().any(|c| matches!(c, b'+' | b'#' | b'/' | 0));
    ok.then_some(v)
}

/// Which placeholders a template uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    /// `${tenant}`.
    pub tenant: bool,
    /// `${clientid}`.
    pub client_id: bool,
    /// `${username}`.
    pub username: bool,
}

/// Parses a rule's topic template once for every identity: placeholders stay as [`Level::Var`].
/// `None` when no identity could make it a valid filter (unknown or unclosed placeholder, a
/// wildcard inside a level, NUL, too long). A placeholder value holds no `/`, so the levels are
/// those of every expansion.
pub fn parse_template(template: &str) -> Option<(Vec<Level>, Needs)> {
    let b = template.as_bytes();
    if b.is_empty() || b.len() > MAX_LEN || memchr::memchr(0, b).is_some() {
        return None;
    }
    let mut needs = Needs::default();
    let parts: Vec<&str> = template.split('/').collect();
    let last = parts.len() - 1;
    let levels = parts
        .iter()
        .enumerate()
        .map(|(i, p)| match *p {
            "+" => Some(Level::Plus),
            "#" if i == last => Some(Level::Hash),
            p if p.contains("${") => var_level(p, &mut needs),
            p if has_wildcard(p) => None,
            p => Some(Level::Lit(p.into())),
        })
        .collect::<Option<Vec<_>>>()?;
    Some((levels, needs))
}

fn var_level(level: &str, needs: &mut Needs) -> Option<Level> {
    let mut pieces = Vec::new();
    let lit = |pieces: &mut Vec<Piece>, text: &str| {
        if has_wildcard(text) {
            return None;
        }
        if !text.is_empty() {
            pieces.push(Piece::Lit(text.into()));
        }
        Some(())
    };
    let mut rest = level;
    while let Some((before, after)) = rest.split_once("${") {
        lit(&mut pieces, before)?;
        let (name, tail) = after.split_once('}')?;
        pieces.push(match name {
            "tenant" => {
                needs.tenant = true;
                Piece::Tenant
            }
            "clientid" => {
                needs.client_id = true;
                Piece::ClientId
            }
            "username" => {
                needs.username = true;
                Piece::Username
            }
            _ => return None,
        });
        rest = tail;
    }
    lit(&mut pieces, rest)?;
    Some(Level::Var(pieces.into()))
}

/// Whether level `l`, read with `b`, is the word `w` (compared as bytes: a topic's levels are
/// cut at the byte `/`).
fn word_is(l: &Level, w: &[u8], b: &Bind<'_>) -> bool {
    match l {
        Level::Lit(s) => s.as_bytes() == w,
        Level::Var(pieces) => {
            let mut rest = w;
            for p in pieces.iter() {
                let part = match p {
                    Piece::Lit(s) => s,
                    p => match b.value(p) {
                        Some(v) => v,
                        None => return false,
                    },
                };
                match rest.strip_prefix(part.as_bytes()) {
                    Some(r) => rest = r,
                    None => return false,
                }
            }
            rest.is_empty()
        }
        Level::Plus | Level::Hash => false,
    }
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
            p => Some(Level::Lit(p.into())),
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

/// Whether every topic the filter (read with `b`) matches starts with `$`.
fn only_dollar(f: &[Level], b: &Bind<'_>) -> bool {
    match f.first() {
        Some(Level::Lit(s)) => s.starts_with('$'),
        Some(Level::Var(pieces)) => match pieces.first() {
            Some(Piece::Lit(s)) => s.starts_with('$'),
            Some(p) => b.value(p).is_some_and(|v| v.starts_with('$')),
            None => false,
        },
        _ => false,
    }
}

/// Whether topic name `topic` matches filter `f` (its placeholders read with `b`).
pub fn matches(f: &[Level], topic: &str, b: &Bind<'_>) -> bool {
    if topic.starts_with('$') && leads_with_wildcard(f) {
        return false;
    }
    // A byte loop: `str::split('/')` searches each level with memchr, a call per level of a
    // few bytes.
    let mut levels = topic.as_bytes().split(|c| *c == b'/');
    for l in f {
        match l {
            Level::Hash => return true,
            Level::Plus => {
                if levels.next().is_none() {
                    return false;
                }
            }
            word => match levels.next() {
                Some(w) if word_is(word, w, b) => {}
                _ => return false,
            },
        }
    }
    levels.next().is_none()
}

/// Whether every topic matching the concrete filter `f` also matches rule `r` (read with `b`).
pub fn covers(r: &[Level], f: &[Level], b: &Bind<'_>) -> bool {
    if leads_with_wildcard(r) && only_dollar(f, &Bind::NONE) {
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
            (Some(word), Some(Level::Lit(w))) if word_is(word, w.as_bytes(), b) => {}
            (Some(_), Some(_)) => return false,
        }
        i += 1;
    }
}

/// Whether some topic matches both rule `r` (read with `b`) and the concrete filter `f`.
pub fn intersects(r: &[Level], f: &[Level], b: &Bind<'_>) -> bool {
    if (leads_with_wildcard(r) && only_dollar(f, &Bind::NONE))
        || (leads_with_wildcard(f) && only_dollar(r, b))
    {
        return false;
    }
    let mut i = 0;
    loop {
        match (r.get(i), f.get(i)) {
            (Some(Level::Hash), _) | (_, Some(Level::Hash)) => return true,
            (None, None) => return true,
            (None, Some(_)) | (Some(_), None) => return false,
            (Some(Level::Plus), _) | (_, Some(Level::Plus)) => {}
            (Some(word), Some(Level::Lit(w))) if !word_is(word, w.as_bytes(), b) => return false,
            _ => {}
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(f: &str, t: &str) -> bool {
        matches(&parse_filter(f).unwrap(), t, &Bind::NONE)
    }

    fn cov(r: &str, f: &str) -> bool {
        covers(
            &parse_filter(r).unwrap(),
            &parse_filter(f).unwrap(),
            &Bind::NONE,
        )
    }

    fn int(r: &str, f: &str) -> bool {
        intersects(
            &parse_filter(r).unwrap(),
            &parse_filter(f).unwrap(),
            &Bind::NONE,
        )
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
