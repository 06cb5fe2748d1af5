//! Any bytes as a protocol message: decoding never panics, and whatever decodes is the one
//! canonical encoding of its message (re-encoding gives the same bytes back).
#![no_main]

use cleanroom_psi::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = Message::decode(data) {
        assert_eq!(
            message.encode(),
            data,
            "{} is not canonical",
            message.kind()
        );
    }
});
