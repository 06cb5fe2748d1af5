//! Fuzz-style tests: whatever the text, checking a query returns a plan or a refusal and never
//! panics (nor overflows the stack of a 2 MiB thread, the default for spawned threads).

use cleanroom_rules::{Collaboration, MAX_QUERY_TOKENS, ReasonCode};
use proptest::prelude::*;

fn collaboration() -> Collaboration {
    Collaboration::load(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/collab.toml"
    ))
    .unwrap()
}

/// Checks `sql` as every member and as a stranger; allowed plans must serialize.
fn check_all(collab: &Collaboration, sql: &str) {
    for member in ["advertiser", "retailer", "publisher", "nobody"] {
        match collab.plan(member, sql) {
            Ok(plan) => {
                let json = serde_json::to_string(&plan).unwrap();
                assert!(json.contains("\"protocol\""));
            }
            Err(refusal) => assert!(!refusal.reasons.is_empty()),
        }
    }
}

const VOCABULARY: &[&str] = &[
    "SELECT",
    "FROM",
    "WHERE",
    "GROUP",
    "BY",
    "ORDER",
    "LIMIT",
    "JOIN",
    "INNER",
    "LEFT",
    "ON",
    "USING",
    "AND",
    "OR",
    "NOT",
    "IN",
    "BETWEEN",
    "IS",
    "NULL",
    "DISTINCT",
    "COUNT",
    "SUM",
    "AVG",
    "MAX",
    "AS",
    "ASC",
    "DESC",
    "HAVING",
    "UNION",
    "WITH",
    "OVER",
    "CROSS",
    "NATURAL",
    "(",
    ")",
    ",",
    ".",
    "*",
    "=",
    "<>",
    "<",
    ">=",
    "+",
    "-",
    ";",
    "1",
    "0",
    "-7",
    "2.5",
    "'EU'",
    "'x''y'",
    "impressions",
    "conversions",
    "store_visits",
    "loyalty",
    "subscribers",
    "customers",
    "cu",
    "s",
    "newsletter",
    "signup_date",
    "customer_id",
    "cu.email",
    "s.region",
    "cu.segment",
    "s.email",
    "i",
    "c",
    "email",
    "campaign",
    "region",
    "device",
    "product",
    "channel",
    "purchase_value",
    "quantity",
    "coupon",
    "i.email",
    "c.email",
    "i.campaign",
    "c.product",
    "c.purchase_value",
    "\"region\"",
    "`x`",
    "?",
    "$1",
    "CASE",
    "WHEN",
    "THEN",
    "END",
    "CAST",
    "EXISTS",
    "VALUES",
    "INSERT",
    "INTO",
    "DROP",
];

const SEEDS: &[&str] = &[
    "SELECT DISTINCT cu.email, s.region FROM customers cu JOIN subscribers s ON cu.email = s.email WHERE s.region IN ('EU', 'US') AND NOT cu.segment = 'gold' ORDER BY 2 DESC LIMIT 3",
    "SELECT customer_id, newsletter FROM customers JOIN subscribers USING (email) WHERE subscribers.region IS NULL",
    "SELECT i.campaign, COUNT(DISTINCT c.email) FROM impressions i JOIN conversions c ON i.email = c.email GROUP BY i.campaign",
    "SELECT c.product, SUM(c.purchase_value), AVG(c.quantity) FROM impressions i JOIN conversions c ON i.email = c.email WHERE i.region IN ('EU', 'US') AND NOT c.channel = 'web' GROUP BY c.product ORDER BY 2 DESC LIMIT 3",
    "SELECT COUNT(DISTINCT impressions.email) FROM impressions JOIN conversions USING (email) WHERE impressions.device BETWEEN 'a' AND 'n'",
];

fn tokens() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(VOCABULARY), 0..40).prop_map(|t| t.join(" "))
}

