//! The device file of `mqgate device import` / `export`: CSV or JSON lines, one device each, read
//! into [`DeviceLine`]s that keep their 1-based line number, and written back the same way.
//!
//! CSV: a header naming the columns (`client_id` required; `username`, `password_hash`, `acl`
//! optional, in any order), then one row per device. The `acl` cell holds the device's rules as
//! `permission:action:topic`, separated by `;` (the topic is everything after the second `:`,
//! so it may hold `:`; a topic holding `;` needs JSON lines).
//! JSON lines: `{"client_id":…,"username":…,"password_hash":…,"acl":[{"permission":…,
//! "action":…,"topic":…}]}`, blank lines skipped.
//!
//! Errors name the line and the field, never a value: a line may hold a password hash.

use std::io::{Read, Write};
use std::path::Path;

use serde_json::{Map, Value, json};

/// Bad lines reported at most; past that the count is enough.
const MAX_REPORTED: usize = 20;

/// The two file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Comma-separated values with a header row.
    Csv,
    /// One JSON object per line.
    Jsonl,
}

impl Format {
    /// The format a file's extension names (`.csv`, `.jsonl` / `.ndjson`), if any.
    pub fn of_path(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "csv" => Some(Format::Csv),
            "jsonl" | "ndjson" => Some(Format::Jsonl),
            _ => None,
        }
    }
}

/// One rule as written in the file, not yet checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleText {
    /// `allow` or `deny`.
    pub permission: String,
    /// `publish`, `subscribe` or `all`.
    pub action: String,
    /// Topic filter, placeholders allowed.
    pub topic: String,
}

/// One device as written in the file, not yet checked.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct DeviceLine {
    /// 1-based line number where it starts.
    pub line: u64,
    /// MQTT client id.
    pub client_id: String,
    /// MQTT username, if any.
    pub username: Option<String>,
    /// An existing password hash (argon2id or bcrypt), if any.
    pub password_hash: Option<String>,
    /// The device's own rules, in order.
    pub acl: Vec<RuleText>,
}

impl std::fmt::Debug for DeviceLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceLine")
            .field("line", &self.line)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password_hash", &self.password_hash.as_ref().map(|_| "…"))
            .field("acl", &self.acl)
            .finish()
    }
}

/// A line that cannot be imported, and why (never the value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    /// 1-based line number (0: the file as a whole).
    pub line: u64,
    /// What is wrong.
    pub problem: String,
}

/// Every bad line of a file (the first [`MAX_REPORTED`], and how many in all).
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
pub struct BadLines {
    /// The lines reported.
    pub lines: Vec<BadLine>,
    /// How many bad lines there were.
    pub total: usize,
}

impl BadLines {
    /// Records a bad line.
    pub fn push(&mut self, line: u64, problem: impl Into<String>) {
        self.total += 1;
        if self.lines.len() < MAX_REPORTED {
            self.lines.push(BadLine {
                line,
                problem: problem.into(),
            });
        }
    }

    /// `Err(self)` when there is any bad line.
    pub fn into_result(self) -> Result<(), BadLines> {
        if self.total == 0 { Ok(()) } else { Err(self) }
    }
}

impl std::fmt::Display for BadLines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} bad line(s), nothing imported", self.total)?;
        for b in &self.lines {
            if b.line == 0 {
                write!(f, "\n  {}", b.problem)?;
            } else {
                write!(f, "\n  line {}: {}", b.line, b.problem)?;
            }
        }
        if self.total > self.lines.len() {
            write!(f, "\n  … and {} more", self.total - self.lines.len())?;
        }
        Ok(())
    }
}

/// Why a file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Lines that cannot be imported.
    #[error(transparent)]
    Lines(#[from] BadLines),
    /// The file itself could not be read.
    #[error("reading the file: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads every device of a file; any bad line makes the whole file an error.
pub fn read(mut input: impl Read, format: Format) -> Result<Vec<DeviceLine>, ReadError> {
    let mut bytes = Vec::new();
    input.read_to_end(&mut bytes)?;
    // A spreadsheet's "CSV UTF-8" starts with a byte-order mark.
    let text = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    match format {
        Format::Csv => read_csv(text),
        Format::Jsonl => read_jsonl(text),
    }
}

/// Line numbers from byte offsets: the csv crate's own line count skips blank lines.
struct Lines<'a> {
    bytes: &'a [u8],
    at: usize,
    line: u64,
}

