//! mqgate decides who may talk on an MQTT broker.
//!
//! Map of the modules (see `ARCHITECTURE.md` in the shared docs):
//! - [`acl`]: topic ACL rules, placeholder expansion, MQTT topic matching, rule files.
//! - [`registry`]: the device store (PostgreSQL / SQLite), its cache and change notification.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod acl;
pub mod registry;
