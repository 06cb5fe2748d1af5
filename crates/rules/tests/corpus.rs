//! The query corpus: every query, allowed or refused, with exactly what the checker must say.

use cleanroom_rules::{Collaboration, Protocol, ReasonCode as C, Role};

fn collaboration() -> Collaboration {
    Collaboration::load(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/collab.toml"
    ))
    .expect("sample collaboration loads")
}

/// What the checker must answer.
enum Expect {
    /// Allowed, with this protocol, grouped side, matcher table, receiver table, threshold.
    Allowed(Protocol, Option<Role>, &'static str, &'static str, u64),
    /// Refused with exactly these codes, in order.
    Refused(&'static [C]),
}
use Expect::*;

const J: &str = "FROM impressions i JOIN conversions c ON i.email = c.email";
const L: &str = "FROM customers cu JOIN subscribers s ON cu.email = s.email";

#[rustfmt::skip]
fn corpus() -> Vec<(&'static str, String, Expect)> {
    let adv = "advertiser";
    let q = |s: &str| s.replace("{J}", J).replace("{L}", L);
    let list = || Allowed(Protocol::List, None, "subscribers", "customers", 0);
    vec![
        // ----- allowed -----
        (adv, q("SELECT COUNT(DISTINCT i.email) {J}"),
            Allowed(Protocol::Cardinality, None, "impressions", "conversions", 3)),
        (adv, q("SELECT i.campaign, COUNT(DISTINCT c.email) AS buyers FROM impressions i INNER JOIN conversions c ON c.email = i.email GROUP BY i.campaign"),
            Allowed(Protocol::Cardinality, Some(Role::Matcher), "impressions", "conversions", 3)),
        (adv, q("SELECT c.product, COUNT(DISTINCT i.email) {J} GROUP BY c.product"),
            Allowed(Protocol::Cardinality, Some(Role::Receiver), "impressions", "conversions", 3)),
        (adv, q("SELECT i.campaign, SUM(c.purchase_value) AS revenue {J} GROUP BY i.campaign"),
            Allowed(Protocol::IntersectionSum, Some(Role::Matcher), "impressions", "conversions", 3)),
        (adv, q("SELECT c.channel, AVG(c.purchase_value) {J} GROUP BY c.channel ORDER BY 2 DESC LIMIT 5"),
            Allowed(Protocol::IntersectionSum, Some(Role::Receiver), "impressions", "conversions", 3)),
        (adv, q("SELECT campaign, region, COUNT(DISTINCT i.email) {J} WHERE region IN ('EU', 'US') AND c.channel = 'web' GROUP BY campaign, region ORDER BY campaign"),
            Allowed(Protocol::Cardinality, Some(Role::Matcher), "impressions", "conversions", 3)),
        (adv, q("SELECT COUNT(c.coupon), SUM(c.quantity), AVG(c.quantity), COUNT(DISTINCT c.email) {J}"),
            Allowed(Protocol::IntersectionSum, None, "impressions", "conversions", 3)),
        (adv, q("SELECT i.device AS d, COUNT(DISTINCT i.email) n {J} WHERE NOT (i.region = 'EU' OR i.region IS NULL) GROUP BY d ORDER BY n DESC, d"),
            Allowed(Protocol::Cardinality, Some(Role::Matcher), "impressions", "conversions", 3)),
        (adv, q("SELECT COUNT(DISTINCT impressions.email) FROM impressions JOIN conversions USING (email)"),
            Allowed(Protocol::Cardinality, None, "impressions", "conversions", 3)),
        (adv, q("select i.campaign, count(distinct I.EMAIL) from Impressions i join CONVERSIONS c on i.email = c.email where i.region between 'A' and 'M' group by 1 order by 1 limit 10"),
            Allowed(Protocol::Cardinality, Some(Role::Matcher), "impressions", "conversions", 3)),
        (adv, q("SELECT COUNT(DISTINCT c.email) FROM conversions c JOIN impressions i ON c.email = i.email;"),
            Allowed(Protocol::Cardinality, None, "impressions", "conversions", 3)),
        (adv, q("SELECT c.product, SUM(c.purchase_value), COUNT(DISTINCT c.email) {J} WHERE i.campaign <> 'spring' AND c.product >= 'b' GROUP BY c.product"),
            Allowed(Protocol::IntersectionSum, Some(Role::Receiver), "impressions", "conversions", 3)),
        ("retailer", q("SELECT i.region, SUM(s.visits) FROM store_visits s JOIN impressions i ON s.email = i.email GROUP BY i.region"),
            Allowed(Protocol::IntersectionSum, Some(Role::Matcher), "impressions", "store_visits", 4)),
        (adv, q("SELECT COUNT(DISTINCT i.email) {J} WHERE i.campaign NOT IN ('a') AND i.region NOT BETWEEN 'a' AND 'c' AND i.device IS NOT NULL AND -5 < i.device"),
            Allowed(Protocol::Cardinality, None, "impressions", "conversions", 3)),
        (adv, q("SELECT c.product, c.channel, AVG(c.purchase_value) {J} GROUP BY c.channel, c.product ORDER BY AVG(c.purchase_value) DESC NULLS LAST"),
            Allowed(Protocol::IntersectionSum, Some(Role::Receiver), "impressions", "conversions", 3)),
        // ----- allowed: lists (two list-rule tables) -----
        (adv, q("SELECT cu.customer_id, s.newsletter {L}"), list()),
        (adv, q("SELECT DISTINCT cu.email, s.region {L} WHERE s.region IN ('EU', 'US') AND cu.segment = 'gold' ORDER BY 2 LIMIT 10"), list()),
        (adv, q("SELECT cu.customer_id FROM subscribers s INNER JOIN customers cu ON s.email = cu.email WHERE s.newsletter <> 'daily' OR s.region IS NULL"), list()),
        (adv, q("SELECT s.newsletter AS n, s.region r, cu.segment {L} ORDER BY n DESC, r"), list()),
        (adv, q("SELECT customer_id, newsletter FROM customers JOIN subscribers USING (email) LIMIT 0"), list()),
        // ----- refused: lists -----
        (adv, q("SELECT cu.customer_id, s.signup_date {L}"), Refused(&[C::OutputNotListColumn])),
        (adv, q("SELECT s.email, cu.lifetime_value {L}"), Refused(&[C::OutputNotListColumn, C::OutputNotListColumn])),
        (adv, q("SELECT cu.customer_id {L} WHERE s.signup_date > '2024-06-01'"), Refused(&[C::FilterNotListColumn])),
        (adv, q("SELECT cu.customer_id {L} WHERE s.email IS NOT NULL"), Refused(&[C::FilterNotListColumn])),
        (adv, q("SELECT COUNT(DISTINCT cu.email) {L}"), Refused(&[C::AggregateInListQuery])),
        (adv, q("SELECT s.region, MAX(cu.customer_id) {L} GROUP BY s.region"), Refused(&[C::AggregateInListQuery, C::UnsupportedClause])),
        (adv, q("SELECT UPPER(s.region) {L}"), Refused(&[C::UnsupportedFunction])),
        (adv, q("SELECT cu.customer_id || s.region {L}"), Refused(&[C::UnsupportedExpression])),
        (adv, q("SELECT * {L}"), Refused(&[C::SelectStar])),
        (adv, q("SELECT DISTINCT ON (s.region) s.region {L}"), Refused(&[C::UnsupportedClause])),
        (adv, q("SELECT cu.customer_id FROM customers cu LEFT JOIN subscribers s ON cu.email = s.email"), Refused(&[C::OuterJoin])),
        (adv, q("SELECT cu.customer_id FROM customers cu JOIN impressions i ON cu.email = i.email"), Refused(&[C::ListRuleUnsupported])),
        (adv, q("SELECT cu.customer_id FROM customers cu JOIN conversions c ON cu.email = c.email"), Refused(&[C::SameOwnerTables])),
        ("retailer", q("SELECT cu.customer_id {L}"), Refused(&[C::QuerierTableRequired])),
        (adv, q("SELECT s.region {L} WHERE s.region = 'EU' OR cu.segment = 'gold'"), Refused(&[C::PredicateSpansTables])),
        (adv, q("SELECT s.region {L} WHERE cu.segment = s.region"), Refused(&[C::UnsupportedPredicate])),
        (adv, q("SELECT s.region {L} ORDER BY s.newsletter"), Refused(&[C::OrderByNotOutput])),
        (adv, q("SELECT s.signup_date, SUM(cu.lifetime_value) {L} WHERE cu.lifetime_value > 100 LIMIT -1"),
            Refused(&[C::OutputNotListColumn, C::AggregateInListQuery, C::FilterNotListColumn, C::InvalidLimit])),
        // ----- refused: the text -----
        (adv, q("SELEC COUNT(DISTINCT i.email) {J}"), Refused(&[C::SyntaxError])),
        (adv, q("SELECT COUNT(DISTINCT i.email FROM impressions"), Refused(&[C::SyntaxError])),
        (adv, q("SELECT 'unterminated {J}"), Refused(&[C::SyntaxError])),
        (adv, q(""), Refused(&[C::EmptyQuery])),
        (adv, q("  ;  "), Refused(&[C::EmptyQuery])),
        (adv, q("SELECT COUNT(DISTINCT i.email) {J}; SELECT COUNT(DISTINCT i.email) {J}"), Refused(&[C::MultipleStatements])),
        (adv, q("DROP TABLE impressions"), Refused(&[C::NotSelect])),
        (adv, q("INSERT INTO conversions VALUES ('a', 'b', 'c', 1, 2, 'x', 's')"), Refused(&[C::NotSelect])),
        (adv, q("VALUES (1)"), Refused(&[C::NotSelect])),
        (adv, format!("SELECT COUNT(DISTINCT i.email) {J} WHERE {}", vec!["i.region = 'x'"; 600].join(" OR ")), Refused(&[C::QueryTooComplex])),
        // ----- refused: who asks -----
        ("mallory", q("SELECT COUNT(DISTINCT i.email) {J}"), Refused(&[C::UnknownMember])),
        ("publisher", q("SELECT COUNT(DISTINCT i.email) {J}"), Refused(&[C::MissingQueryAbility, C::MissingReceiveResultsAbility])),
        ("analyst", q("SELECT COUNT(DISTINCT i.email) {J}"), Refused(&[C::MissingReceiveResultsAbility, C::QuerierTableRequired])),
        // ----- refused: shape -----
        (adv, q("SELECT * {J}"), Refused(&[C::SelectStar])),
        (adv, q("SELECT i.*, COUNT(DISTINCT i.email) {J}"), Refused(&[C::SelectStar])),
        (adv, q("SELECT COUNT(DISTINCT i.email) {J} WHERE i.region IN (SELECT region FROM impressions)"), Refused(&[C::Subquery])),
        (adv, q("SELECT COUNT(DISTINCT t.email) FROM (SELECT email FROM impressions) t JOIN conversions c ON t.email = c.email"), Refused(&[C::Subquery])),
        (adv, q("SELECT (SELECT 1), COUNT(DISTINCT i.email) {J}"), Refused(&[C::Subquery])),
        (adv, q("WITH x AS (SELECT email FROM impressions) SELECT COUNT(DISTINCT x.email) FROM x JOIN conversions c ON x.email = c.email"), Refused(&[C::Cte])),
        (adv, q("SELECT COUNT(DISTINCT i.email) {J} UNION SELECT COUNT(DISTINCT i.email) {J}"), Refused(&[C::SetOperation])),
        (adv, q("SELECT i.campaign, COUNT(DISTINCT i.email) {J} GROUP BY i.campaign HAVING COUNT(DISTINCT i.email) > 5"), Refused(&[C::UnsupportedClause])),
        (adv, q("SELECT DISTINCT i.campaign, COUNT(DISTINCT i.email) {J} GROUP BY i.campaign"), Refused(&[C::UnsupportedClause])),
        (adv, q("SELECT COUNT(DISTINCT i.email) {J} LIMIT 5 OFFSET 2"), Refused(&[C::UnsupportedClause])),
        // ----- refused: joins -----
        (adv, q("SELECT COUNT(DISTINCT i.email) FROM impressions i LEFT JOIN conversions c ON i.email = c.email"), Refused(&[C::OuterJoin])),
        (adv, q("SELECT COUNT(DISTINCT i.email) FROM impressions i FULL OUTER JOIN conversions c ON i.email = c.email"), Refused(&[C::OuterJoin])),
        (adv, q("SELECT COUNT(DISTINCT i.email) FROM impressions i CROSS JOIN conversions c"), Refused(&[C::CrossJoin])),
        (adv, q("SELECT COUNT(DISTINCT i.email) FROM impressions i, conversions c WHERE i.email = c.email"), Refused(&[C::CrossJoin])),
        (adv, q("SELECT COUNT(DISTINCT i.email) FROM impressions i NATURAL JOIN conversions c"), Refused(&[C::UnsupportedJoin])),
        (adv, q("SELECT COUNT(DISTINCT i.email) FROM impressions i JOIN conversions c ON i.email < c.email"), Refused(&[C::NonEqualityJoin])),
        (adv, q("SELECT COUNT(DISTINCT i.email) FROM impressions i JOIN conversions c ON i.email = c.email AND i.region = 'EU'"), Refused(&[C::NonEqualityJoin])),
        (adv, q("SELECT COUNT(DISTINCT i.email) FROM impressions i JOIN conversions c ON i.campaign = c.product"), Refused(&[C::JoinNotOnIdentifiers, C::JoinNotOnIdentifiers])),
        (adv, q("SELECT COUNT(DISTINCT c.email) FROM surveys s JOIN conversions c ON s.email = c.email"), Refused(&[C::JoinColumnNotAllowed])),
        (adv, q("SELECT COUNT(DISTINCT l.member_email) FROM impressions i JOIN loyalty l ON i.email = l.member_email"), Refused(&[C::NormalizationMismatch])),
        (adv, q("SELECT COUNT(DISTINCT email) FROM conversions"), Refused(&[C::JoinRequired])),
        // A join across three members needs every provider's relay key (tests/chain.rs plans them).
        (adv, q("SELECT COUNT(DISTINCT i.email) {J} JOIN store_visits s ON s.email = c.email"), Refused(&[C::ProviderWithoutRelayKey, C::ProviderWithoutRelayKey])),
        (adv, q("SELECT COUNT(DISTINCT i.email) {J} JOIN store_visits s ON i.email = c.email"),
            Refused(&[C::JoinConditionMissesTable, C::ProviderWithoutRelayKey, C::ProviderWithoutRelayKey])),
        (adv, q("SELECT COUNT(DISTINCT i.email) {J} JOIN store_visits s ON s.email = c.email JOIN loyalty l ON l.member_email = c.email JOIN surveys u ON u.email = c.email JOIN subscribers b ON b.email = c.email"),
            Refused(&[C::TooManyTables])),
        (adv, q("SELECT COUNT(DISTINCT c.email) FROM conversions c JOIN loyalty l ON c.email = l.member_email"), Refused(&[C::SameOwnerTables])),
        (adv, q("SELECT COUNT(DISTINCT a.email) FROM conversions a JOIN conversions b ON a.email = b.email"), Refused(&[C::SameOwnerTables])),
        (adv, q("SELECT COUNT(DISTINCT i.email) FROM impressions i JOIN store_visits s ON i.email = s.email"), Refused(&[C::QuerierTableRequired])),
        (adv, q("SELECT COUNT(DISTINCT i.email) FROM impressions i JOIN orders o ON i.email = o.email"), Refused(&[C::UnknownTable])),
        (adv, q("SELECT COUNT(DISTINCT c.email) FROM subscribers s JOIN conversions c ON s.email = c.email"), Refused(&[C::ListRuleUnsupported])),
        // ----- refused: columns and aggregates -----
        (adv, q("SELECT i.colour, COUNT(DISTINCT i.email) {J} GROUP BY i.colour"), Refused(&[C::UnknownColumn])),
        (adv, q("SELECT COUNT(DISTINCT x.email) {J}"), Refused(&[C::UnknownTable])),
        (adv, q("SELECT COUNT(DISTINCT email) FROM impressions JOIN conversions ON impressions.email = conversions.email"), Refused(&[C::AmbiguousColumn])),
        (adv, q("SELECT ROW_NUMBER() OVER (), COUNT(DISTINCT i.email) {J}"), Refused(&[C::WindowFunction])),
        (adv, q("SELECT COUNT(DISTINCT i.email) OVER (PARTITION BY i.region) {J}"), Refused(&[C::WindowFunction])),
        (adv, q("SELECT COUNT(*) {J}"), Refused(&[C::CountStar])),
        (adv, q("SELECT COUNT(1) {J}"), Refused(&[C::CountStar])),
        (adv, q("SELECT SUM(c.purchase_value * 2) {J}"), Refused(&[C::AggregateOverExpression])),
        (adv, q("SELECT SUM(c.purchase_value + c.quantity) {J}"), Refused(&[C::AggregateOverExpression])),
        (adv, q("SELECT COUNT(c.quantity) {J}"), Refused(&[C::AggregateNotAllowed])),
        (adv, q("SELECT COUNT(DISTINCT i.campaign) {J}"), Refused(&[C::AggregateNotAllowed])),
        (adv, q("SELECT MAX(c.purchase_value) {J}"), Refused(&[C::UnsupportedFunction])),
        (adv, q("SELECT UPPER(i.campaign), COUNT(DISTINCT i.email) {J}"), Refused(&[C::UnsupportedFunction])),
        (adv, q("SELECT SUM(DISTINCT c.purchase_value) {J}"), Refused(&[C::SumDistinctUnsupported])),
        ("retailer", q("SELECT SUM(c.purchase_value) FROM store_visits s JOIN conversions c ON s.email = c.email"), Refused(&[C::ProviderAggregateUnsupported])),
        (adv, q("SELECT COUNT(DISTINCT c.coupon) {J}"), Refused(&[C::CountDistinctNotIdentifier])),
        (adv, q("SELECT AVG(c.purchase_value), AVG(c.quantity), COUNT(c.coupon) {J}"), Refused(&[C::TooManyValueColumns])),
        (adv, q("SELECT AVG(c.purchase_value), SUM(c.purchase_value), COUNT(c.purchase_value), AVG(c.quantity) {J}"),
            Allowed(Protocol::IntersectionSum, None, "impressions", "conversions", 3)),
        (adv, q("SELECT i.email, COUNT(DISTINCT i.email) {J}"), Refused(&[C::OutputNotDimension])),
        (adv, q("SELECT i.age_band, COUNT(DISTINCT i.email) {J} GROUP BY i.age_band"), Refused(&[C::OutputNotDimension, C::GroupByNotDimension])),
        (adv, q("SELECT COUNT(DISTINCT i.email) + 1 {J}"), Refused(&[C::UnsupportedExpression])),
        (adv, q("SELECT 'label', COUNT(DISTINCT i.email) {J}"), Refused(&[C::UnsupportedExpression])),
        (adv, q("SELECT i.campaign {J} GROUP BY i.campaign"), Refused(&[C::NoAggregate])),
        // ----- refused: GROUP BY, WHERE, ORDER BY, LIMIT -----
        (adv, q("SELECT COUNT(DISTINCT i.email) {J} GROUP BY i.email"), Refused(&[C::GroupByNotDimension])),
        (adv, q("SELECT i.campaign, c.product, COUNT(DISTINCT i.email) {J} GROUP BY i.campaign, c.product"), Refused(&[C::GroupByMultipleTables])),
        (adv, q("SELECT i.campaign, COUNT(DISTINCT i.email) {J}"), Refused(&[C::UngroupedOutput])),
        (adv, q("SELECT COUNT(DISTINCT i.email) {J} WHERE c.purchase_value > 100"), Refused(&[C::FilterNotDimension])),
        (adv, q("SELECT COUNT(DISTINCT i.email) {J} WHERE i.email = 'a@example.com'"), Refused(&[C::FilterNotDimension])),
        (adv, q("SELECT COUNT(DISTINCT i.email) {J} WHERE i.campaign LIKE 'sp%'"), Refused(&[C::UnsupportedPredicate])),
        (adv, q("SELECT COUNT(DISTINCT i.email) {J} WHERE i.region = c.channel"), Refused(&[C::UnsupportedPredicate])),
        (adv, q("SELECT COUNT(DISTINCT i.email) {J} WHERE UPPER(i.region) = 'EU'"), Refused(&[C::UnsupportedPredicate])),
        (adv, q("SELECT COUNT(DISTINCT i.email) {J} WHERE i.region = 'EU' OR c.channel = 'web'"), Refused(&[C::PredicateSpansTables])),
        (adv, q("SELECT i.campaign, COUNT(DISTINCT i.email) {J} GROUP BY i.campaign ORDER BY i.region"), Refused(&[C::OrderByNotOutput])),
        (adv, q("SELECT i.campaign, COUNT(DISTINCT i.email) {J} GROUP BY i.campaign ORDER BY 3"), Refused(&[C::OrderByNotOutput])),
        (adv, q("SELECT COUNT(DISTINCT i.email) {J} LIMIT 'ten'"), Refused(&[C::InvalidLimit])),
        (adv, q("SELECT COUNT(DISTINCT i.email) {J} LIMIT 1.5"), Refused(&[C::InvalidLimit])),
        // several independent reasons at once
        (adv, q("SELECT i.nope, MAX(c.quantity), SUM(DISTINCT c.purchase_value) {J} WHERE c.purchase_value > 1"),
            Refused(&[C::UnknownColumn, C::UnsupportedFunction, C::SumDistinctUnsupported, C::FilterNotDimension])),
    ]
}

#[test]
fn corpus_has_at_least_forty_queries_and_covers_every_code() {
    let corpus = corpus();
    assert!(corpus.len() >= 40, "{} queries", corpus.len());
    let mut seen: Vec<C> = corpus
        .iter()
        .flat_map(|(_, _, e)| match e {
            Refused(codes) => codes.to_vec(),
            Allowed(..) => Vec::new(),
        })
        .collect();
    seen.sort();
    seen.dedup();
    // Judged on the querier's data or on the server's ledger, not on the SQL: covered by
    // tests/privacy.rs and the service's tests/service_privacy.rs.
    let data_dependent = [
        C::QuerierSetTooSmall,
        C::BudgetExhausted,
        C::QueryLimitReached,
        // Judged on the receivers a query names, not on its SQL: `receivers_are_checked`.
        C::UnknownReceiver,
        C::ReceiverWithoutResultKey,
        C::ListResultsToQuerierOnly,
        // Needs providers with relay keys, which the sample lacks: tests/chain.rs.
        C::ChainSessionRequired,
        C::RangesUnprovenInChain,
    ];
    let missing: Vec<&C> = C::ALL
        .iter()
        .filter(|c| !seen.contains(c) && !data_dependent.contains(c))
        .collect();
    assert!(
        missing.is_empty(),
        "codes without a corpus query: {missing:?}"
    );
}

#[test]
fn receivers_are_checked() {
    // The retailer publishes a result key; the publisher has no ability, the analyst may
    // query but not receive.
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/collab.toml"
    ))
    .unwrap();
    let key = cleanroom_psi::sealed::OpeningKey::generate().sealing_key();
    let retailer = "name = \"retailer\"\n";
    assert!(text.contains(retailer));
    let text = text.replace(
        retailer,
        &format!(
            "{retailer}result_key = \"{}\"\n",
            key.to_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        ),
    );
    let collab = Collaboration::from_toml_str(&text, "collab.toml").unwrap();
    let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let count = q_count();
    let codes = |querier: &str, sql: &str, receivers: &[&str]| {
        collab
            .plan_for(querier, sql, &names(receivers))
            .map(|_| Vec::new())
            .unwrap_or_else(|r| r.codes())
    };
    // The querier by default; another member with the ability and a key; both.
    assert_eq!(codes("advertiser", &count, &[]), []);
    assert_eq!(codes("advertiser", &count, &["retailer"]), []);
    assert_eq!(codes("advertiser", &count, &["advertiser", "retailer"]), []);
    // A querier without receive_results may query for a receiver that has it (the analyst
    // owns no table, which stays refused either way).
    assert_eq!(
        codes("analyst", &count, &[]),
        [C::MissingReceiveResultsAbility, C::QuerierTableRequired]
    );
    assert_eq!(
        codes("analyst", &count, &["retailer"]),
        [C::QuerierTableRequired]
    );
    assert_eq!(
        codes("advertiser", &count, &["nobody"]),
        [C::UnknownReceiver]
    );
    assert_eq!(
        codes("advertiser", &count, &["publisher"]),
        [C::MissingReceiveResultsAbility]
    );
    // The advertiser receives results but publishes no key: only its own queries'.
    assert_eq!(
        codes(
            "retailer",
            &q(
                "SELECT i.region, SUM(s.visits) FROM store_visits s JOIN impressions i ON s.email = i.email GROUP BY i.region"
            ),
            &["advertiser"]
        ),
        [C::ReceiverWithoutResultKey]
    );
    let list = q("SELECT cu.customer_id, s.newsletter {L}");
    assert_eq!(codes("advertiser", &list, &[]), []);
    assert_eq!(
        codes("advertiser", &list, &["retailer"]),
        [C::ListResultsToQuerierOnly]
    );
}

