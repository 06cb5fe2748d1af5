//! Noisy releases, contribution bounding and the receiver's minimum set size, through encoded
//! messages.

use cleanroom_psi::{
    AggregateMessage, Domain, GroupCount, GroupDecision, Limits, Matcher, MatcherTable,
    NoiseBounds, NoiseError, Normalization, ProtocolError, Receiver, ReceiverOutcome,
    ReceiverTable, WireMessage,
};

fn domain() -> Domain {
    Domain::new("noise-test", "email")
}

fn matcher_table(rows: &[(&str, &str)]) -> MatcherTable {
    let mut t = MatcherTable::new(Normalization::Email);
    for (g, id) in rows {
        t.push(g, id).unwrap();
    }
    t
}

fn receiver_table(rows: &[(&str, &str, &[u64])], columns: usize) -> ReceiverTable {
    let mut t = ReceiverTable::new(Normalization::Email, columns).unwrap();
    for (g, id, v) in rows {
        t.push(g, id, v).unwrap();
    }
    t
}

/// Runs both roles to the end through encoded messages; `decide` sees every pair the matcher
/// decides on.
fn run(
    mut m: Matcher,
    mut r: Receiver,
    mut decide: impl FnMut(&GroupCount) -> GroupDecision,
) -> Result<(ReceiverOutcome, Vec<GroupCount>), ProtocolError> {
    let mut seen = Vec::new();
    let mut released = false;
    while !r.is_finished() {
        let mut progressed = false;
        while let Some(msg) = m.poll_message() {
            r.handle_message(AggregateMessage::decode(&msg.encode())?)?;
            progressed = true;
        }
        while let Some(msg) = r.poll_message() {
            m.handle_message(AggregateMessage::decode(&msg.encode())?)?;
            progressed = true;
        }
        if !released && m.counts().is_some() {
            // The receiver is told the exact bounded count: tests read it there.
            m.release_with(
                |c| {
                    seen.push(c.clone());
                    decide(c)
                },
                |bounded| bounded,
            )?;
            released = true;
            progressed = true;
        }
        assert!(progressed, "stalled");
    }
    Ok((r.open().unwrap(), seen))
}

/// A decision that releases every pair without noise (`columns` value columns), so that the
/// counts and sums come out exactly.
fn without_noise(columns: usize) -> impl FnMut(&GroupCount) -> GroupDecision {
    move |_| GroupDecision::Release {
        count_noise: 0,
        sum_noise: vec![0; columns],
    }
}

#[test]
fn every_pair_is_decided_and_known_noise_comes_out_exactly() {
    // Matcher grouped by campaign; receiver ungrouped with one value column.
    let m = matcher_table(&[("a", "x1"), ("a", "x2"), ("b", "x3"), ("c", "nobody")]);
    let r = receiver_table(
        &[
            ("", "x1", &[10]),
            ("", "x2", &[20]),
            ("", "x3", &[5]),
            ("", "y", &[7]),
        ],
        1,
    );
    let bounds = NoiseBounds::new(vec![200_000]).unwrap();
    let matcher = Matcher::new(&domain(), m, Limits::default()).with_noise(bounds.clone());
    let receiver = Receiver::new(&domain(), r, Limits::default())
        .with_noise(bounds)
        .unwrap();
    let (outcome, seen) = run(matcher, receiver, |c| match c.matcher_group.as_str() {
        "a" => GroupDecision::Release {
            count_noise: 3,
            sum_noise: vec![-100_000],
        },
        "b" => GroupDecision::Release {
            count_noise: -1,
            sum_noise: vec![70_000],
        },
        _ => GroupDecision::Release {
            count_noise: 2,
            sum_noise: vec![-65_537],
        },
    })
    .unwrap();
    // Group "c" has no match and is decided all the same.
    let counts: Vec<(String, u64)> = seen
        .iter()
        .map(|c| (c.matcher_group.clone(), c.intersection_size))
        .collect();
    assert_eq!(counts, [("a".into(), 2), ("b".into(), 1), ("c".into(), 0)]);
    let got: Vec<(String, u64, Vec<u64>)> = outcome
        .groups
        .iter()
        .map(|g| (g.matcher_group.clone(), g.intersection_size, g.sums.clone()))
        .collect();
    assert_eq!(
        got,
        [
            // 2 + 3 = 5 exceeds the receiver's 4 identifiers: it reads 4. 30 - 100000 < 0: 0.
            ("a".into(), 4, vec![0]),
            ("b".into(), 0, vec![70_005]),
            ("c".into(), 2, vec![0]),
        ]
    );
    assert_eq!(outcome.suppressed_groups, 0);
}

