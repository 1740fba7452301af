//! The `acl-rules/` file format: TOML files of `[[rule]]` tables, loaded in file-name order.
//!
//! ```toml
//! [[rule]]
//! permission = "allow"              # allow | deny
//! action = "all"                    # publish | subscribe | all
//! topic = "${tenant}/${clientid}/#" # MQTT filter; ${tenant} ${clientid} ${username}
//! ```
//!
//! A file that does not parse, has an unknown key, or a rule whose filter is not valid MQTT fails
//! the whole load: a half-loaded rule set could allow or deny what the operator did not write.
//! This module parses text; mqgate's `rule_files` reads the directory.

use serde::Deserialize;

use super::{Identity, Permission, Rule, RuleAction, RuleSource, expand, topic};

/// A rule file problem, naming the file (and rule) at fault.
#[derive(Debug, thiserror::Error)]
pub enum AclFileError {
    /// The directory or a file could not be read.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
    /// Not TOML of the expected shape (unknown key, bad value…).
    #[error("{file}: {reason}")]
    Parse {
        /// The file.
        file: String,
        /// The parser's message.
        reason: String,
    },
    /// A rule's topic filter is not valid.
    #[error("{file}:{line}: {reason}")]
    Topic {
        /// The file.
        file: String,
        /// Line of the rule's `[[rule]]` header.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRules {
    #[serde(default)]
    rule: Vec<FileRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRule {
    permission: Permission,
    action: RuleAction,
    topic: String,
}

/// Checks a rule's topic filter as written: placeholders must be known, and the filter must be
/// valid MQTT with them filled in.
pub fn validate_topic_template(template: &str) -> Result<(), String> {
    let c = crate::ids::ClientId::parse("c").map_err(|e| e.to_string())?;
    let who = Identity {
        tenant: "t",
        client_id: &c,
        username: Some("u"),
    };
    let expanded = expand(template, &who).ok_or_else(|| {
        "unknown placeholder (use ${tenant}, ${clientid}, ${username})".to_string()
    })?;
    topic::parse_filter(&expanded)
        .map(|_| ())
        .ok_or_else(|| format!("`{template}` is not a valid MQTT topic filter"))
}

/// Parses one file's text; `name` is used in sources and errors.
pub fn parse_file(name: &str, text: &str) -> Result<Vec<Rule>, AclFileError> {
    let parsed: FileRules = toml::from_str(text).map_err(|e| AclFileError::Parse {
        file: name.into(),
        reason: e.to_string(),
    })?;
    let mut headers = text
        .lines()
        .enumerate()
        .filter(|(_, l)| is_rule_header(l))
        .map(|(i, _)| i + 1);
    let file: std::sync::Arc<str> = name.into();
    parsed
        .rule
        .into_iter()
        .map(|r| {
            let line = headers.next().unwrap_or(0);
            validate_topic_template(&r.topic).map_err(|reason| AclFileError::Topic {
                file: name.into(),
                line,
                reason,
            })?;
            Ok(Rule {
                permission: r.permission,
                action: r.action,
                topic: r.topic,
                source: RuleSource::File {
                    file: file.clone(),
                    line,
                },
            })
        })
        .collect()
}

/// Whether a line opens a `[[rule]]` table (TOML allows spaces inside the brackets and a trailing
/// comment: `[[ rule ]]  # note`).
fn is_rule_header(line: &str) -> bool {
    let code = line.split('#').next().unwrap_or("");
    code.chars()
        .filter(|c| !c.is_whitespace())
        .eq("[[rule]]".chars())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_good_file_parses_with_line_numbers() {
        let text = "# comment\n[[rule]]\npermission = \"deny\"\naction = \"publish\"\ntopic = \"a/#\"\n\n[[rule]]\npermission = \"allow\"\naction = \"all\"\ntopic = \"${tenant}/${clientid}/#\"\n";
        let rules = parse_file("x.toml", text).unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].permission, Permission::Deny);
        assert_eq!(
            rules[0].source,
            RuleSource::File {
                file: "x.toml".into(),
                line: 2
            }
        );
        assert_eq!(
            rules[1].source,
            RuleSource::File {
                file: "x.toml".into(),
                line: 7
            }
        );
    }

    #[test]
    fn headers_with_inner_spaces_or_comments_keep_line_numbers_right() {
        let text = "[[ rule ]]  # first\npermission = \"allow\"\naction = \"all\"\ntopic = \"a\"\n[[rule]]#second\npermission = \"deny\"\naction = \"all\"\ntopic = \"b\"\n";
        let lines: Vec<_> = parse_file("s.toml", text)
            .unwrap()
            .into_iter()
            .map(|r| match r.source {
                RuleSource::File { line, .. } => line,
                _ => 0,
            })
            .collect();
        assert_eq!(lines, [1, 5]);
    }

    #[test]
    fn bad_files_fail_with_a_clear_message() {
        let bad_perm = "[[rule]]\npermission = \"maybe\"\naction = \"all\"\ntopic = \"a\"\n";
        assert!(
            parse_file("p.toml", bad_perm)
                .unwrap_err()
                .to_string()
                .starts_with("p.toml")
        );
        let unknown =
            "[[rule]]\npermission = \"allow\"\naction = \"all\"\ntopic = \"a\"\nqos = 1\n";
        assert!(
            parse_file("k.toml", unknown)
                .unwrap_err()
                .to_string()
                .contains("qos")
        );
        let bad_topic = "[[rule]]\npermission = \"allow\"\naction = \"all\"\ntopic = \"a/#/b\"\n";
        let e = parse_file("t.toml", bad_topic).unwrap_err().to_string();
        assert!(e.starts_with("t.toml:1:"), "{e}");
        let bad_placeholder =
            "[[rule]]\npermission = \"allow\"\naction = \"all\"\ntopic = \"${password}/x\"\n";
        assert!(
            parse_file("h.toml", bad_placeholder)
                .unwrap_err()
                .to_string()
                .contains("placeholder")
        );
    }
}
