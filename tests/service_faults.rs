//! Crashes: `cleanroom serve` killed with SIGKILL in the middle of sessions, again and again,
//! and `cleanroom query` killed while it runs.
//!
//! After every restart the state database opens, no session is left `running`, every result a
//! client received has its `released` audit entry with the same figures, and new sessions are
//! exact. Under differential privacy the ledger charged each release exactly once, the budget
//! is never overspent across kills and still refuses what it no longer covers. A killed
//! client leaves its `--output` file either as it was or complete, never
//! half-written. `CLEANROOM_CRASH_ROUNDS=N cargo test --test service_faults -- --ignored` runs
//! the long version.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cleanroom_service::{Decision, StateDb};
use cleanroom_testkit::*;

/// A `cleanroom serve` child process of the publisher on 127.0.0.1.
struct Served {
    child: Child,
    url: String,
}

fn serve(fx: &Fixture, state: &Path) -> Served {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cleanroom"))
        .args(["serve", "--config"])
        .arg(fx.path("collab.toml"))
        .args(["--member", "publisher", "--data"])
        .arg(format!(
            "impressions={}",
            fx.path("impressions.csv").display()
        ))
        .args(["--listen", "127.0.0.1:0", "--max-sessions", "8", "--state"])
        .arg(state)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let banner = lines.next().expect("a banner").unwrap();
    let url = banner
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {banner:?}"))
        .to_owned();
    std::thread::spawn(move || for _ in lines.by_ref() {});
    Served { child, url }
}

/// What the crash rounds saw.
#[derive(Debug, Default)]
struct Tally {
    kills: u32,
    /// Session ids of the results clients received, with the `ε` the member had spent after
    /// each (0 without differential privacy).
    received: Vec<(String, f64)>,
    /// Sessions that failed because of a kill.
    cut: u32,
    /// Sessions the server refused because the privacy budget was spent.
    exhausted: u32,
}

/// Whether `error` is the server's refusal of a query the privacy budget no longer covers.
fn budget_exhausted(error: &cleanroom_service::ClientError) -> bool {
    matches!(error, cleanroom_service::ClientError::Remote(remote)
        if remote.code == tonic::Code::ResourceExhausted
            && remote.reasons.iter().any(|r| r.code == "budget_exhausted"))
}

/// Per campaign, buyers only: the private crash tests count charges, and without a value column
/// a private session carries no range proofs, so it is quick enough to finish between kills.
const BUYERS_BY_CAMPAIGN: &str = "SELECT i.campaign, COUNT(DISTINCT c.email) AS buyers \
    FROM impressions i JOIN conversions c ON i.email = c.email GROUP BY i.campaign";

/// The query of the crash rounds: [`BY_CAMPAIGN`] exactly, [`BUYERS_BY_CAMPAIGN`] under privacy.
fn crash_query(fx: &Fixture) -> &'static str {
    if fx.collaboration.privacy().is_some() {
        BUYERS_BY_CAMPAIGN
    } else {
        BY_CAMPAIGN
    }
}

/// `rounds` times: start the server on the same state, run three clients in a loop, and
/// SIGKILL the server 150 to 1,500 ms later (a loaded machine still finishes some sessions first). Under differential privacy results are noisy, so
/// only their audit and ledger entries are checked, and a client whose query the budget no
/// longer covers stops.
async fn crash_rounds(fx: &Fixture, rounds: u32) -> Tally {
    let private = fx.collaboration.privacy().is_some();
    let state = fx.path("crash-state.db");
    let (want, want_suppressed) = fx.plain_by_campaign();
    let mut rng = Rng(0xC4A5_4ED5);
    let mut tally = Tally::default();
    for round in 0..rounds {
        let mut served = serve(fx, &state);
        // The server opened the database and marked what a kill cut short: nothing runs.
        let entries = StateDb::open_read_only(&state)
            .unwrap()
            .entries(None, None)
            .unwrap();
        assert!(
            entries.iter().all(|e| e.decision != Decision::Running),
            "round {round}: an entry is still running after the restart"
        );
        let killed = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..3)
            .map(|_| {
                let (url, killed) = (served.url.clone(), Arc::clone(&killed));
                let (want, want_suppressed) = (&want, want_suppressed);
                async move {
                    let mut received = Vec::new();
                    let (mut cut, mut exhausted) = (0, 0);
                    while !killed.load(Ordering::SeqCst) {
                        match run_query(fx, url.clone(), crash_query(fx)).await {
                            Ok(outcome) => {
                                if !private {
                                    assert_rows_equal(&outcome.result, want);
                                    assert_eq!(outcome.result.suppressed_rows, want_suppressed);
                                }
                                let spent =
                                    outcome.summary.standing.map_or(0.0, |s| s.epsilon_spent);
                                received.push((outcome.summary.session_id, spent));
                            }
                            Err(e) if private && budget_exhausted(&e) => {
                                exhausted += 1;
                                break;
                            }
                            Err(e) => {
                                assert!(
                                    killed.load(Ordering::SeqCst),
                                    "a session failed before the kill: {e}"
                                );
                                cut += 1;
                            }
                        }
                    }
                    (received, cut, exhausted)
                }
            })
            .collect();
        let killer = async {
            tokio::time::sleep(Duration::from_millis(150 + rng.below(1350))).await;
            killed.store(true, Ordering::SeqCst);
            served.child.kill().unwrap();
            served.child.wait().unwrap();
        };
        let (results, ()) = tokio::join!(futures_join_all(clients), killer);
        tally.kills += 1;
        for (received, cut, exhausted) in results {
            tally.received.extend(received);
            tally.cut += cut;
            tally.exhausted += exhausted;
        }
    }
    tally
}

