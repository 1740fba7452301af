//! Reads the `acl-rules/` directory (the file format and its parsing are the core's
//! [`crate::acl::file`]; the core does no I/O).

use std::path::Path;

use crate::acl::Rule;
use crate::acl::file::{AclFileError, parse_file};

/// Loads every `*.toml` under `dir` in file-name order. A missing directory is an error: running
/// without the shipped default would silently deny everything.
pub fn load_dir(dir: &Path) -> Result<Vec<Rule>, AclFileError> {
    let read_err = |p: &Path, e: std::io::Error| AclFileError::Read {
        path: p.display().to_string(),
        reason: e.to_string(),
    };
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| read_err(dir, e))?
        .map(|e| e.map(|e| e.path()).map_err(|e| read_err(dir, e)))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter(|p| {
            let hidden = p
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            !hidden && p.extension().is_some_and(|x| x == "toml") && p.is_file()
        })
        .collect();
    files.sort();
    let mut rules = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(|e| read_err(&path, e))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        rules.extend(parse_file(&name, &text)?);
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_load_in_name_order_and_the_shipped_default_is_valid() {
        let dir = tempfile::tempdir().unwrap();
        let rule = |t: &str| {
            format!("[[rule]]\npermission = \"allow\"\naction = \"all\"\ntopic = \"{t}\"\n")
        };
        std::fs::write(dir.path().join("20-b.toml"), rule("b")).unwrap();
        std::fs::write(dir.path().join("10-a.toml"), rule("a")).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        std::fs::write(
            dir.path().join(".00-editor-swap.toml"),
            "not toml at all [[",
        )
        .unwrap();
        let topics: Vec<_> = load_dir(dir.path())
            .unwrap()
            .into_iter()
            .map(|r| r.topic)
            .collect();
        assert_eq!(topics, ["a", "b"]);
        // The repository's shipped rules.
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let shipped = load_dir(&repo.join("acl-rules")).unwrap();
        assert_eq!(shipped.len(), 1);
        assert_eq!(shipped[0].topic, "${tenant}/${clientid}/#");
        assert!(load_dir(&dir.path().join("missing")).is_err());
    }
}