impl Lines<'_> {
    /// The 1-based line of the record at byte `offset` (offsets asked in increasing order). A
    /// record's offset is where the previous one ended: blank lines before it are not its own.
    fn of(&mut self, offset: u64) -> u64 {
        let mut to = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.bytes.len());
        while self
            .bytes
            .get(to)
            .is_some_and(|b| matches!(b, b'\r' | b'\n'))
        {
            to += 1;
        }
        if to > self.at {
            let between = self.bytes.get(self.at..to).unwrap_or_default();
            self.line += memchr::memchr_iter(b'\n', between).count() as u64;
            self.at = to;
        }
        self.line
    }
}

/// The CSV columns, in the order `export` writes them.
const COLUMNS: [&str; 4] = ["client_id", "username", "password_hash", "acl"];

fn read_csv(bytes: &[u8]) -> Result<Vec<DeviceLine>, ReadError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(bytes);
    let mut lines = Lines {
        bytes,
        at: 0,
        line: 1,
    };
    let mut bad = BadLines::default();
    let columns = csv_columns(&mut reader).map_err(|problem| {
        let mut b = BadLines::default();
        b.push(1, problem);
        b
    })?;
    let mut out = Vec::new();
    let mut record = csv::StringRecord::new();
    loop {
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {
                let line = record.position().map_or(0, |p| lines.of(p.byte()));
                match csv_line(&record, &columns, line) {
                    Ok(d) => out.push(d),
                    Err(problem) => bad.push(line, problem),
                }
            }
            Err(e) => {
                let line = e.position().map_or(0, |p| lines.of(p.byte()));
                match e.kind() {
                    csv::ErrorKind::Io(_) => return Err(ReadError::Io(e.into())),
                    csv::ErrorKind::UnequalLengths {
                        expected_len, len, ..
                    } => bad.push(
                        line,
                        format!(
                            "{len} fields where the header has {expected_len} \
                             (quote a cell that holds a comma, as an argon2 hash does)"
                        ),
                    ),
                    csv::ErrorKind::Utf8 { .. } => bad.push(line, "not UTF-8"),
                    _ => bad.push(line, "unreadable CSV"),
                }
            }
        }
    }
    bad.into_result()?;
    Ok(out)
}

/// Where each known column is in this file's header.
#[derive(Debug, Default)]
struct Columns {
    client_id: usize,
    username: Option<usize>,
    password_hash: Option<usize>,
    acl: Option<usize>,
}

fn csv_columns<R: std::io::Read>(reader: &mut csv::Reader<R>) -> Result<Columns, String> {
    let header = reader
        .headers()
        .map_err(|_| "the first line must be the header (client_id,username,password_hash,acl)")?
        .clone();
    let mut seen: Vec<&str> = Vec::new();
    for name in &header {
        if !COLUMNS.contains(&name) {
            return Err(format!(
                "unknown column `{name}` (columns: client_id, username, password_hash, acl)"
            ));
        }
        if seen.contains(&name) {
            return Err(format!("column `{name}` appears twice"));
        }
        seen.push(name);
    }
    let at = |n: &str| header.iter().position(|h| h == n);
    Ok(Columns {
        client_id: at("client_id").ok_or("the header must name a client_id column")?,
        username: at("username"),
        password_hash: at("password_hash"),
        acl: at("acl"),
    })
}

fn csv_line(record: &csv::StringRecord, c: &Columns, line: u64) -> Result<DeviceLine, String> {
    let cell = |i: Option<usize>| {
        i.and_then(|i| record.get(i))
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    Ok(DeviceLine {
        line,
        client_id: cell(Some(c.client_id)).unwrap_or_default(),
        username: cell(c.username),
        password_hash: cell(c.password_hash),
        acl: match cell(c.acl) {
            Some(text) => parse_acl_cell(&text)?,
            None => Vec::new(),
        },
    })
}

/// `permission:action:topic;…` (empty parts between `;` are skipped).
fn parse_acl_cell(text: &str) -> Result<Vec<RuleText>, String> {
    text.split(';')
        .filter(|r| !r.is_empty())
        .enumerate()
        .map(|(i, r)| {
            let mut parts = r.splitn(3, ':');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(p), Some(a), Some(t)) => Ok(RuleText {
                    permission: p.into(),
                    action: a.into(),
                    topic: t.into(),
                }),
                _ => Err(format!(
                    "acl rule {}: write it as permission:action:topic",
                    i + 1
                )),
            }
        })
        .collect()
}

