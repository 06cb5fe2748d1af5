//! Any bytes as a protocol message of either protocol: decoding never panics, and whatever
//! decodes is the one canonical encoding of its message (re-encoding gives the same bytes back).
#![no_main]

use cleanroom_psi::{AggregateMessage, ListMessage, WireMessage};
use libfuzzer_sys::fuzz_target;

fn canonical<M: WireMessage>(data: &[u8]) {
    if let Ok(message) = M::decode(data) {
        assert_eq!(
            message.encode(),
            data,
            "{} is not canonical",
            message.kind()
        );
    }
}

fuzz_target!(|data: &[u8]| {
    canonical::<AggregateMessage>(data);
    canonical::<ListMessage>(data);
});
