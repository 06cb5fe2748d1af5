//! `cleanroom match` end to end: the binary on CSV files, against a plain computation.

use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::process::Command;

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

/// Deterministic rows with case/whitespace noise, duplicates and empty identifiers.
fn data() -> (String, String) {
    let mut left = String::from("email,campaign\n");
    let mut right = String::from("email,amount,note\n");
    let mut x: u64 = 7;
    let mut next = |n: u64| {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 33) % n
    };
    for _ in 0..900 {
        let id = next(600);
        let email = if next(3) == 0 {
            format!(" User{id}@Shop.COM")
        } else {
            format!("user{id}@shop.com")
        };
        left.push_str(&format!("{email},\"camp, {}\"\n", next(3)));
    }
    left.push_str(",camp, 0\n".replace("camp, 0", "\"camp, 0\"").as_str());
    for _ in 0..700 {
        let id = 300 + next(600);
        right.push_str(&format!("USER{id}@shop.com ,{},x\n", next(10_000)));
    }
    right.push_str("   ,5,empty id\n");
    (left, right)
}

/// The plain answer, computed directly from the CSV text.
fn plain(left: &str, right: &str) -> (u64, u64, BTreeMap<String, (u64, u64)>) {
    let norm = |s: &str| s.trim().to_lowercase();
    let mut lr = csv::Reader::from_reader(left.as_bytes());
    let mut all = HashSet::new();
    let mut groups: HashMap<String, HashSet<String>> = HashMap::new();
    for rec in lr.records() {
        let rec = rec.unwrap();
        let id = norm(&rec[0]);
        groups.entry(rec[1].to_owned()).or_default();
        if !id.is_empty() {
            all.insert(id.clone());
            groups.get_mut(&rec[1]).unwrap().insert(id);
        }
    }
    let mut buyers: HashMap<String, u64> = HashMap::new();
    let mut rr = csv::Reader::from_reader(right.as_bytes());
    for rec in rr.records() {
        let rec = rec.unwrap();
        let id = norm(&rec[0]);
        if !id.is_empty() {
            *buyers.entry(id).or_default() += rec[1].parse::<u64>().unwrap();
        }
    }
    let stat = |set: &HashSet<String>| {
        let m: Vec<_> = buyers.iter().filter(|(id, _)| set.contains(*id)).collect();
        (m.len() as u64, m.iter().map(|(_, v)| **v).sum::<u64>())
    };
    let (n, s) = stat(&all);
    (
        n,
        s,
        groups
            .iter()
            .map(|(k, set)| (k.clone(), stat(set)))
            .collect(),
    )
}

#[test]
fn json_matches_a_plain_computation() {
    let dir = tempfile::tempdir().unwrap();
    let (l, r) = data();
    let left = write(dir.path(), "left.csv", &l);
    let right = write(dir.path(), "right.csv", &r);
    let (n, s, groups) = plain(&l, &r);
    assert!(
        n > 50 && groups.len() == 3,
        "test data has overlap and groups"
    );

    let args = [
        "match",
        &left,
        &right,
        "--id-column",
        "email",
        "--normalize",
        "email",
    ];
    let (code, out, err) = cleanroom(
        &[
            &args[..],
            &[
                "--sum",
                "amount",
                "--group-by",
                "campaign",
                "--format",
                "json",
            ],
        ]
        .concat(),
    );
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["left_rows"], 901);
    assert_eq!(v["right_rows"], 701);
    assert_eq!(v["intersection_size"], n);
    assert_eq!(v["sum"], s);
    let got: BTreeMap<String, (u64, u64)> = v["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["key"].as_str().unwrap().to_owned(),
                (
                    g["intersection_size"].as_u64().unwrap(),
                    g["sum"].as_u64().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(got, groups);

    // Without --sum and --group-by, those keys are absent.
    let (code, out, _) = cleanroom(&[&args[..], &["--format", "json"]].concat());
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["intersection_size"], n);
    assert!(v.get("sum").is_none() && v.get("groups").is_none());

    // As a job of buckets through bucket files: the same document, and the work directory
    // left as it was found.
    let grouped = [
        "--sum",
        "amount",
        "--group-by",
        "campaign",
        "--format",
        "json",
    ];
    let whole = {
        let (code, out, err) = cleanroom(&[&args[..], &grouped[..]].concat());
        assert_eq!(code, 0, "{err}");
        out
    };
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    for buckets in ["2", "7"] {
        let (code, out, err) = cleanroom(
            &[
                &args[..],
                &grouped[..],
                &["--buckets", buckets, "--work-dir", work.to_str().unwrap()],
            ]
            .concat(),
        );
        assert_eq!(code, 0, "{err}");
        assert_eq!(out, whole, "{buckets} buckets");
        assert_eq!(std::fs::read_dir(&work).unwrap().count(), 0);
    }
    let (code, _, err) = cleanroom(&[&args[..], &["--work-dir", work.to_str().unwrap()]].concat());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--buckets"), "{err}");
}

#[test]
fn bad_input_names_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let left = write(dir.path(), "left.csv", "email\na@x.com\n");
    let right = write(
        dir.path(),
        "right.csv",
        "email,amount\na@x.com,3\nb@x.com,-4\n",
    );
    let (code, _, err) = cleanroom(&[
        "match",
        &left,
        &right,
        "--id-column",
        "email",
        "--sum",
        "amount",
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("right.csv") && err.contains("line 3") && err.contains("amount"),
        "{err}"
    );

    let right2 = write(dir.path(), "right2.csv", "email,amount\na@x.com,1.5\n");
    let (code, _, err) = cleanroom(&[
        "match",
        &left,
        &right2,
        "--id-column",
        "email",
        "--sum",
        "amount",
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("right2.csv") && err.contains("line 2") && err.contains("\"1.5\""),
        "{err}"
    );

    let (code, _, err) = cleanroom(&["match", &left, &right, "--id-column", "mail"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("left.csv") && err.contains("\"mail\""),
        "{err}"
    );

    let (code, _, err) = cleanroom(&[
        "match",
        "/nonexistent/x.csv",
        &right,
        "--id-column",
        "email",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("/nonexistent/x.csv"), "{err}");
}

#[test]
fn demo_prints_released_campaigns() {
    let (code, out, err) = cleanroom(&["demo"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("spring_sale") && out.contains("fall_promo"),
        "{out}"
    );
    assert!(!out.contains("person1@example.com"));
}