fn q(s: &str) -> String {
    s.replace("{J}", J).replace("{L}", L)
}

fn q_count() -> String {
    q("SELECT COUNT(DISTINCT i.email) {J}")
}

#[test]
fn every_corpus_query_gets_exactly_its_answer() {
    let collab = collaboration();
    let mut failures = Vec::new();
    for (querier, sql, expect) in corpus() {
        let got = collab.plan(querier, &sql);
        match (&expect, &got) {
            (Allowed(protocol, grouped, matcher, receiver, threshold), Ok(plan)) => {
                let shape = (
                    plan.protocol(),
                    plan.grouped_by(),
                    plan.matcher().table.as_str(),
                    plan.receiver().table.as_str(),
                    plan.min_release(),
                );
                if shape != (*protocol, *grouped, *matcher, *receiver, *threshold) {
                    failures.push(format!("{sql}\n  wrong plan shape: {shape:?}"));
                }
                if plan.receiver().member != querier || plan.querier() != querier {
                    failures.push(format!("{sql}\n  the querier must be the receiver"));
                }
            }
            (Refused(codes), Err(refusal)) => {
                if refusal.codes() != *codes {
                    failures.push(format!(
                        "{sql}\n  expected {codes:?}\n  got      {:?}\n  {refusal}",
                        refusal.codes()
                    ));
                }
                for reason in &refusal.reasons {
                    if reason.message.is_empty() {
                        failures.push(format!("{sql}\n  reason without a message"));
                    }
                }
            }
            (Allowed(..), Err(refusal)) => {
                failures.push(format!("{sql}\n  expected allowed, got {refusal}"))
            }
            (Refused(codes), Ok(_)) => {
                failures.push(format!("{sql}\n  expected {codes:?}, got allowed"))
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
