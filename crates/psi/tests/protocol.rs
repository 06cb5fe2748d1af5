//! Protocol results against a plain computation, through encoded messages.

use cleanroom_psi::{
    Domain, GroupResult, MatcherTable, Normalization, ReceiverTable, match_offline,
    match_offline_bucketed, match_offline_observed,
};
use proptest::prelude::*;
use std::collections::{BTreeMap, HashMap, HashSet};

/// A row of the matcher: (group, raw identifier).
type MRow = (String, String);
/// A row of the receiver: (group, raw identifier, values).
type RRow = (String, String, Vec<u64>);

/// The plain answer: per (matcher group, receiver group), distinct matches and value sums.
fn plain(
    norm: Normalization,
    m: &[MRow],
    r: &[RRow],
    columns: usize,
) -> BTreeMap<(String, String), (u64, Vec<u64>)> {
    let mut mgroups: BTreeMap<&str, HashSet<String>> = BTreeMap::new();
    for (g, id) in m {
        if let Some(id) = norm.apply(id) {
            mgroups.entry(g).or_default().insert(id);
        }
    }
    let mut rgroups: BTreeMap<&str, HashMap<String, Vec<u64>>> = BTreeMap::new();
    for (g, id, v) in r {
        if let Some(id) = norm.apply(id) {
            let e = rgroups
                .entry(g)
                .or_default()
                .entry(id)
                .or_insert(vec![0; columns]);
            for (t, x) in e.iter_mut().zip(v) {
                *t += x;
            }
        }
    }
    let mut out = BTreeMap::new();
    for (mg, mset) in &mgroups {
        for (rg, ritems) in &rgroups {
            let mut count = 0;
            let mut sums = vec![0u64; columns];
            for (id, v) in ritems {
                if mset.contains(id) {
                    count += 1;
                    for (s, x) in sums.iter_mut().zip(v) {
                        *s += x;
                    }
                }
            }
            if count > 0 {
                out.insert((mg.to_string(), rg.to_string()), (count, sums));
            }
        }
    }
    out
}

fn tables(
    norm: Normalization,
    m: &[MRow],
    r: &[RRow],
    columns: usize,
) -> (MatcherTable, ReceiverTable) {
    let mut mt = MatcherTable::new(norm);
    for (g, id) in m {
        mt.push(g, id).unwrap();
    }
    let mut rt = ReceiverTable::new(norm, columns).unwrap();
    for (g, id, v) in r {
        rt.push(g, id, &v[..columns]).unwrap();
    }
    (mt, rt)
}

fn run(
    norm: Normalization,
    m: &[MRow],
    r: &[RRow],
    columns: usize,
    min_release: u64,
) -> (Vec<GroupResult>, u64) {
    let (mt, rt) = tables(norm, m, r, columns);
    let report = match_offline(&Domain::new("test-collab", "email"), mt, rt, min_release).unwrap();
    (report.outcome.groups, report.outcome.suppressed_groups)
}

fn check(norm: Normalization, m: &[MRow], r: &[RRow], columns: usize, min_release: u64) {
    let outcome = run(norm, m, r, columns, min_release);
    check_outcome(norm, m, r, columns, min_release, outcome);
}

/// The same session as a job of `buckets` buckets ([`match_offline_bucketed`]).
fn run_bucketed(
    norm: Normalization,
    m: &[MRow],
    r: &[RRow],
    columns: usize,
    min_release: u64,
    buckets: u32,
) -> (Vec<GroupResult>, u64) {
    let (mt, rt) = tables(norm, m, r, columns);
    let report = match_offline_bucketed(
        &Domain::new("test-collab", "email"),
        mt,
        rt,
        min_release,
        buckets,
    )
    .unwrap();
    (report.outcome.groups, report.outcome.suppressed_groups)
}

/// Checks a run's released groups and suppressed count against the plain computation.
fn check_outcome(
    norm: Normalization,
    m: &[MRow],
    r: &[RRow],
    columns: usize,
    min_release: u64,
    (groups, suppressed): (Vec<GroupResult>, u64),
) {
    let expected = plain(norm, m, r, columns);
    let got: BTreeMap<(String, String), (u64, Vec<u64>)> = groups
        .into_iter()
        .map(|g| {
            (
                (g.matcher_group, g.receiver_group),
                (g.intersection_size, g.sums),
            )
        })
        .collect();
    let released: BTreeMap<_, _> = expected
        .iter()
        .filter(|(_, (c, _))| *c >= min_release)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(got, released);
    // Every announced pair that is not released counts as suppressed, matched or not.
    let groups = |keys: Vec<&str>| keys.into_iter().collect::<HashSet<_>>().len();
    let announced = groups(
        m.iter()
            .filter(|(_, id)| norm.apply(id).is_some())
            .map(|(g, _)| g.as_str())
            .collect(),
    ) * groups(
        r.iter()
            .filter(|(_, id, _)| norm.apply(id).is_some())
            .map(|(g, _, _)| g.as_str())
            .collect(),
    );
    assert_eq!(suppressed, (announced - released.len()) as u64);
}

