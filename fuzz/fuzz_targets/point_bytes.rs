//! Any bytes as a wire point: only canonical, non-identity encodings of exactly 32 bytes decode,
//! and a decoded point compresses back to the same bytes.
#![no_main]

use cleanroom_psi::wire::{PointBytes, PointError};
use curve25519_dalek::traits::IsIdentity;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let bytes = match PointBytes::from_slice(data) {
        Ok(bytes) => bytes,
        Err(e) => {
            assert_ne!(data.len(), 32);
            assert_eq!(e, PointError::WrongLength(data.len()));
            return;
        }
    };
    match bytes.decode() {
        Ok(point) => {
            assert!(!point.is_identity());
            assert_eq!(point.compress().to_bytes(), bytes.0);
        }
        Err(PointError::Identity) => assert_eq!(bytes.0, [0u8; 32]),
        Err(_) => {}
    }
});
