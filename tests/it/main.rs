//! The one integration test binary.

mod helpers;

mod emqx_http;
mod processes;
