//! Differential privacy and query limits in the collaboration file and the plans: loading and
//! its mistakes (with lines), the noise of a plan, clamping, and a differencing attack against
//! the noisy release, through the real PSI roles.

use cleanroom_psi::{
    AggregateMessage, GroupCount, GroupDecision, Limits, Matcher, Receiver, ReceiverOutcome,
    WireMessage,
};
use cleanroom_rules::dp;
use cleanroom_rules::{
    Collaboration, CollaborationError, Epsilon, Plan, Problem, ReasonCode, Value,
};
use rand::SeedableRng;
use rand::rngs::StdRng;

/// A collaboration with privacy and limits; tests replace lines to introduce mistakes.
const PRIVATE: &str = r#"[collaboration]
id = "private"

[collaboration.privacy]
epsilon_budget = 3.0
epsilon_per_query = 1.0

[collaboration.limits]
queries_per_member = 100
queries_per_member_per_day = 10

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

[table.rule]
type = "aggregation"
join_columns = ["email"]
dimension_columns = ["campaign"]
aggregate_columns = { email = ["COUNT_DISTINCT"] }
min_threshold = 3

[[table]]
name = "conversions"
owner = "advertiser"
columns = ["email", "amount", "coupon"]
identifier = { column = "email", normalize = "email" }

[table.rule]
type = "aggregation"
join_columns = ["email"]
aggregate_columns = { email = ["COUNT_DISTINCT"], amount = ["SUM", "AVG"], coupon = ["COUNT"] }
sum_bounds = { amount = [0, 1000] }
min_threshold = 3
"#;

fn with_line(line: usize, text: &str) -> String {
    let mut lines: Vec<&str> = PRIVATE.lines().collect();
    lines[line - 1] = text;
    lines.join("\n") + "\n"
}

fn line_of(needle: &str) -> usize {
    1 + PRIVATE
        .lines()
        .position(|l| l.starts_with(needle))
        .unwrap_or_else(|| panic!("no line {needle}"))
}

fn invalid(text: &str) -> (usize, String, Problem) {
    match Collaboration::from_toml_str(text, "private.toml") {
        Err(CollaborationError::Invalid {
            line, key, problem, ..
        }) => (line, key, problem),
        other => panic!("expected a validation error, got {other:?}"),
    }
}

fn collaboration() -> Collaboration {
    Collaboration::from_toml_str(PRIVATE, "private.toml").unwrap()
}

#[test]
fn privacy_and_limits_load() {
    let c = collaboration();
    let p = c.privacy().unwrap();
    assert_eq!(p.epsilon_budget(), Epsilon::from_micros(3_000_000));
    assert_eq!(p.epsilon_per_query(), Epsilon::from_micros(1_000_000));
    assert_eq!(c.query_limits().per_member(), Some(100));
    assert_eq!(c.query_limits().per_member_per_day(), Some(10));
    let rule = match c.table("conversions").unwrap().rule() {
        cleanroom_rules::AnalysisRule::Aggregation(r) => r.clone(),
        _ => unreachable!(),
    };
    assert_eq!(rule.sum_bounds()["amount"], (0, 1000));
    // The sample file has neither section: exact results, no limits.
    let sample = Collaboration::load(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/collab.toml"
    ))
    .unwrap();
    assert!(sample.privacy().is_none());
    assert_eq!(sample.query_limits().per_member(), None);
}

