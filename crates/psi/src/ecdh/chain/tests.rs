//! Chain sessions run whole in-process: exact results against a plain computation, and the
//! querier bending what it relays.

use std::collections::{BTreeMap, HashSet};

use super::ChainMessage;
use super::run::{ChainParties, Direction};
use crate::ecdh::aggregate::{AggregateMessage, ProtocolError};
use crate::wire::WireMessage;
use crate::{
    Domain, GroupDecision, ListQuerierTable, MatcherTable, NoiseBounds, Normalization,
    ReceiverTable, chain_offline,
};

/// Who holds identifier `i` (0 ≤ i < 600): the querier (with a group and a value), each of
/// three filters, the matcher (with a group).
fn querier_holds(i: u64) -> Option<(String, u64)> {
    (i < 500).then(|| (format!("g{}", i % 3), i * 7 % 101))
}
fn filter_holds(j: usize, i: u64) -> bool {
    (i * (j as u64 + 3)) % 5 != 0 && i % (j as u64 + 7) != 1
}
fn matcher_holds(i: u64) -> Option<String> {
    (i >= 40).then(|| format!("m{}", i % 2))
}

fn tables(filters: usize) -> (ReceiverTable, Vec<ListQuerierTable>, MatcherTable) {
    let mut receiver = ReceiverTable::new(Normalization::Trim, 1).unwrap();
    let mut matcher = MatcherTable::new(Normalization::Trim);
    let mut sets: Vec<ListQuerierTable> = (0..filters)
        .map(|_| ListQuerierTable::new(Normalization::Trim))
        .collect();
    for i in 0..600u64 {
        let id = format!(" p{i} ");
        if let Some((group, value)) = querier_holds(i) {
            receiver.push(&group, &id, &[value]).unwrap();
        }
        for (j, set) in sets.iter_mut().enumerate() {
            if filter_holds(j, i) {
                set.push(&id);
            }
        }
        if let Some(group) = matcher_holds(i) {
            matcher.push(&group, &id).unwrap();
        }
    }
    (receiver, sets, matcher)
}

/// (matcher group, querier group) → (count, sum) over the identifiers every member holds.
fn plain(filters: usize) -> BTreeMap<(String, String), (u64, u64)> {
    let mut out = BTreeMap::new();
    for i in 0..600u64 {
        let (Some((g, v)), Some(m)) = (querier_holds(i), matcher_holds(i)) else {
            continue;
        };
        if (0..filters).all(|j| filter_holds(j, i)) {
            let e = out.entry((m, g)).or_insert((0, 0));
            e.0 += 1;
            e.1 += v;
        }
    }
    out
}

/// Per querier group, how many of its identifiers the first `j + 1` filters hold.
fn prefix(filters: usize) -> Vec<Vec<u64>> {
    (0..filters)
        .map(|j| {
            (0..3)
                .map(|g| {
                    (0..600u64)
                        .filter(|&i| querier_holds(i).is_some_and(|(q, _)| q == format!("g{g}")))
                        .filter(|&i| (0..=j).all(|f| filter_holds(f, i)))
                        .count() as u64
                })
                .collect()
        })
        .collect()
}

#[test]
fn three_four_and_five_members_count_and_sum_exactly() {
    let domain = Domain::new("collab", "email");
    for filters in 1..=3 {
        let (receiver, sets, matcher) = tables(filters);
        let report = chain_offline(&domain, receiver, sets, matcher, 1).unwrap();
        let got: BTreeMap<(String, String), (u64, u64)> = report
            .outcome
            .groups
            .iter()
            .map(|g| {
                (
                    (g.matcher_group.clone(), g.receiver_group.clone()),
                    (g.intersection_size, g.sums[0]),
                )
            })
            .collect();
        let expected = plain(filters);
        assert_eq!(got, expected, "{} members", filters + 2);
        assert!(
            expected.values().all(|&(n, _)| n > 10),
            "a meaningful fixture"
        );
        assert_eq!(
            report.filter_counts,
            prefix(filters),
            "{} members",
            filters + 2
        );
        // Fewer members than that would have matched more: the filters did filter.
        let total: u64 = expected.values().map(|&(n, _)| n).sum();
        let first: u64 = report.filter_counts[0].iter().sum();
        assert!(total < first);
    }
}