fn read_jsonl(bytes: &[u8]) -> Result<Vec<DeviceLine>, ReadError> {
    let mut bad = BadLines::default();
    let mut out = Vec::new();
    for (line, raw) in (1u64..).zip(bytes.split(|b| *b == b'\n')) {
        let Ok(text) = std::str::from_utf8(raw) else {
            bad.push(line, "not UTF-8");
            continue;
        };
        if text.trim().is_empty() {
            continue;
        }
        match json_line(text, line) {
            Ok(d) => out.push(d),
            Err(problem) => bad.push(line, problem),
        }
    }
    bad.into_result()?;
    Ok(out)
}

fn json_line(text: &str, line: u64) -> Result<DeviceLine, String> {
    // Syntax errors from serde_json name a column, never the text.
    let value: Value = serde_json::from_str(text)
        .map_err(|e| format!("not valid JSON (column {})", e.column()))?;
    let Value::Object(o) = value else {
        return Err("not a JSON object".into());
    };
    only_keys(&o, &COLUMNS)?;
    Ok(DeviceLine {
        line,
        client_id: text_field(&o, "client_id")?.ok_or("client_id is missing")?,
        username: text_field(&o, "username")?,
        password_hash: text_field(&o, "password_hash")?,
        acl: match o.get("acl") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(rules)) => rules.iter().map(json_rule).collect::<Result<_, _>>()?,
            Some(_) => return Err("acl must be an array of rules".into()),
        },
    })
}

fn json_rule(v: &Value) -> Result<RuleText, String> {
    let Value::Object(o) = v else {
        return Err("each acl rule must be an object {permission, action, topic}".into());
    };
    only_keys(o, &["permission", "action", "topic"])?;
    let need = |k: &str| text_field(o, k)?.ok_or_else(|| format!("acl rule without {k}"));
    Ok(RuleText {
        permission: need("permission")?,
        action: need("action")?,
        topic: need("topic")?,
    })
}

fn only_keys(o: &Map<String, Value>, known: &[&str]) -> Result<(), String> {
    match o.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(format!(
            "unknown field `{}` (fields: {})",
            k.chars().take(40).collect::<String>(),
            known.join(", ")
        )),
        None => Ok(()),
    }
}

/// A string field; absent, `null` and `""` are none.
fn text_field(o: &Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("{key} must be a string")),
    }
}

/// Writes devices in `format` (what `export` produces; `password_hash` is written only if set,
/// and export never sets it). CSV refuses a topic holding `;`, which its `acl` cell cannot carry.
pub fn write(out: &mut impl Write, format: Format, devices: &[DeviceLine]) -> std::io::Result<()> {
    match format {
        Format::Csv => write_csv(out, devices),
        Format::Jsonl => {
            for d in devices {
                let acl: Vec<Value> = d
                    .acl
                    .iter()
                    .map(|r| json!({"permission": r.permission, "action": r.action, "topic": r.topic}))
                    .collect();
                let mut line =
                    json!({"client_id": d.client_id, "username": d.username, "acl": acl});
                if let Some(h) = &d.password_hash {
                    line["password_hash"] = Value::String(h.clone());
                }
                writeln!(out, "{line}")?;
            }
            Ok(())
        }
    }
}

fn write_csv(out: &mut impl Write, devices: &[DeviceLine]) -> std::io::Result<()> {
    let mut w = csv::Writer::from_writer(out);
    w.write_record(COLUMNS)?;
    for d in devices {
        if d.acl.iter().any(|r| r.topic.contains(';')) {
            return Err(std::io::Error::other(format!(
                "device {}: a rule's topic holds `;`, which CSV's acl cell cannot carry: use --format jsonl",
                d.client_id
            )));
        }
        let acl: Vec<String> = d
            .acl
            .iter()
            .map(|r| format!("{}:{}:{}", r.permission, r.action, r.topic))
            .collect();
        w.write_record([
            d.client_id.as_str(),
            d.username.as_deref().unwrap_or(""),
            d.password_hash.as_deref().unwrap_or(""),
            &acl.join(";"),
        ])?;
    }
    w.flush()
}

