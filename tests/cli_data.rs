//! Inputs that never miscount silently, through the `cleanroom` binary: Parquet against the same
//! CSV, NULL spellings, decimal amounts, CSV dialects and line numbers, repeated header names,
//! and a server that checks its whole table before it starts.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use arrow_array::{Decimal128Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use cleanroom_testkit::{CollaborationToml, MemberToml, TableToml};
use parquet::arrow::ArrowWriter;
use serde_json::Value;

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

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_owned()
}

fn match_json(args: &[&str]) -> Value {
    let mut all = vec!["match"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--format", "json"]);
    let (code, out, err) = cleanroom(&all);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

/// Rows (email or NULL, visits, amount in cents or NULL) for both files.
struct Rows {
    email: Vec<Option<String>>,
    visits: Vec<i64>,
    cents: Vec<Option<i128>>,
}

fn rows(n: usize, offset: usize) -> Rows {
    let ids: Vec<usize> = (offset..offset + n).collect();
    Rows {
        email: ids
            .iter()
            .map(|i| (i % 13 != 0).then(|| format!("u{}@x.org", i % 900)))
            .collect(),
        visits: ids.iter().map(|&i| (i % 50) as i64).collect(),
        cents: ids
            .iter()
            .map(|i| (i % 6 != 0).then_some((*i as i128 * 7919) % 100_000))
            .collect(),
    }
}

fn csv_text(r: &Rows, null: &str) -> String {
    let mut out = String::from("email,visits,amount\n");
    for i in 0..r.email.len() {
        let amount = r.cents[i].map_or(String::new(), |c| format!("{}.{:02}", c / 100, c % 100));
        out.push_str(&format!(
            "{},{},{amount}\n",
            r.email[i].as_deref().unwrap_or(null),
            r.visits[i]
        ));
    }
    out
}

fn write_parquet(path: &Path, r: &Rows) {
    write_parquet_at(path, r, 2);
}

/// [`write_parquet`] with the amounts as `DECIMAL(14, scale)` (`scale` ≥ 2: the same values,
/// written with more digits after the point).
fn write_parquet_at(path: &Path, r: &Rows, scale: i8) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("email", DataType::Utf8, true),
        Field::new("visits", DataType::Int64, false),
        Field::new("amount", DataType::Decimal128(14, scale), true),
    ]));
    let props = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_size(700)
        .build();
    let file = std::fs::File::create(path).unwrap();
    let mut w = ArrowWriter::try_new(file, schema.clone(), Some(props)).unwrap();
    let email: StringArray = r.email.iter().cloned().collect();
    let visits = Int64Array::from(r.visits.clone());
    let factor = 10i128.pow(u32::try_from(scale - 2).unwrap());
    let units: Vec<Option<i128>> = r.cents.iter().map(|c| c.map(|c| c * factor)).collect();
    let amount = Decimal128Array::from(units)
        .with_precision_and_scale(14, scale)
        .unwrap();
    w.write(
        &RecordBatch::try_new(
            schema,
            vec![Arc::new(email), Arc::new(visits), Arc::new(amount)],
        )
        .unwrap(),
    )
    .unwrap();
    w.close().unwrap();
}

/// Matched distinct identifiers, the sum of matched amounts (cents) and of matched visits.
fn plain(left: &Rows, right: &Rows) -> (u64, i128, i64) {
    let ids: std::collections::HashSet<&String> = left.email.iter().flatten().collect();
    let mut matched = std::collections::HashSet::new();
    let (mut cents, mut visits) = (0, 0);
    for i in 0..right.email.len() {
        if let Some(e) = &right.email[i]
            && ids.contains(e)
        {
            matched.insert(e);
            cents += right.cents[i].unwrap_or(0);
            visits += right.visits[i];
        }
    }
    (matched.len() as u64, cents, visits)
}

fn money(cents: i128) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

