//! Every decoder rejects malformed input with a typed error, never a panic.

mod common;

use cleanroom_psi::wire::{CHUNK_ITEMS, MAX_MESSAGE_BYTES, PointBytes, PointError, Tag};
use cleanroom_psi::{
    AggregateMessage, Domain, Limits, ListMessage, Matcher, MatcherTable, Normalization,
    ProtocolError, Receiver, ReceiverTable, ReleasedGroup, WireError, WireMessage,
};
use common::AnyMessage;
use curve25519_dalek::RistrettoPoint;
use proptest::prelude::*;

fn valid_point() -> PointBytes {
    PointBytes(
        Domain::new("c", "id")
            .hash_to_group("x")
            .compress()
            .to_bytes(),
    )
}

fn samples() -> Vec<AnyMessage> {
    let aggregate = vec![
        AggregateMessage::MatcherHello {
            group_sizes: vec![3, 1],
        },
        AggregateMessage::MatcherPoints {
            group: 1,
            points: vec![valid_point(); 3],
        },
        AggregateMessage::ReceiverHello {
            value_keys: vec![valid_point(); 2],
            group_sizes: vec![7],
        },
        AggregateMessage::ReceiverItems {
            group: 0,
            value_columns: 1,
            points: vec![valid_point(); 2],
            ciphertexts: vec![7u8; 2 * 96],
        },
        AggregateMessage::ReceiverTags {
            group: 0,
            tags: vec![Tag([9; 16]); 4],
        },
        AggregateMessage::ReceiverTagPoints {
            group: 3,
            points: vec![valid_point(); 2],
        },
        AggregateMessage::MatcherResult {
            groups: vec![ReleasedGroup {
                matcher_group: "spring".into(),
                receiver_group: 0,
                intersection_size: 120,
                sums: vec![1; 96],
            }],
        },
        AggregateMessage::MatcherDone {
            released: 1,
            suppressed: 2,
            bounded: 7,
        },
    ];
    let list = vec![
        ListMessage::ListProviderHello {
            set_size: 5,
            columns: 2,
            payload_bytes: 80,
        },
        ListMessage::ListProviderItems {
            payload_bytes: 80,
            tags: vec![Tag([3; 16]), Tag([4; 16])],
            payloads: vec![5u8; 2 * 80],
        },
        ListMessage::ListQuerierHello { set_size: 9 },
        ListMessage::ListQuerierPoints {
            points: vec![valid_point(); 2],
        },
        ListMessage::ListProviderEvaluations {
            points: vec![valid_point(); 2],
        },
    ];
    let aggregate = aggregate.into_iter().map(AnyMessage::Aggregate);
    aggregate
        .chain(list.into_iter().map(AnyMessage::List))
        .collect()
}

#[test]
fn list_kinds_have_the_documented_encoding() {
    let hello = ListMessage::ListProviderHello {
        set_size: 5,
        columns: 2,
        payload_bytes: 80,
    };
    assert_eq!(
        hello.encode(),
        [1, 8, 0, 0, 0, 0, 0, 0, 0, 5, 0, 2, 0, 0, 0, 80]
    );
    let items = ListMessage::ListProviderItems {
        payload_bytes: 80,
        tags: vec![Tag([3; 16])],
        payloads: vec![5u8; 80],
    };
    let mut expected = vec![1, 9, 0, 0, 0, 80, 0, 0, 0, 1];
    expected.extend([3u8; 16]);
    expected.extend([5u8; 80]);
    assert_eq!(items.encode(), expected);
    assert_eq!(
        ListMessage::ListQuerierHello { set_size: 258 }.encode(),
        [1, 10, 0, 0, 0, 0, 0, 0, 1, 2]
    );
    let mut points = vec![1, 11, 0, 0, 0, 1];
    points.extend(valid_point().0);
    let msg = ListMessage::ListQuerierPoints {
        points: vec![valid_point()],
    };
    assert_eq!(msg.encode(), points);
    points[1] = 12;
    assert_eq!(
        ListMessage::decode(&points).unwrap(),
        ListMessage::ListProviderEvaluations {
            points: vec![valid_point()]
        }
    );
}