/// A seed query with some of its tokens deleted, duplicated or replaced.
fn mutated() -> impl Strategy<Value = String> {
    (
        prop::sample::select(SEEDS),
        prop::collection::vec(
            (
                any::<prop::sample::Index>(),
                0u8..3,
                prop::sample::select(VOCABULARY),
            ),
            1..6,
        ),
    )
        .prop_map(|(seed, edits)| {
            let mut words: Vec<String> = seed.split(' ').map(String::from).collect();
            for (index, kind, word) in edits {
                if words.is_empty() {
                    words.push(word.to_owned());
                    continue;
                }
                let i = index.index(words.len());
                match kind {
                    0 => {
                        words.remove(i);
                    }
                    1 => words.insert(i, word.to_owned()),
                    _ => words[i] = word.to_owned(),
                }
            }
            words.join(" ")
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]

    #[test]
    fn arbitrary_text_never_panics(sql in ".{0,200}") {
        check_all(&collaboration(), &sql);
    }

    #[test]
    fn token_soup_never_panics(sql in tokens()) {
        check_all(&collaboration(), &sql);
    }

    #[test]
    fn mutated_queries_never_panic(sql in mutated()) {
        check_all(&collaboration(), &sql);
    }
}

/// Runs `f` on a thread with the default 2 MiB stack.
fn on_small_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn the_longest_accepted_predicate_chain_fits_a_small_stack() {
    on_small_stack(|| {
        let collab = collaboration();
        let head = "SELECT COUNT(DISTINCT i.email) FROM impressions i JOIN conversions c ON i.email = c.email WHERE ";
        // Each "i.region = 'x' OR" is 6 tokens (i . region = 'x' OR); stay just under the cap.
        let n = (MAX_QUERY_TOKENS - 30) / 6;
        for op in ["OR", "AND"] {
            let chain = vec!["i.region = 'x'"; n].join(&format!(" {op} "));
            let plan = collab.plan("advertiser", &format!("{head}{chain}"));
            assert!(plan.is_ok(), "{op}: {:?}", plan.err());
        }
        let arithmetic = vec!["1"; MAX_QUERY_TOKENS / 2 - 40].join("+");
        let refused = collab
            .plan("advertiser", &format!("{head}i.region = {arithmetic}"))
            .unwrap_err();
        assert_eq!(refused.codes(), [ReasonCode::UnsupportedPredicate]);
    });
}

#[test]
fn deep_nesting_is_refused_not_overflowed() {
    on_small_stack(|| {
        let collab = collaboration();
        let deep = format!(
            "SELECT COUNT(DISTINCT i.email) FROM impressions i JOIN conversions c ON i.email = c.email WHERE {}i.region = 'x'{}",
            "(".repeat(900),
            ")".repeat(900)
        );
        let refused = collab.plan("advertiser", &deep).unwrap_err();
        assert_eq!(refused.codes(), [ReasonCode::QueryTooComplex]);
        let long = "SELECT ".to_owned() + &"x, ".repeat(10_000) + "1";
        let refused = collab.plan("advertiser", &long).unwrap_err();
        assert_eq!(refused.codes(), [ReasonCode::QueryTooComplex]);
    });
}

// ------------------------------------------------ collaboration files and CSV rows (issue 8)

const COLLABORATION_FILE: &str = include_str!("data/collab.toml");

/// The collaboration file with some of its lines deleted, duplicated, cut short or with one
/// character replaced.
fn mutated_collaboration() -> impl Strategy<Value = String> {
    prop::collection::vec((any::<prop::sample::Index>(), 0u8..4, 0x20u8..0x7f), 1..8).prop_map(
        |edits| {
            let mut lines: Vec<String> = COLLABORATION_FILE.lines().map(String::from).collect();
            for (index, kind, byte) in edits {
                if lines.is_empty() {
                    break;
                }
                let i = index.index(lines.len());
                match kind {
                    0 => {
                        lines.remove(i);
                    }
                    1 => {
                        let line = lines[i].clone();
                        lines.insert(i, line);
                    }
                    2 => {
                        let line = &mut lines[i];
                        let mut cut = usize::from(byte) % (line.len() + 1);
                        while !line.is_char_boundary(cut) {
                            cut -= 1;
                        }
                        line.truncate(cut);
                    }
                    _ => {
                        let line = &mut lines[i];
                        if let Some((at, c)) = line.char_indices().nth(usize::from(byte) % 16) {
                            line.replace_range(
                                at..at + c.len_utf8(),
                                &char::from(byte).to_string(),
                            );
                        }
                    }
                }
            }
            lines.join("\n")
        },
    )
}

/// A cell as data files hold them: empty, numbers (some too large or negative), NULL, text.
fn cell() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[0-9]{1,22}",
        "-[0-9]{1,3}",
        Just("NULL".to_owned()),
        "[a-zA-Z@. ]{0,12}",
        ".{0,8}",
    ]
}

/// A header drawn from the tables' columns (some missing, repeated or unknown) and rows of
/// any width.
fn csv_rows() -> impl Strategy<Value = (Vec<String>, Vec<Vec<String>>)> {
    const COLUMNS: &[&str] = &[
        "email",
        "campaign",
        "region",
        "device",
        "product",
        "channel",
        "purchase_value",
        "quantity",
        "coupon",
        "unknown",
        "",
    ];
    (
        prop::collection::vec(prop::sample::select(COLUMNS).prop_map(String::from), 0..9),
        prop::collection::vec(prop::collection::vec(cell(), 0..10), 0..30),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn mutated_collaboration_files_never_panic(text in mutated_collaboration()) {
        if let Ok(collab) = Collaboration::from_toml_str(&text, "mutated") {
            let members: Vec<String> =
                collab.members().iter().map(|m| m.name().to_owned()).collect();
            for member in &members {
                for sql in SEEDS {
                    if let Err(refusal) = collab.plan(member, sql) {
                        prop_assert!(!refusal.reasons.is_empty());
                    }
                }
            }
        }
    }

    #[test]
    fn any_csv_rows_give_a_table_or_an_error((header, rows) in csv_rows()) {
        let collab = collaboration();
        for sql in [SEEDS[2], SEEDS[3]] {
            let plan = collab.plan("advertiser", sql).unwrap();
            let _ = plan.matcher_table(&header, cleanroom_rules::text_rows(rows.iter().cloned()));
            if let Ok(table) = plan.receiver_table(&header, cleanroom_rules::text_rows(rows.iter().cloned())) {
                prop_assert!(table.distinct() <= table.stats().rows);
                prop_assert!(table.stats().rows <= rows.len() as u64);
            }
        }
    }
}
