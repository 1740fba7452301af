//! The one integration test binary.

mod helpers;

mod audit;
mod broker;
mod broker_conform;
mod broker_tls;
mod broker_v5;
mod brute_force;
mod brute_force_shared;
mod certs;
mod client_ids;
mod compose;
mod emqx_http;
mod emqx_kicks;
mod hostile;
mod import;
mod outage;
mod processes;
mod rate_limits;
mod raw;
mod store_contract;