#[test]
fn every_privacy_mistake_names_its_key_and_line() {
    let budget = line_of("epsilon_budget");
    let per_query = line_of("epsilon_per_query");
    let bounds = line_of("sum_bounds");
    let cases: Vec<(String, usize, &str, Problem)> = vec![
        (
            with_line(budget, "epsilon_budget = 0"),
            budget,
            "collaboration.privacy.epsilon_budget",
            Problem::BadEpsilon("0".into()),
        ),
        (
            with_line(per_query, "epsilon_per_query = 0.0000001"),
            per_query,
            "collaboration.privacy.epsilon_per_query",
            Problem::BadEpsilon("0.0000001".into()),
        ),
        (
            with_line(per_query, "epsilon_per_query = 4"),
            per_query,
            "collaboration.privacy.epsilon_per_query",
            Problem::EpsilonAboveBudget {
                per_query: "4".into(),
                budget: "3".into(),
            },
        ),
        (
            with_line(line_of("queries_per_member ="), "queries_per_member = 0"),
            line_of("queries_per_member ="),
            "collaboration.limits.queries_per_member",
            Problem::BadQueryLimit(0),
        ),
        (
            with_line(
                line_of("queries_per_member_per_day"),
                "queries_per_member_per_day = -2",
            ),
            line_of("queries_per_member_per_day"),
            "collaboration.limits.queries_per_member_per_day",
            Problem::BadQueryLimit(-2),
        ),
        (
            with_line(bounds, "sum_bounds = { amount = [5, 1] }"),
            bounds,
            "table.rule.sum_bounds.amount",
            Problem::BadSumBounds,
        ),
        (
            with_line(bounds, "sum_bounds = { amount = [0] }"),
            bounds,
            "table.rule.sum_bounds.amount",
            Problem::BadSumBounds,
        ),
        (
            with_line(bounds, "sum_bounds = { amount = [0, 10], coupon = [0, 1] }"),
            bounds,
            "table.rule.sum_bounds.coupon",
            Problem::SumBoundsNotSummed("coupon".into()),
        ),
        (
            with_line(bounds, "sum_bounds = {}"),
            bounds,
            "table.rule.sum_bounds",
            Problem::MissingSumBounds("amount".into()),
        ),
        (
            with_line(bounds, ""),
            bounds - 3,
            "table.rule.sum_bounds",
            Problem::MissingSumBounds("amount".into()),
        ),
        (
            with_line(bounds, "sum_bounds = { amount = [0, 4294967295] }")
                .replace("epsilon_per_query = 1.0", "epsilon_per_query = 0.00001"),
            bounds,
            "table.rule.sum_bounds.amount",
            Problem::SumBoundTooLarge {
                high: 4_294_967_295,
                epsilon: "0.00001".into(),
            },
        ),
        (
            with_line(
                budget + 1,
                "epsilon_per_query = 1.0\nmax_groups_per_identifier = 0",
            ),
            budget + 2,
            "collaboration.privacy.max_groups_per_identifier",
            Problem::BadMaxGroups(0),
        ),
        (
            with_line(
                budget + 1,
                "epsilon_per_query = 1.0\nmax_groups_per_identifier = 65",
            ),
            budget + 2,
            "collaboration.privacy.max_groups_per_identifier",
            Problem::BadMaxGroups(65),
        ),
    ];
    for (text, line, key, problem) in cases {
        assert_eq!(invalid(&text), (line, key.to_owned(), problem), "{key}");
    }
    // Bounds without a privacy section do nothing: refused.
    let no_privacy = PRIVATE
        .replace("[collaboration.privacy]\n", "")
        .replace("epsilon_budget = 3.0\n", "")
        .replace("epsilon_per_query = 1.0\n", "");
    let (_, key, problem) = invalid(&no_privacy);
    assert_eq!(
        (key.as_str(), problem),
        ("table.rule.sum_bounds", Problem::SumBoundsWithoutPrivacy)
    );
    // An unknown key in either section is a parse error with its line.
    match Collaboration::from_toml_str(&with_line(budget, "epsilon_total = 3.0"), "private.toml") {
        Err(CollaborationError::Toml { line, .. }) => assert_eq!(line, budget),
        other => panic!("{other:?}"),
    }
}

const AVG_SQL: &str = "SELECT i.campaign, COUNT(DISTINCT c.email) AS n, SUM(c.amount) AS total, \
                       AVG(c.amount) AS mean FROM impressions i JOIN conversions c \
                       ON i.email = c.email GROUP BY i.campaign";

