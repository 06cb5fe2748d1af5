//! Any text as SQL, checked by every member of the rules' test collaboration: a plan or a
//! refusal with at least one reason, never a panic.
#![no_main]

use cleanroom_rules::Collaboration;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn collaboration() -> &'static Collaboration {
    static COLLABORATION: OnceLock<Collaboration> = OnceLock::new();
    COLLABORATION.get_or_init(|| {
        Collaboration::from_toml_str(
            include_str!("../../crates/rules/tests/data/collab.toml"),
            "collab.toml",
        )
        .expect("the test collaboration loads")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };
    let collaboration = collaboration();
    for member in ["advertiser", "retailer", "publisher", "nobody"] {
        match collaboration.plan(member, sql) {
            Ok(plan) => {
                let _ = plan.domain();
            }
            Err(refusal) => assert!(!refusal.reasons.is_empty()),
        }
    }
});
