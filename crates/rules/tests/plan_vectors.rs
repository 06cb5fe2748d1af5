//! The SQL-to-plan vectors of PROTOCOL.md section 4.6 (`tests/vectors/plans.json` at the
//! repository's root, next to the collaboration file they are planned against,
//! `tests/vectors/plans.toml`): each case's SQL is planned here and compared exactly with the
//! file, so the document's mapping, the vectors and the planner cannot drift apart. Each case
//! also states, by hand, the output names and group columns the section's rules give, and every
//! plan is checked against the section's invariants (a dimension's `key_index` names its column
//! in the grouped side's `group_columns`; a value index names a value column of the function's
//! kind), not only against the code that produced it.
//!
//! After an intentional planner change, regenerate the file with
//! `CLEANROOM_WRITE_VECTORS=1 cargo test -p cleanroom-rules --test plan_vectors` and review the
//! diff.

use std::path::PathBuf;

use cleanroom_rules::Collaboration;
use serde_json::{Value, json};

/// The collaboration file every case is planned against, under `tests/vectors/`.
const COLLABORATION: &str = "plans.toml";

/// One SQL statement of the vectors, with what section 4.6 says its plan holds.
struct Case {
    /// What the case shows.
    name: &'static str,
    member: &'static str,
    sql: &'static str,
    /// The output names, in `SELECT` order, for an allowed query.
    names: &'static [&'static str],
    /// The grouped side's `group_columns`, for an allowed query.
    group_columns: &'static [&'static str],
    /// The refusal codes, for a refused query (then `names` and `group_columns` are empty).
    refusal: &'static [&'static str],
}

const fn allowed(
    name: &'static str,
    member: &'static str,
    sql: &'static str,
    names: &'static [&'static str],
    group_columns: &'static [&'static str],
) -> Case {
    Case {
        name,
        member,
        sql,
        names,
        group_columns,
        refusal: &[],
    }
}

const fn refused(
    name: &'static str,
    member: &'static str,
    sql: &'static str,
    refusal: &'static [&'static str],
) -> Case {
    Case {
        name,
        member,
        sql,
        names: &[],
        group_columns: &[],
        refusal,
    }
}

