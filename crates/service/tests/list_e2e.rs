//! List queries over the real gRPC service on loopback: a server started in-process (the
//! publisher, serving `subscribers`) and clients of the advertiser (bringing `customers`). Rows
//! are compared exactly with the join computed in the clear over the same CSV files; a recording
//! proxy shows that no column outside `list_columns` — and no identifier or listed value in the
//! clear — crosses the wire. (The `cleanroom` binary's list output: the root
//! `tests/list_e2e.rs`; the fixture: `cleanroom_testkit::list`.)

use std::time::Duration;

use cleanroom_rules::{Protocol, Value};
use cleanroom_service::Decision;
use cleanroom_testkit::list::*;
use cleanroom_testkit::normalize;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_rows_equal_the_plain_join_and_are_audited() {
    let fx = ListFixture::new();
    let server = start_list_server(&fx).await;

    let outcome = list_query(&fx, server.addr, OVERLAP).await;
    assert_eq!(outcome.protocol, Protocol::List);
    assert_eq!(
        outcome.result.columns,
        ["customer_id", "segment", "newsletter", "region"]
    );
    assert_eq!(outcome.result.suppressed_rows, 0);
    let want = fx.plain_overlap();
    assert!(want.len() > 150, "{} rows", want.len());
    assert!(want.windows(2).any(|w| w[0] == w[1]), "a repeated row");
    assert!(want.iter().any(|r| r[3] == Value::Null), "a NULL region");
    assert_eq!(sorted(outcome.result.rows.clone()), want);
    // 401 customer rows, the blank one included.
    assert_eq!(outcome.rows, 401);

    let weekly = list_query(&fx, server.addr, WEEKLY).await;
    let mut want = fx.plain(
        |s| s[1] == "weekly-briefing",
        |c, s| vec![value(&s[2]), value(&c[2])],
    );
    want.dedup();
    // ORDER BY region, segment: NULLs last in each.
    let rank = |v: &Value| match v {
        Value::Text(t) => (0, t.clone()),
        _ => (1, String::new()),
    };
    want.sort_by_key(|r| (rank(&r[0]), rank(&r[1])));
    assert_eq!(weekly.result.rows, want);
    assert!(want.len() >= 6, "{want:?}");

    // The server recorded both sessions as released, with the rows of its table that passed
    // the filter; it cannot count the listed rows.
    let weekly_rows = fx
        .subscribers
        .rows
        .iter()
        .filter(|s| s[1] == "weekly-briefing")
        .count() as u64;
    for (outcome, matcher_rows) in [(&outcome, 502), (&weekly, weekly_rows)] {
        let id = &outcome.summary.session_id;
        let mut entry = None;
        for _ in 0..200 {
            entry = server.state.entry(id).unwrap();
            if entry
                .as_ref()
                .is_some_and(|e| e.decision != Decision::Running)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let entry = entry.unwrap();
        assert_eq!(entry.decision, Decision::Released);
        assert_eq!(entry.member, "advertiser");
        assert_eq!((entry.released_rows, entry.suppressed_rows), (0, 0));
        assert_eq!(entry.matcher_rows, matcher_rows);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn columns_outside_the_list_never_cross_the_wire() {
    let fx = ListFixture::new();
    let server = start_list_server(&fx).await;
    let (proxy, to_server, to_client) = cleanroom_testkit::recording_proxy(server.addr).await;
    let outcome = list_query(&fx, proxy, OVERLAP).await;
    assert_eq!(sorted(outcome.result.rows.clone()), fx.plain_overlap());

    let wire = [
        to_server.lock().unwrap().clone(),
        to_client.lock().unwrap().clone(),
    ]
    .concat();
    let contains = |needle: &str| wire.windows(needle.len()).any(|w| w == needle.as_bytes());
    // The capture is the real traffic: every protocol byte, and the SQL in the clear.
    assert!(wire.len() as u64 >= outcome.counters.bytes_sent + outcome.counters.bytes_received);
    assert!(contains(OVERLAP));
    let mut checked = 0;
    for row in &fx.subscribers.rows {
        // Not a list column: never sent, in any form.
        assert!(!contains(&row[3]), "signup_date {:?} crossed", row[3]);
        if let Some(id) = normalize(&row[0]) {
            assert!(!contains(&id), "{id:?} crossed");
            assert!(!contains(row[0].trim()), "{:?} crossed", row[0]);
        }
        checked += 1;
    }
    for row in &fx.customers.rows {
        // The querier's own columns stay home, listed or not.
        assert!(!contains(&row[1]), "customer_id {:?} crossed", row[1]);
        assert!(!contains(&row[3]), "lifetime_value {:?} crossed", row[3]);
        if let Some(id) = normalize(&row[0]) {
            assert!(!contains(&id), "{id:?} crossed");
        }
        checked += 1;
    }
    // List columns cross only encrypted.
    for listed in ["daily-digest", "weekly-briefing", "sports-extra"] {
        assert!(!contains(listed), "{listed:?} crossed in the clear");
    }
    assert_eq!(checked, 502 + 401);
    server.stop().await;
}