#[test]
fn the_release_threshold_holds_on_the_final_rows() {
    let domain = Domain::new("collab", "email");
    let (receiver, sets, matcher) = tables(2);
    let expected = plain(2);
    let threshold = expected.values().map(|&(n, _)| n).max().unwrap();
    let report = chain_offline(&domain, receiver, sets, matcher, threshold).unwrap();
    let released: Vec<u64> = report
        .outcome
        .groups
        .iter()
        .map(|g| g.intersection_size)
        .collect();
    let above: Vec<u64> = expected
        .values()
        .map(|&(n, _)| n)
        .filter(|&n| n >= threshold)
        .collect();
    assert_eq!(released, above);
    assert_eq!(report.outcome.suppressed_groups, 2 * 3 - above.len() as u64);
}

#[test]
fn an_empty_filter_leaves_nothing_to_release() {
    let domain = Domain::new("collab", "email");
    let (receiver, mut sets, matcher) = tables(2);
    sets[1] = ListQuerierTable::new(Normalization::Trim);
    let report = chain_offline(&domain, receiver, sets, matcher, 1).unwrap();
    assert!(report.outcome.groups.is_empty());
    assert_eq!(report.outcome.suppressed_groups, 6);
    assert_eq!(report.filter_counts[1], vec![0, 0, 0]);
}

/// `message` with the first candidate of its querier group 0 repeated in its second place, if
/// it is such a chunk of candidates; anything else unchanged (one group only, so that which
/// group a refusal names does not vary).
fn repeat_a_candidate(message: ChainMessage) -> ChainMessage {
    match message {
        ChainMessage::Aggregate(AggregateMessage::ReceiverItems {
            group: 0,
            value_columns,
            mut points,
            ciphertexts,
        }) => {
            points[1] = points[0];
            ChainMessage::Aggregate(AggregateMessage::ReceiverItems {
                group: 0,
                value_columns,
                points,
                ciphertexts,
            })
        }
        other => other,
    }
}

/// Runs a session of `filters` filters whose querier bends its messages with `wire`.
fn attacked(
    filters: usize,
    tables_of: impl FnOnce() -> (ReceiverTable, Vec<ListQuerierTable>, MatcherTable),
    wire: impl FnMut(Direction, ChainMessage) -> Vec<ChainMessage>,
) -> Result<(u64, u64), ProtocolError> {
    let domain = Domain::new("collab", "email");
    let (receiver, sets, matcher) = tables_of();
    assert_eq!(sets.len(), filters);
    let mut parties = ChainParties::new(&domain, receiver, sets, matcher, (|r| r, |m| m), false)?;
    parties.run(|m| m.matcher_mut().release(|_| true).map(drop), wire)
}

#[test]
fn a_querier_cannot_alter_replay_or_readdress_a_hop() {
    // Altered: one byte of the first hop to the second filter.
    let mut done = false;
    let altered = attacked(
        2,
        || tables(2),
        |direction, mut message| {
            if let (Direction::ToProvider(2), ChainMessage::Hop { sealed, .. }) =
                (direction, &mut message)
                && !done
            {
                done = true;
                sealed[40] ^= 1;
            }
            vec![message]
        },
    );
    assert!(matches!(altered, Err(ProtocolError::Hop(_))), "{altered:?}");

    // Replayed: the first hop to the matcher, delivered twice.
    let mut done = false;
    let replayed = attacked(
        2,
        || tables(2),
        |direction, message| {
            if direction == Direction::ToProvider(3) && !done {
                done = true;
                return vec![message.clone(), message];
            }
            vec![message]
        },
    );
    assert!(
        matches!(replayed, Err(ProtocolError::Hop(_))),
        "{replayed:?}"
    );

    // Dropped: the first hop to the matcher never arrives; the next one is out of sequence.
    let mut done = false;
    let dropped = attacked(
        2,
        || tables(2),
        |direction, message| {
            if direction == Direction::ToProvider(3) && !done {
                done = true;
                return vec![];
            }
            vec![message]
        },
    );
    assert!(matches!(dropped, Err(ProtocolError::Hop(_))), "{dropped:?}");

    // Readdressed: a hop for the second filter handed to the matcher.
    let readdressed = attacked(
        2,
        || tables(2),
        |direction, message| match (direction, message) {
            (Direction::ToProvider(2), ChainMessage::Hop { sealed, .. }) => {
                vec![ChainMessage::Hop { to: 3, sealed }]
            }
            (_, message) => vec![message],
        },
    );
    assert!(readdressed.is_err());
}