const CASES: &[Case] = &[
    allowed(
        "ungrouped count: the expression as printed names the output",
        "advertiser",
        "SELECT COUNT(DISTINCT i.email) FROM impressions i JOIN purchases p ON i.email = p.email",
        &["COUNT(DISTINCT i.email)"],
        &[],
    ),
    allowed(
        "the querier's table is the receiver whatever the FROM order; printing keeps the \
         function's case and the qualifier as written, upper-cases keywords, normalizes spaces",
        "advertiser",
        "select count( distinct P.Email ) , sum(p.amount)\nfrom purchases as p inner join impressions as i on p.email = i.email",
        &["count(DISTINCT P.Email)", "sum(p.amount)"],
        &[],
    ),
    allowed(
        "the same join queried by the other member swaps the roles",
        "publisher",
        "SELECT COUNT(DISTINCT i.email) AS n FROM impressions i JOIN purchases p ON i.email = p.email",
        &["n"],
        &[],
    ),
    allowed(
        "tables without aliases, unqualified columns: a column is named as in the collaboration \
         file, whatever its case in the SQL",
        "advertiser",
        "SELECT CAMPAIGN, COUNT(DISTINCT impressions.email) FROM impressions JOIN purchases ON impressions.email = purchases.email GROUP BY campaign",
        &["campaign", "COUNT(DISTINCT impressions.email)"],
        &["campaign"],
    ),
    allowed(
        "group columns in GROUP BY order, not SELECT order; aliases as written",
        "advertiser",
        "SELECT i.region, i.campaign AS Campaign, COUNT(DISTINCT p.email) AS \"Buyers (distinct)\" FROM impressions i JOIN purchases p ON i.email = p.email GROUP BY i.campaign, i.region",
        &["region", "Campaign", "Buyers (distinct)"],
        &["campaign", "region"],
    ),
    allowed(
        "GROUP BY by output position and by output alias; a repeated group column counts once",
        "advertiser",
        "SELECT i.device AS d, i.region, COUNT(DISTINCT i.email) AS n FROM impressions i JOIN purchases p ON i.email = p.email GROUP BY 2, d, i.region",
        &["d", "region", "n"],
        &["region", "device"],
    ),
    allowed(
        "a group column that is not an output still keys the rows",
        "advertiser",
        "SELECT COUNT(DISTINCT i.email) AS n FROM impressions i JOIN purchases p ON i.email = p.email GROUP BY i.device",
        &["n"],
        &["device"],
    ),
    allowed(
        "grouped by the receiver's own columns",
        "advertiser",
        "SELECT p.channel, p.product, SUM(p.quantity) AS units FROM impressions i JOIN purchases p ON i.email = p.email GROUP BY p.product, p.channel",
        &["channel", "product", "units"],
        &["product", "channel"],
    ),
    allowed(
        "WHERE: each conjunct goes to the side whose columns it names; literal-first comparisons \
         are flipped; one conjunct stays as it is, several are an and",
        "advertiser",
        "SELECT COUNT(DISTINCT i.email) AS n FROM impressions i JOIN purchases p ON i.email = p.email WHERE i.region = 'EU' AND (p.channel IN ('web', 'app', NULL) AND 'b' <= p.product) AND (i.device = 'mobile' OR i.device IS NULL) AND NOT p.product BETWEEN 'x' AND 'z' AND p.channel IS NOT NULL",
        &["n"],
        &[],
    ),
    allowed(
        "WHERE on one side only: the other side's filter is null; numbers stay texts",
        "advertiser",
        "SELECT SUM(p.amount) AS revenue FROM impressions i JOIN purchases p ON i.email = p.email WHERE p.product <> 'gift' AND p.product NOT IN ('-1', 2.50)",
        &["revenue"],
        &[],
    ),
    allowed(
        "repeats merge: the same value column is read once; SUM and AVG share the sum, COUNT and \
         AVG the non-NULL count",
        "advertiser",
        "SELECT SUM(p.amount) AS s, AVG(p.amount) AS a, COUNT(p.amount) AS n, SUM(p.amount) AS s2, COUNT(p.coupon) AS coupons FROM impressions i JOIN purchases p ON i.email = p.email",
        &["s", "a", "n", "s2", "coupons"],
        &[],
    ),
    allowed(
        "value columns in the order outputs first need them; AVG reads its sum then its count",
        "advertiser",
        "SELECT AVG(p.quantity), COUNT(p.amount), SUM(p.quantity) FROM impressions i JOIN purchases p ON i.email = p.email",
        &["AVG(p.quantity)", "COUNT(p.amount)", "SUM(p.quantity)"],
        &[],
    ),
    allowed(
        "ORDER BY an alias, a position and an expression equal to an output; NULLS default \
         to last when ascending and first when descending; LIMIT",
        "advertiser",
        "SELECT i.campaign AS c, count(distinct i.email) AS n, SUM(p.amount) AS revenue FROM impressions i JOIN purchases p ON i.email = p.email GROUP BY i.campaign ORDER BY revenue DESC, 1, COUNT(DISTINCT I.EMAIL) NULLS FIRST, c DESC NULLS LAST LIMIT 10",
        &["c", "n", "revenue"],
        &["campaign"],
    ),
    allowed(
        "parentheses around an output are printed",
        "advertiser",
        "SELECT (SUM(p.amount)), (i.campaign) FROM impressions i JOIN purchases p ON i.email = p.email GROUP BY i.campaign",
        &["(SUM(p.amount))", "campaign"],
        &["campaign"],
    ),
    allowed(
        "list: list columns per side in first-use order, a repeated column shares its index; \
         DISTINCT, WHERE split, ORDER BY and LIMIT as for aggregations",
        "advertiser",
        "SELECT DISTINCT c.customer_id, s.newsletter AS letter, c.segment, s.region, c.customer_id AS id2 FROM customers c JOIN subscribers s ON c.email = s.email WHERE s.region = 'EU' AND c.segment <> 'vip' ORDER BY 2 DESC, customer_id LIMIT 5",
        &["customer_id", "letter", "segment", "region", "id2"],
        &[],
    ),
    allowed(
        "list: the querier's table is the receiver whatever the FROM order",
        "publisher",
        "SELECT s.newsletter, c.segment FROM customers c JOIN subscribers s USING (email)",
        &["newsletter", "segment"],
        &[],
    ),
    refused(
        "OR across the two tables",
        "advertiser",
        "SELECT COUNT(DISTINCT i.email) FROM impressions i JOIN purchases p ON i.email = p.email WHERE i.region = 'EU' OR p.channel = 'web'",
        &["predicate_spans_tables"],
    ),
    refused(
        "filters on columns that are not dimensions, one reason each",
        "advertiser",
        "SELECT COUNT(DISTINCT i.email) FROM impressions i JOIN purchases p ON i.email = p.email WHERE i.age_band = '18-24' AND p.amount > 10",
        &["filter_not_dimension", "filter_not_dimension"],
    ),
    refused(
        "both sides group",
        "advertiser",
        "SELECT i.campaign, p.channel, COUNT(DISTINCT i.email) FROM impressions i JOIN purchases p ON i.email = p.email GROUP BY i.campaign, p.channel",
        &["group_by_multiple_tables"],
    ),
    refused(
        "a dimension output missing from GROUP BY",
        "advertiser",
        "SELECT i.campaign, COUNT(DISTINCT i.email) FROM impressions i JOIN purchases p ON i.email = p.email",
        &["ungrouped_output"],
    ),
    refused(
        "COUNT(*), and a sum of the matcher's column",
        "publisher",
        "SELECT COUNT(*), SUM(p.amount) FROM impressions i JOIN purchases p ON i.email = p.email",
        &["count_star", "provider_aggregate_unsupported"],
    ),
    refused(
        "more than four value columns",
        "advertiser",
        "SELECT AVG(p.amount), AVG(p.quantity), COUNT(p.coupon) FROM impressions i JOIN purchases p ON i.email = p.email",
        &["too_many_value_columns"],
    ),
    refused(
        "ORDER BY something that is not an output",
        "advertiser",
        "SELECT i.campaign, COUNT(DISTINCT i.email) FROM impressions i JOIN purchases p ON i.email = p.email GROUP BY i.campaign ORDER BY SUM(p.amount)",
        &["order_by_not_output"],
    ),
];

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors")
}

