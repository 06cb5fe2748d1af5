//! Tables on S3-compatible object storage, end to end: a real S3 server (moto's server mode,
//! started on loopback by `tests/s3/run.sh`, which runs these tests with `--ignored`), CSV and
//! Parquet objects uploaded through `object_store`, and the `cleanroom` binary reading their
//! `s3://` locations with the standard AWS environment variables.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;

use arrow_array::{Decimal128Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use cleanroom_testkit::{CollaborationToml, MemberToml, TableToml};
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use parquet::arrow::ArrowWriter;
use serde_json::Value;

fn bucket() -> String {
    std::env::var("CLEANROOM_S3_BUCKET").expect("tests/s3/run.sh sets CLEANROOM_S3_BUCKET")
}

/// Uploads `bytes` as `key` in the test bucket.
fn upload(key: &str, bytes: Vec<u8>) {
    let store = AmazonS3Builder::from_env()
        .with_bucket_name(bucket())
        .build()
        .unwrap();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(store.put(&object_store::path::Path::from(key), bytes.into()))
        .unwrap();
}

fn cleanroom(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cleanroom"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// A receiver row: email (or NULL) and amount in cents (or NULL).
type Purchase = (Option<String>, Option<i128>);

/// The matcher's rows (email; every 9th NULL) and the receiver's.
fn rows(n: usize) -> (Vec<Option<String>>, Vec<Purchase>) {
    let left = (0..n)
        .map(|i| (i % 9 != 0).then(|| format!("u{i}@x.org")))
        .collect();
    let right = (n / 2..n + n / 2)
        .map(|i| {
            let email = (i % 11 != 0).then(|| format!("u{i}@x.org"));
            let cents = (i % 5 != 0).then_some((i as i128 * 37) % 10_000);
            (email, cents)
        })
        .collect();
    (left, right)
}

fn csv_of(left: &[Option<String>]) -> Vec<u8> {
    let mut text = String::from("email,campaign\n");
    for (i, e) in left.iter().enumerate() {
        text.push_str(&format!("{},c{}\n", e.as_deref().unwrap_or("NULL"), i % 3));
    }
    text.into_bytes()
}

fn parquet_of(right: &[Purchase]) -> Vec<u8> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("email", DataType::Utf8, true),
        Field::new("amount", DataType::Decimal128(12, 2), true),
    ]));
    let emails: StringArray = right.iter().map(|(e, _)| e.clone()).collect();
    let amounts = Decimal128Array::from(right.iter().map(|(_, a)| *a).collect::<Vec<_>>())
        .with_precision_and_scale(12, 2)
        .unwrap();
    let mut out = Vec::new();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_size(500)
        .build();
    let mut writer = ArrowWriter::try_new(&mut out, schema.clone(), Some(props)).unwrap();
    writer
        .write(&RecordBatch::try_new(schema, vec![Arc::new(emails), Arc::new(amounts)]).unwrap())
        .unwrap();
    writer.close().unwrap();
    out
}

/// The plain answer: matched distinct identifiers and the sum of their amounts (cents).
fn plain(left: &[Option<String>], right: &[Purchase]) -> (u64, i128) {
    let ids: std::collections::HashSet<&String> = left.iter().flatten().collect();
    let mut matched = std::collections::HashSet::new();
    let mut sum = 0;
    for (e, a) in right {
        if let Some(e) = e
            && ids.contains(e)
        {
            matched.insert(e);
            sum += a.unwrap_or(0);
        }
    }
    (matched.len() as u64, sum)
}

