//! The `acl-rules/` file format: TOML files of `[[rule]]` tables, loaded in file-name order.

use std::path::Path;

/// A rule file problem (stub until the ACL module lands).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AclFileError(String);

/// Loads every `*.toml` under `dir` in file-name order.
pub fn load_dir(dir: &Path) -> Result<Vec<super::Rule>, AclFileError> {
    let _ = dir;
    Err(AclFileError("not yet".into()))
}

/// Checks a rule's topic filter as written (placeholders allowed) (stub).
pub fn validate_topic_template(topic: &str) -> Result<(), AclFileError> {
    let _ = topic;
    Ok(())
}