#[test]
fn a_private_plan_splits_epsilon_and_describes_its_noise() {
    let plan = collaboration().plan("advertiser", AVG_SQL).unwrap();
    let privacy = plan.privacy().unwrap();
    assert_eq!(privacy.epsilon, Epsilon::from_micros(1_000_000));
    // Grouped on the publisher's side: the publisher's group sizes, the count, SUM(amount),
    // the non-NULL count of amount and the bounded identifiers: 5 statistics, ε/5 each. An
    // identifier counts in up to K = 4 campaigns (the default), so it moves the group sizes,
    // the counts and the non-NULL counts by 4, the sums by 4·1000, the bounded count by 1.
    assert_eq!(privacy.max_groups, 4);
    assert_eq!(privacy.set_size.scale.as_f64(), 20.0);
    assert_eq!(privacy.count.scale.as_f64(), 20.0);
    assert_eq!(privacy.sums.len(), 2);
    assert_eq!(privacy.sums[0].scale.as_f64(), 20_000.0);
    assert_eq!(privacy.sums[1].scale.as_f64(), 20.0);
    assert_eq!(privacy.bounded.unwrap().scale.as_f64(), 5.0);
    assert_eq!(privacy.value_bounds, [(0, 1000), (0, 1)]);
    assert_eq!(plan.noise_bounds().unwrap().max_contributions(), 4);
    // With K = 1 each identifier counts once: 5 statistics of sensitivity 1 (1000 for sums).
    let once = Collaboration::from_toml_str(
        &PRIVATE.replace(
            "epsilon_per_query = 1.0",
            "epsilon_per_query = 1.0\nmax_groups_per_identifier = 1",
        ),
        "private.toml",
    )
    .unwrap();
    let plan1 = once.plan("advertiser", AVG_SQL).unwrap();
    let p1 = plan1.privacy().unwrap();
    assert_eq!(
        (p1.count.scale.as_f64(), p1.sums[0].scale.as_f64()),
        (5.0, 5000.0)
    );
    let outputs = privacy.outputs(&plan);
    let kinds: Vec<(&str, &str)> = outputs
        .iter()
        .map(|o| (o.column.as_str(), o.kind))
        .collect();
    assert_eq!(
        kinds,
        [
            ("campaign", "none"),
            ("n", "count"),
            ("total", "sum"),
            ("mean", "avg")
        ]
    );
    assert_eq!(outputs[1].interval95, privacy.count.interval95());
    assert_eq!(outputs[3].count_scale, Some(20.0));
    assert_eq!(plan.noise_bounds().unwrap().sum_bounds().len(), 2);
    // A count-only query splits ε between the group sizes and the count; it has one output
    // row, so K does not apply and nothing is bounded.
    let plan = collaboration()
        .plan(
            "advertiser",
            "SELECT COUNT(DISTINCT c.email) FROM impressions i JOIN conversions c ON i.email = c.email",
        )
        .unwrap();
    assert_eq!(plan.privacy().unwrap().count.scale.as_f64(), 2.0);
    assert_eq!(plan.privacy().unwrap().max_groups, 1);
    assert!(plan.privacy().unwrap().bounded.is_none());
}

#[test]
fn the_querier_side_must_not_be_tiny() {
    let plan = collaboration().plan("advertiser", AVG_SQL).unwrap();
    assert!(plan.check_querier_identifiers(3).is_ok());
    let refusal = plan.check_querier_identifiers(2).unwrap_err();
    assert_eq!(refusal.codes(), [ReasonCode::QuerierSetTooSmall]);
    assert!(refusal.to_string().contains("2 distinct identifiers"));
}

/// The publisher's and the advertiser's CSV rows.
fn header(columns: &[&str]) -> Vec<String> {
    columns.iter().map(|c| c.to_string()).collect()
}

fn rows(rows: &[&[&str]]) -> Vec<Vec<String>> {
    rows.iter()
        .map(|r| r.iter().map(|c| c.to_string()).collect())
        .collect()
}

/// Runs a plan through the real roles, with the plan's noise bounds, and returns the pairs the
/// matcher decided on (with their exact counts) and the receiver's outcome under `decide`.
fn run(
    plan: &Plan,
    impressions: &[Vec<String>],
    conversions: &[Vec<String>],
    decide: impl FnMut(&GroupCount) -> GroupDecision,
) -> (Vec<GroupCount>, ReceiverOutcome) {
    run_with(plan, impressions, conversions, true, decide)
}

