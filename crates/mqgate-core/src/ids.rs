//! The identifiers every entry point parses once (CLI, admin, registry writes, HTTP, broker,
//! ACL placeholders): a value that can never work is refused where it enters, with a clear
//! message, instead of being stored and failing later.

use std::fmt;

/// An MQTT client id mqgate can serve: 1-256 bytes, no control characters and none of
/// `+ # / $` (rumqttd's router drops such links, and ACL placeholders refuse them), so it is
/// also safe as one path component of a file name. Held inline up to 24 bytes (most fleets' ids):
/// the cached authz lookup compares the key inside the device view it loads anyway instead of
/// chasing a pointer to it, and parsing a request's id allocates nothing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientId(compact_str::CompactString);

/// Why an identifier was refused (the message names the rule, never the value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadId(&'static str);

impl ClientId {
    /// Parses a client id.
    pub fn parse(s: &str) -> Result<Self, BadId> {
        let allowed = |c: char| !matches!(c, '+' | '#' | '/' | '$') && !c.is_control();
        // Nearly every client id is ASCII: a byte at a time then, without decoding chars.
        let ok = !s.is_empty()
            && s.len() <= 256
            && if s.is_ascii() {
                s.bytes().all(|b| allowed(char::from(b)))
            } else {
                s.chars().all(allowed)
            };
        if ok {
            Ok(ClientId(compact_str::CompactString::new(s)))
        } else {
            Err(BadId(
                "client id: 1-256 bytes, no control characters and none of + # / $",
            ))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

/// A tenant name: 1-64 of `A-Z a-z 0-9 - _ .` (it appears in topics, URIs and file names).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TenantName(String);

impl TenantName {
    /// Parses a tenant name.
    pub fn parse(s: &str) -> Result<Self, BadId> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if ok {
            Ok(TenantName(s.to_string()))
        } else {
            Err(BadId("tenant name: use 1-64 of A-Z a-z 0-9 - _ ."))
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for TenantName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_that_can_never_connect_are_refused() {
        for bad in [
            "",
            "a/b",
            "../x",
            "a+b",
            "#",
            "$SYS",
            "a\nb",
            &"x".repeat(257),
        ] {
            assert!(ClientId::parse(bad).is_err(), "{bad:?}");
        }
        for good in ["dev-1", "sensor.17", "é-device", ".."] {
            assert_eq!(ClientId::parse(good).unwrap().as_str(), good);
        }
        assert!(TenantName::parse("acme").is_ok());
        assert!(TenantName::parse("ac/me").is_err());
    }

    /// Ids of up to 24 bytes live inside the value (the cache's lookup compares the key in the
    /// device view it loads anyway, and a request's parse allocates nothing); longer ones, up to
    /// the 256-byte bound, on the heap, read back the same.
    #[test]
    fn short_client_ids_are_held_inline() {
        assert_eq!(std::mem::size_of::<ClientId>(), 24);
        for (len, inline) in [(1, true), (23, true), (24, true), (25, false), (256, false)] {
            let s = "d".repeat(len);
            let id = ClientId::parse(&s).unwrap();
            assert_eq!(!id.0.is_heap_allocated(), inline, "{len} bytes");
            assert_eq!(id.as_str(), s);
            assert_eq!(id, ClientId::parse(&s).unwrap());
        }
        // Multi-byte characters count in bytes: 12 two-byte characters fill the 24 inline bytes.
        let wide = "é".repeat(12);
        assert!(!ClientId::parse(&wide).unwrap().0.is_heap_allocated());
    }

    proptest::proptest! {
        /// The byte-at-a-time check of ASCII ids refuses exactly what the char-at-a-time rule
        /// refuses (ASCII with every control character and + # / $ among it, and any text).
        #[test]
        fn the_ascii_check_is_the_char_rule(
            ascii in proptest::collection::vec(0u8..0x80, 0..40),
            text in "(?s).{0,20}",
        ) {
            let rule = |s: &str| {
                !s.is_empty()
                    && s.len() <= 256
                    && s.chars().all(|c| !matches!(c, '+' | '#' | '/' | '$') && !c.is_control())
            };
            let ascii = String::from_utf8(ascii).unwrap();
            for s in [ascii.as_str(), text.as_str()] {
                proptest::prop_assert_eq!(ClientId::parse(s).is_ok(), rule(s), "{:?}", s);
            }
        }
    }
}