#[test]
fn parquet_and_csv_give_the_plain_counts_and_exact_decimal_sums() {
    let dir = tempfile::tempdir().unwrap();
    let (left, right) = (rows(3000, 0), rows(2500, 1700));
    let left_csv = write(dir.path(), "left.csv", &csv_text(&left, ""));
    let right_csv = write(dir.path(), "right.csv", &csv_text(&right, "NULL"));
    let left_pq = dir.path().join("left.parquet");
    let right_pq = dir.path().join("right.parquet");
    write_parquet(&left_pq, &left);
    write_parquet(&right_pq, &right);
    let (size, cents, visits) = plain(&left, &right);
    let skipped = |r: &Rows| r.email.iter().filter(|e| e.is_none()).count();

    let mut results = Vec::new();
    for (l, r) in [
        (left_csv.clone(), right_csv.clone()),
        (
            left_pq.display().to_string(),
            right_pq.display().to_string(),
        ),
        (left_csv.clone(), right_pq.display().to_string()),
    ] {
        let json = match_json(&[
            &l,
            &r,
            "--id-column",
            "email",
            "--sum",
            "amount",
            "--scale",
            "2",
        ]);
        assert_eq!(json["intersection_size"], size, "{l} × {r}");
        assert_eq!(json["sum"], money(cents).as_str(), "{l} × {r}");
        assert_eq!(json["left_skipped"], skipped(&left));
        assert_eq!(json["right_skipped"], skipped(&right));
        results.push(json);
        // Integer sums from an integer column, both formats.
        let json = match_json(&[&l, &r, "--id-column", "email", "--sum", "visits"]);
        assert_eq!(json["sum"], visits);
    }
    assert_eq!(results[0], results[1], "CSV and Parquet agree exactly");
    // A Parquet DECIMAL column needs no --scale: the file's is used.
    let right_pq = right_pq.display().to_string();
    let json = match_json(&[
        &left_csv,
        &right_pq,
        "--id-column",
        "email",
        "--sum",
        "amount",
    ]);
    assert_eq!(json["sum"], money(cents).as_str());
    // Written at scale 3, the same amounts sum to the same value, printed with 3 decimals.
    let right_pq3 = dir.path().join("right3.parquet");
    write_parquet_at(&right_pq3, &right, 3);
    let right_pq3 = right_pq3.display().to_string();
    let json = match_json(&[
        &left_csv,
        &right_pq3,
        "--id-column",
        "email",
        "--sum",
        "amount",
    ]);
    assert_eq!(json["sum"], format!("{}0", money(cents)).as_str());
    // A --scale that is not the file's is refused, never rescaled.
    let (code, _, err) = cleanroom(&[
        "match",
        &left_csv,
        &right_pq3,
        "--id-column",
        "email",
        "--sum",
        "amount",
        "--scale",
        "2",
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("right3.parquet")
            && err.contains("\"amount\"")
            && err.contains("scale 3")
            && err.contains("--scale 2"),
        "{err}"
    );
    // The table output says how many rows were skipped, and why.
    let (code, out, err) = cleanroom(&["match", &left_csv, &right_csv, "--id-column", "email"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!(
            "skipped (NULL or empty identifier, never matched): {} in",
            skipped(&left)
        )),
        "{out}"
    );
}

#[test]
fn null_spellings_never_match_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let left = write(dir.path(), "l.csv", "id\nNULL\nnull\n\\N\n\n  \na\n");
    let right = write(dir.path(), "r.csv", "id\nNULL\nnull\n\\N\n  \nNULL\na\n");
    let json = match_json(&[&left, &right, "--id-column", "id", "--normalize", "email"]);
    assert_eq!(json["intersection_size"], 1, "only \"a\" matches: {json}");
    assert_eq!(json["left_skipped"], 4);
    assert_eq!(json["right_skipped"], 5);
}