/// [`run`], with the publisher's groups padded with dummies or not (padding only hides the
/// group sizes; unpadded runs are faster where a test does not look at sizes).
fn run_with(
    plan: &Plan,
    impressions: &[Vec<String>],
    conversions: &[Vec<String>],
    padded: bool,
    mut decide: impl FnMut(&GroupCount) -> GroupDecision,
) -> (Vec<GroupCount>, ReceiverOutcome) {
    let mt = plan
        .matcher_table(
            &header(&["email", "campaign"]),
            cleanroom_rules::text_rows(impressions.iter().cloned()),
        )
        .unwrap();
    let rt = plan
        .receiver_table(
            &header(&["email", "amount", "coupon"]),
            cleanroom_rules::text_rows(conversions.iter().cloned()),
        )
        .unwrap();
    let mut m = Matcher::new(&plan.domain(), mt, Limits::default())
        .require_receiver_identifiers(plan.min_release());
    let mut r = Receiver::new(&plan.domain(), rt, Limits::default());
    if let (Some(bounds), Some(privacy)) = (plan.noise_bounds(), plan.privacy()) {
        m = m.with_noise(bounds.clone());
        if padded {
            m = m.pad_groups(|| privacy.dummies());
        }
        r = r.with_noise(bounds).unwrap();
    }
    let mut seen = Vec::new();
    let mut released = false;
    while !r.is_finished() {
        while let Some(msg) = m.poll_message() {
            r.handle_message(AggregateMessage::decode(&msg.encode()).unwrap())
                .unwrap();
        }
        while let Some(msg) = r.poll_message() {
            m.handle_message(AggregateMessage::decode(&msg.encode()).unwrap())
                .unwrap();
        }
        if !released && m.counts().is_some() {
            m.release_with(
                |c| {
                    seen.push(c.clone());
                    decide(c)
                },
                |bounded| bounded,
            )
            .unwrap();
            released = true;
        }
    }
    (seen, r.open().unwrap())
}

#[test]
fn private_results_are_noisy_clamped_and_decoded() {
    let plan = collaboration().plan("advertiser", AVG_SQL).unwrap();
    let impressions = rows(&[
        &["a1@x.org", "spring"],
        &["a2@x.org", "spring"],
        &["a3@x.org", "spring"],
        &["a4@x.org", "autumn"],
    ]);
    // a1 spent 5000 over two rows: clamped to 1000 for the sum, counted once for the mean.
    let conversions = rows(&[
        &["a1@x.org", "2500", "y"],
        &["a1@x.org", "2500", ""],
        &["a2@x.org", "10", ""],
        &["a3@x.org", "20", ""],
        &["b@x.org", "999", ""],
    ]);
    let privacy = plan.privacy().unwrap().clone();
    let mut rng = StdRng::seed_from_u64(11);
    let (seen, outcome) = run(&plan, &impressions, &conversions, |c| {
        privacy.decide_with(c, plan.min_release(), &mut rng)
    });
    // Both campaigns are decided, whatever their counts.
    assert_eq!(seen.len(), 2);
    // Run the same draws again to know the noise that was added.
    let mut rng = StdRng::seed_from_u64(11);
    let decisions: Vec<GroupDecision> = seen
        .iter()
        .map(|c| privacy.decide_with(c, plan.min_release(), &mut rng))
        .collect();
    let result = plan.result(&outcome).unwrap();
    let mut released = 0;
    for (count, decision) in seen.iter().zip(&decisions) {
        let GroupDecision::Release {
            count_noise,
            sum_noise,
        } = decision
        else {
            continue;
        };
        released += 1;
        let group = outcome
            .groups
            .iter()
            .find(|g| g.matcher_group == count.matcher_group)
            .unwrap();
        let exact: [i64; 2] = if count.matcher_group.contains("spring") {
            [1030, 3]
        } else {
            [0, 0]
        };
        let expected_count = (count.intersection_size as i64 + count_noise).clamp(0, 4) as u64;
        assert_eq!(group.intersection_size, expected_count);
        for (i, sum) in group.sums.iter().enumerate() {
            assert_eq!(*sum, (exact[i] + sum_noise[i]).max(0) as u64);
        }
        assert!(expected_count >= plan.min_release());
    }
    assert_eq!(result.rows.len(), released);
    assert_eq!(result.suppressed_rows, 2 - released as u64);
    for row in &result.rows {
        // mean = noisy sum / noisy count (or NULL when the noisy count is 0).
        assert!(matches!(row[3], Value::Float(_) | Value::Null));
    }
}