/// Writes the generated tokens, one `client_id,token` row (CSV, after a header) or
/// `{"client_id":…,"token":…}` line per device.
pub fn write_tokens<'a>(
    out: &mut impl Write,
    format: Format,
    tokens: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> std::io::Result<()> {
    match format {
        Format::Csv => {
            let mut w = csv::Writer::from_writer(out);
            w.write_record(["client_id", "token"])?;
            for (c, t) in tokens {
                w.write_record([c, t])?;
            }
            w.flush()
        }
        Format::Jsonl => {
            for (c, t) in tokens {
                writeln!(out, "{}", json!({"client_id": c, "token": t}))?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv(text: &str) -> Result<Vec<DeviceLine>, ReadError> {
        read(text.as_bytes(), Format::Csv)
    }

    fn bad(r: Result<Vec<DeviceLine>, ReadError>) -> BadLines {
        match r {
            Err(ReadError::Lines(b)) => b,
            other => panic!("expected bad lines, got {other:?}"),
        }
    }

    #[test]
    fn csv_rows_read_with_their_line_numbers_and_rules() {
        let text = "client_id,username,password_hash,acl\n\
                    a,,,\n\
                    b,bob,,allow:publish:x/${clientid}/#;deny:all:x/a:b;c\n";
        let got = bad(csv(text));
        // `;` inside a topic cannot be told from a separator: the last rule `c` is malformed.
        assert_eq!(got.lines[0].line, 3, "{got}");
        let text =
            "\u{feff}acl,client_id\r\nallow:publish:x/${clientid}/#;deny:all:x/a:b,b\r\n\r\n,a\r\n";
        let got = csv(text).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].line, 2);
        assert_eq!(got[0].client_id, "b");
        assert_eq!(got[0].acl[1].topic, "x/a:b");
        assert_eq!(got[1].line, 4);
        assert!(got[1].acl.is_empty());
    }

    #[test]
    fn csv_header_must_name_known_columns() {
        assert!(bad(csv("client,acl\na,\n")).to_string().contains("line 1"));
        assert!(bad(csv("username\nu\n")).to_string().contains("client_id"));
        let short = bad(csv("client_id,username\na,u\nb\nc,u\n"));
        assert_eq!(short.lines[0].line, 3);
    }

    #[test]
    fn jsonl_errors_name_the_line_and_never_the_value() {
        let text = "{\"client_id\":\"a\"}\n\n{\"client_id\":\"b\",\"password_hash\":7}\n\
                    {\"client_id\":\"c\",\"password\":\"hunter2-secret\"}\n{oops hunter2-secret\n";
        let got = bad(read(text.as_bytes(), Format::Jsonl));
        let lines: Vec<u64> = got.lines.iter().map(|b| b.line).collect();
        assert_eq!(lines, [3, 4, 5]);
        assert!(!got.to_string().contains("hunter2"), "{got}");
    }

    #[test]
    fn export_reads_back_as_it_was_written() {
        let devices = vec![
            DeviceLine {
                line: 2,
                client_id: "a".into(),
                username: Some("u,1".into()),
                password_hash: None,
                acl: vec![RuleText {
                    permission: "allow".into(),
                    action: "publish".into(),
                    topic: "t/${clientid}/x:y".into(),
                }],
            },
            DeviceLine {
                line: 3,
                client_id: "b".into(),
                ..DeviceLine::default()
            },
        ];
        for format in [Format::Csv, Format::Jsonl] {
            let mut out = Vec::new();
            write(&mut out, format, &devices).unwrap();
            let mut back = read(&out[..], format).unwrap();
            if format == Format::Jsonl {
                back.iter_mut().for_each(|d| d.line += 1);
            }
            assert_eq!(back, devices, "{format:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn reading_never_panics(text in "\\PC{0,200}") {
            let _ = read(text.as_bytes(), Format::Csv);
            let _ = read(text.as_bytes(), Format::Jsonl);
        }
    }
}
