//! End to end: CSV rows → plan → psi tables → offline PSI matching → result rows, compared with
//! a plain computation (hash sets and maps over the same CSV files) row by row, including the
//! number of suppressed rows.

use std::collections::{HashMap, HashSet};

use cleanroom_psi::{Limits, Matcher, Normalization, Receiver, ReceiverOutcome, match_offline};
use cleanroom_rules::{Collaboration, Plan, ResultTable, Role, Value};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");

/// A CSV file: header and rows of strings.
#[derive(Clone)]
struct Csv {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Csv {
    fn load(name: &str) -> Csv {
        let mut reader = csv::Reader::from_path(format!("{DATA}/{name}")).unwrap();
        Self::read(&mut reader)
    }

    fn parse(text: &str) -> Csv {
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        Self::read(&mut reader)
    }

    fn read<R: std::io::Read>(reader: &mut csv::Reader<R>) -> Csv {
        let header = reader.headers().unwrap().iter().map(String::from).collect();
        let rows = reader
            .records()
            .map(|r| r.unwrap().iter().map(String::from).collect())
            .collect();
        Csv { header, rows }
    }

    /// Rows as column → cell maps, for the plain computation.
    fn records(&self) -> Vec<HashMap<String, String>> {
        self.rows
            .iter()
            .map(|row| {
                self.header
                    .iter()
                    .cloned()
                    .zip(row.iter().cloned())
                    .collect()
            })
            .collect()
    }
}

type Rec = HashMap<String, String>;

fn cell<'a>(r: &'a Rec, column: &str) -> Option<&'a str> {
    let v = r[column].as_str();
    (!v.trim().is_empty()).then_some(v)
}

/// `column = value` with SQL NULL semantics.
fn is(r: &Rec, column: &str, value: &str) -> bool {
    cell(r, column) == Some(value)
}

// ----------------------------------------------------------------- the plain computation

