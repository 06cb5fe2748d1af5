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

/// Typed rows as a Parquet file yields them: an identifier and a `DECIMAL` amount of `scale`.
fn decimal_rows(
    rows: &[(&str, Option<i128>)],
    scale: u8,
) -> impl Iterator<Item = cleanroom_data::Row> {
    use cleanroom_data::{Cell, Decimal, Position, Row};
    rows.iter()
        .enumerate()
        .map(move |(i, (email, units))| Row {
            position: Position::Row(i as u64 + 1),
            cells: vec![
                Cell::Text(email.to_string()),
                units.map_or(Cell::Null, |units| Cell::Decimal(Decimal { units, scale })),
            ],
        })
        .collect::<Vec<_>>()
        .into_iter()
}

const SUM: &str = "SELECT SUM(c.amount) AS total, AVG(c.amount) AS mean \
                   FROM impressions i JOIN conversions c ON i.email = c.email";

#[test]
fn a_parquet_decimal_scale_is_used_when_the_rule_declares_none() {
    let undeclared = COLLABORATION.replace("decimal_columns = { amount = { scale = 2 } }\n", "");
    let c = Collaboration::from_toml_str(&undeclared, "intake.toml").unwrap();
    let mut plan = c.plan("advertiser", SUM).unwrap();
    assert_eq!(plan.receiver().value_columns[0].scale, 0);
    let h = header(&["email", "amount"]);
    plan.adopt_file_scales(&h, &[None, Some(3)]).unwrap();
    assert_eq!(plan.receiver().value_columns[0].scale, 3);
    let amounts: Vec<(String, Option<i128>)> = (0..50)
        .map(|i| (format!("u{i}@x"), (i % 6 != 2).then_some(i * 1_234 + 7)))
        .collect();
    let borrowed: Vec<(&str, Option<i128>)> =
        amounts.iter().map(|(e, a)| (e.as_str(), *a)).collect();
    let receiver = plan.receiver_table(&h, decimal_rows(&borrowed, 3)).unwrap();
    // The provider has every other identifier.
    let matcher = plan
        .matcher_table(
            &header(&["email", "campaign"]),
            text_rows(
                (0..50)
                    .step_by(2)
                    .map(|i| [format!("u{i}@x"), "c".to_owned()]),
            ),
        )
        .unwrap();
    let report = cleanroom_psi::match_offline(&plan.domain(), matcher, receiver, 2).unwrap();
    let result = plan.result(&report.outcome).unwrap();
    let plain: i128 = (0..50)
        .step_by(2)
        .filter(|i| i % 6 != 2)
        .map(|i| i * 1_234 + 7)
        .sum();
    assert_eq!(plain, 513_463);
    assert_eq!(result.rows[0][0].to_string(), "513.463");
    // The same file checked whole by its owner's server.
    let check = c
        .table("conversions")
        .unwrap()
        .check_typed_rows(&h, &[None, Some(3)], decimal_rows(&borrowed, 3))
        .unwrap();
    assert_eq!((check.rows, check.skipped_rows), (50, 0));
    // An untyped (CSV) column of the same table stays an integer column.
    let mut plan = c.plan("advertiser", SUM).unwrap();
    plan.adopt_file_scales(&h, &[None, None]).unwrap();
    assert_eq!(plan.receiver().value_columns[0].scale, 0);
}

#[test]
fn a_declared_scale_that_differs_from_the_files_is_refused() {
    let c = Collaboration::from_toml_str(COLLABORATION, "intake.toml").unwrap();
    let h = header(&["email", "amount"]);
    for file in [0u8, 3] {
        let mut plan = c.plan("advertiser", SUM).unwrap();
        let err = plan.adopt_file_scales(&h, &[None, Some(file)]).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "table \"conversions\", column \"amount\": the file's DECIMAL column has scale \
                 {file} but the rule declares scale 2 (decimal_columns); values are never \
                 rescaled: declare scale {file} or write the column with scale 2"
            )
        );
        let err = c
            .table("conversions")
            .unwrap()
            .check_typed_rows(&h, &[None, Some(file)], decimal_rows(&[], file))
            .unwrap_err();
        assert!(err.to_string().contains("has scale"), "{err}");
    }
    // The same scale is accepted as it is.
    let mut plan = c.plan("advertiser", SUM).unwrap();
    plan.adopt_file_scales(&h, &[None, Some(2)]).unwrap();
    assert_eq!(plan.receiver().value_columns[0].scale, 2);
    let table = plan
        .receiver_table(&h, decimal_rows(&[("a@x", Some(1250))], 2))
        .unwrap();
    assert_eq!(table.distinct_identifiers(), 1);
}

#[test]
fn under_privacy_a_files_scale_must_be_declared() {
    let private = COLLABORATION
        .replace(
            "null_values = [\"N/A\"]\n",
            "null_values = [\"N/A\"]\n\n[collaboration.privacy]\nepsilon_budget = 10.0\n\
             epsilon_per_query = 1.0\n",
        )
        .replace(
            "decimal_columns = { amount = { scale = 2 } }\n",
            "sum_bounds = { amount = [0, 1000] }\n",
        );
    let c = Collaboration::from_toml_str(&private, "intake.toml").unwrap();
    let mut plan = c.plan("advertiser", SUM).unwrap();
    let h = header(&["email", "amount"]);
    let err = plan.adopt_file_scales(&h, &[None, Some(2)]).unwrap_err();
    assert!(
        err.to_string()
            .contains("decimal_columns = { amount = { scale = 2 } }"),
        "{err}"
    );
    let err = c
        .table("conversions")
        .unwrap()
        .check_typed_rows(&h, &[None, Some(2)], decimal_rows(&[], 2))
        .unwrap_err();
    assert!(
        err.to_string().contains("under differential privacy"),
        "{err}"
    );
    // A DECIMAL(p, 0) column is an integer column: nothing to declare.
    plan.adopt_file_scales(&h, &[None, Some(0)]).unwrap();
}

#[test]
fn the_plan_tells_how_the_receivers_file_is_read() {
    let c = Collaboration::from_toml_str(COLLABORATION, "intake.toml").unwrap();
    // The publisher queries: its own table is the receiver.
    let text = COLLABORATION.replace(
        "name = \"publisher\"\nabilities = []",
        "name = \"publisher\"\nabilities = [\"query\", \"receive_results\"]",
    );
    let p = Collaboration::from_toml_str(&text, "intake.toml").unwrap();
    let plan = p
        .plan(
            "publisher",
            "SELECT COUNT(DISTINCT i.email) FROM conversions c JOIN impressions i \
             ON c.email = i.email",
        )
        .unwrap();
    assert_eq!(plan.receiver().table, "impressions");
    let json = serde_json::to_value(&plan).unwrap();
    assert_eq!(
        json["receiver"]["source"],
        serde_json::json!({
            "format": "csv",
            "delimiter": ";",
            "quote": "\"",
            "has_header": false,
            "null_values": ["", "N/A"],
        })
    );
    let plan = c.plan("advertiser", SUM).unwrap();
    let json = serde_json::to_value(&plan).unwrap();
    assert_eq!(
        json["receiver"]["source"],
        serde_json::json!({
            "format": null,
            "delimiter": ",",
            "quote": "\"",
            "has_header": true,
            "null_values": ["", "N/A"],
        })
    );
}