#[test]
fn each_identifier_counts_in_at_most_k_pairs() {
    // x1 is in two matcher groups and two receiver groups, and the receiver sends "x2" in two
    // groups too. Without noise each copy counts; with noise an identifier counts in at most k
    // pairs of groups.
    let m = || matcher_table(&[("a", "x1"), ("b", "x1"), ("a", "x2"), ("b", "x3")]);
    let r = || {
        receiver_table(
            &[
                ("p", "x1", &[1]),
                ("q", "x1", &[1]),
                ("p", "x2", &[1]),
                ("q", "x2", &[1]),
                ("q", "x3", &[1]),
            ],
            1,
        )
    };
    let total = |outcome: &ReceiverOutcome| -> (u64, u64) {
        outcome
            .groups
            .iter()
            .fold((0, 0), |(c, s), g| (c + g.intersection_size, s + g.sums[0]))
    };
    let exact = run(
        Matcher::new(&domain(), m(), Limits::default()),
        Receiver::new(&domain(), r(), Limits::default()),
        |_| GroupDecision::EXACT,
    )
    .unwrap()
    .0;
    assert_eq!(total(&exact), (7, 7));
    assert_eq!(exact.bounded_identifiers, 0);

    let noisy = |k: u32| {
        let bounds = NoiseBounds::new(vec![10])
            .unwrap()
            .with_max_contributions(k)
            .unwrap();
        run(
            Matcher::new(&domain(), m(), Limits::default()).with_noise(bounds.clone()),
            Receiver::new(&domain(), r(), Limits::default())
                .with_noise(bounds)
                .unwrap(),
            without_noise(1),
        )
        .unwrap()
    };
    // k = 1: x1 is kept in one matcher group (1 bounded), and x1's and x2's comparison values
    // each match two receiver items of which one counts (2 bounded); x3 counts once.
    let (outcome, seen) = noisy(1);
    assert_eq!(total(&outcome), (3, 3));
    assert_eq!(outcome.bounded_identifiers, 3);
    assert_eq!(seen.len(), 4, "2 matcher groups x 2 receiver groups");
    assert_eq!(seen.iter().map(|c| c.intersection_size).sum::<u64>(), 3);
    // k = 2: nothing is over the bound, every copy counts as without noise.
    let (outcome, _) = noisy(2);
    assert_eq!(total(&outcome), (7, 7));
    assert_eq!(outcome.bounded_identifiers, 0);
}

#[test]
fn a_matcher_identifier_is_kept_in_k_of_its_groups_chosen_at_random() {
    // "many" is in five campaigns; with k = 2 it counts in two of them, and which two changes
    // from session to session (never the first two by key).
    let groups = ["c1", "c2", "c3", "c4", "c5"];
    let mut rows: Vec<(&str, &str)> = groups.iter().map(|g| (*g, "many")).collect();
    rows.push(("c1", "one"));
    let bounds = NoiseBounds::new(vec![])
        .unwrap()
        .with_max_contributions(2)
        .unwrap();
    let mut chosen = std::collections::BTreeMap::<String, u32>::new();
    for _ in 0..40 {
        let (outcome, seen) = run(
            Matcher::new(&domain(), matcher_table(&rows), Limits::default())
                .with_noise(bounds.clone()),
            Receiver::new(
                &domain(),
                receiver_table(&[("", "many", &[]), ("", "one", &[])], 0),
                Limits::default(),
            )
            .with_noise(bounds.clone())
            .unwrap(),
            without_noise(0),
        )
        .unwrap();
        assert_eq!(outcome.bounded_identifiers, 1);
        assert_eq!(seen.len(), 5);
        let many: u64 = seen.iter().map(|c| c.intersection_size).sum::<u64>() - 1;
        assert_eq!(many, 2, "kept in exactly two campaigns");
        for c in &seen {
            let own = c.intersection_size - u64::from(c.matcher_group == "c1");
            *chosen.entry(c.matcher_group.clone()).or_default() += own as u32;
        }
    }
    // 80 memberships over 5 campaigns: each is picked (about 16 times each).
    assert_eq!(chosen.values().sum::<u32>(), 80);
    assert!(chosen.values().all(|&n| n >= 3), "{chosen:?}");
}