/// Compares `generated` with the file, or writes it when `CLEANROOM_WRITE_VECTORS` is set.
fn check_file(name: &str, generated: &Value) {
    let path = vectors_dir().join(name);
    let mut text = serde_json::to_string_pretty(generated).unwrap();
    text.push('\n');
    if std::env::var_os("CLEANROOM_WRITE_VECTORS").is_some() {
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let stored =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let stored_value: Value = serde_json::from_str(&stored).unwrap();
    if stored_value != *generated {
        let line = stored
            .lines()
            .zip(text.lines())
            .position(|(a, b)| a != b)
            .map_or(0, |i| i + 1);
        panic!(
            "{} differs from what the planner produces (first difference near line {line}). If \
             the planner changed on purpose, regenerate with CLEANROOM_WRITE_VECTORS=1 cargo \
             test -p cleanroom-rules --test plan_vectors and update PROTOCOL.md section 4.6.",
            path.display()
        );
    }
}

/// The checks of section 4.6 that hold for every aggregation plan, from its JSON alone.
fn check_aggregate_invariants(name: &str, plan: &Value) {
    let grouped_by = plan["grouped_by"].as_str();
    let value_columns = plan["receiver"]["value_columns"].as_array().unwrap();
    for (i, a) in value_columns.iter().enumerate() {
        assert!(
            !value_columns[..i].contains(a),
            "{name}: value column {a} twice"
        );
    }
    for side in ["matcher", "receiver"] {
        if grouped_by != Some(side) {
            assert_eq!(plan[side]["group_columns"], json!([]), "{name}: {side}");
        }
    }
    for output in plan["outputs"].as_array().unwrap() {
        let column = &output["column"];
        let value = |index: &str, kind: &str| {
            let v = &value_columns[output[index].as_u64().unwrap() as usize];
            assert_eq!(&v["column"], column, "{name}: {output}");
            assert_eq!(v["kind"], kind, "{name}: {output}");
        };
        match output["kind"].as_str().unwrap() {
            "dimension" => {
                let side = grouped_by.expect("a dimension output needs a grouped side");
                assert_eq!(output["table"], plan[side]["table"], "{name}");
                let key = output["key_index"].as_u64().unwrap() as usize;
                assert_eq!(&plan[side]["group_columns"][key], column, "{name}");
            }
            "count_distinct" => {
                let table = output["table"].as_str().unwrap();
                let side = ["matcher", "receiver"]
                    .into_iter()
                    .find(|s| plan[*s]["table"] == table)
                    .unwrap();
                assert_eq!(column, &plan[side]["identifier"], "{name}");
            }
            "count" => value("value_index", "non_null"),
            "sum" => value("value_index", "integer"),
            "avg" => {
                value("sum_index", "integer");
                value("count_index", "non_null");
            }
            other => panic!("{name}: unknown output kind {other}"),
        }
        if output["kind"] != "dimension" && output["kind"] != "count_distinct" {
            assert_eq!(output["table"], plan["receiver"]["table"], "{name}");
        }
    }
}

/// The checks of section 4.6 that hold for every list plan.
fn check_list_invariants(name: &str, plan: &Value) {
    for output in plan["outputs"].as_array().unwrap() {
        let side = output["role"].as_str().unwrap();
        assert_eq!(output["table"], plan[side]["table"], "{name}");
        let index = output["index"].as_u64().unwrap() as usize;
        assert_eq!(
            plan[side]["list_columns"][index], output["column"],
            "{name}"
        );
    }
}

#[test]
fn plans_match_the_published_vectors() {
    let collaboration = Collaboration::load(vectors_dir().join(COLLABORATION)).unwrap();
    let mut cases = Vec::new();
    for case in CASES {
        let mut entry = json!({
            "name": case.name,
            "collaboration": COLLABORATION,
            "member": case.member,
            "sql": case.sql,
        });
        match collaboration.plan(case.member, case.sql) {
            Ok(plan) => {
                assert!(case.refusal.is_empty(), "{}: allowed", case.name);
                let plan = serde_json::to_value(&plan).unwrap();
                let names: Vec<&str> = plan["outputs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|o| o["name"].as_str().unwrap())
                    .collect();
                assert_eq!(names, case.names, "{}", case.name);
                if plan["protocol"] == "list" {
                    check_list_invariants(case.name, &plan);
                } else {
                    let grouped = plan["grouped_by"]
                        .as_str()
                        .map_or(json!([]), |side| plan[side]["group_columns"].clone());
                    assert_eq!(grouped, json!(case.group_columns), "{}", case.name);
                    check_aggregate_invariants(case.name, &plan);
                }
                entry["plan"] = plan;
            }
            Err(refusal) => {
                let codes: Vec<&str> = refusal.codes().iter().map(|c| c.as_str()).collect();
                assert_eq!(codes, case.refusal, "{}: {refusal}", case.name);
                entry["refusal"] = json!(codes);
            }
        }
        cases.push(entry);
    }
    check_file(
        "plans.json",
        &json!({
            "description": "SQL to plan (PROTOCOL.md section 4.6): each case's sql, run by member \
                            against the collaboration file, gives plan (what `cleanroom check \
                            --format json` prints under \"plan\") or is refused with the \
                            reason codes of refusal, in order.",
            "cases": cases,
        }),
    );
}