#[test]
fn list_fields_are_checked_strictly() {
    let hello = |payload_bytes: u32, columns: u16| {
        ListMessage::ListProviderHello {
            set_size: 1,
            columns,
            payload_bytes,
        }
        .encode()
    };
    // Widths that no table produces: below one block, not whole blocks, above the maximum.
    for width in [0, 16, 79, 81, 200, 64 * 1024 + 16 + 64] {
        assert_eq!(
            ListMessage::decode(&hello(width, 1)),
            Err(WireError::Invalid("payload_bytes")),
            "{width}"
        );
    }
    assert!(ListMessage::decode(&hello(64 * 1024 + 16, 1)).is_ok());
    assert_eq!(
        ListMessage::decode(&hello(80, 65)),
        Err(WireError::Invalid("columns"))
    );
    assert!(ListMessage::decode(&hello(80, 64)).is_ok());
    // Items announcing more payloads than the bytes present, or an invalid width.
    let mut items = ListMessage::ListProviderItems {
        payload_bytes: 80,
        tags: vec![Tag([3; 16]); 2],
        payloads: vec![5u8; 160],
    }
    .encode();
    items.truncate(items.len() - 1);
    assert_eq!(
        ListMessage::decode(&items),
        Err(WireError::Truncated("tags"))
    );
    let bad_width = ListMessage::ListProviderItems {
        payload_bytes: 81,
        tags: vec![Tag([3; 16])],
        payloads: vec![5u8; 81],
    };
    assert_eq!(
        ListMessage::decode(&bad_width.encode()),
        Err(WireError::Invalid("payload_bytes"))
    );
    // More items than a chunk may carry, with the bytes present.
    let many = ListMessage::ListProviderItems {
        payload_bytes: 80,
        tags: vec![Tag([3; 16]); CHUNK_ITEMS + 1],
        payloads: vec![5u8; (CHUNK_ITEMS + 1) * 80],
    };
    assert!(matches!(
        ListMessage::decode(&many.encode()),
        Err(WireError::TooMany { field: "tags", .. })
    ));
    let many = ListMessage::ListQuerierPoints {
        points: vec![valid_point(); CHUNK_ITEMS + 1],
    };
    assert!(matches!(
        ListMessage::decode(&many.encode()),
        Err(WireError::TooMany { .. })
    ));
}

#[test]
fn every_kind_round_trips() {
    for m in samples() {
        assert_eq!(AnyMessage::decode(&m.encode()).unwrap(), m);
    }
}

/// Each protocol decodes only its own kinds: the bytes of every message of the other protocol
/// are an unknown kind, so a party is never handed a message of another protocol.
#[test]
fn each_protocol_decodes_only_its_own_kinds() {
    for m in samples() {
        let bytes = m.encode();
        let kind = bytes[1];
        let refused = match m {
            AnyMessage::Aggregate(_) => ListMessage::decode(&bytes).map(drop),
            AnyMessage::List(_) => AggregateMessage::decode(&bytes).map(drop),
        };
        assert_eq!(refused, Err(WireError::UnknownKind(kind)), "{}", m.kind());
    }
}

#[test]
fn every_truncation_is_rejected() {
    for m in samples() {
        let bytes = m.encode();
        for cut in 0..bytes.len() {
            let err = AnyMessage::decode(&bytes[..cut]).unwrap_err();
            assert!(
                matches!(err, WireError::Truncated(_)),
                "{} cut at {cut}: {err:?}",
                m.kind()
            );
        }
    }
}

#[test]
fn trailing_bytes_version_kind_and_size_are_rejected() {
    let mut bytes = AggregateMessage::MatcherDone {
        released: 0,
        suppressed: 0,
        bounded: 0,
    }
    .encode();
    bytes.push(0);
    assert_eq!(
        AggregateMessage::decode(&bytes),
        Err(WireError::TrailingBytes(1))
    );
    assert_eq!(
        AggregateMessage::decode(&[2, 1, 0, 0, 0, 0]),
        Err(WireError::UnsupportedVersion(2))
    );
    assert_eq!(
        AggregateMessage::decode(&[1, 99]),
        Err(WireError::UnknownKind(99))
    );
    assert_eq!(
        ListMessage::decode(&[1, 99]),
        Err(WireError::UnknownKind(99))
    );
    let huge = vec![1u8; MAX_MESSAGE_BYTES + 1];
    assert_eq!(
        AggregateMessage::decode(&huge),
        Err(WireError::TooLarge(MAX_MESSAGE_BYTES + 1))
    );
}

