//! A reader for the one JSON shape EMQX sends on its hot path: a flat object whose values are all
//! strings (EMQX renders every placeholder as a string), with no escape sequence anywhere. It
//! borrows keys and values from the body and does no allocation. Anything else (another value
//! type, an escape, a control character, invalid UTF-8, trailing bytes, a duplicate the caller
//! refuses) is `None`, and the caller parses the body with serde_json instead, so the answer for
//! every input is serde_json's (a property test holds the two readers to that).

/// Calls `pair(key, value)` for each member of `body` in order, if `body` has the shape above;
/// `pair` returns `false` to give up (the result is then `None` too).
pub(super) fn members<'a>(
    body: &'a [u8],
    mut pair: impl FnMut(&'a str, &'a str) -> bool,
) -> Option<()> {
    let text = std::str::from_utf8(body).ok()?;
    let mut r = Reader { text, at: 0 };
    r.skip_ws();
    r.expect(b'{')?;
    r.skip_ws();
    if r.peek() == Some(b'}') {
        r.at += 1;
    } else {
        loop {
            let key = r.string()?;
            r.skip_ws();
            r.expect(b':')?;
            r.skip_ws();
            let value = r.string()?;
            if !pair(key, value) {
                return None;
            }
            r.skip_ws();
            match r.next()? {
                b',' => r.skip_ws(),
                b'}' => break,
                _ => return None,
            }
        }
    }
    r.skip_ws();
    (r.at == text.len()).then_some(())
}

struct Reader<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.at += 1;
        Some(b)
    }

    fn expect(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\n' | b'\r' | b'\t')) {
            self.at += 1;
        }
    }

    /// A string without escapes or control characters, borrowed.
    fn string(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let rest = self.text.get(self.at..)?;
        // One pass: the first byte that ends the plain run must be the closing quote.
        let len = rest
            .bytes()
            .position(|b| b == b'"' || b == b'\\' || b < 0x20)?;
        if rest.as_bytes().get(len) != Some(&b'"') {
            return None;
        }
        self.at += len + 1;
        rest.get(..len)
    }
}

#[cfg(test)]
mod tests {
    use super::members;

    fn pairs(body: &str) -> Option<Vec<(&str, &str)>> {
        let mut out = Vec::new();
        members(body.as_bytes(), |k, v| {
            out.push((k, v));
            true
        })
        .map(|()| out)
    }

    #[test]
    fn flat_objects_of_plain_strings_are_read_in_place() {
        assert_eq!(
            pairs(r#" { "a" : "1", "topic":"t/x y" ,"e":""} "#),
            Some(vec![("a", "1"), ("topic", "t/x y"), ("e", "")])
        );
        assert_eq!(pairs("{}"), Some(vec![]));
        assert_eq!(pairs("\n{\t}\r\n"), Some(vec![]));
    }

    #[test]
    fn every_other_shape_is_left_to_serde_json() {
        for body in [
            "",
            "[]",
            r#"{"a":1}"#,
            r#"{"a":null}"#,
            r#"{"a":true}"#,
            r#"{"a":{"b":"c"}}"#,
            r#"{"a":"b\"c"}"#,
            r#"{"a\u0041":"b"}"#,
            "{\"a\":\"b\tc\"}",
            r#"{"a":"b",}"#,
            r#"{"a":"b"} x"#,
            r#"{"a":"b"}{}"#,
            r#"{"a" "b"}"#,
            r#"{"a":"b""#,
            r#"{"a":"b"#,
            r#"{,}"#,
        ] {
            assert_eq!(pairs(body), None, "{body}");
        }
        assert_eq!(members(b"{\"a\":\"\xff\"}", |_, _| true), None);
        assert_eq!(members(br#"{"a":"b"}"#, |_, _| false), None);
    }
}