#[test]
fn a_querier_cannot_skip_a_filter() {
    // The querier's own candidates, sent unsealed to the matcher, are refused.
    let mut copy = Vec::new();
    let result = attacked(
        1,
        || tables(1),
        |direction, message| {
            if let ChainMessage::Aggregate(AggregateMessage::ReceiverItems { .. }) = &message {
                copy.push(message.clone());
            }
            if direction == Direction::ToProvider(2)
                && let Some(items) = copy.pop()
            {
                return vec![items, message];
            }
            vec![message]
        },
    );
    assert!(
        matches!(result, Err(ProtocolError::Unexpected { .. })),
        "{result:?}"
    );
    // Nor can a later filter be handed the querier's own messages.
    let result = attacked(
        2,
        || tables(2),
        |direction, message| match (direction, &message) {
            (Direction::ToProvider(1), ChainMessage::ChainHello { .. }) => {
                vec![message.clone()]
            }
            (Direction::ToProvider(2), _) => vec![ChainMessage::FilterHello { size: 1 }],
            _ => vec![message],
        },
    );
    assert!(result.is_err());
}

#[test]
fn a_querier_lying_about_a_filters_size_is_refused_by_that_filter() {
    let result = attacked(
        2,
        || tables(2),
        |direction, message| match (direction, message) {
            (Direction::ToProvider(1), ChainMessage::ChainHello { mut filter_sizes }) => {
                filter_sizes[1] += 1;
                vec![ChainMessage::ChainHello { filter_sizes }]
            }
            (_, message) => vec![message],
        },
    );
    assert!(
        matches!(result, Err(ProtocolError::ChainMismatch(_))),
        "{result:?}"
    );
}