#[test]
fn a_receiver_repeating_an_identifier_across_its_groups_is_bounded_by_k() {
    // A querier (receiver) puts "target" into 30 of its own groups, hoping to count it 30
    // times: the matcher counts it in k = 3 of them, chosen at random, and says one identifier
    // was bounded.
    let mut rows: Vec<(String, &str, &[u64])> = (0..30)
        .map(|g| (format!("g{g:02}"), "target", &[5u64][..]))
        .collect();
    rows.push(("g00".into(), "other", &[7]));
    let table = || {
        let mut t = ReceiverTable::new(Normalization::Email, 1).unwrap();
        for (g, id, v) in &rows {
            t.push(g, id, v).unwrap();
        }
        t
    };
    assert_eq!(table().identifiers_in_more_groups_than(3), 1);
    let bounds = NoiseBounds::new(vec![10])
        .unwrap()
        .with_max_contributions(3)
        .unwrap();
    for _ in 0..5 {
        let (outcome, seen) = run(
            Matcher::new(
                &domain(),
                matcher_table(&[("", "target"), ("", "other")]),
                Limits::default(),
            )
            .with_noise(bounds.clone()),
            Receiver::new(&domain(), table(), Limits::default())
                .with_noise(bounds.clone())
                .unwrap(),
            without_noise(1),
        )
        .unwrap();
        assert_eq!(seen.len(), 30, "every pair decided");
        assert_eq!(seen.iter().map(|c| c.intersection_size).sum::<u64>(), 3 + 1);
        let sums: u64 = outcome.groups.iter().map(|g| g.sums[0]).sum();
        assert_eq!(sums, 3 * 5 + 7);
        assert_eq!(outcome.bounded_identifiers, 1);
    }
}

#[test]
fn suppression_and_counts_without_sums() {
    let m = matcher_table(&[("", "x1"), ("", "x2")]);
    let r = receiver_table(&[("", "x1", &[]), ("", "x2", &[]), ("", "x3", &[])], 0);
    let bounds = NoiseBounds::new(vec![]).unwrap();
    let (outcome, _) = run(
        Matcher::new(&domain(), m, Limits::default()).with_noise(bounds.clone()),
        Receiver::new(&domain(), r, Limits::default())
            .with_noise(bounds)
            .unwrap(),
        |_| GroupDecision::Suppress,
    )
    .unwrap();
    assert!(outcome.groups.is_empty());
    assert_eq!(outcome.suppressed_groups, 1);
}

#[test]
fn noise_needs_bounds_and_stays_within_them() {
    let m = || matcher_table(&[("", "x1")]);
    let r = || receiver_table(&[("", "x1", &[3])], 1);
    // A matcher without noise bounds refuses to add noise.
    let err = run(
        Matcher::new(&domain(), m(), Limits::default()),
        Receiver::new(&domain(), r(), Limits::default()),
        |_| GroupDecision::Release {
            count_noise: 1,
            sum_noise: vec![],
        },
    )
    .unwrap_err();
    assert_eq!(err, ProtocolError::Noise(NoiseError::WithoutBounds));
    // Noise beyond the bound is refused.
    let bounds = NoiseBounds::new(vec![5]).unwrap();
    let err = run(
        Matcher::new(&domain(), m(), Limits::default()).with_noise(bounds.clone()),
        Receiver::new(&domain(), r(), Limits::default())
            .with_noise(bounds)
            .unwrap(),
        |_| GroupDecision::Release {
            count_noise: 0,
            sum_noise: vec![6],
        },
    )
    .unwrap_err();
    assert!(matches!(err, ProtocolError::Noise(_)), "{err}");
    // Bounds for another number of value columns: the receiver and the matcher both refuse.
    assert!(
        Receiver::new(&domain(), r(), Limits::default())
            .with_noise(NoiseBounds::new(vec![]).unwrap())
            .is_err()
    );
    let err = run(
        Matcher::new(&domain(), m(), Limits::default())
            .with_noise(NoiseBounds::new(vec![1, 1]).unwrap()),
        Receiver::new(&domain(), r(), Limits::default()),
        |_| GroupDecision::EXACT,
    )
    .unwrap_err();
    assert!(matches!(err, ProtocolError::ValueColumns { .. }), "{err}");
}

