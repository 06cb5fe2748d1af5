//! Delivering a result to a receiver that was not in the session: the querier stops after its
//! tags, the matcher's closing messages and the querier's sealed keys go to the receiver, whose
//! opener yields exactly what the querier's own receiver would have.

use cleanroom_psi::sealed::OpeningKey;
use cleanroom_psi::{
    AggregateMessage, Domain, Limits, Matcher, MatcherTable, Normalization, Party, ProtocolError,
    Receiver, ReceiverTable, ResultKeys, ResultOpener, Stage, WireMessage, match_offline,
};

fn tables() -> (MatcherTable, ReceiverTable) {
    let mut m = MatcherTable::new(Normalization::Email);
    let mut r = ReceiverTable::new(Normalization::Email, 2).unwrap();
    for i in 0..200u64 {
        m.push(
            ["spring", "summer"][(i % 2) as usize],
            &format!("user{i}@example.com"),
        )
        .unwrap();
    }
    for i in 100..260u64 {
        r.push(
            ["web", "shop"][(i % 3 == 0) as usize],
            &format!("USER{i}@example.com"),
            &[i, 1],
        )
        .unwrap();
    }
    (m, r)
}

/// Runs a session whose querier does not receive the result; returns the matcher's closing
/// messages (its hello, results and end, encoded) and the querier's result keys.
fn run_elsewhere(min_release: u64) -> (Vec<Vec<u8>>, ResultKeys) {
    let domain = Domain::new("delivery", "impressions.email=purchases.email");
    let (mt, rt) = tables();
    let limits = Limits::default();
    let mut matcher = Matcher::new(&domain, mt, limits);
    let mut querier = Receiver::new(&domain, rt, limits).results_elsewhere();
    let mut kept = Vec::new();
    let mut released = false;
    loop {
        let mut progressed = false;
        while let Some(msg) = matcher.poll() {
            let encoded = msg.encode();
            match msg {
                AggregateMessage::MatcherHello { .. } => {
                    kept.push(encoded.clone());
                    querier
                        .handle(AggregateMessage::decode(&encoded).unwrap())
                        .unwrap();
                }
                // Never to the querier (it refuses them): kept for the receiver.
                AggregateMessage::MatcherResult { .. } | AggregateMessage::MatcherDone { .. } => {
                    kept.push(encoded)
                }
                other => querier.handle(other).unwrap(),
            }
            progressed = true;
        }
        while let Some(msg) = querier.poll() {
            matcher.handle(msg).unwrap();
            progressed = true;
        }
        if matcher.stage() == Stage::Finished && querier.stage() == Stage::Finished {
            break;
        }
        if matcher.stage() == Stage::AwaitingRelease && !released {
            matcher
                .release(|c| c.intersection_size >= min_release)
                .unwrap();
            released = true;
            progressed = true;
        }
        assert!(progressed, "the session stalled");
    }
    (kept, querier.result_keys())
}

#[test]
fn the_receivers_opener_gives_what_the_querier_would_have() {
    let (kept, keys) = run_elsewhere(5);
    // The keys travel sealed to the receiver.
    let receiver = OpeningKey::generate();
    let sealed = receiver.sealing_key().seal(&keys.to_bytes(), b"session");
    let opened = receiver.open(&sealed, b"session").unwrap();
    let keys = ResultKeys::from_bytes(&opened, &Limits::default()).unwrap();
    let mut opener = ResultOpener::new(keys, Limits::default());
    for message in &kept {
        opener
            .handle_message(AggregateMessage::decode(message).unwrap())
            .unwrap();
    }
    let got = opener.open().unwrap();

    let (mt, rt) = tables();
    let domain = Domain::new("delivery", "impressions.email=purchases.email");
    let want = match_offline(&domain, mt, rt, 5).unwrap().outcome;
    assert_eq!(got, want);
    assert!(!want.groups.is_empty() && want.groups.iter().any(|g| g.sums[0] > 0));
}

#[test]
fn a_querier_whose_results_go_elsewhere_refuses_them_and_the_opener_checks_them() {
    let domain = Domain::new("delivery", "impressions.email=purchases.email");
    let (_, rt) = tables();
    let mut querier = Receiver::new(&domain, rt, Limits::default()).results_elsewhere();
    let done = AggregateMessage::MatcherDone {
        released: 0,
        suppressed: 0,
        bounded: 0,
    };
    assert!(matches!(
        querier.handle(done.clone()),
        Err(ProtocolError::Unexpected { .. })
    ));

    let (kept, keys) = run_elsewhere(5);
    let bytes = keys.to_bytes();
    // Results before the hello, a wrong released count, and anything after the end: refused.
    let mut opener = ResultOpener::new(
        ResultKeys::from_bytes(&bytes, &Limits::default()).unwrap(),
        Limits::default(),
    );
    assert!(opener.handle_message(done.clone()).is_err());
    let mut opener = ResultOpener::new(
        ResultKeys::from_bytes(&bytes, &Limits::default()).unwrap(),
        Limits::default(),
    );
    opener
        .handle_message(AggregateMessage::decode(&kept[0]).unwrap())
        .unwrap();
    assert!(matches!(
        opener.handle_message(AggregateMessage::MatcherDone {
            released: 1_000,
            suppressed: 0,
            bounded: 0
        }),
        Err(ProtocolError::InconsistentResult(_))
    ));
    // Every truncation of the keys' encoding is refused, never a panic.
    for n in 0..bytes.len() {
        assert!(ResultKeys::from_bytes(&bytes[..n], &Limits::default()).is_err());
    }
    let mut longer = bytes.to_vec();
    longer.push(0);
    assert!(ResultKeys::from_bytes(&longer, &Limits::default()).is_err());
}
