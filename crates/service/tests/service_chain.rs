//! Joins across three and four members through the real service (PROTOCOL.md 7.9): a registry
//! queries two or three hospitals' servers; exact counts and sums against a plain join, every
//! provider's audit entry, and what a provider refuses.

use std::collections::BTreeMap;

use cleanroom_rules::Value;
use cleanroom_service::client::run_chain_query;
use cleanroom_service::{Decision, Query, QueryOutcome};
use cleanroom_testkit::chain::Hospitals;
use cleanroom_testkit::server::Running;

async fn query(fx: &Hospitals, servers: &[Running], sql: &str) -> QueryOutcome {
    let data = fx.registry_data();
    run_chain_query(
        Query {
            collaboration: &fx.collaboration,
            member: "registry",
            sql,
            data: &data,
            receivers: &[],
        },
        &fx.servers(servers),
        None,
    )
    .await
    .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// The released rows as group → (count, sum).
fn rows(outcome: &QueryOutcome) -> BTreeMap<String, (u64, u64)> {
    outcome
        .result
        .rows
        .iter()
        .map(|row| {
            let int = |v: &Value| match v {
                Value::Integer(n) => *n,
                other => panic!("not a count: {other:?}"),
            };
            (row[0].to_string(), (int(&row[1]), int(&row[2])))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_and_four_members_count_and_sum_exactly_and_every_provider_audits() {
    for hospitals in [2, 3] {
        let fx = Hospitals::new(hospitals, 3);
        let servers = fx.start().await;
        // Grouped by the registry's region.
        let sql = format!(
            "SELECT p.region, COUNT(DISTINCT p.email), SUM(p.cost) {} GROUP BY p.region",
            fx.from(hospitals)
        );
        let outcome = query(&fx, &servers, &sql).await;
        let expected = fx.plain(hospitals, None);
        assert!(expected.values().all(|&(n, _)| n > 20), "{expected:?}");
        assert_eq!(rows(&outcome), expected, "{} members", hospitals + 1);
        // Fewer members match more: the chain did filter.
        let pairwise: u64 = fx.plain(1, None).values().map(|&(n, _)| n).sum();
        assert!(expected.values().map(|&(n, _)| n).sum::<u64>() < pairwise);

        // Every provider admitted, audited and ended the session: the filters as filtered, the
        // matcher (hospital_a, the first in FROM) as released.
        assert_eq!(outcome.chain.len(), hospitals);
        for provider in &outcome.chain {
            let h = provider.table.as_bytes()["visits_".len()] - b'a';
            let entry = servers[usize::from(h)]
                .settled_entry(&provider.session_id)
                .await;
            assert_eq!(entry.member, "registry");
            let matcher = provider.position == hospitals;
            assert_eq!(provider.table == "visits_a", matcher);
            let expected = if matcher {
                Decision::Released
            } else {
                Decision::Filtered
            };
            assert_eq!(
                entry.decision, expected,
                "{}: {}",
                provider.table, entry.reason
            );
        }

        // Grouped by the diagnosis of the last hospital: it becomes the matcher.
        let last = hospitals - 1;
        let alias = char::from(b'a' + last as u8);
        let sql = format!(
            "SELECT {alias}.diagnosis, COUNT(DISTINCT p.email), SUM(p.cost) {} GROUP BY {alias}.diagnosis",
            fx.from(hospitals)
        );
        let outcome = query(&fx, &servers, &sql).await;
        assert_eq!(rows(&outcome), fx.plain(hospitals, Some(last)));
        assert_eq!(
            outcome.chain.last().map(|p| p.table.clone()),
            Some(cleanroom_testkit::chain::hospital(last).1)
        );
        for server in servers {
            server.stop().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_release_threshold_suppresses_the_final_rows() {
    let fx = Hospitals::new(2, 3);
    let servers = fx.start().await;
    let sql = format!(
        "SELECT a.diagnosis, COUNT(DISTINCT p.email) {} GROUP BY a.diagnosis",
        fx.from(2)
    );
    let expected = fx.plain(2, Some(0));
    let outcome = query(&fx, &servers, &sql).await;
    assert_eq!(outcome.result.rows.len(), expected.len());
    assert_eq!(outcome.result.suppressed_rows, 0);
    for server in servers {
        server.stop().await;
    }
}

#[test]
fn a_server_whose_relay_key_is_not_its_members_does_not_start() {
    let fx = Hospitals::new(2, 3);
    let mut config = fx.config(0);
    assert!(config.validate().is_ok());
    config.relay_key = Some(std::sync::Arc::new(
        cleanroom_psi::sealed::OpeningKey::generate(),
    ));
    assert!(matches!(
        config.validate(),
        Err(cleanroom_service::ServerError::RelayKeyMismatch(member)) if member == "hospital_a"
    ));
}

/// Under privacy: the matcher adds the noise once, to the final rows (grouped by its own
/// diagnosis: several matcher groups under noise, which the last filter hands back as points),
/// and every provider charges the query at its own admission.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_join_is_noisy_once_and_charged_by_every_provider() {
    let fx = Hospitals::private(2, 3, 3.0, 1.0);
    let servers = fx.start().await;
    let sql = format!(
        "SELECT a.diagnosis, COUNT(DISTINCT p.email), SUM(p.cost) {} GROUP BY a.diagnosis",
        fx.from(2)
    );
    let outcome = query(&fx, &servers, &sql).await;
    let privacy = outcome.accepted.privacy.clone().expect("a private release");
    assert_eq!(privacy.epsilon, 1.0);
    let plain = fx.plain(2, Some(0));
    let noise: Vec<u64> = privacy.outputs.iter().map(|o| o.interval95).collect();
    assert!(noise[0] == 0 && noise[1] > 0 && noise[2] > 0, "{noise:?}");
    let released = rows(&outcome);
    assert!(!released.is_empty());
    for (group, (count, sum)) in &released {
        let (n, s) = plain[group];
        // Far beyond the 95% interval would mean a wrong scale or a wrong answer.
        assert!(count.abs_diff(n) <= 4 * noise[1], "{group}: {count} vs {n}");
        assert!(
            sum.abs_diff(s) <= 4 * noise[2] + 4 * 500,
            "{group}: {sum} vs {s}"
        );
    }
    // Every provider charged the query before its first message: one epsilon each.
    for server in &servers {
        let standings = server.state.standings().unwrap();
        let registry = standings.iter().find(|s| s.member == "registry").unwrap();
        assert_eq!(registry.epsilon_spent.as_f64(), 1.0, "{registry:?}");
    }
    for server in servers {
        server.stop().await;
    }
}