/// Runs futures concurrently on this task and returns their outputs in order.
async fn futures_join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in pinned.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().map(Option::unwrap).collect()
}

/// After the rounds: a last restart, and the audit log and the privacy ledger against what
/// the clients received.
async fn check_after_crashes(fx: &Fixture, tally: &Tally) {
    let state = fx.path("crash-state.db");
    let (want, want_suppressed) = fx.plain_by_campaign();
    let mut served = serve(fx, &state);
    let db = StateDb::open_read_only(&state).unwrap();
    let entries = db.entries(None, None).unwrap();
    assert!(entries.iter().all(|e| e.decision != Decision::Running));
    let by_id: BTreeMap<&str, &cleanroom_service::AuditEntry> =
        entries.iter().map(|e| (e.session_id.as_str(), e)).collect();
    for (id, _) in &tally.received {
        let entry = by_id
            .get(id.as_str())
            .unwrap_or_else(|| panic!("no audit entry for received session {id}"));
        assert_eq!(entry.decision, Decision::Released, "{entry:?}");
        if fx.collaboration.privacy().is_none() {
            assert_eq!(
                (entry.released_rows, entry.suppressed_rows),
                (want.len() as u64, want_suppressed),
                "{entry:?}"
            );
        }
        assert!(entry.finished_at.is_some());
    }
    // A release is committed before it is sent: the log may hold a release a kill kept from
    // its client, never the other way round.
    let released = entries
        .iter()
        .filter(|e| e.decision == Decision::Released)
        .count();
    assert!(released >= tally.received.len());
    let interrupted = entries
        .iter()
        .filter(|e| e.decision == Decision::Interrupted)
        .count();
    eprintln!(
        "{} kills: {} results received, {} sessions cut, {} refused for the budget; audit: {} \
         entries, {released} released, {interrupted} interrupted",
        tally.kills,
        tally.received.len(),
        tally.cut,
        tally.exhausted,
        entries.len()
    );

    // The ledger charged every admitted session once, at admission: every release was charged
    // (a session cut by a kill keeps its charge), nothing refused was, one `epsilon_per_query`
    // per charge, never past the budget, and each result a client received reported a
    // distinct spend no larger than the total.
    let policy = cleanroom_service::Policy::of(&fx.collaboration);
    let standing = db.standing(&policy, "advertiser").unwrap();
    let not_refused = entries
        .iter()
        .filter(|e| e.decision != Decision::Refused)
        .count() as u64;
    assert!(standing.queries >= released as u64, "{standing:?}");
    assert!(standing.queries <= not_refused, "{standing:?}");
    if let (Some(budget), Some(per_query)) = (policy.epsilon_budget, policy.epsilon_per_query) {
        assert_eq!(
            standing.epsilon_spent.micros(),
            standing.queries * per_query.micros()
        );
        assert!(standing.epsilon_spent.micros() <= budget.micros());
        let mut spends: Vec<u64> = tally
            .received
            .iter()
            .map(|(_, spent)| (spent * 1e6).round() as u64)
            .collect();
        spends.sort_unstable();
        assert!(spends.windows(2).all(|w| w[0] < w[1]), "{spends:?}");
        assert!(spends.iter().all(|&s| s <= standing.epsilon_spent.micros()));
        assert!(spends.iter().all(|&s| s % per_query.micros() == 0));
        // The budget still holds after the kills: a query it no longer covers is refused,
        // one it covers is released and charged exactly once more.
        let next = run_query(fx, served.url.clone(), crash_query(fx)).await;
        if standing.epsilon_spent.micros() + per_query.micros() > budget.micros() {
            let error = next.expect_err("the budget is spent");
            assert!(budget_exhausted(&error), "{error}");
        } else {
            let spent = next.unwrap().summary.standing.unwrap().epsilon_spent;
            let expected = standing.epsilon_spent.micros() + per_query.micros();
            assert_eq!((spent * 1e6).round() as u64, expected);
        }
    } else {
        // New sessions work, exactly.
        let outcome = run_query(fx, served.url.clone(), BY_CAMPAIGN)
            .await
            .unwrap();
        assert_exact(&outcome.result, &want, want_suppressed);
    }
    served.child.kill().unwrap();
    served.child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_during_sessions_loses_no_release() {
    let fx = Fixture::new(5);
    let tally = crash_rounds(&fx, 4).await;
    assert_eq!(tally.kills, 4);
    assert!(!tally.received.is_empty(), "no session finished: {tally:?}");
    check_after_crashes(&fx, &tally).await;
}

/// Budget 8 at 0.25 per query: 32 admitted sessions (charged at admission, whether a kill then
/// cuts them or not), which eight rounds of three clients often spend before their last kill, so
/// the check sees the budget charged across kills and, when spent, enforced after them. Each
/// person counts in one campaign (K = 1): the padding of the publisher's groups grows with K, and
/// short sessions let several finish between kills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_during_private_sessions_keeps_its_budget() {
    let fx = Fixture::private_bounded(5, 8.0, 0.25, Some(1));
    let tally = crash_rounds(&fx, 8).await;
    assert!(!tally.received.is_empty(), "no session finished: {tally:?}");
    check_after_crashes(&fx, &tally).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak: CLEANROOM_CRASH_ROUNDS rounds (default 100)"]
async fn soak_a_server_killed_again_and_again() {
    let rounds = std::env::var("CLEANROOM_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let fx = Fixture::new(5);
    let tally = crash_rounds(&fx, rounds).await;
    check_after_crashes(&fx, &tally).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak: CLEANROOM_CRASH_ROUNDS rounds (default 100) under a privacy budget"]
async fn soak_a_private_server_killed_again_and_again() {
    let rounds: u32 = std::env::var("CLEANROOM_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    // About two releases per round: the budget runs out near the end.
    let budget = (f64::from(rounds) * 0.5).min(1000.0);
    let fx = Fixture::private_bounded(5, budget, 0.25, Some(1));
    let tally = crash_rounds(&fx, rounds).await;
    check_after_crashes(&fx, &tally).await;
}

#[test]
fn a_killed_client_leaves_its_output_whole_or_untouched() {
    let fx = Fixture::new(5);
    let state = fx.path("client-kill.db");
    let mut served = serve(&fx, &state);
    let out_dir = fx.path("out");
    std::fs::create_dir(&out_dir).unwrap();
    let output = out_dir.join("result.csv");
    let old = "an older result\n";
    std::fs::write(&output, old).unwrap();
    let (want, _) = fx.plain_by_campaign();
    let mut complete = String::from("campaign,buyers,revenue\n");
    for row in &want {
        let cells: Vec<String> = row.iter().map(ToString::to_string).collect();
        complete.push_str(&cells.join(","));
        complete.push('\n');
    }
    let query = |output: &Path| {
        Command::new(env!("CARGO_BIN_EXE_cleanroom"))
            .args(["query", "--config"])
            .arg(fx.path("collab.toml"))
            .args(["--member", "advertiser", "--data"])
            .arg(format!(
                "conversions={}",
                fx.path("conversions.csv").display()
            ))
            .args(["--server", &served.url, "--quiet", "--output"])
            .arg(output)
            .arg(BY_CAMPAIGN)
            .env("CLEANROOM_TOKEN", ADVERTISER_TOKEN)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };

    // How long a whole query takes here, and what it writes.
    let started = std::time::Instant::now();
    let status = query(&out_dir.join("timing.csv")).wait().unwrap();
    assert!(status.success());
    let whole = started.elapsed();
    assert_eq!(
        std::fs::read_to_string(out_dir.join("timing.csv")).unwrap(),
        complete
    );
    std::fs::remove_file(out_dir.join("timing.csv")).unwrap();

    // Killed at points spread over the whole run: the file is the old one or the new one.
    let mut rng = Rng(0x0C11_E475);
    let (mut untouched, mut replaced) = (0, 0);
    for _ in 0..12 {
        let mut child = query(&output);
        let at = whole.mul_f64((rng.below(1200) as f64) / 1000.0);
        std::thread::sleep(at);
        let _ = child.kill();
        child.wait().unwrap();
        let now = std::fs::read_to_string(&output).unwrap();
        if now == old {
            untouched += 1;
        } else {
            assert_eq!(now, complete, "a half-written output file");
            replaced += 1;
            std::fs::write(&output, old).unwrap();
        }
        // Nothing else appears under the output's name; a kill between creating and renaming
        // the temporary file can only leave a `.tmp` file beside it.
        for entry in std::fs::read_dir(&out_dir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            assert!(name == "result.csv" || name.starts_with(".tmp"), "{name}");
        }
    }
    assert_eq!(untouched + replaced, 12);
    eprintln!("killed clients: {untouched} left the old file, {replaced} wrote the whole new one");
    served.child.kill().unwrap();
    served.child.wait().unwrap();
}
