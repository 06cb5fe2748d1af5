//! The attacks of issue 14, replayed against the real service.
//!
//! Each test plays one attacker: a querier speaking the psi receiver's protocol by hand (with
//! keys it knows, so it can aim at one identifier) against the in-process server, or a
//! provider lying to the real [`Client`]. Every attack is run twice, in the two cases the
//! attacker wants to tell apart (the target is the provider's or not; the querier's value is
//! under `k` or not; the querier holds the identifier or not), and the test asserts that what
//! the attacker observes is the same in both: gRPC status code and message, released messages
//! and summary, the querier's own audit view (ids and times blanked) and charge, or the
//! client's behaviour on the wire. The old code (before a9f3a0d) answered differently in each
//! of these cases. Attack 6 (range proofs) is not here.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cleanroom_psi::ecdh::aggregate::items_context;
use cleanroom_psi::elgamal::{LIMBS_PER_VALUE, ValueKey, ValuePublicKey};
use cleanroom_psi::key::BlindingKey;
use cleanroom_psi::range_proof::{ValueRange, encrypt_and_prove};
use cleanroom_psi::test_vector::TestVectorRng;
use cleanroom_psi::wire::{PointBytes, Tag};
use cleanroom_psi::{
    AggregateMessage, Domain, Limits as PsiLimits, ListMessage, ListProvider, Matcher, WireMessage,
};
use cleanroom_rules::{Collaboration, Plan, encode_group_key};
use cleanroom_service::client::{ClientError, Query};
use cleanroom_service::proto::clean_room_service_server::{
    CleanRoomService, CleanRoomServiceServer,
};
use cleanroom_service::proto::{
    AuditEntry, GetServerInfoRequest, GetServerInfoResponse, ListAuditEntriesRequest,
    ListAuditEntriesResponse, PsiMessage, RunSessionRequest, RunSessionResponse, SessionAccepted,
    SessionStart, SessionSummary, TableDescriptor, run_session_request, run_session_response,
};
use cleanroom_service::{Client, Decision, Limits, ServerConfig, StateDb};
use cleanroom_testkit::*;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Code, Status, Streaming};

type Outbound = mpsc::Sender<RunSessionRequest>;
type Inbound = Streaming<RunSessionResponse>;

/// Buyers and revenue over the whole join: a plan grouped on neither side.
const TOTAL: &str = "SELECT COUNT(DISTINCT c.email) AS buyers, SUM(c.amount) AS revenue \
    FROM impressions i JOIN conversions c ON i.email = c.email";

/// An identifier the publisher never holds (its users are 0..400).
const STRANGER: &str = "user950@example.com";

// ------------------------------------------------------------------ the querier attacker

/// A psi receiver written by hand, with keys the attacker chose: it can put any identifier
/// in any group, give any item any ciphertext, and send any tags.
struct Attacker {
    domain: Domain,
    key: BlindingKey,
    values: Option<ValueKey>,
    columns: usize,
    /// The ranges the plan makes it prove its values lie in (private plans with value columns).
    ranges: Option<Vec<ValueRange>>,
    /// Whether the plan is private.
    private: bool,
}

impl Attacker {
    fn new(plan: &Plan) -> Attacker {
        let columns = plan.receiver().value_columns.len();
        Attacker {
            domain: plan.domain(),
            key: BlindingKey::from_test_vector_bytes([7; 32]).unwrap(),
            values: (columns > 0).then(|| ValueKey::generate(columns)),
            columns,
            ranges: plan
                .privacy()
                .and_then(|p| p.proven_ranges())
                .map(|r| r.iter().map(|&(lo, hi)| ValueRange { lo, hi }).collect()),
            private: plan.privacy().is_some(),
        }
    }

    fn hello(&self, group_sizes: Vec<u64>) -> AggregateMessage {
        AggregateMessage::ReceiverHello {
            value_keys: self
                .values
                .as_ref()
                .map(|k| k.public_key().to_bytes())
                .unwrap_or_default(),
            group_sizes,
        }
    }

    /// `b·H(id)` for a normalized identifier.
    fn point(&self, id: &str) -> PointBytes {
        PointBytes(
            self.key
                .blind(&self.domain.hash_to_group(id))
                .compress()
                .to_bytes(),
        )
    }

    /// The items of receiver group `group`, each with the value 10 in every column; with their
    /// range proofs when the plan's ranges are proven (the group's first chunk).
    fn items(&self, group: u32, ids: &[String]) -> AggregateMessage {
        let values = vec![vec![10u64; self.columns]; ids.len()];
        if let (Some(ranges), Some(key)) = (&self.ranges, &self.values) {
            let values: Vec<&[u64]> = values.iter().map(Vec::as_slice).collect();
            let (ciphertexts, proof) =
                encrypt_and_prove(key, ranges, &values, &items_context(group, 0)).unwrap();
            return AggregateMessage::ReceiverProvenItems {
                group,
                value_columns: self.columns as u8,
                points: ids.iter().map(|id| self.point(id)).collect(),
                ciphertexts,
                proof: proof.to_bytes(),
            };
        }
        AggregateMessage::ReceiverItems {
            group,
            value_columns: self.columns as u8,
            points: ids.iter().map(|id| self.point(id)).collect(),
            ciphertexts: self
                .values
                .as_ref()
                .map(|k| k.encrypt_to_bytes(&values))
                .unwrap_or_default(),
        }
    }

    /// Honest tags of the matcher's points: `Tag(b·(a·H(x)))`.
    fn tags(&self, points: &[PointBytes]) -> Vec<Tag> {
        self.reblind(points).iter().map(|p| Tag::of(&p.0)).collect()
    }

    /// The matcher's points re-blinded: `b·P`.
    fn reblind(&self, points: &[PointBytes]) -> Vec<PointBytes> {
        points
            .iter()
            .map(|p| PointBytes(self.key.blind(&p.decode().unwrap()).compress().to_bytes()))
            .collect()
    }

    /// The answer to matcher group `group` of `groups`, re-blinded points changed by `tamper`
    /// first: their tags, or, when the matcher blinds each of several groups with a key of its
    /// own (privacy), the points themselves.
    fn reply(
        &self,
        group: u32,
        groups: usize,
        points: &[PointBytes],
        tamper: impl Fn(&mut Vec<PointBytes>),
    ) -> AggregateMessage {
        let mut reblinded = self.reblind(points);
        tamper(&mut reblinded);
        if self.private && groups > 1 {
            AggregateMessage::ReceiverTagPoints {
                group,
                points: reblinded,
            }
        } else {
            AggregateMessage::ReceiverTags {
                group,
                tags: reblinded.iter().map(|p| Tag::of(&p.0)).collect(),
            }
        }
    }
}

fn psi(payload: Vec<u8>) -> RunSessionRequest {
    RunSessionRequest {
        message: Some(run_session_request::Message::Psi(PsiMessage { payload })),
    }
}

/// Sends one protocol message; the server may already have ended the call, which is fine.
async fn send(tx: &Outbound, message: &impl WireMessage) {
    let _ = tx.send(psi(message.encode())).await;
}

/// The advertiser's session start for `sql`, declaring `rows` rows of its conversions.
fn start(fx: &Fixture, sql: &str, rows: u64) -> RunSessionRequest {
    RunSessionRequest {
        message: Some(run_session_request::Message::Start(SessionStart {
            collaboration_id: fx.collaboration.id().to_owned(),
            member: "advertiser".to_owned(),
            sql: sql.to_owned(),
            table: Some(TableDescriptor {
                name: "conversions".to_owned(),
                columns: fx.conversions.header.clone(),
                rows,
                skipped_rows: 0,
            }),
            agreement: cleanroom_testkit::client::honest_agreement(
                &fx.collaboration,
                "advertiser",
                sql,
            ),
            receivers: Vec::new(),
            result_keys: Vec::new(),
            buckets: 0,
            job_id: String::new(),
            chain_context: Vec::new(),
        })),
    }
}

/// Opens a session the server accepts; returns the streams and the session id.
async fn open(server: &Running, start: RunSessionRequest) -> (Outbound, Inbound, String) {
    let mut client = raw_client(server.addr, Some(ADVERTISER_TOKEN)).await;
    let (tx, mut inbound) = raw_open(&mut client, start)
        .await
        .expect("the session is accepted");
    match inbound.message().await.unwrap().and_then(|m| m.message) {
        Some(run_session_response::Message::Accepted(a)) => (tx, inbound, a.session_id),
        other => panic!("expected an acceptance, got {other:?}"),
    }
}