#[test]
fn a_tiny_receiver_set_is_refused_before_anything_is_matched() {
    let m = || matcher_table(&[("", "x1"), ("", "x2"), ("", "x3")]);
    // Two identifiers announced, three required: refused on the hello.
    let r = receiver_table(&[("", "x1", &[]), ("", "x2", &[])], 0);
    let err = run(
        Matcher::new(&domain(), m(), Limits::default()).require_receiver_identifiers(3),
        Receiver::new(&domain(), r, Limits::default()),
        |_| panic!("nothing may be decided"),
    )
    .unwrap_err();
    assert_eq!(
        err,
        ProtocolError::ReceiverSetTooSmall {
            identifiers: 2,
            required: 3
        }
    );
    // Three items announced in two groups, but only two distinct identifiers.
    let r = receiver_table(&[("p", "x1", &[]), ("q", "x1", &[]), ("q", "x2", &[])], 0);
    assert_eq!(r.distinct(), 3);
    assert_eq!(r.distinct_identifiers(), 2);
    let err = run(
        Matcher::new(&domain(), m(), Limits::default()).require_receiver_identifiers(3),
        Receiver::new(&domain(), r, Limits::default()),
        |_| panic!("nothing may be decided"),
    )
    .unwrap_err();
    assert_eq!(
        err,
        ProtocolError::ReceiverSetTooSmall {
            identifiers: 2,
            required: 3
        }
    );
    // Enough identifiers: the session runs.
    let r = receiver_table(&[("", "x1", &[]), ("", "x2", &[]), ("", "y", &[])], 0);
    let (outcome, _) = run(
        Matcher::new(&domain(), m(), Limits::default()).require_receiver_identifiers(3),
        Receiver::new(&domain(), r, Limits::default()),
        |_| GroupDecision::EXACT,
    )
    .unwrap();
    assert_eq!(outcome.groups[0].intersection_size, 2);
}

#[test]
fn receiver_totals_are_clamped_per_identifier() {
    let mut t = ReceiverTable::new(Normalization::Email, 2).unwrap();
    assert!(t.bound_totals(vec![(0, 10)]).is_err());
    assert!(t.bound_totals(vec![(5, 1), (0, 1)]).is_err());
    t.bound_totals(vec![(2, 100), (0, 1)]).unwrap();
    // x1's rows add up to 150 (clamped to 100) and 2 (clamped to 1); x2's to 0 (raised to 2).
    t.push("", "x1", &[u32::MAX as u64, 1]).unwrap();
    t.push("", "x1", &[u32::MAX as u64, 1]).unwrap();
    t.push("", "x2", &[0, 0]).unwrap();
    let m = matcher_table(&[("", "x1"), ("", "x2")]);
    let (outcome, _) = run(
        Matcher::new(&domain(), m, Limits::default()),
        Receiver::new(&domain(), t, Limits::default()),
        |_| GroupDecision::EXACT,
    )
    .unwrap();
    assert_eq!(outcome.groups[0].sums, vec![102, 1]);
}

#[test]
fn two_sessions_over_the_same_sets_share_no_blinded_value() {
    // Fresh keys every session: a querier who asks twice cannot link the blinded values (or
    // the tags) of one session to the other's.
    use cleanroom_psi::match_offline_observed;
    use std::collections::HashSet;
    let session = || {
        let m = matcher_table(&[("", "x1"), ("", "x2"), ("", "x3")]);
        let r = receiver_table(&[("", "x1", &[]), ("", "x2", &[]), ("", "y", &[])], 0);
        let mut seen: HashSet<Vec<u8>> = HashSet::new();
        let report = match_offline_observed(&domain(), m, r, 1, |message, _| match message {
            AggregateMessage::MatcherPoints { points, .. }
            | AggregateMessage::ReceiverItems { points, .. } => {
                seen.extend(points.iter().map(|p| p.0.to_vec()))
            }
            AggregateMessage::ReceiverTags { tags, .. } => {
                seen.extend(tags.iter().map(|t| t.as_u128().to_le_bytes().to_vec()))
            }
            _ => {}
        })
        .unwrap();
        assert_eq!(report.outcome.groups[0].intersection_size, 2);
        seen
    };
    let (first, second) = (session(), session());
    assert_eq!(first.len(), 9, "3 + 3 points and 3 tags");
    assert!(first.is_disjoint(&second));
}

