//! Typed rows into plans: decimal amounts at their declared scale, NULL identifiers never
//! matched, and the whole-table check a server runs at start-up.

use cleanroom_rules::{Collaboration, Value, text_rows};

const COLLABORATION: &str = r#"
[collaboration]
id = "intake"
null_values = ["N/A"]

[[member]]
name = "publisher"
abilities = []
token_sha256 = "3a19586cc6dba3dbd62e94aec56bbd3fe729f5464f2a72df28ada62101059e3f"

[[member]]
name = "advertiser"
abilities = ["query", "receive_results"]
token_sha256 = "414eb4cbdada9c62b0fd994eacd4ae564ea18cfe142c15df6ff5331210e26955"

[[table]]
name = "impressions"
owner = "publisher"
columns = ["email", "campaign"]
identifier = { column = "email", normalize = "email" }
format = "csv"
delimiter = ";"
has_header = false

[table.rule]
type = "aggregation"
join_columns = ["email"]
dimension_columns = ["campaign"]
aggregate_columns = { email = ["COUNT_DISTINCT"] }
min_threshold = 2

[[table]]
name = "conversions"
owner = "advertiser"
columns = ["email", "amount"]
identifier = { column = "email", normalize = "email" }

[table.rule]
type = "aggregation"
join_columns = ["email"]
aggregate_columns = { email = ["COUNT_DISTINCT"], amount = ["SUM", "AVG"] }
decimal_columns = { amount = { scale = 2 } }
min_threshold = 2
"#;

fn header(h: &[&str]) -> Vec<String> {
    h.iter().map(|s| s.to_string()).collect()
}

#[test]
fn decimal_sums_are_exact_and_keep_their_scale() {
    let c = Collaboration::from_toml_str(COLLABORATION, "intake.toml").unwrap();
    let plan = c
        .plan(
            "advertiser",
            "SELECT SUM(c.amount) AS total, AVG(c.amount) AS mean \
             FROM impressions i JOIN conversions c ON i.email = c.email",
        )
        .unwrap();
    assert_eq!(plan.receiver().value_columns[0].scale, 2);
    let matcher = plan
        .matcher_table(
            &header(&["email", "campaign"]),
            text_rows([["a@x", "c"], ["b@x", "c"], ["NULL", "c"], ["c@x", "c"]]),
        )
        .unwrap();
    let receiver = plan
        .receiver_table(
            &header(&["email", "amount"]),
            // 0.1 + 0.2 is 0.30 exactly; NULL matches nothing, even NULL.
            text_rows([["a@x", "0.1"], ["b@x", "0.2"], ["null", "5"], ["c@x", ""]]),
        )
        .unwrap();
    let report = cleanroom_psi::match_offline(&plan.domain(), matcher, receiver, 2).unwrap();
    let result = plan.result(&report.outcome).unwrap();
    assert_eq!(result.rows[0][0].to_string(), "0.30");
    assert_eq!(
        serde_json::to_string(&result.rows[0][0]).unwrap(),
        "\"0.30\"",
        "a JSON string: exact for every reader"
    );
    // Two of three matched rows have an amount (AVG counts non-NULL values only).
    assert_eq!(result.rows[0][1], Value::Float(0.15));
    let err = plan
        .receiver_table(&header(&["email", "amount"]), text_rows([["a@x", "0.125"]]))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("\"0.125\" is not a non-negative decimal with at most 2 digits"),
        "{err}"
    );
}

#[test]
fn table_entries_carry_the_dialect_and_the_null_spellings() {
    let c = Collaboration::from_toml_str(COLLABORATION, "intake.toml").unwrap();
    let options = c.table("impressions").unwrap().source_options();
    assert_eq!(options.csv.delimiter, b';');
    assert!(!options.csv.has_header);
    assert!(options.nulls.is_null("N/A") && options.nulls.is_null(""));
    assert!(
        !options.nulls.is_null("NULL"),
        "the declared list replaces the default"
    );
    let bad = COLLABORATION.replace("delimiter = \";\"", "delimiter = \";;\"");
    let err = Collaboration::from_toml_str(&bad, "intake.toml").unwrap_err();
    assert!(err.to_string().contains("table.delimiter"), "{err}");
    let bad = COLLABORATION.replace("{ scale = 2 }", "{ scale = 40 }");
    assert!(Collaboration::from_toml_str(&bad, "intake.toml").is_err());
}

#[test]
fn the_whole_table_check_counts_skipped_rows_and_names_bad_ones() {
    let c = Collaboration::from_toml_str(COLLABORATION, "intake.toml").unwrap();
    let conversions = c.table("conversions").unwrap();
    let h = header(&["amount", "email"]);
    let check = conversions
        .check_rows(&h, text_rows([["1.5", "a@x"], ["", "NULL"], ["2", "  "]]))
        .unwrap();
    assert_eq!((check.rows, check.skipped_rows), (3, 2));
    let err = conversions
        .check_rows(&h, text_rows([vec!["1", "a@x"], vec!["x", "b@x"]]))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "table \"conversions\", row 2, column \"amount\": \"x\" is not a non-negative decimal \
         with at most 2 digits after the point"
    );
    let err = conversions
        .check_rows(&h, text_rows([vec!["1"]]))
        .unwrap_err();
    assert!(
        err.to_string().contains("no field for column \"email\""),
        "{err}"
    );
    let err = conversions
        .check_rows(
            &header(&["email", "amount", "email"]),
            text_rows(Vec::<Vec<String>>::new()),
        )
        .unwrap_err();
    assert!(err.to_string().contains("more than once"), "{err}");
}