/// Reads the matcher's hello and every one of its points, per group.
async fn matcher_points(inbound: &mut Inbound) -> Vec<Vec<PointBytes>> {
    let mut groups: Vec<Vec<PointBytes>> = Vec::new();
    let mut sizes: Option<Vec<u64>> = None;
    loop {
        if let Some(sizes) = &sizes
            && sizes.iter().zip(&groups).all(|(s, g)| *s == g.len() as u64)
        {
            return groups;
        }
        match inbound.message().await.unwrap().and_then(|m| m.message) {
            Some(run_session_response::Message::Psi(PsiMessage { payload })) => {
                match AggregateMessage::decode(&payload).unwrap() {
                    AggregateMessage::MatcherHello { group_sizes } => {
                        groups = vec![Vec::new(); group_sizes.len()];
                        sizes = Some(group_sizes);
                    }
                    AggregateMessage::MatcherPoints { group, points } => {
                        groups[group as usize].extend(points)
                    }
                    other => panic!("unexpected {}", other.kind()),
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// What the querier sees of a session's end: its error status, or its release messages and
/// summary. Session ids are blanked, and the summary's timing and running query counts.
#[derive(Debug, PartialEq)]
enum Seen {
    Status(Code, String),
    Released(Vec<AggregateMessage>, Box<SessionSummary>),
}

async fn seen(inbound: &mut Inbound, session_id: &str) -> Seen {
    let read = async {
        let mut messages = Vec::new();
        loop {
            match inbound.message().await?.and_then(|m| m.message) {
                Some(run_session_response::Message::Psi(PsiMessage { payload })) => {
                    match AggregateMessage::decode(&payload).unwrap() {
                        AggregateMessage::MatcherHello { .. }
                        | AggregateMessage::MatcherPoints { .. } => {}
                        release => messages.push(release),
                    }
                }
                Some(run_session_response::Message::Summary(mut summary)) => {
                    summary.session_id.clear();
                    if let Some(stats) = &mut summary.stats {
                        stats.elapsed_ms = 0;
                    }
                    // The member's running query counts grow by one a session, whatever it
                    // is: each case is charged alike, the totals differ by the order of runs.
                    if let Some(standing) = &mut summary.standing {
                        standing.queries = 0;
                        standing.queries_today = 0;
                    }
                    return Ok::<_, Status>((messages, summary));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("the server ends the session")
    {
        Ok((messages, summary)) => Seen::Released(messages, Box::new(summary)),
        Err(status) => Seen::Status(
            status.code(),
            status.message().replace(session_id, "<session>"),
        ),
    }
}

/// The querier's own audit entry of a session (ListAuditEntries), once complete, with its id
/// and times blanked: what the attacker can compare between its two cases.
async fn audit_view(server: &Running, session_id: &str) -> AuditEntry {
    server.settled_entry(session_id).await;
    let mut client = raw_client(server.addr, Some(ADVERTISER_TOKEN)).await;
    let entries = client
        .list_audit_entries(ListAuditEntriesRequest {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    let mut entry = entries
        .into_iter()
        .find(|e| e.session_id == session_id)
        .expect("the querier sees its entry");
    entry.session_id.clear();
    entry.started_at.clear();
    entry.finished_at.clear();
    entry.reason = entry.reason.replace(session_id, "<session>");
    entry
}

/// The advertiser's queries charged so far (its standing's count).
fn queries_charged(server: &Running) -> u64 {
    server
        .state
        .standings()
        .unwrap()
        .iter()
        .filter(|s| s.member == "advertiser")
        .map(|s| s.queries)
        .sum()
}

/// All the querier can compare between its two cases: the end of the session, its own
/// audit entry, and what the session was charged.
#[derive(Debug, PartialEq)]
struct View {
    seen: Seen,
    entry: AuditEntry,
    charged: u64,
}

/// Under privacy the provider pads its groups with a fresh random number of dummies each
/// session: the bytes moved vary from session to session whatever the querier holds, and are
/// left out of the comparison.
fn blank_padded_sizes(views: &mut [View]) {
    for view in views {
        view.entry.bytes_sent = 0;
        view.entry.bytes_received = 0;
    }
}

/// Asserts that the attacker's two views (its target a member of the provider's data, then a
/// stranger) are the same, the padded byte counts of a private session aside, and that both
/// are a refusal with `code`; returns the refusal's message.
fn refused_alike(views: &mut [View], private: bool, sql: &str, code: Code) -> String {
    if private {
        blank_padded_sizes(views);
    }
    assert_eq!(views[0], views[1], "{sql}: member and stranger differ");
    let Seen::Status(got, message) = &views[0].seen else {
        panic!("{sql}: the attack was not refused: {:?}", views[0]);
    };
    assert_eq!(*got, code, "{message}");
    message.clone()
}

/// One identifier the publisher holds, normalized (among rows passing `keep`).
fn member(fx: &Fixture, keep: impl Fn(&[String]) -> bool) -> String {
    fx.publisher_sets(keep, |_| String::new())
        .remove("")
        .unwrap()
        .into_iter()
        .find(|e| e.starts_with("user3"))
        .unwrap()
}

fn fillers(prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("{prefix}{i}@nowhere.example"))
        .collect()
}

// ----------------------------------------------------------------------------- attack 1

/// Attack 1, abort oracle on ciphertexts: the querier gives its target identifier a
/// ciphertext that does not decode (and honest ones to eight fillers), then plays on. The old
/// matcher decoded a ciphertext only once it matched: INVALID_ARGUMENT iff the target was the
/// provider's (in a provider group, for a plan grouped on the provider's side). Defence: every
/// ciphertext is decoded on arrival, so both cases end with the same status, audit entry and
/// charge, in exact mode and under privacy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_ciphertext_fails_alike_for_members_and_strangers() {
    // Exact, and under privacy (where every item's ciphertext is added, matched or not).
    for fx in [Fixture::new(5), Fixture::private(5, 100.0, 0.5)] {
        let server = start_server(&fx, Limits::default(), None).await;
        let target = member(&fx, |_| true);
        for sql in [TOTAL, BY_CAMPAIGN] {
            let plan = fx.collaboration.plan("advertiser", sql).unwrap();
            let attacker = Attacker::new(&plan);
            let mut views = Vec::new();
            for who in [target.as_str(), STRANGER] {
                let mut ids = fillers("f", 8);
                ids.push(who.to_owned());
                // The last item's ciphertext is not a point encoding.
                let garble = |items: &mut AggregateMessage| {
                    let (AggregateMessage::ReceiverItems { ciphertexts, .. }
                    | AggregateMessage::ReceiverProvenItems { ciphertexts, .. }) = items
                    else {
                        unreachable!("items")
                    };
                    let width = ciphertexts.len() / 9;
                    ciphertexts[8 * width..].fill(0xFF);
                };
                let groups = [ids];
                views.push(
                    play_tampered(&fx, &server, sql, &attacker, &groups, garble, |_| {}).await,
                );
            }
            let private = plan.privacy().is_some();
            refused_alike(&mut views, private, sql, Code::InvalidArgument);
            assert_eq!(views[0].charged, 1, "a failed session keeps its charge");
            let entry = &views[0].entry;
            assert_eq!(entry.decision(), cleanroom_service::proto::Decision::Failed);
            assert_eq!((entry.released_rows, entry.suppressed_rows), (0, 0));
        }
        server.stop().await;
    }
}

/// Plays a whole session as `attacker` with receiver groups `groups`, letting `tamper` change
/// each matcher group's tags before they are sent; returns all the querier can compare.
async fn play(
    fx: &Fixture,
    server: &Running,
    sql: &str,
    attacker: &Attacker,
    groups: &[Vec<String>],
    tamper: impl Fn(&mut Vec<PointBytes>),
) -> View {
    play_tampered(fx, server, sql, attacker, groups, |_| {}, tamper).await
}

/// [`play`], also letting `tamper_items` change each chunk of items (one per receiver group)
/// before it is sent.
async fn play_tampered(
    fx: &Fixture,
    server: &Running,
    sql: &str,
    attacker: &Attacker,
    groups: &[Vec<String>],
    tamper_items: impl Fn(&mut AggregateMessage),
    tamper: impl Fn(&mut Vec<PointBytes>),
) -> View {
    let before = queries_charged(server);
    let (tx, mut inbound, id) = open(server, start(fx, sql, 601)).await;
    let points = matcher_points(&mut inbound).await;
    send(
        &tx,
        &attacker.hello(groups.iter().map(|g| g.len() as u64).collect()),
    )
    .await;
    for (g, ids) in groups.iter().enumerate() {
        let mut items = attacker.items(g as u32, ids);
        tamper_items(&mut items);
        send(&tx, &items).await;
    }
    for (g, group_points) in points.iter().enumerate() {
        let reply = attacker.reply(g as u32, points.len(), group_points, &tamper);
        send(&tx, &reply).await;
    }
    let seen = seen(&mut inbound, &id).await;
    drop(tx);
    let entry = audit_view(server, &id).await;
    View {
        seen,
        entry,
        charged: queries_charged(server) - before,
    }
}

// ----------------------------------------------------------------------------- attack 2

/// Attack 2, abort oracle on duplicate tags: the querier replaces the second half of each
/// provider group's tags by copies of the first half. The old matcher refused a repeated tag
/// only when it matched one of the querier's items, so holding the provider's identifiers
/// (case 1) failed and holding strangers (case 2) did not. Defence: a group's tags are checked
/// for repeats once the group is complete, before any lookup: the same DuplicateTag failure,
/// in exact mode and under privacy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_tags_fail_alike_whatever_matches() {
    // Exact, and under privacy (where every item's ciphertext is added, matched or not).
    for fx in [Fixture::new(5), Fixture::private(5, 100.0, 0.5)] {
        let server = start_server(&fx, Limits::default(), None).await;
        let members: Vec<String> = fx
            .publisher_sets(|_| true, |_| String::new())
            .remove("")
            .unwrap()
            .into_iter()
            .collect();
        let strangers = fillers("s", members.len());
        let duplicate_half = |tags: &mut Vec<PointBytes>| {
            let half = tags.len() / 2;
            for i in half..tags.len() {
                tags[i] = tags[i - half];
            }
        };
        for sql in [TOTAL, BY_CAMPAIGN] {
            let plan = fx.collaboration.plan("advertiser", sql).unwrap();
            let attacker = Attacker::new(&plan);
            let mut views = Vec::new();
            for held in [&members, &strangers] {
                views.push(
                    play(
                        &fx,
                        &server,
                        sql,
                        &attacker,
                        std::slice::from_ref(held),
                        duplicate_half,
                    )
                    .await,
                );
            }
            let private = plan.privacy().is_some();
            let message = refused_alike(&mut views, private, sql, Code::InvalidArgument);
            assert!(message.contains("sent twice"), "{message}");
        }
        server.stop().await;
    }
}

// ----------------------------------------------------------------------------- attack 6

/// Attack 6, out-of-range values in DP sums: under privacy the querier encrypts its own values,
/// so it tried to give its target a value with a flag far above `sum_bounds` (bit 16 + i of a
/// limb) and read the target's membership out of one noisy sum. Defence: every chunk carries
/// range proofs the server verifies on arrival; the attacker proves honest values and swaps the
/// target's ciphertext for the flagged one, and the session fails the same way (same status,
/// audit entry and charge) whether the target is the provider's or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_out_of_range_value_is_refused_alike_for_members_and_strangers() {
    let fx = Fixture::private(5, 100.0, 0.5);
    let server = start_server(&fx, Limits::default(), None).await;
    let target = member(&fx, |_| true);
    for sql in [TOTAL, BY_CAMPAIGN] {
        let plan = fx.collaboration.plan("advertiser", sql).unwrap();
        let attacker = Attacker::new(&plan);
        let key = attacker.values.as_ref().expect("a summing plan");
        // The flag: a high limb of 2^19 (bit 16 + 3 of a limb), far above any sum_bounds.
        let flagged = key.encrypt_to_bytes(&[vec![(1u64 << 35) | 10]]);
        let mut views = Vec::new();
        for who in [target.as_str(), STRANGER] {
            let mut ids = fillers("f", 8);
            ids.push(who.to_owned());
            // The last item's ciphertext swapped for the flagged one, its proof left as it was.
            let flag = |items: &mut AggregateMessage| {
                let AggregateMessage::ReceiverProvenItems { ciphertexts, .. } = items else {
                    panic!("{sql}: the plan's ranges must be proven")
                };
                let width = ciphertexts.len() / 9;
                ciphertexts[8 * width..].copy_from_slice(&flagged);
            };
            let groups = [ids];
            views.push(play_tampered(&fx, &server, sql, &attacker, &groups, flag, |_| {}).await);
        }
        let message = refused_alike(&mut views, true, sql, Code::InvalidArgument);
        assert_eq!(views[0].charged, 1, "a failed session keeps its charge");
        assert!(message.contains("range proof"), "{message}");
    }
    server.stop().await;
}

// ----------------------------------------------------------------------------- attack 3

/// Attack 3, free noisy hellos: under `[collaboration.privacy]` the provider's hello carries
/// noisy (padded) group sizes; the querier cancels right after reading it. The old server
/// charged nothing for a session that released nothing. Defence: the charge is made at
/// admission, before the hello, and stays: with a budget of 1.0 and 0.25 per query, four
/// cancelled sessions spend it all and the fifth start is refused `budget_exhausted`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_noisy_hellos_spend_the_budget() {
    let fx = Fixture::private(5, 1.0, 0.25);
    let server = start_server(&fx, Limits::default(), None).await;
    for _ in 0..4 {
        let (tx, mut inbound, id) = open(&server, start(&fx, BY_CAMPAIGN, 601)).await;
        match inbound.message().await.unwrap().and_then(|m| m.message) {
            Some(run_session_response::Message::Psi(PsiMessage { payload })) => assert!(matches!(
                AggregateMessage::decode(&payload).unwrap(),
                AggregateMessage::MatcherHello { .. }
            )),
            other => panic!("expected the noisy hello, got {other:?}"),
        }
        drop((tx, inbound));
        let entry = server.settled_entry(&id).await;
        assert_eq!(entry.decision, Decision::Cancelled, "{entry:?}");
        assert_eq!((entry.released_rows, entry.suppressed_rows), (0, 0));
    }
    let standing = server
        .state
        .standings()
        .unwrap()
        .into_iter()
        .find(|s| s.member == "advertiser")
        .expect("the cancelled sessions were charged");
    assert_eq!(
        (standing.queries, standing.epsilon_spent.as_f64()),
        (4, 1.0),
        "{standing:?}"
    );
    let mut client = raw_client(server.addr, Some(ADVERTISER_TOKEN)).await;
    let status = raw_open(&mut client, start(&fx, BY_CAMPAIGN, 601))
        .await
        .expect_err("the fifth session is refused");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(refusal_codes(&status), ["budget_exhausted"], "{status:?}");
    server.stop().await;
}

/// Attack 3, raced: eight sessions opened at once against a budget for four. The charge is
/// checked and recorded in one transaction at admission, so exactly four are accepted (each
/// reading its noisy hello for the price of a query) and four are refused `budget_exhausted`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_noisy_sessions_cannot_overdraw_the_budget() {
    let fx = Fixture::private(5, 1.0, 0.25);
    let limits = Limits {
        max_concurrent_sessions: 16,
        ..Limits::default()
    };
    let server = start_server(&fx, limits, None).await;
    let mut opening = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (addr, start) = (server.addr, start(&fx, BY_CAMPAIGN, 601));
        opening.spawn(async move {
            let mut client = raw_client(addr, Some(ADVERTISER_TOKEN)).await;
            raw_open(&mut client, start).await
        });
    }
    let mut open = Vec::new();
    let mut refused = Vec::new();
    while let Some(opened) = opening.join_next().await {
        match opened.unwrap() {
            Ok(session) => open.push(session),
            Err(status) => refused.push(refusal_codes(&status)),
        }
    }
    assert_eq!((open.len(), refused.len()), (4, 4), "{refused:?}");
    assert!(
        refused.iter().all(|codes| codes == &["budget_exhausted"]),
        "{refused:?}"
    );
    drop(open);
    server.stop().await;
}

// ----------------------------------------------------------------------------- attack 4

/// Attack 4, exact provider counts in the querier's view: the querier's summary and audit
/// entries carried `matcher_rows`, the provider's exact row count (duplicates and empty
/// identifiers included), which the protocol's set sizes do not reveal. Two providers with
/// the same distinct identifiers but twice the rows must look identical to the querier: same
/// result, summary, audit entry and server info; only the provider's own log holds its row
/// count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_querier_never_sees_the_providers_row_count() {
    let fx = Fixture::new(5);
    // The same rows twice, and a few rows without an identifier.
    let mut doubled = Csv {
        header: fx.impressions.header.clone(),
        rows: fx.impressions.rows.clone(),
    };
    doubled.rows.extend(fx.impressions.rows.iter().cloned());
    for _ in 0..5 {
        doubled
            .rows
            .push(vec![" ".to_owned(), "spring".to_owned(), "EU".to_owned()]);
    }
    doubled.write(&fx.path("impressions-doubled.csv"));
    let mut views = Vec::new();
    let mut provider_rows = Vec::new();
    for file in ["impressions.csv", "impressions-doubled.csv"] {
        let server = serve_in_process(ServerConfig {
            collaboration: Arc::clone(&fx.collaboration),
            member: "publisher".to_owned(),
            data: BTreeMap::from([("impressions".to_owned(), fx.path(file).into())]),
            limits: Limits::default(),
            connections: cleanroom_service::ConnectionLimits::default(),
            state: Arc::new(StateDb::open(fx.path(&format!("state-{file}.db"))).unwrap()),
            tls: None,
            client_ca: None,
            insecure: false,
            on_session_end: None,
            work_dir: None,
            relay_key: None,
        })
        .await;
        let outcome = run_query(&fx, format!("http://{}", server.addr), TOTAL)
            .await
            .unwrap();
        let id = outcome.summary.session_id.clone();
        let mut summary = outcome.summary.clone();
        summary.session_id.clear();
        if let Some(stats) = &mut summary.stats {
            stats.elapsed_ms = 0;
        }
        provider_rows.push(server.settled_entry(&id).await.matcher_rows);
        let info = raw_client(server.addr, Some(ADVERTISER_TOKEN))
            .await
            .get_server_info(GetServerInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        views.push((
            outcome.result.rows.clone(),
            summary,
            audit_view(&server, &id).await,
            info,
        ));
        server.stop().await;
    }
    assert_eq!(views[0], views[1]);
    assert_ne!(provider_rows[0], provider_rows[1], "{provider_rows:?}");
}

// ----------------------------------------------------------------------------- attack 5

/// Attack 5, the suppressed count as an oracle: in exact mode the querier announces two
/// groups, 150 strangers and its target alone. The old `suppressed` counted only pairs that
/// matched something: 1 iff the target was the provider's. Defence: every announced pair not
/// released counts, so a plan grouped on the querier's side (EU_BY_CHANNEL) releases the same
/// nothing with the same counts; an ungrouped plan (TOTAL) refuses the two-group hello,
/// identically in both cases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suppressed_count_is_the_same_for_members_and_strangers() {
    let fx = Fixture::new(5);
    let server = start_server(&fx, Limits::default(), None).await;
    let region = fx.impressions.column("region");
    let target = member(&fx, |r| r[region] == "EU");
    for sql in [EU_BY_CHANNEL, TOTAL] {
        let plan = fx.collaboration.plan("advertiser", sql).unwrap();
        let attacker = Attacker::new(&plan);
        let mut views = Vec::new();
        for who in [target.as_str(), STRANGER] {
            let groups = [fillers("r", 150), vec![who.to_owned()]];
            views.push(play(&fx, &server, sql, &attacker, &groups, |_| {}).await);
        }
        assert_eq!(views[0], views[1], "{sql}: member and stranger differ");
        assert_eq!(views[0].charged, 1);
        match &views[0].seen {
            Seen::Released(messages, summary) if sql == EU_BY_CHANNEL => {
                let done = AggregateMessage::MatcherDone {
                    released: 0,
                    suppressed: 2,
                    bounded: 0,
                };
                assert_eq!(messages, &[done]);
                assert_eq!((summary.released_rows, summary.suppressed_rows), (0, 2));
            }
            Seen::Status(code, message) if sql == TOTAL => {
                assert_eq!(*code, Code::InvalidArgument, "{message}");
                assert!(message.contains("group"), "{message}");
            }
            other => panic!("{sql}: {other:?}"),
        }
    }
    server.stop().await;
}

// ----------------------------------------------------------------------------- attack 9

/// The probability that a time of `a` exceeds one of `b` (Mann–Whitney U over |a|·|b|).
fn auc(a: &[f64], b: &[f64]) -> f64 {
    let mut u = 0.0;
    for x in a {
        for y in b {
            u += if x > y {
                1.0
            } else if x == y {
                0.5
            } else {
                0.0
            };
        }
    }
    u / (a.len() * b.len()) as f64
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Receiver groups for the timing attack: `who` alone in each of `copies` groups, and five
/// strangers (so the set reaches the threshold).
fn target_in_groups(
    attacker: &Attacker,
    who: &str,
    copies: u32,
) -> (AggregateMessage, Vec<Vec<u8>>) {
    let mut sizes = vec![1u64; copies as usize];
    sizes.push(5);
    let mut items: Vec<Vec<u8>> = (0..copies)
        .map(|g| attacker.items(g, &[who.to_owned()]).encode())
        .collect();
    items.push(attacker.items(copies, &fillers("t", 5)).encode());
    (attacker.hello(sizes), items)
}

/// One timed session: the whole hello and items, every tag but one, then a malformed
/// message. Returns what the querier saw and the time from the last tags to the status.
async fn timed_session(
    fx: &Fixture,
    server: &Running,
    sql: &str,
    attacker: &Attacker,
    (hello, items): &(AggregateMessage, Vec<Vec<u8>>),
) -> (Seen, Duration) {
    let (tx, mut inbound, id) = open(server, start(fx, sql, 3000)).await;
    let points = matcher_points(&mut inbound).await;
    send(&tx, hello).await;
    for item in items {
        let _ = tx.send(psi(item.clone())).await;
    }
    // Let the server take in the items before the clock starts.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let mut tags: Vec<AggregateMessage> = points
        .iter()
        .enumerate()
        .map(|(g, p)| AggregateMessage::ReceiverTags {
            group: g as u32,
            tags: attacker.tags(p),
        })
        .collect();
    if let Some(AggregateMessage::ReceiverTags { tags, .. }) = tags.last_mut() {
        tags.pop();
    }
    let (last, rest) = tags.split_last().unwrap();
    for message in rest {
        send(&tx, message).await;
    }
    send(&tx, last).await;
    let clock = Instant::now();
    let _ = tx.send(psi(vec![0xFF; 3])).await;
    let seen = seen(&mut inbound, &id).await;
    let elapsed = clock.elapsed();
    drop(tx);
    (seen, elapsed)
}

/// Attack 9, timing before the release: the querier puts its target in many groups of its
/// own, sends every tag but one and then a malformed message. The old matcher looked tags up
/// as they arrived, so the time to the error grew with the matches (+20.6 ms with the target
/// in 2,000 groups). Defence: (a) a plan not grouped on the querier's side refuses a hello
/// with more than one group, the same way in both cases; (b) for a querier-grouped plan
/// nothing is looked up before the last tag, so over 30 + 30 interleaved sessions (target in
/// 1,000 groups: ~10 ms of lookups in the old code, against a ~5 ms baseline) the times from
/// the last tags to the status do not separate member from stranger (AUC within 0.2–0.8),
/// and the status is the same. The clock starts once the server has had time to take in the
/// items (250 ms), so it measures the tags' path, not the queue of items.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_time_to_an_error_does_not_depend_on_matches() {
    const COPIES: u32 = 1000;
    const ROUNDS: usize = 30;
    let fx = Fixture::new(5);
    let server = start_server(&fx, Limits::default(), None).await;
    let region = fx.impressions.column("region");
    let target = member(&fx, |r| r[region] == "EU");

    // (a) Ungrouped: the hello alone is refused.
    let plan = fx.collaboration.plan("advertiser", TOTAL).unwrap();
    let attacker = Attacker::new(&plan);
    let mut refusals = Vec::new();
    for who in [target.as_str(), STRANGER] {
        let (hello, _) = target_in_groups(&attacker, who, 3);
        let before = queries_charged(&server);
        let (tx, mut inbound, id) = open(&server, start(&fx, TOTAL, 3000)).await;
        // The provider's messages first, so the counts of bytes sent do not race the refusal.
        matcher_points(&mut inbound).await;
        send(&tx, &hello).await;
        let seen = seen(&mut inbound, &id).await;
        let entry = audit_view(&server, &id).await;
        let charged = queries_charged(&server) - before;
        refusals.push(View {
            seen,
            entry,
            charged,
        });
    }
    assert_eq!(refusals[0], refusals[1]);
    assert!(
        matches!(&refusals[0].seen, Seen::Status(Code::InvalidArgument, m) if m.contains("group")),
        "{:?}",
        refusals[0]
    );

    // (b) Grouped on the querier's side: timed.
    let plan = fx.collaboration.plan("advertiser", EU_BY_CHANNEL).unwrap();
    let attacker = Attacker::new(&plan);
    let cases = [
        target_in_groups(&attacker, &target, COPIES),
        target_in_groups(&attacker, STRANGER, COPIES),
    ];
    let mut times: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut statuses = Vec::new();
    for round in 0..ROUNDS {
        // Interleaved, alternating which case goes first.
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for case in order {
            let (seen, elapsed) =
                timed_session(&fx, &server, EU_BY_CHANNEL, &attacker, &cases[case]).await;
            times[case].push(elapsed.as_secs_f64() * 1e3);
            statuses.push(seen);
        }
    }
    let first = &statuses[0];
    assert!(
        matches!(first, Seen::Status(Code::InvalidArgument, m) if m.contains("malformed")),
        "{first:?}"
    );
    assert!(statuses.iter().all(|s| s == first), "{statuses:?}");
    let auc = auc(&times[0], &times[1]);
    println!(
        "time to the error: member median {:.2} ms, stranger median {:.2} ms, AUC {auc:.3}",
        median(&times[0]),
        median(&times[1])
    );
    assert!(
        (0.2..=0.8).contains(&auc),
        "the time to the error separates members from strangers: AUC {auc:.3}"
    );
    server.stop().await;
}

// ------------------------------------------------------------------ the lying provider

/// How the lying provider departs from the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lie {
    /// Aggregation: a hello of two groups for a plan with one, the target alone in the second.
    IsolateTarget,
    /// Aggregation: releases its one group with every sum shifted by −k (on the first limb).
    Shift(u64),
    /// Aggregation, for a plan grouped on the provider's side: the target alone in a group of
    /// its own, released (under the threshold) with its sum shifted by −k.
    ShiftTarget(u64),
    /// List: the payload under the target's lookup tag is random bytes.
    GarbleTarget,
    /// List: a hello announcing more payload bytes than the client's cap (set size × width).
    HugeList,
    /// List: the target's lookup tag twice (on its own payload and on another's).
    DuplicateTarget,
    /// Any plan: accepts under other terms than the client's (another normalization).
    OtherTerms,
}

/// A provider that plays the real roles with a key it knows, and lies as `lie` says. It
/// records what it observes of the client: every protocol message (kind and size) and how the
/// client's stream ended.
#[derive(Clone)]
struct LyingProvider {
    collaboration: Arc<Collaboration>,
    data: PathBuf,
    target: String,
    lie: Lie,
    observed: Arc<Mutex<Vec<String>>>,
}

fn psi_response(message: &impl WireMessage) -> Result<RunSessionResponse, Status> {
    Ok(RunSessionResponse {
        message: Some(run_session_response::Message::Psi(PsiMessage {
            payload: message.encode(),
        })),
    })
}

/// `HMAC-SHA256(key, data)` (RFC 2104).
fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    block[..key.len()].copy_from_slice(key);
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(data)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// The lookup tag `T(x)` of a PRF value `compress(a·H(x))`, by the documented HKDF-SHA256.
fn lookup_tag(prf: &[u8; 32]) -> Tag {
    let prk = hmac(b"cleanroom/psi/list", prf);
    let t1 = hmac(&prk, b"cleanroom/psi/list/lookup-tag\x01");
    Tag(t1[..16].try_into().unwrap())
}

/// `s − e`, point by point, of two ciphertexts' bytes.
fn subtract(s: &[u8], e: &[u8]) -> Vec<u8> {
    s.chunks_exact(32)
        .zip(e.chunks_exact(32))
        .flat_map(|(a, b)| {
            let a = PointBytes(a.try_into().unwrap()).decode().unwrap();
            let b = PointBytes(b.try_into().unwrap()).decode().unwrap();
            (a - b).compress().to_bytes()
        })
        .collect()
}

impl LyingProvider {
    fn note(&self, what: String) {
        self.observed.lock().unwrap().push(what);
    }

    /// Reads one protocol message of the client, noting it; `None` once the stream ended.
    async fn next<M: WireMessage>(&self, inbound: &mut Streaming<RunSessionRequest>) -> Option<M> {
        match inbound.message().await {
            Ok(Some(RunSessionRequest {
                message: Some(run_session_request::Message::Psi(PsiMessage { payload })),
            })) => {
                let message = M::decode(&payload).unwrap();
                self.note(format!("{} {}", message.kind(), payload.len()));
                Some(message)
            }
            Ok(Some(other)) => panic!("unexpected {other:?}"),
            Ok(None) => {
                self.note("end: half-closed".to_owned());
                None
            }
            Err(status) => {
                self.note(format!("end: {:?}", status.code()));
                None
            }
        }
    }

    async fn play(
        self,
        plan: Plan,
        mut inbound: Streaming<RunSessionRequest>,
        tx: mpsc::Sender<Result<RunSessionResponse, Status>>,
    ) -> Option<()> {
        let accepted = SessionAccepted {
            session_id: "lie".to_owned(),
            matcher_member: plan.matcher().member.clone(),
            matcher_table: plan.matcher().table.clone(),
            min_release: plan.min_release(),
            value_columns: plan.receiver().value_columns.len() as u32,
            // The terms are honest unless they are the lie.
            agreement: Some(cleanroom_service::agreement(&self.collaboration, &plan)).map(
                |mut terms| {
                    if self.lie == Lie::OtherTerms {
                        terms.receiver_normalization = "none".to_owned();
                    }
                    terms
                },
            ),
            ..SessionAccepted::default()
        };
        tx.send(Ok(RunSessionResponse {
            message: Some(run_session_response::Message::Accepted(accepted)),
        }))
        .await
        .ok()?;
        // Whatever the client does after the protocol (half-close, or reset) is what the
        // provider learns.
        match self.lie {
            Lie::OtherTerms => {
                while self.next::<AggregateMessage>(&mut inbound).await.is_some() {}
                return Some(());
            }
            Lie::IsolateTarget | Lie::Shift(_) | Lie::ShiftTarget(_) => {
                self.aggregate(&plan, &mut inbound, &tx).await?;
                while self.next::<AggregateMessage>(&mut inbound).await.is_some() {}
            }
            Lie::GarbleTarget | Lie::HugeList | Lie::DuplicateTarget => {
                self.list(&plan, &mut inbound, &tx).await?;
                while self.next::<ListMessage>(&mut inbound).await.is_some() {}
            }
        }
        let summary = SessionSummary {
            session_id: "lie".to_owned(),
            ..SessionSummary::default()
        };
        tx.send(Ok(RunSessionResponse {
            message: Some(run_session_response::Message::Summary(summary)),
        }))
        .await
        .ok()
    }

    /// The psi matcher over the impressions and the target; the client's hello and items are
    /// read before anything is sent, so what arrives does not race the client's reaction.
    async fn aggregate(
        &self,
        plan: &Plan,
        inbound: &mut Streaming<RunSessionRequest>,
        tx: &mpsc::Sender<Result<RunSessionResponse, Status>>,
    ) -> Option<()> {
        let mut table =
            cleanroom_service::data::matcher_table(plan, &self.data.clone().into()).unwrap();
        let target_group = match self.lie {
            Lie::IsolateTarget => "the target".to_owned(),
            Lie::ShiftTarget(_) => encode_group_key(&[Some("the target")]),
            _ => String::new(),
        };
        table.push(&target_group, &self.target).unwrap();
        let mut matcher = Matcher::new(&plan.domain(), table, PsiLimits::default());
        let Some(AggregateMessage::ReceiverHello {
            value_keys,
            group_sizes,
        }) = self.next(inbound).await
        else {
            panic!("expected the receiver's hello")
        };
        let key = ValuePublicKey::from_bytes(&value_keys).unwrap();
        let announced: u64 = group_sizes.iter().sum();
        matcher
            .handle_message(AggregateMessage::ReceiverHello {
                value_keys,
                group_sizes,
            })
            .unwrap();
        let mut items = 0;
        while items < announced {
            let message = self.next(inbound).await?;
            if let AggregateMessage::ReceiverItems { points, .. } = &message {
                items += points.len() as u64;
            }
            matcher.handle_message(message).unwrap();
        }
        while let Some(message) = matcher.poll_message() {
            tx.send(psi_response(&message)).await.ok()?;
        }
        while matcher.counts().is_none() {
            matcher.handle_message(self.next(inbound).await?).unwrap();
        }
        matcher.release(|_| true).unwrap();
        while let Some(mut message) = matcher.poll_message() {
            let (k, only) = match self.lie {
                Lie::Shift(k) => (k, None),
                Lie::ShiftTarget(k) => (k, Some(target_group.as_str())),
                _ => (0, None),
            };
            if let AggregateMessage::MatcherResult { groups } = &mut message
                && k > 0
            {
                let mut limbs = vec![0; LIMBS_PER_VALUE * key.value_columns()];
                limbs[0] = k;
                for group in groups {
                    if only.is_none_or(|g| g == group.matcher_group) {
                        group.sums = subtract(&group.sums, &key.encrypt_limbs(&limbs).to_bytes());
                    }
                }
            }
            tx.send(psi_response(&message)).await.ok()?;
        }
        Some(())
    }

    /// The psi list provider over the subscribers with a known key; the client's hello and
    /// points are read before anything is sent.
    async fn list(
        &self,
        plan: &Plan,
        inbound: &mut Streaming<RunSessionRequest>,
        tx: &mpsc::Sender<Result<RunSessionResponse, Status>>,
    ) -> Option<()> {
        const KEY: [u8; 32] = [9; 32];
        let domain = plan.domain();
        let table =
            cleanroom_service::data::list_provider_table(plan, &self.data.clone().into()).unwrap();
        let mut provider = ListProvider::for_test_vector(
            &domain,
            table,
            PsiLimits::default(),
            BlindingKey::from_test_vector_bytes(KEY).unwrap(),
            &TestVectorRng::new(b"a lying provider"),
        );
        let prf = BlindingKey::from_test_vector_bytes(KEY)
            .unwrap()
            .blind(&domain.hash_to_group(&self.target))
            .compress()
            .to_bytes();
        let target_tag = lookup_tag(&prf);
        let Some(ListMessage::ListQuerierHello { set_size }) = self.next(inbound).await else {
            panic!("expected the querier's hello")
        };
        provider
            .handle_message(ListMessage::ListQuerierHello { set_size })
            .unwrap();
        while !provider.is_done() {
            provider.handle_message(self.next(inbound).await?).unwrap();
        }
        let mut garbled = 0;
        while let Some(mut message) = provider.poll_message() {
            match (&mut message, self.lie) {
                (ListMessage::ListProviderHello { set_size, .. }, Lie::HugeList) => {
                    *set_size = 50_000_000
                }
                (
                    ListMessage::ListProviderItems {
                        payload_bytes,
                        tags,
                        payloads,
                    },
                    Lie::GarbleTarget,
                ) => {
                    let width = *payload_bytes as usize;
                    if let Some(i) = tags.iter().position(|t| *t == target_tag) {
                        let mut rng = Rng(0x6A4B);
                        for byte in &mut payloads[i * width..(i + 1) * width] {
                            *byte = rng.next_u64() as u8;
                        }
                        garbled += 1;
                    }
                }
                (ListMessage::ListProviderItems { tags, .. }, Lie::DuplicateTarget) => {
                    if let Some(i) = tags.iter().position(|t| *t == target_tag) {
                        let other = (i + 1) % tags.len();
                        tags[other] = target_tag;
                        garbled += 1;
                    }
                }
                _ => {}
            }
            tx.send(psi_response(&message)).await.ok()?;
        }
        if matches!(self.lie, Lie::GarbleTarget | Lie::DuplicateTarget) {
            assert_eq!(garbled, 1, "the target's payload was found by its tag");
        }
        Some(())
    }
}

#[tonic::async_trait]
impl CleanRoomService for LyingProvider {
    type RunSessionStream = ReceiverStream<Result<RunSessionResponse, Status>>;

    async fn run_session(
        &self,
        request: tonic::Request<Streaming<RunSessionRequest>>,
    ) -> Result<tonic::Response<Self::RunSessionStream>, Status> {
        let mut inbound = request.into_inner();
        let Some(run_session_request::Message::Start(start)) =
            inbound.message().await?.and_then(|m| m.message)
        else {
            return Err(Status::invalid_argument("expected a start"));
        };
        let plan = self
            .collaboration
            .plan(&start.member, &start.sql)
            .map_err(|refusal| Status::invalid_argument(refusal.to_string()))?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(self.clone().play(plan, inbound, tx));
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }

    async fn get_server_info(
        &self,
        _: tonic::Request<GetServerInfoRequest>,
    ) -> Result<tonic::Response<GetServerInfoResponse>, Status> {
        Err(Status::unimplemented("a liar"))
    }

    async fn list_audit_entries(
        &self,
        _: tonic::Request<ListAuditEntriesRequest>,
    ) -> Result<tonic::Response<ListAuditEntriesResponse>, Status> {
        Err(Status::unimplemented("a liar"))
    }

    async fn plan_query(
        &self,
        _: tonic::Request<cleanroom_service::proto::PlanQueryRequest>,
    ) -> Result<tonic::Response<cleanroom_service::proto::PlanQueryResponse>, Status> {
        Err(Status::unimplemented("a liar"))
    }

    type FetchResultStream =
        ReceiverStream<Result<cleanroom_service::proto::FetchResultResponse, Status>>;

    async fn fetch_result(
        &self,
        _: tonic::Request<cleanroom_service::proto::FetchResultRequest>,
    ) -> Result<tonic::Response<Self::FetchResultStream>, Status> {
        Err(Status::unimplemented("a liar"))
    }
}

/// What a client did against a lying provider: its local result, and what the provider saw.
struct AgainstLiar {
    result: Result<cleanroom_service::QueryOutcome, ClientError>,
    observed: Vec<String>,
}

/// Runs the real client (member advertiser, `sql`, its table at `data`) against `liar`.
async fn against_liar(liar: LyingProvider, sql: &str, table: &str, data: PathBuf) -> AgainstLiar {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let observed = Arc::clone(&liar.observed);
    let collaboration = Arc::clone(&liar.collaboration);
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(CleanRoomServiceServer::new(liar))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            }),
    );
    let data = BTreeMap::from([(table.to_owned(), data.into())]);
    let result = async {
        let mut client =
            Client::connect(&advertiser_client_config(format!("http://{addr}"))).await?;
        client
            .run_query(
                Query {
                    collaboration: &collaboration,
                    member: "advertiser",
                    sql,
                    data: &data,
                    receivers: &[],
                },
                None,
            )
            .await
    }
    .await;
    // The provider notes the end of the client's stream on its own time.
    for _ in 0..400 {
        if observed
            .lock()
            .unwrap()
            .last()
            .is_some_and(|o| o.starts_with("end:"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = stop.send(());
    let _ = server.await;
    let observed = observed.lock().unwrap().clone();
    assert!(
        observed.last().is_some_and(|o| o.starts_with("end:")),
        "{observed:?}"
    );
    AgainstLiar { result, observed }
}

fn aggregate_liar(fx: &Fixture, lie: Lie) -> LyingProvider {
    LyingProvider {
        collaboration: Arc::clone(&fx.collaboration),
        data: fx.path("impressions.csv"),
        target: TARGET.to_owned(),
        lie,
        observed: Arc::default(),
    }
}

/// The querier's target, in its conversions with one row of `amount` added.
const TARGET: &str = "target@example.com";

fn conversions_with_target(fx: &Fixture, amount: u64) -> PathBuf {
    let mut csv = Csv {
        header: fx.conversions.header.clone(),
        rows: fx.conversions.rows.clone(),
    };
    csv.rows.push(vec![
        TARGET.to_owned(),
        "web".to_owned(),
        amount.to_string(),
    ]);
    let path = fx.path(&format!("conversions-target-{amount}.csv"));
    csv.write(&path);
    path
}

// ------------------------------------------------------------------ other terms accepted

/// A provider that accepts under other terms than the client's (here another normalization,
/// the result would be wrong) is left before the client sends any protocol message, the same
/// way whatever the client's data, with the term that differs named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_accepting_other_terms_gets_no_protocol_message() {
    let fx = Fixture::new(5);
    let mut runs = Vec::new();
    for amount in [5, 400] {
        let liar = aggregate_liar(&fx, Lie::OtherTerms);
        let data = conversions_with_target(&fx, amount);
        runs.push(against_liar(liar, TOTAL, "conversions", data).await);
    }
    assert_eq!(runs[0].observed, runs[1].observed);
    assert_eq!(runs[0].observed.len(), 1, "{:?}", runs[0].observed);
    assert!(
        runs[0].observed[0].starts_with("end:"),
        "{:?}",
        runs[0].observed
    );
    for run in &runs {
        let error = run.result.as_ref().expect_err("the client leaves");
        assert!(
            matches!(error, ClientError::PlanMismatch(m) if m.contains("normalization of the receiver's identifier")),
            "{error}"
        );
    }
}

// ----------------------------------------------------------------------------- attack 7

/// Attack 7, a lying provider learns the querier's values: it announces two groups for an
/// ungrouped plan, the target alone in the second, and releases that group's sum shifted by
/// −k; the old client aborted iff the target's value was under k. Defence: (a) the real
/// client refuses the two-group hello, the same way whether the target's value is 5 or 400
/// (k = 100), and the provider sees the same messages and the same end; (b) against a
/// one-group release shifted so that the total decrypts (k = 0) or does not (k = 2^39), the
/// client closes its stream normally in both cases, after the same messages, and only then
/// fails locally (`ClientError::Opened`) on the total that does not decrypt; (c) for a plan
/// grouped on the provider's side, where extra provider groups are legitimate, the target
/// alone in its group with its sum shifted by k = 100: the same end on the wire for 5 and 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_provider_learns_nothing_from_the_clients_reaction() {
    let fx = Fixture::new(5);
    let (low, high) = (
        conversions_with_target(&fx, 5),
        conversions_with_target(&fx, 400),
    );

    // (a) Two groups for an ungrouped plan.
    let mut runs = Vec::new();
    for data in [&low, &high] {
        let liar = aggregate_liar(&fx, Lie::IsolateTarget);
        runs.push(against_liar(liar, TOTAL, "conversions", data.clone()).await);
    }
    let errors: Vec<String> = runs
        .iter()
        .map(|r| {
            r.result
                .as_ref()
                .expect_err("the client refuses")
                .to_string()
        })
        .collect();
    assert_eq!(errors[0], errors[1]);
    assert!(errors[0].contains("groups"), "{}", errors[0]);
    assert_eq!(runs[0].observed, runs[1].observed);

    // (b) One group, its sums shifted.
    let mut runs = Vec::new();
    for k in [0, 1 << 39] {
        let liar = aggregate_liar(&fx, Lie::Shift(k));
        runs.push(against_liar(liar, TOTAL, "conversions", low.clone()).await);
    }
    assert_eq!(runs[0].observed, runs[1].observed);
    assert_eq!(
        runs[0].observed.last().map(String::as_str),
        Some("end: half-closed"),
        "{:?}",
        runs[0].observed
    );
    let outcome = runs[0]
        .result
        .as_ref()
        .expect("an unshifted total decrypts");
    assert_eq!(outcome.result.rows.len(), 1);
    assert!(
        matches!(runs[1].result, Err(ClientError::Opened(_))),
        "{:?}",
        runs[1].result.as_ref().err()
    );

    // (c) A plan grouped on the provider's side may have any number of provider groups: the
    // target alone in one, its sum shifted by k = 100, for a value of 5 (−95: no decryption)
    // or 400 (300). The client's stream ends the same way; the difference stays local. (With
    // 400 the client shows the forged row, under the threshold and shifted: a lying provider
    // can release wrong results, as SECURITY.md says; it must not learn from the reaction.)
    let mut runs = Vec::new();
    for data in [&low, &high] {
        let liar = aggregate_liar(&fx, Lie::ShiftTarget(100));
        runs.push(against_liar(liar, BY_CAMPAIGN, "conversions", data.clone()).await);
    }
    assert_eq!(runs[0].observed, runs[1].observed);
    assert_eq!(
        runs[0].observed.last().map(String::as_str),
        Some("end: half-closed"),
        "{:?}",
        runs[0].observed
    );
    assert!(
        matches!(runs[0].result, Err(ClientError::Opened(_))),
        "{:?}",
        runs[0].result.as_ref().err()
    );
    for run in &runs {
        if let Err(e) = &run.result {
            assert!(
                matches!(e, ClientError::Opened(_) | ClientError::Result(_)),
                "a local error only: {e:?}"
            );
        }
    }
}

