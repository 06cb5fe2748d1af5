//! Joins across three to five members (issue 22): who matches, who filters in which order, the
//! strictest threshold, the refusals, and a filter's identifiers against a plain computation.

use std::collections::BTreeSet;

use cleanroom_psi::sealed::{OpeningKey, SealingKey};
use cleanroom_rules::{
    ChainPart, ChainPlan, Collaboration, Protocol, QueryPlan, ReasonCode as C, Refusal, Role,
};

/// A collaboration file built member by member and table by table.
struct Fixture {
    members: Vec<String>,
    tables: Vec<String>,
    /// The `[collaboration.privacy]` section, if private (summed columns then get bounds).
    privacy: Option<&'static str>,
}

/// What the fixture's tables look like: the identifier `patient_id`, normalized as `email`
/// unless said otherwise.
struct TableSpec<'a> {
    name: &'a str,
    owner: &'a str,
    dimensions: &'a [&'a str],
    threshold: u64,
    normalize: &'a str,
    summed: Option<&'a str>,
}

impl<'a> TableSpec<'a> {
    fn new(name: &'a str, owner: &'a str, dimensions: &'a [&'a str], threshold: u64) -> Self {
        TableSpec {
            name,
            owner,
            dimensions,
            threshold,
            normalize: "email",
            summed: None,
        }
    }
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            members: Vec::new(),
            tables: Vec::new(),
            privacy: None,
        }
    }

    fn member(mut self, name: &str, abilities: &str, relay_key: Option<&SealingKey>) -> Self {
        let mut entry = format!(
            "[[member]]\nname = \"{name}\"\nabilities = [{abilities}]\ntoken_sha256 = \"{:064x}\"\n",
            self.members.len() + 1
        );
        if let Some(key) = relay_key {
            entry.push_str(&format!(
                "relay_key = \"{}\"\n",
                hex::encode(key.to_bytes())
            ));
        }
        self.members.push(entry);
        self
    }

    /// A querying member (no relay key: it is never a provider here).
    fn querier(self, name: &str) -> Self {
        self.member(name, "\"query\", \"receive_results\"", None)
    }

    /// A provider with a fresh relay key.
    fn provider(self, name: &str) -> Self {
        let key = OpeningKey::generate().sealing_key();
        self.member(name, "", Some(&key))
    }

    fn table(mut self, spec: TableSpec<'_>) -> Self {
        let quoted = |items: &[&str]| {
            items
                .iter()
                .map(|c| format!("\"{c}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut columns = vec!["patient_id"];
        columns.extend_from_slice(spec.dimensions);
        let mut aggregates = String::from("patient_id = [\"COUNT_DISTINCT\"]");
        if let Some(summed) = spec.summed {
            columns.push(summed);
            aggregates.push_str(&format!(", {summed} = [\"SUM\", \"AVG\"]"));
        }
        self.tables.push(format!(
            "[[table]]\nname = \"{}\"\nowner = \"{}\"\ncolumns = [{}]\n\
             identifier = {{ column = \"patient_id\", normalize = \"{}\" }}\n\n\
             [table.rule]\ntype = \"aggregation\"\njoin_columns = [\"patient_id\"]\n\
             dimension_columns = [{}]\naggregate_columns = {{ {aggregates} }}\n\
             min_threshold = {}\n",
            spec.name,
            spec.owner,
            quoted(&columns),
            spec.normalize,
            quoted(spec.dimensions),
            spec.threshold
        ));
        self
    }

    fn build(&self) -> Collaboration {
        let mut tables = self.tables.join("\n");
        let privacy = match self.privacy {
            Some(section) => {
                tables = tables.replace(
                    "cost = [\"SUM\", \"AVG\"] }\n",
                    "cost = [\"SUM\", \"AVG\"] }\nsum_bounds = { cost = [0, 1000] }\n",
                );
                format!("[collaboration.privacy]\n{section}\n")
            }
            None => String::new(),
        };
        let text = format!(
            "[collaboration]\nid = \"hospitals\"\n\n{privacy}\n{}\n{tables}",
            self.members.join("\n"),
        );
        Collaboration::from_toml_str(&text, "chain.toml").expect("the fixture is valid")
    }
}

/// A registry (the querier) and five hospitals, each with one table of visits; hospital_a
/// also keeps a table of lab results, hospital_f normalizes its identifiers otherwise, and
/// hospital_n has no relay key.
fn hospitals() -> Collaboration {
    let mut fixture = Fixture::new().querier("registry");
    for h in ["a", "b", "c", "d", "e", "f"] {
        fixture = fixture.provider(&format!("hospital_{h}"));
    }
    fixture
        .member("hospital_n", "", None)
        .table(TableSpec {
            summed: Some("cost"),
            ..TableSpec::new("patients", "registry", &["region"], 2)
        })
        .table(TableSpec::new("visits_a", "hospital_a", &["diagnosis"], 5))
        .table(TableSpec::new("visits_b", "hospital_b", &["diagnosis"], 7))
        .table(TableSpec::new("visits_c", "hospital_c", &["ward"], 3))
        .table(TableSpec::new("visits_d", "hospital_d", &["ward"], 4))
        .table(TableSpec::new("visits_e", "hospital_e", &["ward"], 2))
        .table(TableSpec::new("labs_a", "hospital_a", &["test"], 2))
        .table(TableSpec {
            normalize: "trim",
            ..TableSpec::new("visits_f", "hospital_f", &["ward"], 2)
        })
        .table(TableSpec::new("visits_n", "hospital_n", &["ward"], 2))
        .build()
}

/// `FROM patients p JOIN <t> <alias> ON p.patient_id = <alias>.patient_id ...` for `tables`.
fn from(tables: &[(&str, &str)]) -> String {
    let mut sql = String::from("FROM patients p");
    for (table, alias) in tables {
        sql.push_str(&format!(
            " JOIN {table} {alias} ON p.patient_id = {alias}.patient_id"
        ));
    }
    sql
}

fn chain(collab: &Collaboration, sql: &str) -> ChainPlan {
    match collab.plan_query("registry", sql, &[]) {
        Ok(QueryPlan::Chain(plan)) => plan,
        Ok(QueryPlan::TwoParty(_)) => panic!("{sql}: planned for two parties"),
        Err(refusal) => panic!("{sql}: {refusal}"),
    }
}

fn refused(collab: &Collaboration, sql: &str) -> Refusal {
    match collab.plan_query("registry", sql, &[]) {
        Err(refusal) => refusal,
        Ok(_) => panic!("{sql}: allowed"),
    }
}

/// Each provider's (member, table, position, part), in chain order.
fn links(plan: &ChainPlan) -> Vec<(&str, &str, usize, ChainPart)> {
    plan.links()
        .map(|l| (l.member(), l.table(), l.position(), l.part()))
        .collect()
}

#[test]
fn three_members_the_first_provider_matches_and_the_other_filters() {
    let collab = hospitals();
    let sql = format!(
        "SELECT COUNT(DISTINCT p.patient_id) {} WHERE b.diagnosis = 'flu'",
        from(&[("visits_a", "a"), ("visits_b", "b")])
    );
    let plan = chain(&collab, &sql);
    assert_eq!(plan.members(), 3);
    assert_eq!(plan.protocol(), Protocol::Cardinality);
    assert_eq!(plan.grouped_by(), None);
    assert_eq!(plan.matcher().table, "visits_a");
    assert_eq!(plan.receiver().table, "patients");
    assert_eq!(plan.receiver().member, "registry");
    assert_eq!(
        links(&plan),
        [
            ("hospital_b", "visits_b", 1, ChainPart::Filter),
            ("hospital_a", "visits_a", 2, ChainPart::Matcher),
        ]
    );
    let filter = plan.filters()[0].side();
    assert!(filter.group_columns.is_empty() && filter.value_columns.is_empty());
    assert_eq!(filter.reads, ["patient_id", "diagnosis"]);
    assert!(filter.filter.is_some());
    // The strictest threshold of the three tables: visits_b's 7.
    assert_eq!(plan.min_release(), 7);
    assert_eq!(
        plan.domain_label(),
        "visits_a.patient_id=visits_b.patient_id=patients.patient_id"
    );
    let key = collab.member("hospital_b").unwrap().relay_key().unwrap();
    assert_eq!(plan.filters()[0].link().relay_key(), key);
}

#[test]
fn grouping_by_a_providers_dimension_makes_it_the_matcher() {
    let collab = hospitals();
    let sql = format!(
        "SELECT b.diagnosis, COUNT(DISTINCT p.patient_id) {} WHERE a.diagnosis <> 'none' \
         GROUP BY b.diagnosis",
        from(&[("visits_a", "a"), ("visits_b", "b")])
    );
    let plan = chain(&collab, &sql);
    assert_eq!(plan.grouped_by(), Some(Role::Matcher));
    assert_eq!(plan.matcher().table, "visits_b");
    assert_eq!(plan.matcher().group_columns, ["diagnosis"]);
    assert_eq!(plan.matcher().filter, None);
    assert_eq!(
        links(&plan),
        [
            ("hospital_a", "visits_a", 1, ChainPart::Filter),
            ("hospital_b", "visits_b", 2, ChainPart::Matcher),
        ]
    );
    assert!(plan.filters()[0].side().filter.is_some());
    assert!(plan.filters()[0].side().group_columns.is_empty());
}

#[test]
fn four_members_sum_the_queriers_values_grouped_by_the_querier() {
    let collab = hospitals();
    let sql = format!(
        "SELECT p.region, SUM(p.cost), COUNT(DISTINCT c.patient_id) {} GROUP BY p.region",
        from(&[("visits_c", "c"), ("visits_b", "b"), ("visits_d", "d")])
    );
    let plan = chain(&collab, &sql);
    assert_eq!(plan.members(), 4);
    assert_eq!(plan.protocol(), Protocol::IntersectionSum);
    assert_eq!(plan.grouped_by(), Some(Role::Receiver));
    assert_eq!(plan.receiver().group_columns, ["region"]);
    assert_eq!(plan.receiver().value_columns.len(), 1);
    assert!(plan.matcher().group_columns.is_empty());
    assert_eq!(
        links(&plan),
        [
            ("hospital_b", "visits_b", 1, ChainPart::Filter),
            ("hospital_d", "visits_d", 2, ChainPart::Filter),
            ("hospital_c", "visits_c", 3, ChainPart::Matcher),
        ]
    );
    assert_eq!(plan.min_release(), 7);
}

#[test]
fn five_members_and_the_chained_on_form_are_planned() {
    let collab = hospitals();
    let sql = "SELECT COUNT(DISTINCT p.patient_id) FROM patients p \
               JOIN visits_a a ON p.patient_id = a.patient_id \
               JOIN visits_c c ON a.patient_id = c.patient_id \
               JOIN visits_d d ON d.patient_id = c.patient_id \
               JOIN visits_e e USING (patient_id)";
    let plan = chain(&collab, sql);
    assert_eq!(plan.members(), 5);
    assert_eq!(plan.filters().len(), 3);
    assert_eq!(plan.matcher_link().position(), 4);
    assert_eq!(plan.min_release(), 5);
}

#[test]
fn the_json_names_each_providers_part_and_key() {
    let collab = hospitals();
    let sql = format!(
        "SELECT b.diagnosis, COUNT(DISTINCT p.patient_id) {} GROUP BY b.diagnosis",
        from(&[("visits_a", "a"), ("visits_b", "b")])
    );
    let plan = collab.plan_query("registry", &sql, &[]).unwrap();
    let json: serde_json::Value = serde_json::from_str(&plan.to_json()).unwrap();
    assert_eq!(json["allowed"], true);
    let chain = &json["plan"]["chain"];
    assert_eq!(chain[0]["member"], "hospital_a");
    assert_eq!(chain[0]["part"], "filter");
    assert_eq!(chain[1]["position"], 2);
    assert_eq!(chain[1]["part"], "matcher");
    let key = collab.member("hospital_b").unwrap().relay_key().unwrap();
    assert_eq!(chain[1]["relay_key"], hex::encode(key.to_bytes()));
    assert_eq!(json["plan"]["filters"][0]["table"], "visits_a");
    assert_eq!(json["plan"]["min_release"], 7);
}

#[test]
fn six_tables_are_refused() {
    let sql = format!(
        "SELECT COUNT(DISTINCT p.patient_id) {}",
        from(&[
            ("visits_a", "a"),
            ("visits_b", "b"),
            ("visits_c", "c"),
            ("visits_d", "d"),
            ("visits_e", "e"),
        ])
    );
    assert_eq!(refused(&hospitals(), &sql).codes(), [C::TooManyTables]);
}

#[test]
fn a_member_brings_one_table() {
    let sql = format!(
        "SELECT COUNT(DISTINCT p.patient_id) {}",
        from(&[("visits_a", "a"), ("visits_b", "b"), ("labs_a", "l")])
    );
    assert_eq!(refused(&hospitals(), &sql).codes(), [C::SameOwnerTables]);
}

#[test]
fn identifiers_normalized_otherwise_are_refused() {
    let sql = format!(
        "SELECT COUNT(DISTINCT p.patient_id) {}",
        from(&[("visits_a", "a"), ("visits_f", "f")])
    );
    assert_eq!(
        refused(&hospitals(), &sql).codes(),
        [C::NormalizationMismatch]
    );
}

#[test]
fn a_provider_without_a_relay_key_is_named() {
    let sql = format!(
        "SELECT COUNT(DISTINCT p.patient_id) {}",
        from(&[("visits_a", "a"), ("visits_n", "n")])
    );
    let refusal = refused(&hospitals(), &sql);
    assert_eq!(refusal.codes(), [C::ProviderWithoutRelayKey]);
    assert!(refusal.reasons[0].message.contains("\"hospital_n\""));
    assert_eq!(refusal.reasons[0].table.as_deref(), Some("visits_n"));
}

#[test]
fn joins_that_do_not_chain_identifiers_are_refused() {
    let collab = hospitals();
    let cases = [
        (
            "FROM patients p JOIN visits_a a ON p.patient_id = a.patient_id \
             JOIN visits_b b ON p.patient_id = a.patient_id",
            C::JoinConditionMissesTable,
        ),
        (
            "FROM patients p JOIN visits_a a ON p.patient_id = a.patient_id \
             LEFT JOIN visits_b b ON p.patient_id = b.patient_id",
            C::OuterJoin,
        ),
        (
            "FROM patients p JOIN visits_a a ON p.patient_id = a.patient_id \
             JOIN visits_b b ON p.region = b.patient_id",
            C::JoinNotOnIdentifiers,
        ),
    ];
    for (from, code) in cases {
        let sql = format!("SELECT COUNT(DISTINCT p.patient_id) {from}");
        assert_eq!(refused(&collab, &sql).codes(), [code], "{sql}");
    }
    // Grouping by two providers' tables, or summing a provider's column, as in two parties.
    let sql = format!(
        "SELECT a.diagnosis, b.diagnosis, COUNT(DISTINCT p.patient_id) {} \
         GROUP BY a.diagnosis, b.diagnosis",
        from(&[("visits_a", "a"), ("visits_b", "b")])
    );
    assert_eq!(refused(&collab, &sql).codes(), [C::GroupByMultipleTables]);
}

#[test]
fn two_party_callers_are_told_a_chain_is_not_served() {
    let collab = hospitals();
    let sql = format!(
        "SELECT COUNT(DISTINCT p.patient_id) {}",
        from(&[("visits_a", "a"), ("visits_b", "b")])
    );
    let refusal = collab.plan("registry", &sql).unwrap_err();
    assert_eq!(refusal.codes(), [C::ChainSessionRequired]);
    assert!(refusal.reasons[0].message.contains("across 3 members"));
    // Two tables still plan a two-party plan, through either door.
    let pair = format!(
        "SELECT COUNT(DISTINCT p.patient_id) {}",
        from(&[("visits_a", "a")])
    );
    assert!(collab.plan("registry", &pair).is_ok());
    assert!(matches!(
        collab.plan_query("registry", &pair, &[]),
        Ok(QueryPlan::TwoParty(_))
    ));
}

#[test]
fn a_filters_identifiers_are_exactly_its_distinct_kept_identifiers() {
    let collab = hospitals();
    let sql = format!(
        "SELECT COUNT(DISTINCT p.patient_id) {} WHERE b.diagnosis IN ('flu', 'cold')",
        from(&[("visits_a", "a"), ("visits_b", "b")])
    );
    let plan = chain(&collab, &sql);
    let filter = &plan.filters()[0];
    assert_eq!(filter.side().table, "visits_b");

    let diagnoses = ["flu", "cold", "burn", ""];
    let rows: Vec<Vec<String>> = (0..500u64)
        .map(|i| {
            let id = match i % 13 {
                0 => String::new(),
                1 => "   ".to_owned(),
                _ => format!(" Patient{}@Example.org ", (i * 7919) % 97),
            };
            vec![diagnoses[(i % 4) as usize].to_owned(), id]
        })
        .collect();
    let header = ["diagnosis".to_owned(), "patient_id".to_owned()];

    let set = filter
        .identifiers(&header, cleanroom_rules::text_rows(rows.clone()))
        .unwrap();

    let kept: Vec<&Vec<String>> = rows
        .iter()
        .filter(|r| r[0] == "flu" || r[0] == "cold")
        .collect();
    let plain: BTreeSet<String> = kept
        .iter()
        .map(|r| r[1].trim().to_lowercase())
        .filter(|id| !id.is_empty())
        .collect();
    let skipped = kept.iter().filter(|r| r[1].trim().is_empty()).count() as u64;
    assert!(skipped > 0 && plain.len() > 10);
    assert_eq!(
        set.identifiers()
            .map(str::to_owned)
            .collect::<BTreeSet<_>>(),
        plain
    );
    assert_eq!(set.stats().rows, kept.len() as u64);
    assert_eq!(set.stats().skipped_empty, skipped);
}

#[test]
fn a_sum_across_members_is_refused_where_ranges_are_proven() {
    let private = |ranges: &'static str| {
        let mut fixture = Fixture::new().querier("registry");
        fixture.privacy = Some(ranges);
        fixture
            .provider("hospital_a")
            .provider("hospital_b")
            .table(TableSpec {
                summed: Some("cost"),
                ..TableSpec::new("patients", "registry", &["region"], 2)
            })
            .table(TableSpec::new("visits_a", "hospital_a", &["diagnosis"], 5))
            .table(TableSpec::new("visits_b", "hospital_b", &["diagnosis"], 7))
            .build()
    };
    let sum = format!(
        "SELECT SUM(p.cost) {}",
        from(&[("visits_a", "a"), ("visits_b", "b")])
    );
    let proven = private("epsilon_budget = 10.0\nepsilon_per_query = 1.0\nsum_ranges = \"proven\"");
    assert_eq!(refused(&proven, &sum).codes(), [C::RangesUnprovenInChain]);
    // Counting proves nothing, and a trusting collaboration sums.
    let count = sum.replace("SUM(p.cost)", "COUNT(DISTINCT p.patient_id)");
    assert!(matches!(
        proven.plan_query("registry", &count, &[]),
        Ok(QueryPlan::Chain(_))
    ));
    let trusted =
        private("epsilon_budget = 10.0\nepsilon_per_query = 1.0\nsum_ranges = \"trusted\"");
    assert!(chain(&trusted, &sum).privacy().is_some());
}