fn rows_m(ids: &[&str]) -> Vec<MRow> {
    ids.iter()
        .map(|id| (String::new(), id.to_string()))
        .collect()
}

fn rows_r(ids: &[(&str, u64)]) -> Vec<RRow> {
    ids.iter()
        .map(|(id, v)| (String::new(), id.to_string(), vec![*v]))
        .collect()
}

#[test]
fn cardinality_with_case_whitespace_and_duplicates() {
    let m = rows_m(&[
        "A@x.com", "b@x.com", " a@x.com", "c@x.com", "   ", "d@x.com",
    ]);
    let r = rows_r(&[
        ("a@X.com", 1),
        ("B@x.com ", 2),
        ("b@x.com", 3),
        ("e@x.com", 4),
        ("", 5),
    ]);
    let (groups, suppressed) = run(Normalization::Email, &m, &r, 0, 1);
    assert_eq!(suppressed, 0);
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].intersection_size, 2);
    assert!(groups[0].sums.is_empty());
}

#[test]
fn sum_adds_every_matching_receiver_row() {
    let m = rows_m(&["a", "b", "c"]);
    let r = rows_r(&[("a", 10), ("a", 5), ("b", 7), ("z", 1000)]);
    let (groups, _) = run(Normalization::Trim, &m, &r, 1, 1);
    assert_eq!(groups[0].intersection_size, 2);
    assert_eq!(groups[0].sums, vec![22]);
}

#[test]
fn empty_disjoint_and_identical_sets() {
    let some = rows_m(&["a", "b", "c"]);
    // Empty on either side: nothing matches, nothing is released.
    assert_eq!(
        run(Normalization::None, &[], &rows_r(&[("a", 1)]), 1, 1),
        (vec![], 0)
    );
    assert_eq!(run(Normalization::None, &some, &[], 1, 1), (vec![], 0));
    assert_eq!(run(Normalization::None, &[], &[], 0, 1), (vec![], 0));
    // Disjoint: the one pair of groups is announced, and not released.
    assert_eq!(
        run(
            Normalization::None,
            &some,
            &rows_r(&[("x", 1), ("y", 2)]),
            1,
            1
        ),
        (vec![], 1)
    );
    // Identical.
    let (groups, _) = run(
        Normalization::None,
        &some,
        &rows_r(&[("a", 1), ("b", 2), ("c", 3)]),
        1,
        1,
    );
    assert_eq!(
        (groups[0].intersection_size, groups[0].sums.clone()),
        (3, vec![6])
    );
}

#[test]
fn groups_on_both_sides_with_semi_join_semantics() {
    let m: Vec<MRow> = [
        ("spring", "a"),
        ("spring", "b"),
        ("fall", "b"),
        ("fall", "c"),
        ("fall", "a"),
    ]
    .iter()
    .map(|(g, id)| (g.to_string(), id.to_string()))
    .collect();
    let r: Vec<RRow> = [
        ("north", "a", 1),
        ("north", "b", 2),
        ("south", "c", 4),
        ("south", "b", 8),
    ]
    .iter()
    .map(|(g, id, v)| (g.to_string(), id.to_string(), vec![*v, 1]))
    .collect();
    check(Normalization::None, &m, &r, 2, 1);
    let (groups, _) = run(Normalization::None, &m, &r, 2, 1);
    let fall_south = groups
        .iter()
        .find(|g| g.matcher_group == "fall" && g.receiver_group == "south")
        .unwrap();
    assert_eq!(
        (fall_south.intersection_size, fall_south.sums.clone()),
        (2, vec![12, 2])
    );
}

#[test]
fn threshold_suppresses_small_groups() {
    let mut m = Vec::new();
    let mut r = Vec::new();
    for i in 0..30 {
        m.push((
            if i < 25 { "big" } else { "small" }.to_string(),
            format!("id{i}"),
        ));
        r.push((String::new(), format!("id{i}"), vec![i as u64]));
    }
    check(Normalization::None, &m, &r, 1, 10);
    let (groups, suppressed) = run(Normalization::None, &m, &r, 1, 10);
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].matcher_group, "big");
    assert_eq!(groups[0].sums, vec![(0..25).sum::<u64>()]);
    assert_eq!(suppressed, 1);
}