// ------------------------------------------------------------------------ list queries

/// Every matched pair of a list query: the customer, its segment, the subscriber's columns.
const OVERLAP: &str = "SELECT cu.customer_id, cu.segment, s.newsletter, s.region \
    FROM customers cu JOIN subscribers s ON cu.email = s.email";

/// A collaboration with a list rule: the publisher's subscribers (users 0..60) and the
/// advertiser's customers (users 40..100, plus one row the tests choose).
struct ListFixture {
    dir: tempfile::TempDir,
    collaboration: Arc<Collaboration>,
}

impl ListFixture {
    fn new() -> ListFixture {
        let dir = tempfile::tempdir().unwrap();
        let toml = list_collaboration("list-malicious", "Lying list providers").render();
        std::fs::write(dir.path().join("collab.toml"), toml).unwrap();
        let collaboration = Arc::new(Collaboration::load(dir.path().join("collab.toml")).unwrap());
        let subscribers = Csv {
            header: ["email", "newsletter", "region", "signup_date"]
                .map(str::to_owned)
                .to_vec(),
            rows: (0..60)
                .map(|n| {
                    vec![
                        format!("user{n}@example.com"),
                        ["weekly", "daily"][n % 2].to_owned(),
                        ["EU", "US", "APAC"][n % 3].to_owned(),
                        "2026-01-01".to_owned(),
                    ]
                })
                .collect(),
        };
        subscribers.write(&dir.path().join("subscribers.csv"));
        ListFixture { dir, collaboration }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The advertiser's customers, with one more row for `extra` (customer id "c-extra").
    fn customers_with(&self, extra: &str) -> PathBuf {
        let mut rows: Vec<Vec<String>> = (40..100)
            .map(|n| {
                vec![
                    format!("user{n}@example.com"),
                    format!("c{n}"),
                    ["gold", "silver"][n % 2].to_owned(),
                    (n * 10).to_string(),
                ]
            })
            .collect();
        rows.push(vec![
            extra.to_owned(),
            "c-extra".to_owned(),
            "gold".to_owned(),
            "1".to_owned(),
        ]);
        let csv = Csv {
            header: ["email", "customer_id", "segment", "lifetime_value"]
                .map(str::to_owned)
                .to_vec(),
            rows,
        };
        let path = self.path(&format!("customers-{extra}.csv"));
        csv.write(&path);
        path
    }
}

// ----------------------------------------------------------------------------- attack 8

/// Attack 8, a lying list provider learns whether the querier holds an identifier: knowing its
/// own key, it seals random bytes under the target's lookup tag `T(x)`; the old client reset
/// the stream iff it held the target (the payload failed to open). Defence: the client opens
/// payloads only after the session ended: holding the target or a stranger, it closes its
/// stream normally after the same messages, gets the same list, and counts the garbled
/// payload as `unopened`, locally. And a hello announcing more payload bytes than the cap, or
/// a set with the target's tag twice, is refused the same way whatever the client holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_list_provider_learns_nothing_from_the_clients_reaction() {
    const LIST_TARGET: &str = "user10@example.com";
    let fx = ListFixture::new();
    let holds = [fx.customers_with(LIST_TARGET), fx.customers_with(STRANGER)];
    for lie in [Lie::GarbleTarget, Lie::HugeList, Lie::DuplicateTarget] {
        let mut runs = Vec::new();
        for data in &holds {
            let liar = LyingProvider {
                collaboration: Arc::clone(&fx.collaboration),
                data: fx.path("subscribers.csv"),
                target: LIST_TARGET.to_owned(),
                lie,
                observed: Arc::default(),
            };
            runs.push(against_liar(liar, OVERLAP, "customers", data.clone()).await);
        }
        assert_eq!(runs[0].observed, runs[1].observed, "{lie:?}");
        match lie {
            Lie::GarbleTarget => {
                assert_eq!(
                    runs[0].observed.last().map(String::as_str),
                    Some("end: half-closed"),
                    "{:?}",
                    runs[0].observed
                );
                let [holder, stranger] = [0, 1].map(|i| {
                    runs[i]
                        .result
                        .as_ref()
                        .unwrap_or_else(|e| panic!("the client fails on the wire: {e}"))
                });
                assert_eq!((holder.unopened, stranger.unopened), (1, 0));
                assert_eq!(holder.result.rows, stranger.result.rows);
                assert_eq!(holder.result.rows.len(), 20);
            }
            _ => {
                let errors: Vec<String> = runs
                    .iter()
                    .map(|r| {
                        r.result
                            .as_ref()
                            .expect_err("the client refuses")
                            .to_string()
                    })
                    .collect();
                assert_eq!(errors[0], errors[1], "{lie:?}");
                let fragment = if lie == Lie::HugeList {
                    "list payload bytes"
                } else {
                    "a lookup tag was sent twice"
                };
                assert!(errors[0].contains(fragment), "{lie:?}: {}", errors[0]);
            }
        }
    }
}