#[test]
fn padded_groups_hide_their_sizes_and_match_nothing() {
    // The matcher's two groups padded with 40 and 7 dummies; x1 is in both groups and kept in
    // one of them (k = 1). The receiver learns the padded sizes; the counts are the true ones.
    let m = matcher_table(&[("a", "x1"), ("a", "x2"), ("b", "x1"), ("b", "x3")]);
    let r = receiver_table(&[("", "x1", &[]), ("", "x2", &[]), ("", "x3", &[])], 0);
    let bounds = NoiseBounds::new(vec![]).unwrap();
    let mut pads = [40u64, 7].into_iter();
    let mut m = Matcher::new(&domain(), m, Limits::default())
        .with_noise(bounds.clone())
        .pad_groups(|| pads.next().unwrap());
    let Some(AggregateMessage::MatcherHello { group_sizes }) = m.poll_message() else {
        panic!("the matcher starts with its hello")
    };
    assert!(
        group_sizes == [2 + 40, 1 + 7] || group_sizes == [1 + 40, 2 + 7],
        "x1 once: {group_sizes:?}"
    );
    let expected: Vec<u64> = vec![group_sizes[0] - 40, group_sizes[1] - 7];
    let mut r = Receiver::new(&domain(), r, Limits::default())
        .with_noise(bounds)
        .unwrap();
    // The hello was taken above: hand it to the receiver first.
    r.handle_message(AggregateMessage::MatcherHello { group_sizes })
        .unwrap();
    let (outcome, seen) = run(m, r, |_| GroupDecision::Release {
        count_noise: 0,
        sum_noise: vec![],
    })
    .unwrap();
    let counts: Vec<u64> = seen.iter().map(|c| c.intersection_size).collect();
    assert_eq!(counts, expected);
    assert_eq!(outcome.groups.len(), 2);
}

#[test]
fn an_empty_group_is_announced_and_decided() {
    // No row passed the matcher's filters: with noise its one group is announced all the same
    // (padded), and decided.
    let mut m = MatcherTable::new(Normalization::Email);
    m.ensure_group("").unwrap();
    let r = receiver_table(&[("", "x1", &[]), ("", "x2", &[])], 0);
    let bounds = NoiseBounds::new(vec![]).unwrap();
    for pad in [0u64, 5] {
        let (outcome, seen) = run(
            Matcher::new(&domain(), m.clone(), Limits::default())
                .with_noise(bounds.clone())
                .pad_groups(|| pad),
            Receiver::new(&domain(), r.clone(), Limits::default())
                .with_noise(bounds.clone())
                .unwrap(),
            |_| GroupDecision::Release {
                count_noise: 3,
                sum_noise: vec![],
            },
        )
        .unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].intersection_size, 0);
        assert_eq!(
            outcome.groups[0].intersection_size, 2,
            "3 read as the group's 2"
        );
    }
}

// ------------------------------------------------------------------ proven value ranges

use cleanroom_psi::elgamal::ValueKey;
use cleanroom_psi::range_proof::{ValueRange, encrypt_and_prove};

fn range(hi: u64) -> Vec<ValueRange> {
    vec![ValueRange::new(0, hi).unwrap()]
}