#[test]
fn a_differencing_attack_learns_little_from_noisy_answers() {
    // The advertiser asks twice: over its customers S, then over S plus Alice, and guesses
    // that Alice is in the publisher's list when the count went up. Without privacy it is
    // always right; with ε = 1 per query (2 for the pair), no strategy can be right with
    // probability above e²/(1 + e²) ≈ 0.881, and this one is near 0.565 (scale 2: ε is split
    // between the publisher's group sizes and the count).
    let plan_private = collaboration()
        .plan(
            "advertiser",
            "SELECT COUNT(DISTINCT c.email) AS n FROM impressions i JOIN conversions c \
             ON i.email = c.email",
        )
        .unwrap();
    let customers: Vec<Vec<String>> = (0..10)
        .map(|i| vec![format!("c{i}@x.org"), "1".into(), String::new()])
        .collect();
    let with_alice: Vec<Vec<String>> = customers
        .iter()
        .cloned()
        .chain([vec!["alice@x.org".into(), "1".into(), String::new()]])
        .collect();
    let publisher = |alice: bool| -> Vec<Vec<String>> {
        let mut rows: Vec<Vec<String>> = (0..6)
            .map(|i| vec![format!("c{i}@x.org"), "spring".into()])
            .collect();
        if alice {
            rows.push(vec!["alice@x.org".into(), "spring".into()]);
        }
        rows
    };
    // The exact counts the matcher sees, from the real protocol.
    let exact = |alice: bool, querier: &[Vec<String>]| -> GroupCount {
        let (seen, _) = run(&plan_private, &publisher(alice), querier, |_| {
            GroupDecision::Suppress
        });
        assert_eq!(seen.len(), 1);
        seen[0].clone()
    };
    let privacy = plan_private.privacy().unwrap().clone();
    let mut rng = StdRng::seed_from_u64(12);
    // The noisy count the matcher releases, as PlanPrivacy::decide_with draws it.
    let mut released = |count: &GroupCount| -> i64 {
        count.intersection_size as i64
            + dp::sample_bounded(&mut rng, privacy.count.scale, privacy.count.bound)
    };
    let trials = 2000;
    let mut right = 0;
    for alice in [false, true] {
        let before = exact(alice, &customers);
        let after = exact(alice, &with_alice);
        assert_eq!(
            after.intersection_size - before.intersection_size,
            u64::from(alice),
            "exact answers reveal Alice"
        );
        for _ in 0..trials {
            let guess = released(&after) > released(&before);
            right += usize::from(guess == alice);
        }
    }
    let rate = right as f64 / (2 * trials) as f64;
    let bound = 2f64.exp() / (1.0 + 2f64.exp());
    assert!(
        rate < bound,
        "the attack is right {rate:.3} of the time, above the DP bound {bound:.3}"
    );
    assert!(rate < 0.75, "rate {rate:.3}");
}

#[test]
fn the_publishers_group_sizes_are_padded_with_noise() {
    // The querier learns the publisher's group sizes from the protocol; with privacy they are
    // the true size plus bound plus noise, so two filters differing by one person give
    // overlapping answers.
    let plan = collaboration().plan("advertiser", AVG_SQL).unwrap();
    let privacy = plan.privacy().unwrap();
    let bound = privacy.set_size.bound;
    assert_eq!(bound, 920, "46 scales of 20");
    let mut rng = StdRng::seed_from_u64(13);
    let draws: Vec<u64> = (0..20_000)
        .map(|_| privacy.dummies_with(&mut rng))
        .collect();
    assert!(draws.iter().all(|&d| d <= 2 * bound));
    let mean = draws.iter().sum::<u64>() as f64 / draws.len() as f64;
    // Noise of scale 20 has a standard deviation of about 28: the mean of 20,000 draws is
    // within 1 of the bound (5 standard errors).
    assert!((mean - bound as f64).abs() < 1.0, "mean {mean}");
    // A size of n and of n + 1 are both answered by many of the same announced sizes.
    let announced = |n: u64, rng: &mut StdRng| n + privacy.dummies_with(rng);
    let a: std::collections::HashSet<u64> = (0..2_000).map(|_| announced(40, &mut rng)).collect();
    let b: std::collections::HashSet<u64> = (0..2_000).map(|_| announced(41, &mut rng)).collect();
    assert!(a.intersection(&b).count() > 20);
}

// ------------------------------------------------------------ bounded contributions, measured

