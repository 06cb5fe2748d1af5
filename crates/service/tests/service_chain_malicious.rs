//! A querier that bends what it sends along a chain (../shared/THREAT-MODEL.md), against the
//! real service: each attack is run twice, once where the other provider holds the registry's
//! patients and once where it holds strangers, and the attacker must see the same thing both
//! times — the same provider refusing, with the same status, and the same audit entry.

use cleanroom_psi::AggregateMessage;
use cleanroom_psi::ecdh::chain::ChainMessage;
use cleanroom_service::Decision;
use cleanroom_testkit::chain::{Bent, Hospitals};
use cleanroom_testkit::fixture::Csv;

/// Two hospitals: `visits_a` (the matcher) and `visits_b` (the filter at position 1), whose
/// table holds all of the registry's patients (`held`) or none of them.
fn hospitals(held: bool) -> Hospitals {
    let mut fx = Hospitals::new(2, 3);
    fx.set_visits(1, patients(if held { 0 } else { 10_000 }));
    fx
}

/// A hospital's visits of patients `first .. first + 400`, all with the flu: the registry's
/// patients when `first` is 0, strangers otherwise.
fn patients(first: u64) -> Csv {
    Csv {
        header: vec!["email".into(), "diagnosis".into()],
        rows: (first..first + 400)
            .map(|id| vec![format!("patient{id}@example.org"), "flu".to_owned()])
            .collect(),
    }
}

/// `message` with its first candidate repeated in its second place, if it is a chunk of
/// candidates; anything else unchanged.
fn repeat_a_candidate(message: ChainMessage) -> ChainMessage {
    match message {
        ChainMessage::Aggregate(AggregateMessage::ReceiverItems {
            group,
            value_columns,
            mut points,
            ciphertexts,
        }) => {
            points[1] = points[0];
            ChainMessage::Aggregate(AggregateMessage::ReceiverItems {
                group,
                value_columns,
                points,
                ciphertexts,
            })
        }
        other => other,
    }
}

const SQL: &str = "SELECT COUNT(DISTINCT p.email) FROM patients p \
                   JOIN visits_a a ON p.email = a.email JOIN visits_b b ON p.email = b.email";

/// Runs `bend` against fresh servers of `hospitals(held)`; returns what the attacker saw (the
/// refusing provider, its status code and message) and that provider's audit entry's decision
/// and reason.
async fn attack(
    held: bool,
    bend: impl FnMut(u8, ChainMessage) -> Vec<(u8, ChainMessage)>,
) -> (String, tonic::Code, String, Decision, String) {
    let fx = hospitals(held);
    let servers = fx.start().await;
    let Bent {
        refused, sessions, ..
    } = fx.bent_query(&servers, SQL, bend).await;
    let (table, status) = refused.expect("a provider refuses");
    let session = &sessions.iter().find(|(t, _)| *t == table).unwrap().1;
    let h = usize::from(table.as_bytes()["visits_".len()] - b'a');
    let entry = servers[h].settled_entry(session).await;
    for server in servers {
        server.stop().await;
    }
    (
        table,
        status.code(),
        status.message().to_owned(),
        entry.decision,
        entry.reason,
    )
}