// ---------------------------------------------------------------------------- attack 10

/// Attack 10, a list query carries the querier's identifiers in its SQL
/// (`WHERE cu.email IN ('user950@…')`), which the provider's audit log would keep. Defence:
/// list queries may not filter on identifier columns: the client refuses it before
/// connecting, the server refuses it (`filter_not_list_column`) before any protocol message,
/// and all it stores is the refused entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_queries_may_not_filter_on_identifiers() {
    let fx = ListFixture::new();
    let server = serve_in_process(ServerConfig {
        collaboration: Arc::clone(&fx.collaboration),
        member: "publisher".to_owned(),
        data: BTreeMap::from([("subscribers".to_owned(), fx.path("subscribers.csv").into())]),
        limits: Limits::default(),
        connections: cleanroom_service::ConnectionLimits::default(),
        state: Arc::new(StateDb::open(fx.path("state.db")).unwrap()),
        tls: None,
        client_ca: None,
        insecure: false,
        on_session_end: None,
        work_dir: None,
        relay_key: None,
    })
    .await;
    let customers = fx.customers_with(STRANGER);
    let filters = [
        format!("{OVERLAP} WHERE cu.email IN ('{STRANGER}')"),
        format!("{OVERLAP} WHERE s.email = '{STRANGER}'"),
    ];
    for sql in &filters {
        // The client refuses it locally: nothing is sent.
        let data = BTreeMap::from([("customers".to_owned(), customers.clone().into())]);
        let mut client =
            Client::connect(&advertiser_client_config(format!("http://{}", server.addr)))
                .await
                .unwrap();
        let local = client
            .run_query(
                Query {
                    collaboration: &fx.collaboration,
                    member: "advertiser",
                    sql,
                    data: &data,
                    receivers: &[],
                },
                None,
            )
            .await;
        match local {
            Err(ClientError::Refused(refusal)) => assert!(
                refusal
                    .codes()
                    .iter()
                    .any(|c| c.as_str() == "filter_not_list_column"),
                "{refusal}"
            ),
            other => panic!("{sql}: expected a local refusal, got {:?}", other.err()),
        }
        assert!(server.state.entries(None, None).unwrap().is_empty());
    }
    for sql in &filters {
        // A client that sends it anyway.
        let mut client = raw_client(server.addr, Some(ADVERTISER_TOKEN)).await;
        let start = RunSessionRequest {
            message: Some(run_session_request::Message::Start(SessionStart {
                collaboration_id: fx.collaboration.id().to_owned(),
                member: "advertiser".to_owned(),
                sql: sql.clone(),
                table: Some(TableDescriptor {
                    name: "customers".to_owned(),
                    columns: ["email", "customer_id", "segment", "lifetime_value"]
                        .map(str::to_owned)
                        .to_vec(),
                    rows: 61,
                    skipped_rows: 0,
                }),
                agreement: None,
                receivers: Vec::new(),
                result_keys: Vec::new(),
                buckets: 0,
                job_id: String::new(),
                chain_context: Vec::new(),
            })),
        };
        let status = raw_open(&mut client, start)
            .await
            .expect_err("the server refuses the query");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            refusal_codes(&status).contains(&"filter_not_list_column".to_owned()),
            "{status:?}"
        );
    }
    let entries = server.state.entries(None, None).unwrap();
    assert_eq!(entries.len(), filters.len(), "{entries:?}");
    for entry in &entries {
        assert_eq!(entry.decision, Decision::Refused, "{entry:?}");
        assert_eq!(
            (
                entry.released_rows,
                entry.suppressed_rows,
                entry.matcher_rows
            ),
            (0, 0, 0),
            "{entry:?}"
        );
    }
    server.stop().await;
}