/// With proven ranges, an honest receiver's chunks verify and the sums come out exactly (zero
/// noise); values above the bound are clamped into it before they are encrypted.
#[test]
fn proven_ranges_verify_and_sum_exactly() {
    let m = matcher_table(&[("", "x1"), ("", "x2"), ("", "x3")]);
    let r = receiver_table(&[("", "x1", &[10]), ("", "x2", &[900]), ("", "y", &[7])], 1);
    let bounds = NoiseBounds::new(vec![100]).unwrap();
    let m = Matcher::new(&domain(), m, Limits::default())
        .with_noise(bounds.clone())
        .require_range_proofs(range(100));
    let r = Receiver::new(&domain(), r, Limits::default())
        .with_noise(bounds)
        .unwrap()
        .with_range_proofs(range(100))
        .unwrap();
    let (outcome, _) = run(m, r, |_| GroupDecision::Release {
        count_noise: 0,
        sum_noise: vec![0],
    })
    .unwrap();
    assert_eq!(outcome.groups.len(), 1);
    assert_eq!(outcome.groups[0].intersection_size, 2);
    assert_eq!(outcome.groups[0].sums, [10 + 100]);
}

/// A receiver that sends plain items where proofs are required is refused on its first chunk,
/// before anything is matched, and so is one that sends proofs nobody asked for.
#[test]
fn items_without_the_required_proofs_are_refused() {
    let table = || receiver_table(&[("", "x1", &[10]), ("", "x2", &[20])], 1);
    let bounds = NoiseBounds::new(vec![100]).unwrap();
    let proving = Matcher::new(&domain(), matcher_table(&[("", "x1")]), Limits::default())
        .with_noise(bounds.clone())
        .require_range_proofs(range(100));
    let plain = Receiver::new(&domain(), table(), Limits::default())
        .with_noise(bounds.clone())
        .unwrap();
    let err = run(proving, plain, |_| GroupDecision::Suppress).unwrap_err();
    assert!(
        matches!(
            err,
            ProtocolError::Unexpected {
                got: "ReceiverItems",
                ..
            }
        ),
        "{err:?}"
    );
    let trusting = Matcher::new(&domain(), matcher_table(&[("", "x1")]), Limits::default())
        .with_noise(bounds.clone());
    let proven = Receiver::new(&domain(), table(), Limits::default())
        .with_noise(bounds)
        .unwrap()
        .with_range_proofs(range(100))
        .unwrap();
    let err = run(trusting, proven, |_| GroupDecision::Suppress).unwrap_err();
    assert!(
        matches!(
            err,
            ProtocolError::Unexpected {
                got: "ReceiverProvenItems",
                ..
            }
        ),
        "{err:?}"
    );
}

/// The attack of a querier that encrypts a value beyond its declared range (a flag at bit 16+i
/// to read membership out of one noisy sum): whatever proof it attaches, the matcher refuses the
/// chunk on arrival, with the same error whether the target is the matcher's or not.
#[test]
fn a_value_beyond_its_range_is_refused_on_arrival_member_or_not() {
    let bounds = NoiseBounds::new(vec![100]).unwrap();
    let attempt = |matcher_ids: &[(&str, &str)]| {
        let mut m = Matcher::new(&domain(), matcher_table(matcher_ids), Limits::default())
            .with_noise(bounds.clone())
            .require_range_proofs(range(100));
        let mut r = Receiver::new(
            &domain(),
            receiver_table(&[("", "target", &[1]), ("", "other", &[2])], 1),
            Limits::default(),
        )
        .with_noise(bounds.clone())
        .unwrap()
        .with_range_proofs(range(100))
        .unwrap();
        while m.poll_message().is_some() {}
        let hello = r.poll_message().unwrap();
        let AggregateMessage::ReceiverHello { value_keys, .. } = &hello else {
            panic!("hello first")
        };
        assert_eq!(value_keys.len(), 2);
        m.handle_message(hello.clone()).unwrap();
        let Some(AggregateMessage::ReceiverProvenItems {
            group,
            value_columns,
            points,
            ..
        }) = r.poll_message()
        else {
            panic!("proven items")
        };
        // The attacker's own keys: it encrypts 1 + 2^17 for the target and proves what it can
        // (the prover refuses an out-of-range value, so it proves an in-range one and swaps
        // the ciphertext in).
        let key = ValueKey::generate(1);
        let honest: Vec<&[u64]> = vec![&[1], &[2]];
        let (_, proof) = encrypt_and_prove(&key, &range(100), &honest, b"any").unwrap();
        let flagged = key.encrypt_to_bytes(&[vec![1 + (1 << 17)], vec![2]]);
        let hello = AggregateMessage::ReceiverHello {
            value_keys: key.public_key().to_bytes(),
            group_sizes: vec![2],
        };
        let mut m2 = Matcher::new(&domain(), matcher_table(matcher_ids), Limits::default())
            .with_noise(bounds.clone())
            .require_range_proofs(range(100));
        while m2.poll_message().is_some() {}
        m2.handle_message(hello).unwrap();
        let err = m2
            .handle_message(AggregateMessage::ReceiverProvenItems {
                group,
                value_columns,
                points,
                ciphertexts: flagged,
                proof: proof.to_bytes(),
            })
            .unwrap_err();
        format!("{err:?}")
    };
    let member = attempt(&[("", "target"), ("", "x")]);
    let non_member = attempt(&[("", "nobody"), ("", "x")]);
    assert!(member.contains("RangeProof"), "{member}");
    assert_eq!(member, non_member);
}

