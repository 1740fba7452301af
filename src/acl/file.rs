//! The `acl-rules/` file format: TOML files of `[[rule]]` tables, loaded in file-name order.
