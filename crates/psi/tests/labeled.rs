//! The list protocol end to end: exact rows against a plain join, chunking, what crosses the
//! wire, and every refusal of a peer that deviates.

use cleanroom_psi::ecdh::list::{AEAD_TAG_BYTES, PAD_BLOCK};
use cleanroom_psi::wire::{CHUNK_ITEMS, PointBytes, Tag, WireError};
use cleanroom_psi::{
    AggregateMessage, Domain, InputError, Limits, ListMatch, ListMessage, ListOutcome,
    ListProvider, ListProviderTable, ListQuerier, ListQuerierTable, Normalization, ProtocolError,
    WireMessage, list_offline, list_offline_observed,
};
use curve25519_dalek::RistrettoPoint;
use std::collections::BTreeMap;

/// A small deterministic generator (64-bit LCG), so failures reproduce.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// An email as messy data has it: random case and surrounding spaces.
fn noisy(rng: &mut Lcg, id: u64) -> String {
    let base = format!("customer{id}@example.com");
    let cased: String = base
        .chars()
        .map(|c| {
            if rng.below(3) == 0 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect();
    let pad = |rng: &mut Lcg| " ".repeat(rng.below(3) as usize);
    format!("{}{cased}{}", pad(rng), pad(rng))
}

/// CSV-like rows: identifier, region, tier, secret. Only region and tier are list columns.
type Row = [String; 4];

fn provider_rows(rng: &mut Lcg, ids: u64, rows: usize) -> Vec<Row> {
    (0..rows)
        .map(|i| {
            let id = rng.below(ids);
            [
                noisy(rng, id),
                ["north", "south", "", "east"][rng.below(4) as usize].to_owned(),
                format!("tier-{}", rng.below(3)),
                format!("SECRET-{i:06}"),
            ]
        })
        .collect()
}

fn querier_ids(rng: &mut Lcg, ids: u64, rows: usize) -> Vec<String> {
    (0..rows)
        .map(|_| match rng.below(50) {
            0 => "   ".to_owned(),
            _ => {
                let id = rng.below(ids) + ids / 2;
                noisy(rng, id)
            }
        })
        .collect()
}

/// The list computed in the clear: per normalized querier identifier that the provider has,
/// the provider's (region, tier) rows, sorted.
fn plain(provider: &[Row], querier: &[String]) -> Vec<ListMatch> {
    let mut by_id: BTreeMap<String, Vec<Vec<String>>> = BTreeMap::new();
    for row in provider {
        if let Some(id) = Normalization::Email.apply(&row[0]) {
            by_id
                .entry(id)
                .or_default()
                .push(vec![row[1].clone(), row[2].clone()]);
        }
    }
    let mut wanted: Vec<String> = querier
        .iter()
        .filter_map(|id| Normalization::Email.apply(id))
        .collect();
    wanted.sort();
    wanted.dedup();
    wanted
        .into_iter()
        .filter_map(|id| {
            let mut rows = by_id.get(&id)?.clone();
            rows.sort();
            Some(ListMatch {
                identifier: id,
                rows,
            })
        })
        .collect()
}

fn tables(provider: &[Row], querier: &[String]) -> (ListProviderTable, ListQuerierTable) {
    let mut pt = ListProviderTable::new(Normalization::Email, 2).unwrap();
    for row in provider {
        pt.push(&row[0], &row[1..3]).unwrap();
    }
    let mut qt = ListQuerierTable::new(Normalization::Email);
    for id in querier {
        qt.push(id);
    }
    (pt, qt)
}

#[test]
fn rows_equal_a_plain_join_with_duplicates_and_noise_over_many_chunks() {
    let mut rng = Lcg(7);
    // About 12 000 distinct provider identifiers with several rows each, and a querier set
    // over half of them: both sides span more than one chunk.
    let provider = provider_rows(&mut rng, 16_000, 30_000);
    let querier = querier_ids(&mut rng, 16_000, 12_000);
    let expected = plain(&provider, &querier);
    let (pt, qt) = tables(&provider, &querier);
    let (provider_distinct, querier_distinct) = (pt.distinct(), qt.distinct());
    assert!(provider_distinct > CHUNK_ITEMS as u64);
    assert!(querier_distinct > CHUNK_ITEMS as u64);
    let report = list_offline(&Domain::new("collab", "email"), pt, qt).unwrap();
    assert!(expected.len() > 3000, "{}", expected.len());
    assert!(expected.iter().any(|m| m.rows.len() >= 4));
    assert!(
        expected
            .iter()
            .any(|m| m.rows.windows(2).any(|w| w[0] == w[1])),
        "some identifier has a duplicated row"
    );
    assert_eq!(report.outcome.matches, expected);
    assert_eq!(report.outcome.provider_set_size, provider_distinct);
    assert_eq!(report.querier_set_size, querier_distinct);
    assert_eq!(report.provider_input.rows, 30_000);
    assert_eq!(report.querier_input.rows, 12_000);
    assert_eq!(
        report.querier_input.skipped_empty,
        querier.iter().filter(|q| q.trim().is_empty()).count() as u64
    );
}

#[test]
fn wide_payloads_span_several_messages_and_all_have_one_length() {
    let mut pt = ListProviderTable::new(Normalization::Trim, 1).unwrap();
    let long = "L".repeat(20_000);
    pt.push("id-0", &[long.as_str()]).unwrap();
    for i in 1..300 {
        pt.push(&format!("id-{i}"), &[format!("v{i}")]).unwrap();
    }
    // The width is set by the longest payload: 4 + 4 + 20 000 bytes, padded to whole blocks.
    let width = (4 + 4 + 20_000usize).div_ceil(PAD_BLOCK) * PAD_BLOCK + AEAD_TAG_BYTES;
    assert_eq!(pt.payload_bytes(), width);
    let mut qt = ListQuerierTable::new(Normalization::Trim);
    for id in ["id-0", "id-7", "id-299", "id-300"] {
        qt.push(id);
    }
    let mut chunks = Vec::new();
    let report = list_offline_observed(&Domain::new("c", "id"), pt, qt, |m, bytes| {
        if let ListMessage::ListProviderItems {
            payload_bytes,
            tags,
            payloads,
        } = m
        {
            assert_eq!(*payload_bytes as usize, width);
            assert_eq!(payloads.len(), tags.len() * width);
            chunks.push((tags.len(), bytes.len()));
        }
    })
    .unwrap();
    // (4 MiB − 64 KiB − 10) / (16 + 20 032) = 205 items per message.
    assert_eq!(chunks.iter().map(|c| c.0).collect::<Vec<_>>(), [205, 95]);
    assert!(chunks.iter().all(|c| c.1 < 4 * 1024 * 1024 - 64 * 1024));
    let row = |v: &str| vec![vec![v.to_owned()]];
    assert_eq!(
        report.outcome,
        ListOutcome {
            matches: vec![
                ListMatch {
                    identifier: "id-0".into(),
                    rows: row(&long)
                },
                ListMatch {
                    identifier: "id-299".into(),
                    rows: row("v299")
                },
                ListMatch {
                    identifier: "id-7".into(),
                    rows: row("v7")
                },
            ],
            provider_set_size: 300,
            unopened: 0,
        }
    );
}

#[test]
fn no_identifier_value_or_other_column_crosses_in_the_clear() {
    let mut rng = Lcg(11);
    let provider = provider_rows(&mut rng, 300, 500);
    let querier = querier_ids(&mut rng, 300, 300);
    let (pt, qt) = tables(&provider, &querier);
    let mut transcript = Vec::new();
    let report = list_offline_observed(&Domain::new("collab", "email"), pt, qt, |_, bytes| {
        transcript.extend_from_slice(bytes)
    })
    .unwrap();
    assert!(!report.outcome.matches.is_empty());
    let contains = |needle: &[u8]| transcript.windows(needle.len()).any(|w| w == needle);
    for row in &provider {
        let id = Normalization::Email.apply(&row[0]).unwrap();
        assert!(!contains(id.as_bytes()), "identifier {id}");
        assert!(
            !contains(row[3].as_bytes()),
            "column outside the list: {}",
            row[3]
        );
        assert!(!contains(row[2].as_bytes()), "list value {}", row[2]);
    }
    for region in ["north", "south", "east"] {
        assert!(!contains(region.as_bytes()), "list value {region}");
    }
}

#[test]
fn empty_sets_finish_with_an_empty_list() {
    let domain = Domain::new("c", "id");
    let report = list_offline(
        &domain,
        ListProviderTable::new(Normalization::None, 3).unwrap(),
        ListQuerierTable::new(Normalization::None),
    )
    .unwrap();
    assert_eq!(report.outcome, ListOutcome::default());
    assert_eq!(report.querier_set_size, 0);
    // Hellos only.
    assert_eq!(report.messages, 2);

    let mut pt = ListProviderTable::new(Normalization::None, 0).unwrap();
    for _ in 0..3 {
        pt.push("a", &[] as &[&str]).unwrap();
    }
    pt.push("b", &[] as &[&str]).unwrap();
    let mut qt = ListQuerierTable::new(Normalization::None);
    qt.push("a");
    let report = list_offline(&domain, pt, qt).unwrap();
    // With no list column the querier still learns how often its identifier occurs.
    assert_eq!(
        report.outcome.matches,
        [ListMatch {
            identifier: "a".into(),
            rows: vec![vec![]; 3]
        }]
    );
}

// ---------------------------------------------------------------- refusals

fn valid_point() -> PointBytes {
    PointBytes(
        Domain::new("c", "id")
            .hash_to_group("x")
            .compress()
            .to_bytes(),
    )
}

fn provider_with(ids: &[&str], limits: Limits) -> ListProvider {
    let mut t = ListProviderTable::new(Normalization::None, 1).unwrap();
    for id in ids {
        t.push(id, &[format!("value of {id}")]).unwrap();
    }
    ListProvider::new(&Domain::new("c", "id"), t, limits)
}

fn querier_with(ids: &[&str], columns: usize, limits: Limits) -> ListQuerier {
    let mut t = ListQuerierTable::new(Normalization::None);
    for id in ids {
        t.push(id);
    }
    ListQuerier::new(&Domain::new("c", "id"), t, columns, limits)
}

/// Every message the role sends before it waits for the peer.
fn drain(poll: &mut dyn FnMut() -> Option<ListMessage>) -> Vec<ListMessage> {
    std::iter::from_fn(poll).collect()
}

#[test]
fn the_provider_refuses_what_the_querier_did_not_announce() {
    let limits = Limits {
        max_set_size: 4,
        max_groups: 1,
        ..Limits::default()
    };
    let mut p = provider_with(&["a"], limits);
    assert!(matches!(
        p.handle_message(ListMessage::ListQuerierPoints {
            points: vec![valid_point()]
        }),
        Err(ProtocolError::Unexpected { .. })
    ));
    assert_eq!(
        p.handle_message(ListMessage::ListQuerierHello { set_size: 5 }),
        Err(ProtocolError::LimitExceeded {
            what: "set size",
            value: 5,
            limit: 4
        })
    );
    p.handle_message(ListMessage::ListQuerierHello { set_size: 2 })
        .unwrap();
    assert!(matches!(
        p.handle_message(ListMessage::ListQuerierHello { set_size: 2 }),
        Err(ProtocolError::Unexpected { .. })
    ));
    let identity = PointBytes(RistrettoPoint::default().compress().to_bytes());
    assert!(matches!(
        p.handle_message(ListMessage::ListQuerierPoints {
            points: vec![identity]
        }),
        Err(ProtocolError::Point { .. })
    ));
    let mut p = provider_with(&["a"], limits);
    p.handle_message(ListMessage::ListQuerierHello { set_size: 2 })
        .unwrap();
    assert!(!p.is_done());
    p.handle_message(ListMessage::ListQuerierPoints {
        points: vec![valid_point(); 2],
    })
    .unwrap();
    assert!(p.is_done());
    assert_eq!(p.querier_set_size(), Some(2));
    assert_eq!(
        p.handle_message(ListMessage::ListQuerierPoints {
            points: vec![valid_point()]
        }),
        Err(ProtocolError::TooManyElements {
            group: 0,
            announced: 2
        })
    );
    // A message of the aggregate protocol is not a list message: its bytes do not decode as
    // one (and the types keep it from reaching a list role).
    let hello = AggregateMessage::ReceiverHello {
        value_keys: vec![],
        group_sizes: vec![1],
    };
    assert_eq!(
        ListMessage::decode(&hello.encode()),
        Err(WireError::UnknownKind(3))
    );
    // Evaluations come back in order, after the hello and the items.
    let kinds: Vec<&str> = drain(&mut || p.poll_message())
        .iter()
        .map(ListMessage::kind)
        .collect();
    assert_eq!(
        kinds,
        [
            "ListProviderHello",
            "ListProviderItems",
            "ListProviderEvaluations"
        ]
    );
}

#[test]
fn the_querier_refuses_a_provider_that_breaks_its_announcements() {
    let limits = Limits::default();
    // Columns other than the plan's.
    let mut q = querier_with(&["a"], 2, limits);
    let mut p = provider_with(&["a"], limits);
    let hello = p.poll_message().unwrap();
    assert_eq!(
        q.handle_message(hello.clone()),
        Err(ProtocolError::ListColumns {
            expected: 2,
            got: 1
        })
    );
    // Items before the hello; payloads of another width; more items than announced.
    let mut q = querier_with(&["a"], 1, limits);
    let items = p.poll_message().unwrap();
    assert!(matches!(
        q.handle_message(items.clone()),
        Err(ProtocolError::Unexpected { .. })
    ));
    q.handle_message(hello.clone()).unwrap();
    let ListMessage::ListProviderItems { tags, payloads, .. } = items.clone() else {
        panic!("expected items, got {}", items.kind());
    };
    assert_eq!(
        q.handle_message(ListMessage::ListProviderItems {
            payload_bytes: 144,
            tags: tags.clone(),
            payloads: vec![0; 144],
        }),
        Err(ProtocolError::PayloadWidth {
            expected: 80,
            got: 144
        })
    );
    assert_eq!(
        q.handle_message(ListMessage::ListProviderItems {
            payload_bytes: 80,
            tags: tags.clone(),
            payloads: vec![0; 79],
        }),
        Err(ProtocolError::Wire(WireError::Invalid("payloads")))
    );
    assert_eq!(
        q.handle_message(ListMessage::ListProviderItems {
            payload_bytes: 80,
            tags: vec![tags[0]; 2],
            payloads: [payloads.clone(), payloads.clone()].concat(),
        }),
        Err(ProtocolError::TooManyElements {
            group: 0,
            announced: 1
        })
    );
    // Evaluations of points the querier has not sent.
    let mut q = querier_with(&["a"], 1, limits);
    q.handle_message(hello.clone()).unwrap();
    assert_eq!(
        q.handle_message(ListMessage::ListProviderEvaluations {
            points: vec![valid_point()]
        }),
        Err(ProtocolError::UnrequestedEvaluations { sent: 0, got: 1 })
    );
    // A provider set larger than the querier accepts.
    let mut q = querier_with(
        &["a"],
        1,
        Limits {
            max_set_size: 0,
            max_groups: 1,
            ..Limits::default()
        },
    );
    assert!(matches!(
        q.handle_message(hello),
        Err(ProtocolError::LimitExceeded { .. })
    ));
}

/// Run a session, letting `tamper` change every `ListProviderItems` on its way.
fn run_tampered(
    provider: &[&str],
    querier: &[&str],
    tamper: impl Fn(ListMessage) -> ListMessage,
) -> Result<ListOutcome, ProtocolError> {
    let mut p = provider_with(provider, Limits::default());
    let mut q = querier_with(querier, 1, Limits::default());
    loop {
        let mut progressed = false;
        while let Some(m) = p.poll_message() {
            let m = match m {
                m @ ListMessage::ListProviderItems { .. } => tamper(m),
                m => m,
            };
            q.handle_message(m)?;
            progressed = true;
        }
        while let Some(m) = q.poll_message() {
            p.handle_message(m)?;
            progressed = true;
        }
        if q.is_finished() {
            let outcome = q.open().expect("finished");
            // A finished querier accepts nothing more.
            assert!(matches!(
                q.handle_message(ListMessage::ListProviderEvaluations { points: vec![] }),
                Err(ProtocolError::Unexpected { .. })
            ));
            return Ok(outcome);
        }
        assert!(progressed, "stalled");
    }
}

#[test]
fn a_tampered_payload_is_not_matched_and_a_duplicated_tag_ends_the_session() {
    let honest = run_tampered(&["a", "b"], &["b", "c"], |m| m).unwrap();
    assert_eq!(
        honest.matches,
        [ListMatch {
            identifier: "b".into(),
            rows: vec![vec!["value of b".into()]]
        }]
    );
    // One flipped bit in every payload: the matched one no longer authenticates. It counts as
    // not matched, and the session still finishes normally: whether a payload opens depends on
    // what the querier holds, so it must never show as an error the provider could see.
    let unopened = |n| ListOutcome {
        matches: vec![],
        provider_set_size: 2,
        unopened: n,
    };
    let flip = |m: ListMessage| match m {
        ListMessage::ListProviderItems {
            payload_bytes,
            tags,
            mut payloads,
        } => {
            for p in payloads.chunks_exact_mut(payload_bytes as usize) {
                p[10] ^= 0x80;
            }
            ListMessage::ListProviderItems {
                payload_bytes,
                tags,
                payloads,
            }
        }
        other => other,
    };
    assert_eq!(
        run_tampered(&["a", "b"], &["b", "c"], flip),
        Ok(unopened(1))
    );
    // Swapped payloads (each authentic, under another identifier's key) do not open either.
    let swap = |m: ListMessage| match m {
        ListMessage::ListProviderItems {
            payload_bytes,
            tags,
            payloads,
        } => {
            let (first, second) = payloads.split_at(payload_bytes as usize);
            ListMessage::ListProviderItems {
                payload_bytes,
                tags,
                payloads: [second, first].concat(),
            }
        }
        other => other,
    };
    assert_eq!(
        run_tampered(&["a", "b"], &["b", "c"], swap),
        Ok(unopened(1))
    );
    // One identifier's tag twice: two payloads for one identifier.
    let duplicate = |m: ListMessage| match m {
        ListMessage::ListProviderItems {
            payload_bytes,
            tags,
            payloads,
        } => ListMessage::ListProviderItems {
            payload_bytes,
            tags: vec![tags[0], tags[0]],
            payloads,
        },
        other => other,
    };
    assert_eq!(
        run_tampered(&["a", "b"], &["b", "c"], duplicate),
        Err(ProtocolError::DuplicateLookupTag)
    );
    // Unrelated tags hide nothing and match nothing.
    let random_tags = |m: ListMessage| match m {
        ListMessage::ListProviderItems {
            payload_bytes,
            tags,
            payloads,
        } => ListMessage::ListProviderItems {
            payload_bytes,
            tags: (0..tags.len() as u8).map(|i| Tag([i; 16])).collect(),
            payloads,
        },
        other => other,
    };
    assert_eq!(
        run_tampered(&["a", "b"], &["b", "c"], random_tags)
            .unwrap()
            .matches,
        []
    );
}

#[test]
fn tables_refuse_rows_of_the_wrong_shape() {
    let mut t = ListProviderTable::new(Normalization::None, 2).unwrap();
    assert_eq!(
        t.push("a", &["x"]),
        Err(InputError::WrongValueCount {
            expected: 2,
            got: 1
        })
    );
    assert_eq!(t.distinct(), 0);
}