/// With noise and several matcher groups, each group is blinded by a key of its own: an
/// identifier kept in two groups is sent as two unrelated points, so the receiver cannot count
/// the identifiers two groups share (without noise it can, and PROTOCOL.md 9 says so). The
/// receiver answers with its re-blinded points, which the matcher turns into tags; plain tags
/// are refused in such a session.
#[test]
fn a_noisy_matchers_groups_share_no_point() {
    let rows = [("a", "x1"), ("b", "x1"), ("a", "x2"), ("b", "x3")];
    let points_of = |m: &mut Matcher| {
        let mut groups: Vec<Vec<[u8; 32]>> = Vec::new();
        while let Some(message) = m.poll_message() {
            match message {
                AggregateMessage::MatcherHello { group_sizes } => {
                    groups = vec![Vec::new(); group_sizes.len()]
                }
                AggregateMessage::MatcherPoints { group, points } => {
                    groups[group as usize].extend(points.iter().map(|p| p.0))
                }
                other => panic!("unexpected {}", other.kind()),
            }
        }
        groups
    };
    let shared =
        |groups: &[Vec<[u8; 32]>]| groups[0].iter().filter(|p| groups[1].contains(p)).count();
    let exact = points_of(&mut Matcher::new(
        &domain(),
        matcher_table(&rows),
        Limits::default(),
    ));
    assert_eq!(shared(&exact), 1, "x1, seen in both groups");
    let bounds = NoiseBounds::new(vec![])
        .unwrap()
        .with_max_contributions(2)
        .unwrap();
    let noisy = points_of(
        &mut Matcher::new(&domain(), matcher_table(&rows), Limits::default())
            .with_noise(bounds.clone()),
    );
    assert_eq!(
        noisy.iter().map(Vec::len).sum::<usize>(),
        4,
        "x1 kept in both"
    );
    assert_eq!(shared(&noisy), 0);

    // The whole session still counts x1 in both groups.
    let receiver = || {
        Receiver::new(
            &domain(),
            receiver_table(&[("", "x1", &[]), ("", "x3", &[])], 0),
            Limits::default(),
        )
        .with_noise(bounds.clone())
        .unwrap()
    };
    let (_, seen) = run(
        Matcher::new(&domain(), matcher_table(&rows), Limits::default()).with_noise(bounds.clone()),
        receiver(),
        without_noise(0),
    )
    .unwrap();
    let counts: Vec<u64> = seen.iter().map(|c| c.intersection_size).collect();
    assert_eq!(counts, [1, 2]);

    // A receiver that answers with plain tags is refused.
    let mut m =
        Matcher::new(&domain(), matcher_table(&rows), Limits::default()).with_noise(bounds.clone());
    let mut r = Receiver::new(
        &domain(),
        receiver_table(&[("", "x1", &[]), ("", "x3", &[])], 0),
        Limits::default(),
    );
    let mut refused = None;
    'session: for _ in 0..10 {
        while let Some(msg) = m.poll_message() {
            r.handle_message(msg).unwrap();
        }
        while let Some(msg) = r.poll_message() {
            if let Err(e) = m.handle_message(msg) {
                refused = Some(e);
                break 'session;
            }
        }
    }
    assert!(
        matches!(
            refused,
            Some(ProtocolError::Unexpected {
                got: "ReceiverTags",
                ..
            })
        ),
        "{refused:?}"
    );
}
