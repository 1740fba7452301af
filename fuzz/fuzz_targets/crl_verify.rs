//! CRL input (imported files, fetched bodies) checked against a real CA: nothing may panic, and
//! nothing that is not signed by the CA may verify.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use mqgate::auth::{cert, crl};

static CA: LazyLock<Vec<u8>> = LazyLock::new(|| {
    cert::new_ca("fuzz", "ca", 1_800_000_000, 86_400)
        .unwrap()
        .cert_der
});

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = crl::verify(data, &CA) {
        // Only a CRL signed with the CA's key could get here, and the fuzzer does not have it.
        panic!("an unsigned CRL verified: {:?}", c.number);
    }
});