const COUNT_SUM_SQL: &str = "SELECT i.campaign, COUNT(DISTINCT c.email) AS n, \
                             SUM(c.amount) AS total FROM impressions i JOIN conversions c \
                             ON i.email = c.email GROUP BY i.campaign";

/// The publisher's rows: person `i` (of `people`) in `memberships(i)` of `campaigns`
/// campaigns; the advertiser's: every person with `i % 3 != 0`, with `amount(i)`.
fn several_campaigns(
    people: usize,
    campaigns: usize,
    memberships: impl Fn(usize) -> usize,
    amount: impl Fn(usize) -> u64,
) -> (Vec<Vec<String>>, Vec<Vec<String>>) {
    let mut impressions = Vec::new();
    let mut conversions = Vec::new();
    for i in 0..people {
        let email = format!("p{i}@x.org");
        for j in 0..memberships(i) {
            // A multiplicative hash spreads people evenly; steps of 7 keep a person's
            // campaigns distinct (12 and 40 campaigns, up to 6 each).
            let first = (i as u64).wrapping_mul(2_654_435_761) >> 7;
            let campaign = (first as usize + 7 * j) % campaigns;
            impressions.push(vec![email.clone(), format!("c{campaign:02}")]);
        }
        if i % 3 != 0 {
            conversions.push(vec![email, amount(i).to_string(), String::new()]);
        }
    }
    (impressions, conversions)
}

/// The exact answer, computed plainly: per campaign, matched people and their amounts, every
/// membership counted.
fn plain_answer(
    impressions: &[Vec<String>],
    conversions: &[Vec<String>],
) -> std::collections::BTreeMap<String, (u64, u64)> {
    let amounts: std::collections::HashMap<&str, u64> = conversions
        .iter()
        .map(|r| (r[0].as_str(), r[1].parse().unwrap()))
        .collect();
    let mut answer = std::collections::BTreeMap::new();
    for r in impressions {
        if let Some(a) = amounts.get(r[0].as_str()) {
            let e = answer.entry(format!("[\"{}\"]", r[1])).or_insert((0, 0));
            e.0 += 1;
            e.1 += a;
        }
    }
    answer
}

