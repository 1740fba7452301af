//! The security kernel: secret hashing and verification (the only place secrets are compared).

pub mod secret;