#[test]
fn oversized_counts_are_rejected_before_allocation() {
    // A points message announcing u32::MAX points in a few bytes.
    let bytes = [1u8, 2, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3];
    assert!(matches!(
        AggregateMessage::decode(&bytes),
        Err(WireError::Truncated(_))
    ));
    // More points than a chunk may carry, with the bytes present.
    let m = AggregateMessage::MatcherPoints {
        group: 0,
        points: vec![valid_point(); CHUNK_ITEMS + 1],
    };
    assert!(matches!(
        AggregateMessage::decode(&m.encode()),
        Err(WireError::TooMany { .. })
    ));
    // Invalid UTF-8 in a group key.
    let mut r = AggregateMessage::MatcherResult {
        groups: vec![ReleasedGroup {
            matcher_group: "ab".into(),
            receiver_group: 0,
            intersection_size: 1,
            sums: vec![],
        }],
    }
    .encode();
    r[2 + 4 + 4] = 0xFF;
    assert_eq!(
        AggregateMessage::decode(&r),
        Err(WireError::InvalidGroupKey)
    );
}

#[test]
fn point_decoding_rejects_identity_non_canonical_and_wrong_length() {
    let identity = PointBytes(RistrettoPoint::default().compress().to_bytes());
    assert_eq!(identity.decode(), Err(PointError::Identity));
    assert_eq!(
        PointBytes([0xFF; 32]).decode(),
        Err(PointError::NonCanonical)
    );
    // A field element >= p is non-canonical: 2^255 - 1 (top bit cleared) is above p.
    let mut above_p = [0xFF; 32];
    above_p[31] = 0x7F;
    assert_eq!(PointBytes(above_p).decode(), Err(PointError::NonCanonical));
    // A negative (odd) s is non-canonical in Ristretto.
    let mut odd = valid_point().0;
    odd[0] |= 1;
    assert_eq!(PointBytes(odd).decode(), Err(PointError::NonCanonical));
    assert_eq!(
        PointBytes::from_slice(&[0; 31]),
        Err(PointError::WrongLength(31))
    );
    assert!(valid_point().decode().is_ok());
}

fn matcher() -> Matcher {
    let mut t = MatcherTable::new(Normalization::None);
    t.push("", "a").unwrap();
    t.push("", "b").unwrap();
    Matcher::new(&Domain::new("c", "id"), t, Limits::default())
}

fn receiver() -> Receiver {
    let mut t = ReceiverTable::new(Normalization::None, 0).unwrap();
    t.push("", "a", &[]).unwrap();
    t.push("", "b", &[]).unwrap();
    Receiver::new(&Domain::new("c", "id"), t, Limits::default())
}

