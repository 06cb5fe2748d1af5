//! Any text as a collaboration file: loading returns a collaboration or an error and never
//! panics; a collaboration that loads can plan queries (allowed or refused, never a panic).
#![no_main]

use cleanroom_rules::Collaboration;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(collaboration) = Collaboration::from_toml_str(text, "fuzz") else {
        return;
    };
    let members: Vec<String> = collaboration
        .members()
        .iter()
        .map(|m| m.name().to_owned())
        .collect();
    let tables: Vec<(String, String)> = collaboration
        .tables()
        .iter()
        .map(|t| (t.name().to_owned(), t.columns()[0].clone()))
        .collect();
    for member in &members {
        for (a, ca) in &tables {
            for (b, cb) in &tables {
                let sql = format!(
                    "SELECT COUNT(DISTINCT x.{ca}) FROM {a} x JOIN {b} y ON x.{ca} = y.{cb}"
                );
                let _ = collaboration.plan(member, &sql);
            }
        }
    }
});