/// A querier that repeats a candidate is refused by the first filter, the same way whether the
/// repeated identifier is in that filter's set or not: the refusal does not tell.
#[test]
fn a_repeated_candidate_is_refused_alike_whether_or_not_the_filter_holds_it() {
    let run = |held: bool| {
        let tables_of = move || {
            let (receiver, _, matcher) = tables(1);
            let mut set = ListQuerierTable::new(Normalization::Trim);
            if held {
                for i in 0..600 {
                    set.push(&format!("p{i}"));
                }
            } else {
                set.push("stranger");
            }
            (receiver, vec![set], matcher)
        };
        let mut seen = Vec::new();
        let result = attacked(1, tables_of, |direction, message| {
            let message = repeat_a_candidate(message);
            if let Direction::FromProvider(_) = direction {
                seen.push(message.kind());
            }
            vec![message]
        });
        (result, seen)
    };
    let (held, seen_held) = run(true);
    let (stranger, seen_stranger) = run(false);
    assert_eq!(held, Err(ProtocolError::DuplicateItem(0)));
    assert_eq!(held, stranger);
    // What reached the querier before the refusal has the same kinds in both cases (the set
    // sizes differ, as announced, and so does the number of chunks: compare the kinds seen).
    let kinds = |seen: &[&'static str]| seen.iter().copied().collect::<HashSet<&str>>();
    assert_eq!(kinds(&seen_held), kinds(&seen_stranger));
}

/// In a noisy session with several matcher groups, the last filter hands the matcher its
/// groups as points (the matcher removes its group keys before it compares): with every
/// decision exact, the result is still the plain one.
#[test]
fn a_noisy_matcher_with_several_groups_gets_points_and_counts_exactly() {
    let domain = Domain::new("collab", "email");
    for filters in 1..=2 {
        let (receiver, sets, matcher) = tables(filters);
        let bounds = NoiseBounds::new(vec![101]).unwrap();
        let mut parties = ChainParties::new(
            &domain,
            receiver,
            sets,
            matcher,
            (
                |r: crate::Receiver| r.with_noise(bounds.clone()).unwrap(),
                |m: crate::Matcher| m.with_noise(bounds.clone()),
            ),
            true,
        )
        .unwrap();
        parties
            .run(
                |m| {
                    m.matcher_mut()
                        .release_with(
                            |_| GroupDecision::Release {
                                count_noise: 0,
                                sum_noise: vec![0],
                            },
                            |b| b,
                        )
                        .map(drop)
                },
                |_, message| vec![message],
            )
            .unwrap();
        let outcome = parties.querier.open().unwrap();
        let got: BTreeMap<(String, String), (u64, u64)> = outcome
            .groups
            .iter()
            .map(|g| {
                (
                    (g.matcher_group.clone(), g.receiver_group.clone()),
                    (g.intersection_size, g.sums[0]),
                )
            })
            .collect();
        assert_eq!(got, plain(filters), "{} members", filters + 2);
    }
}

/// A filter that bends what it seals to the matcher (it knows its plaintext): here it repeats
/// one of the candidates it passes on. The matcher refuses the session alike whether or not it
/// holds that candidate's identifier: it checks repeats before it compares.
#[test]
fn a_filter_repeating_a_candidate_is_refused_by_the_matcher_alike() {
    use super::{HopInbox, HopSender};
    use crate::sealed::OpeningKey;
    let run = |matcher_holds_all: bool| {
        let domain = Domain::new("collab", "email");
        let (receiver, sets, _) = tables(1);
        let mut matcher = MatcherTable::new(Normalization::Trim);
        for i in 0..600u64 {
            let id = if matcher_holds_all { i } else { 10_000 + i };
            matcher.push("", &format!("p{id}")).unwrap();
        }
        let mut parties =
            ChainParties::new(&domain, receiver, sets, matcher, (|r| r, |m| m), false).unwrap();
        let (chain, secrets) = parties.keys.clone();
        // The filter's view of its own hops to the matcher: opened, bent, sealed again.
        let mut opened = HopInbox::new(2, OpeningKey::from_bytes(secrets[1]).unwrap());
        let mut sealer = HopSender::new(1);
        parties.run(
            |m| m.matcher_mut().release(|_| true).map(drop),
            |direction, message| match (direction, message) {
                (Direction::FromProvider(1), ChainMessage::Hop { to: 2, sealed }) => {
                    let inner = opened.open(&chain, 2, &sealed).unwrap();
                    vec![sealer.seal(&chain, &repeat_a_candidate(inner))]
                }
                (_, message) => vec![message],
            },
        )
    };
    let holds = run(true);
    let strangers = run(false);
    assert_eq!(holds, Err(ProtocolError::DuplicateItem(0)));
    assert_eq!(holds, strangers);
}

/// Padded filters (under privacy) announce their true size plus their dummies, and the result
/// is unchanged: a dummy matches no candidate.
#[test]
fn padded_filters_announce_more_and_release_the_same() {
    let domain = Domain::new("collab", "email");
    let (receiver, sets, matcher) = tables(2);
    let sizes: Vec<u64> = sets.iter().map(ListQuerierTable::distinct).collect();
    let mut parties =
        ChainParties::new(&domain, receiver, sets, matcher, (|r| r, |m| m), false).unwrap();
    parties.filters = std::mem::take(&mut parties.filters)
        .into_iter()
        .zip([17, 40])
        .map(|(f, dummies)| f.pad(dummies))
        .collect();
    let mut announced = Vec::new();
    parties
        .run(
            |m| m.matcher_mut().release(|_| true).map(drop),
            |_, message| {
                if let ChainMessage::FilterHello { size } = &message {
                    announced.push(*size);
                }
                vec![message]
            },
        )
        .unwrap();
    assert_eq!(announced, [sizes[0] + 17, sizes[1] + 40]);
    let outcome = parties.querier.open().unwrap();
    let got: BTreeMap<(String, String), (u64, u64)> = outcome
        .groups
        .iter()
        .map(|g| {
            (
                (g.matcher_group.clone(), g.receiver_group.clone()),
                (g.intersection_size, g.sums[0]),
            )
        })
        .collect();
    assert_eq!(got, plain(2));
    assert_eq!(parties.filters[0].counts(), prefix(2)[0]);
}