#[test]
fn roles_reject_bad_points_and_unannounced_elements() {
    let identity = PointBytes(RistrettoPoint::default().compress().to_bytes());
    // Receiver gets the identity from the matcher.
    let mut r = receiver();
    r.handle_message(AggregateMessage::MatcherHello {
        group_sizes: vec![2],
    })
    .unwrap();
    let err = r.handle_message(AggregateMessage::MatcherPoints {
        group: 0,
        points: vec![identity],
    });
    assert!(matches!(
        err,
        Err(ProtocolError::Point {
            error: PointError::Identity,
            ..
        })
    ));
    // More points than announced, and an unknown group.
    let mut r = receiver();
    r.handle_message(AggregateMessage::MatcherHello {
        group_sizes: vec![1],
    })
    .unwrap();
    let err = r.handle_message(AggregateMessage::MatcherPoints {
        group: 0,
        points: vec![valid_point(); 2],
    });
    assert_eq!(
        err,
        Err(ProtocolError::TooManyElements {
            group: 0,
            announced: 1
        })
    );
    let err = r.handle_message(AggregateMessage::MatcherPoints {
        group: 5,
        points: vec![valid_point()],
    });
    assert_eq!(err, Err(ProtocolError::UnknownGroup(5)));
    // Points before the hello; a second hello.
    let mut r = receiver();
    assert!(matches!(
        r.handle_message(AggregateMessage::MatcherPoints {
            group: 0,
            points: vec![]
        }),
        Err(ProtocolError::Unexpected { .. })
    ));
    r.handle_message(AggregateMessage::MatcherHello {
        group_sizes: vec![],
    })
    .unwrap();
    assert!(matches!(
        r.handle_message(AggregateMessage::MatcherHello {
            group_sizes: vec![]
        }),
        Err(ProtocolError::Unexpected { .. })
    ));
}

#[test]
fn matcher_enforces_limits_order_and_tag_uniqueness() {
    let mut m = Matcher::new(
        &Domain::new("c", "id"),
        MatcherTable::new(Normalization::None),
        Limits {
            max_set_size: 10,
            max_groups: 2,
            ..Limits::default()
        },
    );
    let err = m.handle_message(AggregateMessage::ReceiverHello {
        value_keys: vec![],
        group_sizes: vec![11],
    });
    assert!(matches!(
        err,
        Err(ProtocolError::LimitExceeded {
            what: "set size",
            ..
        })
    ));
    let err = m.handle_message(AggregateMessage::ReceiverHello {
        value_keys: vec![],
        group_sizes: vec![1; 3],
    });
    assert!(matches!(
        err,
        Err(ProtocolError::LimitExceeded { what: "groups", .. })
    ));

    // Tags before items are complete.
    let mut m = matcher();
    m.handle_message(AggregateMessage::ReceiverHello {
        value_keys: vec![],
        group_sizes: vec![1],
    })
    .unwrap();
    let err = m.handle_message(AggregateMessage::ReceiverTags {
        group: 0,
        tags: vec![Tag([0; 16])],
    });
    assert!(matches!(err, Err(ProtocolError::Unexpected { .. })));

    // A receiver that repeats a matching tag to inflate a count is caught.
    let mut m = matcher();
    let mut r = receiver();
    let mut to_matcher = Vec::new();
    loop {
        let mut progressed = false;
        while let Some(msg) = m.poll_message() {
            r.handle_message(msg).unwrap();
            progressed = true;
        }
        while let Some(msg) = r.poll_message() {
            to_matcher.push(msg);
            progressed = true;
        }
        if !progressed {
            break;
        }
    }
    let tags = match to_matcher.pop().unwrap() {
        AggregateMessage::ReceiverTags { tags, .. } => tags,
        other => panic!("expected tags, got {}", other.kind()),
    };
    for msg in to_matcher {
        m.handle_message(msg).unwrap();
    }
    // Both of the matcher's identifiers are in the receiver's set, so every tag matches:
    // sending one of them twice (within the announced size of 2) must be refused.
    assert_eq!(tags.len(), 2);
    let err = m.handle_message(AggregateMessage::ReceiverTags {
        group: 0,
        tags: vec![tags[0], tags[0]],
    });
    assert_eq!(err, Err(ProtocolError::DuplicateTag(0)));
}

#[test]
fn a_receiver_repeating_an_identifier_in_a_group_is_refused() {
    // Regression (hostile-input tests): the same point twice in one receiver group matched
    // twice, so a querier could lift any matched group over the release threshold.
    let items = receiver_items();
    let AggregateMessage::ReceiverItems {
        group,
        value_columns,
        points,
        ciphertexts,
    } = items[1].clone()
    else {
        panic!("items after the hello")
    };
    assert_eq!(points.len(), 2);
    let mut m = matcher();
    m.handle_message(items[0].clone()).unwrap();
    let err = m.handle_message(AggregateMessage::ReceiverItems {
        group,
        value_columns,
        points: vec![points[0], points[0]],
        ciphertexts,
    });
    assert_eq!(err, Err(ProtocolError::DuplicateItem(0)));

    // The same identifier in two receiver groups is two items, as an honest receiver sends.
    let mut t = ReceiverTable::new(Normalization::None, 0).unwrap();
    t.push("x", "a", &[]).unwrap();
    t.push("y", "a", &[]).unwrap();
    t.push("y", "b", &[]).unwrap();
    let mut r = Receiver::new(&Domain::new("c", "id"), t, Limits::default());
    let mut m = matcher();
    while let Some(msg) = r.poll_message() {
        m.handle_message(msg).unwrap();
    }
}