#[test]
fn large_sets_span_many_chunks() {
    // More than one chunk per side (CHUNK_ITEMS = 8192), random overlap.
    let m: Vec<MRow> = (0..20_000)
        .map(|i| (String::new(), format!("user{}@ex.com", i * 3)))
        .collect();
    let r: Vec<RRow> = (0..15_000)
        .map(|i| {
            (
                String::new(),
                format!("USER{}@ex.com", i * 2),
                vec![i as u64 % 977],
            )
        })
        .collect();
    check(Normalization::Email, &m, &r, 1, 1);
}

#[test]
fn transcript_reveals_no_identifier_nor_unkeyed_hash() {
    let ids: Vec<String> = (0..300).map(|i| format!("person{i}@example.com")).collect();
    let domain = Domain::new("test-collab", "email");
    let mut mt = MatcherTable::new(Normalization::Email);
    let mut rt = ReceiverTable::new(Normalization::Email, 1).unwrap();
    for (i, id) in ids.iter().enumerate() {
        mt.push("g", &id.to_uppercase()).unwrap();
        if i % 2 == 0 {
            rt.push("", id, &[i as u64]).unwrap();
        }
    }
    let mut transcript = Vec::new();
    let report =
        match_offline_observed(&domain, mt, rt, 1, |_, m| transcript.extend_from_slice(m)).unwrap();
    assert_eq!(report.outcome.groups[0].intersection_size, 150);
    let contains = |needle: &[u8]| transcript.windows(needle.len()).any(|w| w == needle);
    for id in &ids {
        assert!(!contains(id.as_bytes()), "raw identifier on the wire");
        assert!(
            !contains(id.to_uppercase().as_bytes()),
            "raw identifier on the wire"
        );
        let h = domain.hash_bytes(id);
        assert!(!contains(&h[..16]), "unkeyed hash on the wire");
        let p = domain.hash_to_group(id).compress().to_bytes();
        assert!(!contains(&p[..16]), "unblinded point on the wire");
        let p2 = (domain.hash_to_group(id) + domain.hash_to_group(id))
            .compress()
            .to_bytes();
        assert!(!contains(&p2[..16]), "unblinded doubled point on the wire");
    }
}

fn arb_rows() -> impl Strategy<Value = (Vec<MRow>, Vec<RRow>)> {
    let id = (0u8..40).prop_map(|i| format!(" User{i}@Mail.com"));
    let group = prop::sample::select(vec!["", "g1", "g2"]).prop_map(str::to_string);
    let m = prop::collection::vec((group.clone(), id.clone()), 0..60);
    let r = prop::collection::vec(
        (group, id, (0u64..1_000_000).prop_map(|v| vec![v, 1])),
        0..60,
    );
    (m, r)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn protocol_equals_plain_computation((m, r) in arb_rows(), threshold in 1u64..4) {
        check(Normalization::Email, &m, &r, 2, threshold);
    }

    /// A job of buckets releases exactly what one session over the whole sets does: the
    /// buckets' intersections are disjoint, their counts and encrypted sums add up, and the
    /// threshold applies once, to the totals (a pair under it in every bucket can pass it).
    #[test]
    fn a_job_of_buckets_equals_one_session((m, r) in arb_rows(), threshold in 1u64..4, buckets in 1u32..9) {
        let outcome = run_bucketed(Normalization::Email, &m, &r, 2, threshold, buckets);
        check_outcome(Normalization::Email, &m, &r, 2, threshold, outcome);
    }
}

#[test]
fn a_job_releases_pairs_that_no_single_bucket_would() {
    // 40 shared identifiers in 8 buckets: about 5 per bucket, under a threshold of 30, yet
    // 40 in all.
    let m: Vec<MRow> = (0..40)
        .map(|i| (String::new(), format!("u{i}@x.com")))
        .collect();
    let r: Vec<RRow> = (0..40)
        .map(|i| (String::new(), format!("u{i}@x.com"), vec![i, 1]))
        .collect();
    let (groups, suppressed) = run_bucketed(Normalization::Email, &m, &r, 2, 30, 8);
    assert_eq!(suppressed, 0);
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].intersection_size, 40);
    assert_eq!(groups[0].sums, vec![(0..40).sum::<u64>(), 40]);
}