/// People in up to six campaigns with K = 4: every membership of a person in four or fewer
/// counts, and a person in more counts in exactly four, chosen at random (never the same four:
/// not by key order), and the matcher says how many people were bounded. Checked without noise
/// against a plain computation.
#[test]
fn contributions_are_bounded_to_k_campaigns_chosen_at_random() {
    let plan = collaboration().plan("advertiser", COUNT_SUM_SQL).unwrap();
    assert_eq!(plan.privacy().unwrap().max_groups, 4);
    let (impressions, conversions) =
        several_campaigns(600, 12, |i| 1 + i % 6, |i| 1 + i as u64 % 50);
    let zero = |_: &GroupCount| GroupDecision::Release {
        count_noise: 0,
        sum_noise: vec![0],
    };
    // Plainly: a matched person in c campaigns counts min(c, 4) times.
    let (mut count, mut sum) = (0u64, 0u64);
    for i in (0..600usize).filter(|i| i % 3 != 0) {
        let kept = (1 + i % 6).min(4) as u64;
        count += kept;
        sum += kept * (1 + i as u64 % 50);
    }
    let bounded = (0..600).filter(|i| 1 + i % 6 > 4).count() as u64;
    let mut kept_in = std::collections::BTreeMap::<String, u64>::new();
    for _ in 0..3 {
        let (seen, outcome) = run_with(&plan, &impressions, &conversions, false, zero);
        assert_eq!(seen.len(), 12, "every campaign decided");
        let result = plan.result(&outcome).unwrap();
        let released: Vec<(u64, u64)> = result
            .rows
            .iter()
            .map(|r| match (&r[1], &r[2]) {
                (Value::Integer(n), Value::Integer(s)) => (*n, *s),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(released.iter().map(|r| r.0).sum::<u64>(), count);
        assert_eq!(released.iter().map(|r| r.1).sum::<u64>(), sum);
        assert_eq!(result.bounded_identifiers, Some(bounded));
        for c in seen {
            *kept_in.entry(c.matcher_group).or_default() += c.intersection_size;
        }
    }
    // With the first four campaigns by key, a person in c00..c05's pattern would always lose
    // the same ones; at random every campaign keeps some of the bounded people's memberships,
    // and no campaign gets more than its plain count.
    let plain = plain_answer(&impressions, &conversions);
    for (campaign, (n, _)) in &plain {
        let kept = kept_in[campaign];
        assert!(
            kept <= 3 * n && kept >= 3 * n * 3 / 5,
            "{campaign}: {kept} of {}",
            3 * n
        );
    }
}

/// Many private runs against the exact answer, on data where people sit in up to K = 4
/// campaigns (so nothing is bounded): the errors of the counts and sums must follow the stated
/// discrete Laplace distribution (sensitivity K for counts, K·bound for sums, ε split over four
/// statistics). Fails when the scale is off by a factor 1.5 either way, when K is ignored
/// (scale 4 times too small) or when memberships are dropped (a bias).
#[test]
fn private_errors_follow_the_stated_noise() {
    let text = PRIVATE
        .replace("epsilon_per_query = 1.0", "epsilon_per_query = 2.0")
        .replace("amount = [0, 1000]", "amount = [0, 100]");
    let collaboration = Collaboration::from_toml_str(&text, "private.toml").unwrap();
    let plan = collaboration.plan("advertiser", COUNT_SUM_SQL).unwrap();
    let privacy = plan.privacy().unwrap().clone();
    // 4 statistics (sizes, counts, sums, bounded), ε = 2: counts 4·4/2 = 8, sums 100·4·4/2.
    assert_eq!(privacy.count.scale.as_f64(), 8.0);
    assert_eq!(privacy.sums[0].scale.as_f64(), 800.0);
    let (impressions, conversions) =
        several_campaigns(2400, 40, |i| 1 + i % 4, |i| 90 + i as u64 % 11);
    let plain = plain_answer(&impressions, &conversions);
    let mut rng = StdRng::seed_from_u64(2026);
    let (mut count_errors, mut sum_errors) = (Vec::new(), Vec::new());
    for _ in 0..30 {
        let (_, outcome) = run_with(&plan, &impressions, &conversions, false, |c| {
            privacy.decide_with(c, plan.min_release(), &mut rng)
        });
        for g in &outcome.groups {
            let (n, s) = plain[&g.matcher_group];
            count_errors.push(g.intersection_size as f64 - n as f64);
            sum_errors.push(g.sums[0] as f64 - s as f64);
        }
    }
    assert_eq!(
        count_errors.len(),
        30 * 40,
        "every campaign released every time"
    );
    for (errors, noise, what) in [
        (&count_errors, privacy.count, "count"),
        (&sum_errors, privacy.sums[0], "sum"),
    ] {
        let n = errors.len() as f64;
        let mean = errors.iter().sum::<f64>() / n;
        let variance = errors.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / n;
        // The discrete Laplace distribution of scale b: variance 2q/(1 − q)² with q = e^(−1/b).
        let variance_of = |b: f64| {
            let q = (-1.0 / b).exp();
            2.0 * q / (1.0 - q).powi(2)
        };
        let expected = variance_of(noise.scale.as_f64());
        // The relative standard error of a Laplace variance over 1,200 draws is about 6.5%;
        // a scale off by 1.5 moves the variance by a factor 2.25.
        let fits = |b: f64| (0.75..1.33).contains(&(variance / variance_of(b)));
        assert!(
            fits(noise.scale.as_f64()),
            "{what}: variance {variance:.1}, expected {expected:.1}"
        );
        // The same errors against a wrong scale fail: the test has the power to see it.
        for wrong in [1.5, 1.0 / 1.5, 0.25] {
            assert!(
                !fits(noise.scale.as_f64() * wrong),
                "{what}: scale x{wrong} not caught"
            );
        }
        // No bias: within 4 standard errors of 0.
        assert!(
            mean.abs() < 4.0 * (expected / n).sqrt(),
            "{what}: mean error {mean:.2}"
        );
        // The stated 95% interval holds about 95% of the errors.
        let within = errors
            .iter()
            .filter(|e| e.abs() <= noise.interval95() as f64)
            .count() as f64
            / n;
        assert!(
            (0.93..=0.975).contains(&within),
            "{what}: {within:.3} within ±95%"
        );
    }
}