#[derive(Clone, Copy)]
enum Agg {
    CountDistinct,
    Sum(&'static str),
    Count(&'static str),
    Avg(&'static str),
}

#[derive(Clone, Copy)]
enum Out {
    Dim(&'static str),
    Agg(Agg),
}

struct Plain {
    provider_filter: fn(&Rec) -> bool,
    querier_filter: fn(&Rec) -> bool,
    group_side: Option<Role>,
    group_columns: &'static [&'static str],
    outputs: &'static [Out],
    threshold: u64,
}

type Key = Vec<Option<String>>;

fn key_of(r: &Rec, columns: &[&str]) -> Key {
    columns
        .iter()
        .map(|c| cell(r, c).map(String::from))
        .collect()
}

fn id_of(r: &Rec, column: &str) -> Option<String> {
    Normalization::Email.apply(&r[column])
}

fn value_of(r: &Rec, column: &str) -> u64 {
    cell(r, column).map_or(0, |v| v.trim().parse().unwrap())
}

/// The query, computed directly: rows of released groups (unordered) and the suppressed count
/// (every pair of announced groups that is not released).
fn plain(spec: &Plain, provider: &Csv, querier: &Csv) -> (Vec<Vec<Value>>, u64) {
    let provider: Vec<Rec> = provider
        .records()
        .into_iter()
        .filter(|r| (spec.provider_filter)(r))
        .collect();
    let querier: Vec<Rec> = querier
        .records()
        .into_iter()
        .filter(|r| (spec.querier_filter)(r))
        .collect();

    // Groups: key → (provider identifier set, querier rows).
    let mut provider_sets: HashMap<Key, HashSet<String>> = HashMap::new();
    for r in &provider {
        if let Some(id) = id_of(r, "email") {
            let key = match spec.group_side {
                Some(Role::Matcher) => key_of(r, spec.group_columns),
                _ => Vec::new(),
            };
            provider_sets.entry(key).or_default().insert(id);
        }
    }
    let mut querier_groups: HashMap<Key, Vec<&Rec>> = HashMap::new();
    for r in &querier {
        if id_of(r, "email").is_some() {
            let key = match spec.group_side {
                Some(Role::Receiver) => key_of(r, spec.group_columns),
                _ => Vec::new(),
            };
            querier_groups.entry(key).or_default().push(r);
        }
    }

    let mut rows = Vec::new();
    let mut suppressed = 0;
    for (pkey, set) in &provider_sets {
        for (qkey, qrows) in &querier_groups {
            let matched: Vec<&&Rec> = qrows
                .iter()
                .filter(|r| set.contains(&id_of(r, "email").unwrap()))
                .collect();
            let distinct: HashSet<String> =
                matched.iter().map(|r| id_of(r, "email").unwrap()).collect();
            let n = distinct.len() as u64;
            // An announced pair that is not released is suppressed, joined rows or not.
            if n == 0 || n < spec.threshold {
                suppressed += 1;
                continue;
            }
            let key = if spec.group_side == Some(Role::Matcher) {
                pkey
            } else {
                qkey
            };
            let sum = |c: &str| matched.iter().map(|r| value_of(r, c)).sum::<u64>();
            let count = |c: &str| matched.iter().filter(|r| cell(r, c).is_some()).count() as u64;
            let row = spec
                .outputs
                .iter()
                .map(|o| match *o {
                    Out::Dim(c) => {
                        let i = spec.group_columns.iter().position(|g| *g == c).unwrap();
                        key[i].clone().map_or(Value::Null, Value::Text)
                    }
                    Out::Agg(Agg::CountDistinct) => Value::Integer(n),
                    Out::Agg(Agg::Sum(c)) => Value::Integer(sum(c)),
                    Out::Agg(Agg::Count(c)) => Value::Integer(count(c)),
                    Out::Agg(Agg::Avg(c)) => match count(c) {
                        0 => Value::Null,
                        k => Value::Float(sum(c) as f64 / k as f64),
                    },
                })
                .collect();
            rows.push(row);
        }
    }
    (rows, suppressed)
}

// ----------------------------------------------------------------- running plans

fn collaboration() -> Collaboration {
    Collaboration::load(format!("{DATA}/collab.toml")).unwrap()
}

/// Runs `plan` over the two CSVs through `match_offline`.
fn run(plan: &Plan, matcher: &Csv, receiver: &Csv) -> ResultTable {
    let m = plan
        .matcher_table(
            &matcher.header,
            cleanroom_rules::text_rows(matcher.rows.iter().cloned()),
        )
        .unwrap();
    let r = plan
        .receiver_table(
            &receiver.header,
            cleanroom_rules::text_rows(receiver.rows.iter().cloned()),
        )
        .unwrap();
    let report = match_offline(&plan.domain(), m, r, plan.min_release()).unwrap();
    // The matcher's release decision is exactly the plan's.
    let released = report.counts.iter().filter(|c| plan.release(c)).count();
    assert_eq!(released, report.outcome.groups.len());
    plan.result(&report.outcome).unwrap()
}

/// Runs `plan` through the two roles by hand, with [`Plan::release`] deciding.
fn run_roles(plan: &Plan, matcher: &Csv, receiver: &Csv) -> ReceiverOutcome {
    let domain = plan.domain();
    let m = plan
        .matcher_table(
            &matcher.header,
            cleanroom_rules::text_rows(matcher.rows.iter().cloned()),
        )
        .unwrap();
    let r = plan
        .receiver_table(
            &receiver.header,
            cleanroom_rules::text_rows(receiver.rows.iter().cloned()),
        )
        .unwrap();
    let mut m = Matcher::new(&domain, m, Limits::default());
    let mut r = Receiver::new(&domain, r, Limits::default());
    let mut released = false;
    while !r.is_finished() {
        let mut progressed = false;
        while let Some(msg) = m.poll_message() {
            r.handle_message(msg).unwrap();
            progressed = true;
        }
        while let Some(msg) = r.poll_message() {
            m.handle_message(msg).unwrap();
            progressed = true;
        }
        if !released && m.counts().is_some() {
            m.release(|c| plan.release(c)).unwrap();
            released = true;
            progressed = true;
        }
        assert!(progressed, "session stalled");
    }
    r.open().unwrap()
}

fn sorted(mut rows: Vec<Vec<Value>>) -> Vec<Vec<Value>> {
    rows.sort_by_key(|r| format!("{r:?}"));
    rows
}

/// Checks one query end to end against its plain computation; returns the result.
fn check(sql: &str, spec: &Plain, impressions: &Csv, conversions: &Csv) -> ResultTable {
    let plan = collaboration()
        .plan("advertiser", sql)
        .unwrap_or_else(|r| panic!("{sql}: {r}"));
    assert_eq!(plan.grouped_by(), spec.group_side, "{sql}");
    assert_eq!(plan.min_release(), spec.threshold);
    let result = run(&plan, impressions, conversions);
    let (expected, suppressed) = plain(spec, impressions, conversions);
    assert_eq!(
        sorted(result.rows.clone()),
        sorted(expected),
        "{sql}: released rows differ"
    );
    assert_eq!(result.suppressed_rows, suppressed, "{sql}: suppressed rows");
    result
}

fn files() -> (Csv, Csv) {
    (Csv::load("impressions.csv"), Csv::load("conversions.csv"))
}

fn any(_: &Rec) -> bool {
    true
}

// ----------------------------------------------------------------- the queries

#[test]
fn count_of_matched_identifiers() {
    let (imp, conv) = files();
    let result = check(
        "SELECT COUNT(DISTINCT i.email) AS matched FROM impressions i JOIN conversions c ON i.email = c.email",
        &Plain {
            provider_filter: any,
            querier_filter: any,
            group_side: None,
            group_columns: &[],
            outputs: &[Out::Agg(Agg::CountDistinct)],
            threshold: 3,
        },
        &imp,
        &conv,
    );
    assert_eq!(result.columns, ["matched"]);
    assert_eq!(result.rows.len(), 1);
    assert!(matches!(result.rows[0][0], Value::Integer(n) if n > 20));
}

#[test]
fn counts_grouped_by_the_providers_dimension_with_suppressed_groups() {
    let (imp, conv) = files();
    let result = check(
        "SELECT i.campaign, COUNT(DISTINCT c.email) FROM impressions i JOIN conversions c ON i.email = c.email GROUP BY i.campaign",
        &Plain {
            provider_filter: any,
            querier_filter: any,
            group_side: Some(Role::Matcher),
            group_columns: &["campaign"],
            outputs: &[Out::Dim("campaign"), Out::Agg(Agg::CountDistinct)],
            threshold: 3,
        },
        &imp,
        &conv,
    );
    assert!(result.rows.len() >= 3);
    // Default order: by group key.
    let campaigns: Vec<&Value> = result.rows.iter().map(|r| &r[0]).collect();
    let mut expected = campaigns.clone();
    expected.sort_by_key(|v| v.to_string());
    assert_eq!(campaigns, expected);
}

#[test]
fn counts_grouped_by_the_queriers_dimension() {
    let (imp, conv) = files();
    check(
        "SELECT c.product, COUNT(DISTINCT i.email) FROM impressions i JOIN conversions c ON i.email = c.email GROUP BY c.product",
        &Plain {
            provider_filter: any,
            querier_filter: any,
            group_side: Some(Role::Receiver),
            group_columns: &["product"],
            outputs: &[Out::Dim("product"), Out::Agg(Agg::CountDistinct)],
            threshold: 3,
        },
        &imp,
        &conv,
    );
}

#[test]
fn sums_and_averages_grouped_by_the_providers_dimension_with_filters_on_both_sides() {
    let (imp, conv) = files();
    let result = check(
        "SELECT i.campaign, SUM(c.purchase_value) AS revenue, AVG(c.purchase_value), COUNT(c.purchase_value) \
         FROM impressions i JOIN conversions c ON i.email = c.email \
         WHERE i.region IN ('EU', 'US') AND c.channel <> 'store' GROUP BY i.campaign",
        &Plain {
            provider_filter: |r| is(r, "region", "EU") || is(r, "region", "US"),
            querier_filter: |r| cell(r, "channel").is_some_and(|c| c != "store"),
            group_side: Some(Role::Matcher),
            group_columns: &["campaign"],
            outputs: &[
                Out::Dim("campaign"),
                Out::Agg(Agg::Sum("purchase_value")),
                Out::Agg(Agg::Avg("purchase_value")),
                Out::Agg(Agg::Count("purchase_value")),
            ],
            threshold: 3,
        },
        &imp,
        &conv,
    );
    assert_eq!(
        result.columns,
        [
            "campaign",
            "revenue",
            "AVG(c.purchase_value)",
            "COUNT(c.purchase_value)"
        ]
    );
    assert!(!result.rows.is_empty());
}

#[test]
fn sums_and_averages_grouped_by_the_queriers_composite_key() {
    let (imp, conv) = files();
    check(
        "SELECT c.channel, c.product, SUM(c.quantity), AVG(c.quantity), COUNT(DISTINCT c.email) \
         FROM impressions i JOIN conversions c ON i.email = c.email \
         WHERE (i.device = 'mobile' OR i.device IS NULL) AND c.product BETWEEN 'b' AND 'd' \
         GROUP BY c.product, c.channel",
        &Plain {
            provider_filter: |r| is(r, "device", "mobile") || cell(r, "device").is_none(),
            querier_filter: |r| cell(r, "product").is_some_and(|p| ("b"..="d").contains(&p)),
            group_side: Some(Role::Receiver),
            group_columns: &["product", "channel"],
            outputs: &[
                Out::Dim("channel"),
                Out::Dim("product"),
                Out::Agg(Agg::Sum("quantity")),
                Out::Agg(Agg::Avg("quantity")),
                Out::Agg(Agg::CountDistinct),
            ],
            threshold: 3,
        },
        &imp,
        &conv,
    );
}

#[test]
fn sums_grouped_by_the_providers_composite_key_with_nulls() {
    let (imp, conv) = files();
    check(
        "SELECT i.region, i.device, SUM(c.purchase_value) FROM impressions i JOIN conversions c \
         ON i.email = c.email WHERE NOT i.campaign = 'winter' GROUP BY i.region, i.device",
        &Plain {
            provider_filter: |r| cell(r, "campaign").is_some_and(|c| c != "winter"),
            querier_filter: any,
            group_side: Some(Role::Matcher),
            group_columns: &["region", "device"],
            outputs: &[
                Out::Dim("region"),
                Out::Dim("device"),
                Out::Agg(Agg::Sum("purchase_value")),
            ],
            threshold: 3,
        },
        &imp,
        &conv,
    );
}

#[test]
fn order_by_and_limit_apply_to_released_rows_only() {
    let (imp, conv) = files();
    let spec = Plain {
        provider_filter: any,
        querier_filter: any,
        group_side: Some(Role::Matcher),
        group_columns: &["campaign", "region"],
        outputs: &[
            Out::Dim("campaign"),
            Out::Dim("region"),
            Out::Agg(Agg::CountDistinct),
        ],
        threshold: 3,
    };
    let sql = "SELECT i.campaign, i.region, COUNT(DISTINCT i.email) AS n FROM impressions i \
               JOIN conversions c ON i.email = c.email GROUP BY i.campaign, i.region \
               ORDER BY n DESC, 1, i.region LIMIT 4";
    let plan = collaboration().plan("advertiser", sql).unwrap();
    let result = run(&plan, &imp, &conv);
    let (mut expected, suppressed) = plain(&spec, &imp, &conv);
    // ORDER BY n DESC, campaign, region (NULL last); then LIMIT 4.
    expected.sort_by(|a, b| {
        let text = |v: &Value| match v {
            Value::Text(s) => (0, s.clone()),
            _ => (1, String::new()),
        };
        let n = |v: &Value| match v {
            Value::Integer(n) => *n,
            _ => unreachable!(),
        };
        n(&b[2])
            .cmp(&n(&a[2]))
            .then_with(|| text(&a[0]).cmp(&text(&b[0])))
            .then_with(|| text(&a[1]).cmp(&text(&b[1])))
    });
    assert!(expected.len() > 4, "the limit must cut something");
    expected.truncate(4);
    assert_eq!(result.rows, expected);
    assert_eq!(result.suppressed_rows, suppressed);
    assert!(suppressed > 0, "the data must have suppressed groups");
}

#[test]
fn the_matchers_release_decision_comes_from_the_plan() {
    let (imp, conv) = files();
    let plan = collaboration()
        .plan(
            "advertiser",
            "SELECT c.product, SUM(c.purchase_value) FROM impressions i JOIN conversions c \
             ON i.email = c.email GROUP BY c.product",
        )
        .unwrap();
    let by_hand = run_roles(&plan, &imp, &conv);
    let offline = match_offline(
        &plan.domain(),
        plan.matcher_table(
            &imp.header,
            cleanroom_rules::text_rows(imp.rows.iter().cloned()),
        )
        .unwrap(),
        plan.receiver_table(
            &conv.header,
            cleanroom_rules::text_rows(conv.rows.iter().cloned()),
        )
        .unwrap(),
        plan.min_release(),
    )
    .unwrap();
    assert_eq!(by_hand, offline.outcome);
    assert_eq!(
        plan.result(&by_hand).unwrap(),
        plan.result(&offline.outcome).unwrap()
    );
}

// ----------------------------------------------------------------- generated data

/// xorshift64*: a small deterministic generator, so failures reproduce from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

fn generated(seed: u64) -> (Csv, Csv) {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut imp = String::from("email,campaign,region,device,age_band\n");
    for _ in 0..(40 + rng.below(60)) {
        let n = rng.below(50);
        let email = match rng.below(10) {
            0 => String::new(),
            1 => format!(" USER{n}@x.org"),
            _ => format!("user{n}@x.org"),
        };
        let campaign = rng.pick(&["a", "b", "c", "\"d,\"\"e\"\"\""]);
        let region = rng.pick(&["EU", "US", ""]);
        let device = rng.pick(&["m", "d"]);
        imp.push_str(&format!("{email},{campaign},{region},{device},x\n"));
    }
    let mut conv = String::from("email,product,channel,purchase_value,quantity,coupon,store_id\n");
    for _ in 0..(40 + rng.below(60)) {
        let n = 20 + rng.below(50);
        let email = if rng.below(12) == 0 {
            String::new()
        } else {
            format!("User{n}@X.org ")
        };
        let product = rng.pick(&["p1", "p2", "p3", ""]);
        let channel = rng.pick(&["web", "app"]);
        let value = if rng.below(8) == 0 {
            String::new()
        } else {
            rng.below(1000).to_string()
        };
        let quantity = rng.below(4);
        conv.push_str(&format!(
            "{email},{product},{channel},{value},{quantity},,s\n"
        ));
    }
    (Csv::parse(&imp), Csv::parse(&conv))
}

#[test]
fn generated_data_matches_the_plain_computation() {
    for seed in 1..=6 {
        let (imp, conv) = generated(seed);
        check(
            "SELECT i.campaign, COUNT(DISTINCT i.email), SUM(c.purchase_value), AVG(c.purchase_value) \
             FROM impressions i JOIN conversions c ON i.email = c.email \
             WHERE i.region <> 'US' GROUP BY i.campaign",
            &Plain {
                provider_filter: |r| cell(r, "region").is_some_and(|v| v != "US"),
                querier_filter: any,
                group_side: Some(Role::Matcher),
                group_columns: &["campaign"],
                outputs: &[
                    Out::Dim("campaign"),
                    Out::Agg(Agg::CountDistinct),
                    Out::Agg(Agg::Sum("purchase_value")),
                    Out::Agg(Agg::Avg("purchase_value")),
                ],
                threshold: 3,
            },
            &imp,
            &conv,
        );
        check(
            "SELECT c.product, SUM(c.quantity), COUNT(c.purchase_value) \
             FROM impressions i JOIN conversions c ON i.email = c.email \
             WHERE i.device = 'm' AND c.channel IN ('web') GROUP BY c.product",
            &Plain {
                provider_filter: |r| is(r, "device", "m"),
                querier_filter: |r| is(r, "channel", "web"),
                group_side: Some(Role::Receiver),
                group_columns: &["product"],
                outputs: &[
                    Out::Dim("product"),
                    Out::Agg(Agg::Sum("quantity")),
                    Out::Agg(Agg::Count("purchase_value")),
                ],
                threshold: 3,
            },
            &imp,
            &conv,
        );
    }
}

// ----------------------------------------------------------------- data errors

#[test]
fn data_errors_name_the_row_and_column() {
    let plan = collaboration()
        .plan(
            "advertiser",
            "SELECT SUM(c.purchase_value) FROM impressions i JOIN conversions c ON i.email = c.email \
             WHERE c.channel = 'web'",
        )
        .unwrap();
    let header: Vec<String> = ["email", "channel", "purchase_value"]
        .map(String::from)
        .to_vec();
    let row = |cells: [&str; 3]| cells.map(String::from).to_vec();

    let err = plan
        .receiver_table(
            &header,
            cleanroom_rules::text_rows(vec![row(["a@x", "web", "5"]), row(["b@x", "web", "5.5"])]),
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "table \"conversions\", row 2, column \"purchase_value\": \"5.5\" is not a non-negative integer"
    );
    // A filtered-out row is never read.
    assert!(
        plan.receiver_table(
            &header,
            cleanroom_rules::text_rows(vec![row(["b@x", "store", "-1"])])
        )
        .is_ok()
    );
    let err = plan
        .receiver_table(
            &header,
            cleanroom_rules::text_rows(vec![vec!["a@x".to_owned(), "web".to_owned()]]),
        )
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("row 1: no field for column \"purchase_value\""),
        "{err}"
    );

    let err = plan
        .receiver_table(
            &header[..2],
            cleanroom_rules::text_rows(Vec::<Vec<String>>::new()),
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "table \"conversions\": the header has no column \"purchase_value\""
    );
    let err = plan
        .receiver_table(
            &header,
            cleanroom_rules::text_rows(vec![
                row(["a@x", "web", "4294967295"]),
                row(["A@x", "web", "1"]),
            ]),
        )
        .unwrap_err();
    assert!(
        err.to_string().starts_with("table \"conversions\", row 2:"),
        "{err}"
    );
    // The matcher only needs its identifier (no filter, no group on its side).
    assert!(
        plan.matcher_table(
            &["email".to_owned()],
            cleanroom_rules::text_rows(vec![vec!["a@x".to_owned()]])
        )
        .is_ok()
    );
}

#[test]
fn an_outcome_that_does_not_fit_the_plan_is_an_error_not_a_panic() {
    use cleanroom_psi::GroupResult;
    let plan = collaboration()
        .plan(
            "advertiser",
            "SELECT i.campaign, SUM(c.quantity) FROM impressions i JOIN conversions c \
             ON i.email = c.email GROUP BY i.campaign",
        )
        .unwrap();
    let outcome = |matcher_group: &str, receiver_group: &str, sums: Vec<u64>| ReceiverOutcome {
        groups: vec![GroupResult {
            matcher_group: matcher_group.into(),
            receiver_group: receiver_group.into(),
            intersection_size: 5,
            sums,
        }],
        suppressed_groups: 2,
        bounded_identifiers: 0,
    };
    let ok = plan.result(&outcome("[\"spring\"]", "", vec![7])).unwrap();
    assert_eq!(
        ok.rows,
        [vec![Value::Text("spring".into()), Value::Integer(7)]]
    );
    assert_eq!(ok.suppressed_rows, 2);
    assert!(plan.result(&outcome("spring", "", vec![7])).is_err());
    assert!(plan.result(&outcome("[\"a\",\"b\"]", "", vec![7])).is_err());
    assert!(plan.result(&outcome("[\"spring\"]", "x", vec![7])).is_err());
    assert!(plan.result(&outcome("[\"spring\"]", "", vec![])).is_err());
}
