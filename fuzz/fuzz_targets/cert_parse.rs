//! Certificate input as devices, brokers and operators hand it over: DER, PEM, base64.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqgate::auth::cert;

fuzz_target!(|data: &[u8]| {
    let _ = cert::parse(data);
    if let Ok(blocks) = cert::read_certs(data) {
        for der in blocks {
            let _ = cert::parse(&der);
        }
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(der) = cert::decode_forwarded(text)
    {
        let _ = cert::parse(&der);
    }
});
