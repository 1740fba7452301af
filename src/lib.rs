//! mqgate decides who may talk on an MQTT broker.
//!
//! Map of the modules (see `docs/ARCHITECTURE.md`):
//! - [`admin`]: operator actions (tenants, devices, credentials, rules), used by the CLI.
//! - [`app`]: builds (binds, migrates, warms) and runs the service.
//! - [`audit`]: typed audit events, the hash chain, and the buffered writer.
//! - [`core`]: the decision core (the `mqgate-core` crate) — facts in, `Decision` (verdict +
//!   cause) out: the whole CONNECT rule, publish/subscribe, session re-checks, the proof types.
//! - [`broker`]: the embedded MQTT broker — mqgate's edge in front of rumqttd's router.
//! - [`http`]: the HTTP server, shared guards and limits, and the broker dialects (EMQX).
//! - [`gate`]: the one async entry every transport calls (cache → verify → core → audit).
//! - [`acl`]: topic ACL rules, placeholder expansion, MQTT topic matching, the rule file format
//!   (in the core crate); [`rule_files`] reads the `acl-rules/` directory.
//! - [`auth`]: the security kernel — secret verification off the async threads (hashing and the
//!   one constant-time compare are the core's), device certificates, CRLs, and the certificate
//!   trust (with the rustls client verifier).
//! - [`cert_upkeep`]: keeps certificate trust current while serving (reloads, CRL fetch/re-sign).
//! - [`kicker`]: EMQX kicks — disconnects live EMQX sessions a registry change revoked.
//! - [`limit`]: rate buckets and the brute-force guard (pure, time passed in).
//! - [`metrics`]: decision and rate-limit counters for `/metrics`.
//! - [`registry`]: the device store (PostgreSQL / SQLite), its cache and change notification,
//!   and its health (the circuit breaker that keeps answers in time during an outage).
//! - [`config`]: typed configuration (defaults → file → env → flags).
//! - [`cli`]: the operator command line.
//! - [`clock`]: the only reader of wall-clock time.
//! - [`fault`]: fatal faults (a dead router thread): readiness off, exit non-zero.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod app;
pub mod audit;
pub mod auth;
pub mod broker;
pub mod cert_upkeep;
pub mod cli;
pub mod clock;
pub mod config;
pub mod fault;
pub mod gate;
pub mod http;
pub mod kicker;
pub mod limit;
pub mod metrics;
pub mod registry;
pub mod rule_files;

// The decision core is the `mqgate-core` crate (a leaf: nothing async, nothing of mqgate's);
// its old paths stay.
pub use mqgate_core as core;
pub use mqgate_core::acl;