#[test]
fn decimals_beyond_the_scale_and_bad_lines_name_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let left = write(dir.path(), "l.csv", "id\na\nb\n");
    // CRLF endings: the bad amount is on physical line 4.
    let right = write(
        dir.path(),
        "r.csv",
        "id,amount\r\na,12.50\r\nb,\r\nb,3.125\r\n",
    );
    let (code, _, err) = cleanroom(&[
        "match",
        &left,
        &right,
        "--id-column",
        "id",
        "--sum",
        "amount",
        "--scale",
        "2",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("r.csv") && err.contains("line 4"), "{err}");
    assert!(err.contains("\"amount\"") && err.contains("3.125"), "{err}");
    // Without the bad line: exact, with an empty amount as 0.
    let right = write(
        dir.path(),
        "r2.csv",
        "id,amount\r\na,12.50\r\nb,\r\nb,0.05\r\n",
    );
    let json = match_json(&[
        &left,
        &right,
        "--id-column",
        "id",
        "--sum",
        "amount",
        "--scale",
        "2",
    ]);
    assert_eq!(json["sum"], "12.55");
    // A decimal without --scale is refused, naming the line.
    let (code, _, err) = cleanroom(&[
        "match",
        &left,
        &right,
        "--id-column",
        "id",
        "--sum",
        "amount",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("line 2") && err.contains("12.50"), "{err}");
}

#[test]
fn semicolons_quotes_and_a_byte_order_mark() {
    let dir = tempfile::tempdir().unwrap();
    let left = write(
        dir.path(),
        "l.csv",
        "\u{feff}id;seg\r\n'x;1';a\r\ny;b\r\nz;c\r\n",
    );
    let right = write(dir.path(), "r.txt", "id|amount\nx;1|2\ny|1\nw|4\n");
    let json = match_json(&[
        &format!("{left},delimiter=semicolon,quote='"),
        &format!("{right},delimiter=pipe,format=csv"),
        "--id-column",
        "id",
        "--sum",
        "amount",
    ]);
    assert_eq!(json["intersection_size"], 2, "{json}");
    assert_eq!(json["sum"], 3, "{json}");
}

#[test]
fn repeated_header_names_are_refused_by_match() {
    let dir = tempfile::tempdir().unwrap();
    let left = write(dir.path(), "l.csv", "email,email\na,b\n");
    let right = write(dir.path(), "r.csv", "email\na\n");
    let (code, _, err) = cleanroom(&["match", &left, &right, "--id-column", "email"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("l.csv") && err.contains("\"email\" more than once"),
        "{err}"
    );
}

/// The collaboration file: the publisher's impressions and the advertiser's conversions
/// (tokens `publisher-token` and `advertiser-token`).
fn collaboration() -> String {
    CollaborationToml::new("data-intake-test")
        .member(MemberToml::new("publisher", "publisher-token"))
        .member(MemberToml::querier("advertiser", "advertiser-token"))
        .table(
            TableToml::aggregation("impressions", "publisher", &["email", "campaign"])
                .line(r#"delimiter = ";""#)
                .dimensions(&["campaign"])
                .min_threshold(2),
        )
        .table(
            TableToml::aggregation("conversions", "advertiser", &["email", "amount"])
                .aggregates(r#"email = ["COUNT_DISTINCT"], amount = ["SUM", "AVG"]"#)
                .rule_line("decimal_columns = { amount = { scale = 2 } }")
                .min_threshold(2),
        )
        .render()
}

/// A `cleanroom serve` child and its address, or its whole log when it exited. The caller
/// kills and waits for the child it gets.
#[allow(clippy::zombie_processes)]
fn serve(dir: &Path, impressions: &str) -> Result<(Child, String, String), String> {
    let config = dir.join("collab.toml");
    std::fs::write(&config, collaboration()).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cleanroom"))
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--member", "publisher", "--data"])
        .arg(format!("impressions={impressions}"))
        .args(["--listen", "127.0.0.1:0", "--state"])
        .arg(dir.join("state.db"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        if log.read_line(&mut line).unwrap() == 0 {
            let _ = child.wait();
            return Err(seen);
        }
        seen.push_str(&line);
        if let Some(at) = line.find("http://") {
            let url = line[at..].split_whitespace().next().unwrap().to_owned();
            // Then one line per table: its rows and skipped rows.
            log.read_line(&mut seen).unwrap();
            // Keep draining the log so the server never blocks on a full pipe.
            std::thread::spawn(move || for _ in log.lines() {});
            return Ok((child, url, seen));
        }
    }
}

fn query(dir: &Path, url: &str, conversions: &str, sql: &str) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cleanroom"))
        .args(["query", "--config"])
        .arg(dir.join("collab.toml"))
        .args(["--member", "advertiser", "--data"])
        .arg(format!("conversions={conversions}"))
        .args(["--server", url, "--format", "json", sql])
        .env("CLEANROOM_TOKEN", "advertiser-token")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn the_server_refuses_to_start_on_a_bad_line_5001() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from("email;campaign\n");
    for i in 0..5_100 {
        if i == 4_999 {
            // Physical line 5,001: one field, the campaign is missing.
            text.push_str("broken@x.org\n");
        } else {
            text.push_str(&format!("u{i}@x.org;c{}\n", i % 4));
        }
    }
    let path = write(dir.path(), "impressions.csv", &text);
    let log = serve(dir.path(), &path).expect_err("the server must not start");
    assert!(
        log.contains("impressions.csv")
            && log.contains("line 5001")
            && log.contains("\"campaign\""),
        "{log}"
    );
    // The same for a header that names a column twice.
    let path = write(dir.path(), "dup.csv", "email;campaign;email\na;b;c\n");
    let log = serve(dir.path(), &path).expect_err("the server must not start");
    assert!(log.contains("\"email\" more than once"), "{log}");
}

#[test]
fn serve_and_query_report_skipped_rows_and_exact_decimals() {
    let dir = tempfile::tempdir().unwrap();
    let impressions = write(
        dir.path(),
        "impressions.csv",
        "email;campaign\na@x.org;c1\nb@x.org;c1\nNULL;c1\n;c2\nc@x.org;c2\n",
    );
    let (mut server, url, log) = serve(dir.path(), &impressions).unwrap();
    assert!(log.contains("5 rows, 2 skipped"), "{log}");
    let conversions = dir.path().join("conversions.parquet");
    write_parquet(
        &conversions,
        &Rows {
            email: vec![
                Some("A@x.org".into()),
                Some("b@x.org".into()),
                None,
                Some("null".into()),
                Some("c@x.org".into()),
            ],
            visits: vec![0; 5],
            cents: vec![Some(1250), Some(5), Some(99), Some(7), None],
        },
    );
    let sql = "SELECT COUNT(DISTINCT i.email) AS n, SUM(c.amount) AS total \
               FROM impressions i JOIN conversions c ON i.email = c.email";
    let (ok, out, err) = query(dir.path(), &url, conversions.to_str().unwrap(), sql);
    assert!(ok, "{err}");
    let json: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["rows"][0][0], 3, "{json}");
    assert_eq!(json["rows"][0][1], "12.55", "{json}");
    assert!(err.contains("your 5 rows (2 skipped"), "{err}");
    // The audit entry has both sides' skipped rows.
    let (code, audit, audit_err) = cleanroom(&[
        "audit",
        "--state",
        dir.path().join("state.db").to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert_eq!(code, 0, "{audit_err}");
    let entries: Value = serde_json::from_str(&audit).unwrap();
    let entry = &entries[0];
    assert_eq!(entry["matcher_skipped"], 2, "{audit}");
    assert_eq!(entry["receiver_skipped"], 2, "{audit}");
    // A querier file whose DECIMAL scale (3) is not the rule's (2) is refused, naming the
    // file, the column and both scales.
    let scale3 = dir.path().join("conversions3.parquet");
    write_parquet_at(
        &scale3,
        &Rows {
            email: vec![Some("a@x.org".into())],
            visits: vec![0],
            cents: vec![Some(1250)],
        },
        3,
    );
    let (ok, _, err) = query(dir.path(), &url, scale3.to_str().unwrap(), sql);
    assert!(!ok);
    assert!(
        err.contains("conversions3.parquet")
            && err.contains("column \"amount\"")
            && err.contains("has scale 3 but the rule declares scale 2"),
        "{err}"
    );
    // A querier file with a repeated header name is refused with its name.
    let dup = write(dir.path(), "dup.csv", "email,amount,amount\na@x.org,1,2\n");
    let (ok, _, err) = query(dir.path(), &url, &dup, sql);
    assert!(!ok);
    assert!(err.contains("\"amount\" more than once"), "{err}");
    let _ = server.kill();
    let _ = server.wait();
}

#[test]
fn bench_runs_on_parquet_tables_and_checks_against_the_plain_result() {
    let dir = tempfile::tempdir().unwrap();
    let (left, right) = (rows(1200, 0), rows(900, 700));
    let left_pq = dir.path().join("left.parquet");
    let right_pq = dir.path().join("right.parquet");
    write_parquet(&left_pq, &left);
    write_parquet(&right_pq, &right);
    let (size, cents, visits) = plain(&left, &right);
    assert!(size > 100, "the tables overlap: {size}");
    let (l, r) = (
        left_pq.display().to_string(),
        right_pq.display().to_string(),
    );
    for transport in ["memory", "grpc"] {
        let bench = |extra: &[&str]| -> Value {
            let mut args = vec![
                "bench",
                "--left",
                &l,
                "--right",
                &r,
                "--id-column",
                "email",
                "--transport",
                transport,
                "--format",
                "json",
            ];
            args.extend_from_slice(extra);
            let (code, out, err) = cleanroom(&args);
            assert_eq!(code, 0, "{transport}: {err}");
            serde_json::from_str(&out).unwrap()
        };
        let json = bench(&[]);
        assert_eq!(json["intersection_size"], size, "{transport}: {json}");
        assert_eq!(json["size"], 1200);
        assert_eq!(json["right_size"], 900);
        // The DECIMAL(14, 2) amounts, summed exactly in cents.
        let json = bench(&["--protocol", "sum", "--value-column", "amount"]);
        assert_eq!(json["intersection_size"], size, "{transport}: {json}");
        assert_eq!(
            json["sum"],
            u64::try_from(cents).unwrap(),
            "{transport}: {json}"
        );
        let json = bench(&["--protocol", "sum", "--value-column", "visits"]);
        assert_eq!(json["sum"], visits, "{transport}: {json}");
    }
    // A CSV table with options, against the Parquet one: the same answer.
    let left_csv = write(
        dir.path(),
        "left.csv",
        &csv_text(&left, "").replace(',', ";"),
    );
    let (code, out, err) = cleanroom(&[
        "bench",
        "--left",
        &format!("{left_csv},delimiter=semicolon"),
        "--right",
        &r,
        "--id-column",
        "email",
        "--format",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let json: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["intersection_size"], size);
    // A missing column is an error naming the table.
    let (code, _, err) = cleanroom(&["bench", "--left", &l, "--right", &r]);
    assert_ne!(code, 0);
    assert!(
        err.contains("left.parquet") && err.contains("no column \"id\""),
        "{err}"
    );
}