/// Both cases of the attack `bend()` makes look the same to the attacker, and the refusal is
/// the expected one.
async fn same_either_way<B: FnMut(u8, ChainMessage) -> Vec<(u8, ChainMessage)>>(
    bend: impl Fn() -> B,
    refused_by: &str,
    message: &str,
) {
    let held = attack(true, bend()).await;
    let stranger = attack(false, bend()).await;
    assert_eq!(held, stranger, "the attacker tells the two cases apart");
    assert_eq!(held.0, refused_by, "{held:?}");
    assert_eq!(held.1, tonic::Code::InvalidArgument, "{held:?}");
    assert!(held.2.contains(message), "{held:?}");
    assert_eq!(held.3, Decision::Failed, "{held:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_candidate_is_refused_by_the_first_filter_alike() {
    let repeat = |to: u8, message: ChainMessage| match to {
        1 => vec![(to, repeat_a_candidate(message))],
        _ => vec![(to, message)],
    };
    same_either_way(|| repeat, "visits_b", "the same identifier was sent twice").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_altered_hop_is_refused_by_the_provider_it_was_sealed_to_alike() {
    let alter = || {
        let mut seen = 0;
        move |to: u8, message: ChainMessage| match message {
            ChainMessage::Hop {
                to: for_whom,
                mut sealed,
            } if to == 2 => {
                // The third hop to the matcher: past the hellos, among the candidates.
                seen += 1;
                if seen == 3 {
                    let last = sealed.len() - 1;
                    sealed[last] ^= 1;
                }
                vec![(
                    to,
                    ChainMessage::Hop {
                        to: for_whom,
                        sealed,
                    },
                )]
            }
            other => vec![(to, other)],
        }
    };
    same_either_way(alter, "visits_a", "sealed hop refused").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn candidates_sent_past_the_filter_are_refused_by_the_matcher_alike() {
    // The querier's own items, also handed straight to the matcher: they did not pass the
    // filter, and the matcher takes the receiver's side only sealed by the last filter.
    let skip = |to: u8, message: ChainMessage| match message {
        items @ ChainMessage::Aggregate(AggregateMessage::ReceiverItems { .. }) if to == 1 => {
            vec![(2, items.clone()), (to, items)]
        }
        other => vec![(to, other)],
    };
    same_either_way(|| skip, "visits_a", "accepts only sealed hops").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_identifier_of_any_member_crosses_the_querier_s_connections() {
    let fx = hospitals(true);
    let servers = fx.start().await;
    let bent = fx.bent_query(&servers, SQL, |to, m| vec![(to, m)]).await;
    assert!(bent.refused.is_none(), "{:?}", bent.refused.map(|r| r.1));
    assert!(bent.wire.len() > 10);
    // Every byte any provider sent another passed here: none holds an identifier, raw or
    // normalized, of the registry or of either hospital.
    for needle in [&b"patient"[..], b"Patient", b"example.org", b"Example.org"] {
        assert!(
            !bent
                .wire
                .iter()
                .any(|m| m.windows(needle.len()).any(|w| w == needle)),
            "{} on the wire",
            String::from_utf8_lossy(needle)
        );
    }
    for server in servers {
        server.stop().await;
    }
}

/// Under privacy, what the querier is told of a filter's set size carries noise: the filter
/// pads its set with random points before it announces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_privacy_a_filter_announces_its_size_with_noise() {
    let fx = cleanroom_testkit::chain::Hospitals::private(2, 3, 10.0, 1.0);
    let servers = fx.start().await;
    let bent = fx.bent_query(&servers, SQL, |to, m| vec![(to, m)]).await;
    assert!(bent.refused.is_none(), "{:?}", bent.refused.map(|r| r.1));
    let announced: Vec<u64> = bent
        .wire
        .iter()
        .filter_map(|bytes| {
            match <ChainMessage as cleanroom_psi::WireMessage>::decode(bytes).ok()? {
                ChainMessage::FilterHello { size } => Some(size),
                _ => None,
            }
        })
        .collect();
    let exact = fx.visits[1]
        .rows
        .iter()
        .map(|r| r[0].trim().to_lowercase())
        .collect::<std::collections::BTreeSet<_>>()
        .len() as u64;
    assert_eq!(announced.len(), 1);
    assert!(announced[0] > exact, "{announced:?} against {exact}");
    for server in servers {
        server.stop().await;
    }
}

/// A filter that bends what it seals to the matcher (it repeats one candidate it passes on),
/// through the real querier and the real matcher: the matcher refuses the session alike
/// whether or not it holds that candidate, and the filter's own view (what it received, its
/// audit entry) is the same in both cases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_that_repeats_a_candidate_it_seals_is_refused_by_the_matcher_alike() {
    let run = |matcher_holds: bool| async move {
        // The filter (visits_b) holds every patient; the matcher (visits_a) all or none.
        let mut fx = hospitals(true);
        fx.set_visits(0, patients(if matcher_holds { 0 } else { 20_000 }));
        let servers = fx.start().await;
        let bend: cleanroom_testkit::chain::Bend = Box::new(repeat_a_candidate);
        let filter = fx.bending(1, &servers[1], 0, bend).await;
        let mut configs = fx.servers(&servers);
        configs.get_mut("visits_b").unwrap().server = format!("http://{}", filter.addr);
        let data = fx.registry_data();
        let outcome = cleanroom_service::client::run_chain_query(
            cleanroom_service::Query {
                collaboration: &fx.collaboration,
                member: "registry",
                sql: SQL,
                data: &data,
                receivers: &[],
            },
            &configs,
            None,
        )
        .await;
        let refusal = match outcome {
            Err(cleanroom_service::ClientError::Remote(remote)) => {
                (remote.code, remote.message.clone())
            }
            other => panic!("the matcher refuses: {:?}", other.map(|o| o.result)),
        };
        // What the filter received (its call ends whenever the querier hangs up, which is not
        // the filter's to see: compared are the messages and the audit entry).
        // The querier interleaves its messages as the network lets it: compared as a multiset.
        let mut seen = filter.seen.lock().unwrap().0.clone();
        seen.sort_unstable();
        let mut entries = servers[1].state.entries(None, None).unwrap();
        for _ in 0..400 {
            if entries.iter().all(|e| e.decision != Decision::Running) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
            entries = servers[1].state.entries(None, None).unwrap();
        }
        let audit: Vec<(Decision, String)> = entries
            .iter()
            .map(|e| (e.decision, e.reason.clone()))
            .collect();
        filter.stop();
        for server in servers {
            server.stop().await;
        }
        (refusal, seen, audit)
    };
    let holds = run(true).await;
    let strangers = run(false).await;
    assert!(holds.0.1.contains("sent twice"), "{:?}", holds.0);
    assert_eq!(
        holds, strangers,
        "the filter or the querier tells the two cases apart"
    );
    assert_eq!(holds.2[0].0, Decision::Filtered);
}
