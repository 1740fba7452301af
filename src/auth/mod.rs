//! The security kernel: secret verification (the async verifier over the core's `secret`, the
//! only place secrets are compared), device certificates, revocation lists and the trust they add
//! up to.

pub mod cert;
pub mod crl;
pub mod secret;
pub mod trust;
