//! Any bytes as an encrypted sum of 0 to 4 value columns (the first byte picks the count):
//! decoding never panics, accepts exactly `32·(1 + 2V)` bytes of canonical points, and
//! re-encodes to the same bytes.
#![no_main]

use cleanroom_psi::elgamal::Ciphertext;
use cleanroom_psi::ecdh::aggregate::ciphertext_bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let columns = usize::from(selector % 5);
    if let Ok(ciphertext) = Ciphertext::from_bytes(bytes, columns) {
        assert_eq!(bytes.len(), ciphertext_bytes(columns).max(32));
        assert_eq!(ciphertext.to_bytes(), bytes);
    }
});