#[test]
fn a_hello_above_the_declared_size_is_refused() {
    let limits = Limits {
        declared_set_size: Some(2),
        ..Limits::default()
    };
    let mut m = Matcher::new(
        &Domain::new("c", "id"),
        MatcherTable::new(Normalization::None),
        limits,
    );
    let err = m.handle_message(AggregateMessage::ReceiverHello {
        value_keys: vec![],
        group_sizes: vec![2, 1],
    });
    assert_eq!(
        err,
        Err(ProtocolError::AboveDeclared {
            announced: 3,
            declared: 2
        })
    );
    let mut m = Matcher::new(
        &Domain::new("c", "id"),
        MatcherTable::new(Normalization::None),
        limits,
    );
    for msg in receiver_items() {
        m.handle_message(msg).unwrap();
    }
}

/// The receiver's hello and items for a matcher that has not sent anything yet.
fn receiver_items() -> Vec<AggregateMessage> {
    let mut r = receiver();
    std::iter::from_fn(|| r.poll_message()).collect()
}

#[test]
fn tags_before_the_matchers_points_are_refused() {
    // Regression (hostile-input tests): tags arriving before the matcher sent the points they
    // re-blind can only be made up or replayed from another session, whose keys differ.
    let mut m = matcher();
    for msg in receiver_items() {
        m.handle_message(msg).unwrap();
    }
    let replayed = AggregateMessage::ReceiverTags {
        group: 0,
        tags: vec![Tag([9; 16]), Tag([8; 16])],
    };
    assert_eq!(
        m.handle_message(replayed.clone()),
        Err(ProtocolError::Unexpected {
            got: "ReceiverTags",
            why: "tags of a group before its points were sent",
        })
    );
    // Once the hello and the points went out, the same (now well-timed) tags are taken.
    while m.poll_message().is_some() {}
    assert_eq!(m.handle_message(replayed), Ok(()));
    assert_eq!(m.counts(), Some(&[][..]), "replayed tags match nothing");
}

#[test]
fn the_end_before_the_matchers_sets_is_refused() {
    // Regression (hostile-input tests): a matcher announcing more than it sends and then
    // ending the session used to leave the receiver with an empty "result".
    let mut m = matcher();
    let mut r = receiver();
    let hello = m.poll_message().unwrap();
    let AggregateMessage::MatcherHello { group_sizes } = hello else {
        panic!("a hello first")
    };
    r.handle_message(AggregateMessage::MatcherHello {
        group_sizes: group_sizes.iter().map(|s| s + 1).collect(),
    })
    .unwrap();
    r.handle_message(m.poll_message().unwrap()).unwrap();
    let err = r.handle_message(AggregateMessage::MatcherDone {
        released: 0,
        suppressed: 0,
        bounded: 0,
    });
    assert_eq!(
        err,
        Err(ProtocolError::Unexpected {
            got: "MatcherDone",
            why: "the end before the matcher's sets",
        })
    );
    assert!(!r.is_finished());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = AggregateMessage::decode(&bytes);
        let _ = ListMessage::decode(&bytes);
    }

    #[test]
    fn mutated_messages_never_panic(which in 0usize..12, pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = samples()[which].encode();
        let i = pos.index(bytes.len());
        bytes[i] = byte;
        if let Ok(m) = AnyMessage::decode(&bytes) {
            prop_assert_eq!(AnyMessage::decode(&m.encode()).unwrap(), m);
        }
    }
}