#[test]
#[ignore = "needs an S3-compatible server: run tests/s3/run.sh"]
fn match_reads_csv_and_parquet_objects() {
    let (left, right) = rows(3000);
    upload("match/left.csv", csv_of(&left));
    upload("match/right.parquet", parquet_of(&right));
    let b = bucket();
    let (code, out, err) = cleanroom(&[
        "match",
        &format!("s3://{b}/match/left.csv"),
        &format!("s3://{b}/match/right.parquet"),
        "--id-column",
        "email",
        "--sum",
        "amount",
        "--scale",
        "2",
        "--format",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let json: Value = serde_json::from_str(&out).unwrap();
    let (size, cents) = plain(&left, &right);
    assert_eq!(json["intersection_size"], size);
    let sum = format!("{}.{:02}", cents / 100, cents % 100);
    assert_eq!(json["sum"], sum.as_str());
    assert_eq!(json["left_rows"], 3000);
    assert_eq!(
        json["left_skipped"],
        left.iter().filter(|e| e.is_none()).count()
    );
    assert_eq!(
        json["right_skipped"],
        right.iter().filter(|(e, _)| e.is_none()).count()
    );

    // bench reads the same objects (the Parquet DECIMAL summed at its own scale, in cents).
    for transport in ["memory", "grpc"] {
        let (code, out, err) = cleanroom(&[
            "bench",
            "--left",
            &format!("s3://{b}/match/left.csv"),
            "--right",
            &format!("s3://{b}/match/right.parquet"),
            "--id-column",
            "email",
            "--protocol",
            "sum",
            "--value-column",
            "amount",
            "--transport",
            transport,
            "--format",
            "json",
        ]);
        assert_eq!(code, 0, "{transport}: {err}");
        let json: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(json["intersection_size"], size, "{transport}: {json}");
        assert_eq!(
            json["sum"],
            u64::try_from(cents).unwrap(),
            "{transport}: {json}"
        );
    }

    // A missing object is an error naming it, not an empty table.
    let (code, _, err) = cleanroom(&[
        "match",
        &format!("s3://{b}/match/missing.csv"),
        &format!("s3://{b}/match/right.parquet"),
        "--id-column",
        "email",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("missing.csv"), "{err}");
}

/// The collaboration file: the publisher's impressions and the advertiser's conversions
/// (tokens `publisher-token` and `advertiser-token`).
fn collaboration() -> String {
    CollaborationToml::new("s3-test")
        .member(MemberToml::new("publisher", "publisher-token"))
        .member(MemberToml::querier("advertiser", "advertiser-token"))
        .table(
            TableToml::aggregation("impressions", "publisher", &["email", "campaign"])
                .dimensions(&["campaign"]),
        )
        .table(
            TableToml::aggregation("conversions", "advertiser", &["email", "amount"])
                .aggregates(r#"email = ["COUNT_DISTINCT"], amount = ["SUM"]"#)
                .rule_line("decimal_columns = { amount = { scale = 2 } }"),
        )
        .render()
}

#[test]
#[ignore = "needs an S3-compatible server: run tests/s3/run.sh"]
fn serve_and_query_read_objects() {
    let (left, right) = rows(2000);
    upload("serve/impressions.csv", csv_of(&left));
    upload("serve/conversions.parquet", parquet_of(&right));
    let b = bucket();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("collab.toml");
    std::fs::write(&config, collaboration()).unwrap();
    let mut server = Command::new(env!("CARGO_BIN_EXE_cleanroom"))
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--member", "publisher", "--data"])
        .arg(format!("impressions=s3://{b}/serve/impressions.csv"))
        .args(["--listen", "127.0.0.1:0", "--state"])
        .arg(dir.path().join("state.db"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = BufReader::new(server.stderr.take().unwrap());
    let mut seen = String::new();
    let url = loop {
        let mut line = String::new();
        if log.read_line(&mut line).unwrap() == 0 {
            let _ = server.kill();
            panic!("cleanroom serve exited:\n{seen}");
        }
        seen.push_str(&line);
        if let Some(at) = line.find("http://") {
            // Then the table's line: its rows and skipped rows.
            log.read_line(&mut seen).unwrap();
            break line[at..].split_whitespace().next().unwrap().to_owned();
        }
    };
    let skipped = left.iter().filter(|e| e.is_none()).count();
    assert!(
        seen.contains(&format!("2000 rows, {skipped} skipped")),
        "the server log reports the whole table: {seen}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_cleanroom"))
        .args(["query", "--config"])
        .arg(&config)
        .args(["--member", "advertiser", "--data"])
        .arg(format!("conversions=s3://{b}/serve/conversions.parquet"))
        .args(["--server", &url, "--format", "json", "--quiet"])
        .args([
            "SELECT COUNT(DISTINCT i.email) AS n, SUM(c.amount) AS total \
             FROM impressions i JOIN conversions c ON i.email = c.email",
        ])
        .env("CLEANROOM_TOKEN", "advertiser-token")
        .output()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (size, cents) = plain(&left, &right);
    assert_eq!(json["rows"][0][0], size);
    assert_eq!(
        json["rows"][0][1],
        format!("{}.{:02}", cents / 100, cents % 100).as_str()
    );
}
