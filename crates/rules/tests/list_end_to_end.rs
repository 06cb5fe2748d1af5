//! List queries end to end: CSV rows → plan → labeled-PSI inputs → offline list session →
//! result rows, compared row by row with the join computed in the clear over the same files
//! (which have duplicate rows, mixed-case and padded emails, blank identifiers and NULLs).

use std::collections::HashMap;

use cleanroom_psi::{ListMatch, ListOutcome, Normalization, list_offline_observed};
use cleanroom_rules::{Collaboration, Plan, Protocol, ResultError, ResultTable, Value};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");

struct Csv {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Csv {
    fn load(name: &str) -> Csv {
        let mut reader = csv::Reader::from_path(format!("{DATA}/{name}")).unwrap();
        let header = reader.headers().unwrap().iter().map(String::from).collect();
        let rows = reader
            .records()
            .map(|r| r.unwrap().iter().map(String::from).collect())
            .collect();
        Csv { header, rows }
    }

    fn records(&self) -> Vec<HashMap<&str, &str>> {
        self.rows
            .iter()
            .map(|row| {
                self.header
                    .iter()
                    .map(String::as_str)
                    .zip(row.iter().map(String::as_str))
                    .collect()
            })
            .collect()
    }
}

type Rec<'a> = HashMap<&'a str, &'a str>;

fn collaboration() -> Collaboration {
    Collaboration::load(format!("{DATA}/collab.toml")).unwrap()
}

fn value(cell: &str) -> Value {
    if cell.trim().is_empty() {
        Value::Null
    } else {
        Value::Text(cell.to_owned())
    }
}

/// Which table an output column comes from.
#[derive(Clone, Copy)]
enum From {
    Customers(&'static str),
    Subscribers(&'static str),
}

/// The inner join of customers and subscribers on the normalized email, computed directly:
/// one row per matching pair of filtered rows, unordered.
fn plain(
    customer_filter: fn(&Rec) -> bool,
    subscriber_filter: fn(&Rec) -> bool,
    outputs: &[From],
) -> Vec<Vec<Value>> {
    let (customers, subscribers) = (Csv::load("customers.csv"), Csv::load("subscribers.csv"));
    let email = |r: &Rec| Normalization::Email.apply(r["email"]);
    let mut rows = Vec::new();
    for c in customers.records().iter().filter(|r| customer_filter(r)) {
        let Some(id) = email(c) else { continue };
        for s in subscribers
            .records()
            .iter()
            .filter(|r| subscriber_filter(r))
        {
            if email(s).as_deref() == Some(id.as_str()) {
                rows.push(
                    outputs
                        .iter()
                        .map(|o| match *o {
                            From::Customers(column) => value(c[column]),
                            From::Subscribers(column) => value(s[column]),
                        })
                        .collect(),
                );
            }
        }
    }
    rows
}

/// Runs a list plan over the sample CSVs through the offline list session; also returns every
/// byte that crossed.
fn run(plan: &Plan) -> (ResultTable, Vec<u8>) {
    let (customers, subscribers) = (Csv::load("customers.csv"), Csv::load("subscribers.csv"));
    let provider = plan
        .list_provider_table(
            &subscribers.header,
            cleanroom_rules::text_rows(subscribers.rows.iter().cloned()),
        )
        .unwrap();
    let (querier, rows) = plan
        .list_querier_table(
            &customers.header,
            cleanroom_rules::text_rows(customers.rows.iter().cloned()),
        )
        .unwrap();
    let mut transcript = Vec::new();
    let report = list_offline_observed(&plan.domain(), provider, querier, |_, bytes| {
        transcript.extend_from_slice(bytes)
    })
    .unwrap();
    (
        plan.list_result(&rows, &report.outcome).unwrap(),
        transcript,
    )
}

fn plan(sql: &str) -> Plan {
    let plan = collaboration()
        .plan("advertiser", sql)
        .unwrap_or_else(|r| panic!("{sql}: {r}"));
    assert_eq!(plan.protocol(), Protocol::List);
    plan
}

fn sorted(mut rows: Vec<Vec<Value>>) -> Vec<Vec<Value>> {
    rows.sort_by_key(|r| format!("{r:?}"));
    rows
}

#[test]
fn rows_equal_the_plain_join_with_duplicates_and_noise() {
    let plan = plan(
        "SELECT cu.customer_id, cu.email, s.newsletter, s.region \
         FROM customers cu JOIN subscribers s ON cu.email = s.email",
    );
    let (result, _) = run(&plan);
    let expected = plain(
        |_| true,
        |_| true,
        &[
            From::Customers("customer_id"),
            From::Customers("email"),
            From::Subscribers("newsletter"),
            From::Subscribers("region"),
        ],
    );
    assert_eq!(
        result.columns,
        ["customer_id", "email", "newsletter", "region"]
    );
    assert_eq!(result.suppressed_rows, 0);
    assert_eq!(sorted(result.rows.clone()), sorted(expected.clone()));
    // The data exercises what it should: many matches, a NULL region, a repeated row.
    assert!(expected.len() > 40, "{}", expected.len());
    assert!(expected.iter().any(|r| r[3] == Value::Null));
    let c2000: Vec<&Vec<Value>> = result
        .rows
        .iter()
        .filter(|r| r[0] == Value::Text("C2000".into()))
        .collect();
    let daily_eu = vec![
        Value::Text("C2000".into()),
        Value::Text("user70@example.com".into()),
        Value::Text("daily".into()),
        Value::Text("EU".into()),
    ];
    assert!(c2000.iter().filter(|r| ***r == daily_eu).count() >= 2);
    // The default order is by the output columns, left to right (customer ids are texts
    // that are not numbers: byte order).
    let text = |v: &Value| match v {
        Value::Text(t) => t.clone(),
        other => panic!("customer ids are never NULL: {other:?}"),
    };
    for pair in result.rows.windows(2) {
        assert!(text(&pair[0][0]) <= text(&pair[1][0]), "{pair:?}");
    }
}

#[test]
fn filters_distinct_order_and_limit_follow_the_plain_join() {
    let sql = "SELECT DISTINCT s.region, cu.segment FROM customers cu JOIN subscribers s \
               ON cu.email = s.email WHERE s.newsletter IN ('daily', 'tech') \
               AND cu.segment IS NOT NULL ORDER BY 2 DESC, 1";
    let (result, _) = run(&plan(sql));
    let mut expected = plain(
        |c| !c["segment"].trim().is_empty(),
        |s| matches!(s["newsletter"], "daily" | "tech"),
        &[From::Subscribers("region"), From::Customers("segment")],
    );
    expected = sorted(expected);
    expected.dedup();
    assert_eq!(sorted(result.rows.clone()), expected);
    assert!(result.rows.len() >= 6, "{:?}", result.rows);
    // ORDER BY segment DESC, then region (NULLs last).
    let key = |r: &Vec<Value>| match (&r[1], &r[0]) {
        (Value::Text(seg), Value::Text(reg)) => (seg.clone(), Some(reg.clone())),
        (Value::Text(seg), Value::Null) => (seg.clone(), None),
        other => panic!("unexpected {other:?}"),
    };
    for pair in result.rows.windows(2) {
        let (a, b) = (key(&pair[0]), key(&pair[1]));
        assert!(
            a.0 > b.0 || (a.0 == b.0 && (b.1.is_none() || (a.1.is_some() && a.1 < b.1))),
            "{a:?} before {b:?}"
        );
    }
    let limited = run(&plan(&format!("{sql} LIMIT 3"))).0;
    assert_eq!(limited.rows, result.rows[..3]);
}

#[test]
fn outputs_of_one_side_only_keep_the_multiplicity_of_the_join() {
    // No subscriber column is listed: matched customers appear once per matching subscriber
    // row, exactly as in SQL.
    let (result, _) = run(&plan(
        "SELECT cu.customer_id FROM customers cu JOIN subscribers s ON cu.email = s.email \
         WHERE s.region = 'EU'",
    ));
    let expected = plain(
        |_| true,
        |s| s["region"] == "EU",
        &[From::Customers("customer_id")],
    );
    assert_eq!(sorted(result.rows), sorted(expected));
}

#[test]
fn columns_outside_the_list_never_cross_the_wire() {
    let (result, transcript) = run(&plan(
        "SELECT cu.customer_id, s.newsletter FROM customers cu JOIN subscribers s \
         ON cu.email = s.email",
    ));
    assert!(!result.rows.is_empty());
    let contains = |needle: &str| {
        transcript
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    };
    // Every signup date (not a list column) starts with the year; none crossed, nor any
    // identifier, nor a listed value in the clear, nor the querier's own columns.
    assert!(!contains("2024-"));
    let (customers, subscribers) = (Csv::load("customers.csv"), Csv::load("subscribers.csv"));
    for r in subscribers.records() {
        if let Some(id) = Normalization::Email.apply(r["email"]) {
            assert!(!contains(&id), "{id}");
        }
    }
    for newsletter in ["daily", "weekly", "sports", "tech"] {
        assert!(!contains(newsletter), "{newsletter}");
    }
    for r in customers.records() {
        assert!(!contains(r["customer_id"]), "{}", r["customer_id"]);
    }
}

#[test]
fn outcomes_of_the_wrong_shape_are_refused() {
    let list = plan(
        "SELECT cu.customer_id, s.newsletter, s.region FROM customers cu JOIN subscribers s ON cu.email = s.email",
    );
    let customers = Csv::load("customers.csv");
    let (_, rows) = list
        .list_querier_table(
            &customers.header,
            cleanroom_rules::text_rows(customers.rows.iter().cloned()),
        )
        .unwrap();
    let bad = ListOutcome {
        matches: vec![ListMatch {
            identifier: "user70@example.com".into(),
            rows: vec![vec!["daily".into()]],
        }],
        provider_set_size: 1,
        unopened: 0,
    };
    assert_eq!(
        list.list_result(&rows, &bad).unwrap_err(),
        ResultError::ListRowWidth {
            expected: 2,
            got: 1
        }
    );
    // A list outcome for an aggregation plan, and aggregates for a list plan.
    let aggregate = collaboration()
        .plan(
            "advertiser",
            "SELECT COUNT(DISTINCT i.email) FROM impressions i JOIN conversions c ON i.email = c.email",
        )
        .unwrap();
    assert!(matches!(
        aggregate.list_result(&rows, &ListOutcome::default()),
        Err(ResultError::ProtocolMismatch { .. })
    ));
    assert!(matches!(
        list.result(&Default::default()),
        Err(ResultError::ProtocolMismatch { .. })
    ));
    // The plan says what each side reads and lists.
    assert_eq!(list.matcher().list_columns, ["newsletter", "region"]);
    assert_eq!(list.matcher().reads, ["email", "newsletter", "region"]);
    assert_eq!(list.receiver().list_columns, ["customer_id"]);
    assert_eq!(list.min_release(), 0);
    assert_eq!(
        rows.len(),
        customers
            .rows
            .iter()
            .filter(|r| !r[0].trim().is_empty())
            .count()
    );
}