// ---------------------------------------------------------------------------- attack 11

/// Attack 11, one identifier repeated across the querier's own groups under privacy: the
/// querier puts its target in all 40 of its groups, next to six distinct people of the
/// provider's in each, hoping to count the target 40 times and see it through the noise. The
/// matcher counts a match in at most K = 4 pairs of groups (the collaboration's
/// `max_groups_per_identifier`, default), chosen at random, whatever the querier sends, and
/// tells how many identifiers it bounded (noisily). With ε = 500 per query (noise that is zero
/// in practice) the release shows exactly that: 6 per group, plus the target in exactly 4
/// groups when it is the provider's, and 1 bounded identifier; 6 per group and none bounded
/// when it is not. The repeats gain the querier K, as for anyone in K groups, not 40.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identifier_repeated_in_the_queriers_groups_counts_k_times() {
    const GROUPS: usize = 40;
    const BY_CHANNEL: &str = "SELECT c.channel, COUNT(DISTINCT c.email) AS buyers \
        FROM impressions i JOIN conversions c ON i.email = c.email GROUP BY c.channel";
    let fx = Fixture::private(5, 1000.0, 500.0);
    let server = start_server(&fx, Limits::default(), None).await;
    let plan = fx.collaboration.plan("advertiser", BY_CHANNEL).unwrap();
    assert_eq!(plan.privacy().unwrap().max_groups, 4);
    let attacker = Attacker::new(&plan);
    let people: Vec<String> = fx
        .publisher_sets(|_| true, |_| String::new())
        .remove("")
        .unwrap()
        .into_iter()
        .collect();
    let target = people[0].clone();
    let others = &people[1..];
    assert!(others.len() >= 6 * GROUPS);
    for (who, member) in [(target.as_str(), true), (STRANGER, false)] {
        let groups: Vec<Vec<String>> = (0..GROUPS)
            .map(|g| {
                let mut ids = others[6 * g..6 * g + 6].to_vec();
                ids.push(who.to_owned());
                ids
            })
            .collect();
        let view = play(&fx, &server, BY_CHANNEL, &attacker, &groups, |_| {}).await;
        let Seen::Released(messages, _) = &view.seen else {
            panic!("the session is released: {:?}", view.seen)
        };
        let mut counts = Vec::new();
        let mut bounded = None;
        for message in messages {
            match message {
                AggregateMessage::MatcherResult { groups } => {
                    counts.extend(groups.iter().map(|g| g.intersection_size))
                }
                AggregateMessage::MatcherDone { bounded: b, .. } => bounded = Some(*b),
                other => panic!("unexpected {}", other.kind()),
            }
        }
        assert_eq!(counts.len(), GROUPS, "every group released");
        let with_target = counts.iter().filter(|&&c| c == 7).count();
        assert!(counts.iter().all(|&c| c == 6 || c == 7), "{counts:?}");
        if member {
            assert_eq!(with_target, 4, "the target counts in K groups: {counts:?}");
            assert_eq!(bounded, Some(1));
        } else {
            assert_eq!(with_target, 0, "{counts:?}");
            assert_eq!(bounded, Some(0));
        }
        assert_eq!(view.entry.bounded_disclosed, bounded.unwrap());
        assert_eq!(view.charged, 1);
    }
    server.stop().await;
}
