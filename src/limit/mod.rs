//! Rate buckets (ingestion limits) and the brute-force guard. The algorithms are pure and take
//! `now`; the gate owns their state.

pub use mqgate_core::bucket;
pub mod ingest;
pub mod lockout;
