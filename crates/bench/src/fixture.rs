//! The benchmark's data: generated identifiers and values, the gRPC benchmark's tables on disk
//! with its collaboration and query, and the answer the query must give. Shared by the
//! session benchmark and the load test.

use anyhow::Result;
use std::io::Write;

use crate::loopback;

/// The `i`-th generated identifier.
pub fn identifier(i: u64) -> String {
    format!("user{i:010}@example.com")
}

/// The value of the `i`-th identifier.
pub fn value_of(i: u64) -> u64 {
    i % 1000
}

/// The gRPC benchmark's collaboration on disk: the provider's and the querier's CSV files of
/// `n` identifiers each (`common` shared, each with a value), the collaboration (TOML) and the
/// querier's bearer token. Also used by the load test.
pub struct GrpcFixture {
    /// The collaboration file's text.
    pub collaboration: String,
    /// The provider's table `left_ids`.
    pub left: std::path::PathBuf,
    /// The querier's table `right_ids`.
    pub right: std::path::PathBuf,
    /// The querier's bearer token.
    pub token: String,
    /// The query: the intersection size, and the sum of the values with `columns` = 1.
    pub sql: &'static str,
}

/// Writes the gRPC benchmark's data into `dir`.
pub fn grpc_fixture(
    dir: &std::path::Path,
    n: u64,
    common: u64,
    columns: usize,
) -> Result<GrpcFixture> {
    let write = |name: &str, range: std::ops::Range<u64>| -> Result<std::path::PathBuf> {
        let path = dir.join(name);
        let mut w = std::io::BufWriter::new(std::fs::File::create(&path)?);
        writeln!(w, "id,value")?;
        for i in range {
            writeln!(w, "{},{}", identifier(i), value_of(i))?;
        }
        w.flush()?;
        Ok(path)
    };
    let left = write("left.csv", 0..n)?;
    let right = write("right.csv", (n - common)..(2 * n - common))?;
    let (token, collaboration) = bench_collaboration("id", Some("value"), Some("value"));
    let sql = if columns > 0 {
        "SELECT COUNT(DISTINCT r.id), SUM(r.value) FROM left_ids l JOIN right_ids r ON l.id = r.id"
    } else {
        "SELECT COUNT(DISTINCT r.id) FROM left_ids l JOIN right_ids r ON l.id = r.id"
    };
    Ok(GrpcFixture {
        collaboration,
        left,
        right,
        token,
        sql,
    })
}

/// The benchmark's collaboration (TOML) and the querier's token: the provider's `left_ids`
/// and the querier's `right_ids`, both with identifier column `id` (normalization `none`),
/// plus a `value` column where named (summable on the querier's side).
pub fn bench_collaboration(
    id: &str,
    left_value: Option<&str>,
    right_value: Option<&str>,
) -> (String, String) {
    let (_, server_hash) = loopback::fresh_token();
    let (token, client_hash) = loopback::fresh_token();
    // JSON strings are TOML basic strings.
    let quote = |s: &str| serde_json::to_string(s).expect("a string serializes");
    let columns = |value: Option<&str>| {
        std::iter::once(id)
            .chain(value)
            .map(quote)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let id_q = quote(id);
    let sums = right_value.map_or_else(String::new, |v| format!(", {} = [\"SUM\"]", quote(v)));
    let collaboration = format!(
        r#"
[collaboration]
id = "cleanroom-bench"
[[member]]
name = "provider"
abilities = []
token_sha256 = "{server_hash}"
[[member]]
name = "querier"
abilities = ["query", "receive_results"]
token_sha256 = "{client_hash}"
[[table]]
name = "left_ids"
owner = "provider"
columns = [{left_columns}]
identifier = {{ column = {id_q}, normalize = "none" }}
[table.rule]
type = "aggregation"
join_columns = [{id_q}]
dimension_columns = []
aggregate_columns = {{ {id_q} = ["COUNT_DISTINCT"] }}
min_threshold = 2
[[table]]
name = "right_ids"
owner = "querier"
columns = [{right_columns}]
identifier = {{ column = {id_q}, normalize = "none" }}
[table.rule]
type = "aggregation"
join_columns = [{id_q}]
dimension_columns = []
aggregate_columns = {{ {id_q} = ["COUNT_DISTINCT"]{sums} }}
min_threshold = 2
"#,
        left_columns = columns(left_value),
        right_columns = columns(right_value),
    );
    (token, collaboration)
}

/// An SQL identifier: as it is when plain, else double-quoted.
pub fn sql_identifier(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if plain {
        name.to_owned()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// The expected answer of the fixture's query: the intersection size and the sum of values.
pub fn grpc_expected(n: u64, common: u64) -> (u64, u64) {
    (common, ((n - common)..n).map(value_of).sum())
}
