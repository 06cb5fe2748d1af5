//! The adapters against files written here: CSV dialects, line numbers, NULL spellings,
//! duplicate headers, and Parquet read back against the same data as CSV.

use std::path::Path;
use std::sync::Arc;

use cleanroom_data::{Cell, Decimal, Position, ReadError, Row, SourceOptions, Table, TableSpec};

fn spec(path: &Path, options: &str) -> TableSpec {
    let text = format!("{}{options}", path.display());
    TableSpec::parse_with(&text, SourceOptions::default()).unwrap()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn rows(table: Table) -> Vec<Row> {
    table.map(Result::unwrap).collect()
}

fn text(s: &str) -> Cell {
    Cell::Text(s.to_owned())
}

#[test]
fn crlf_files_name_the_physical_line() {
    let dir = tempfile::tempdir().unwrap();
    // Lines 3-4 hold one record with a quoted line break; line 6 is not UTF-8.
    let body = b"id,amount\r\na,1\r\n\"b\r\nc\",2\r\nd,3\r\ne,\xff\r\n";
    for (name, bytes) in [
        ("crlf.csv", body.to_vec()),
        (
            "lf.csv",
            body.iter().copied().filter(|&b| b != b'\r').collect(),
        ),
    ] {
        let path = write(dir.path(), name, &bytes);
        let mut table = Table::open(&spec(&path, "")).unwrap();
        assert_eq!(table.header(), ["id", "amount"]);
        let first = table.next().unwrap().unwrap();
        assert_eq!(first.position, Position::Line(2), "{name}");
        assert_eq!(first.cells, [text("a"), text("1")]);
        let second = table.next().unwrap().unwrap();
        assert_eq!(second.position, Position::Line(3), "{name}");
        let third = table.next().unwrap().unwrap();
        assert_eq!(third.position, Position::Line(5), "{name}");
        assert_eq!(third.cells, [text("d"), text("3")], "{name}: no stray \\r");
        let err = table.next().unwrap().unwrap_err();
        assert!(
            err.to_string().contains("line 6"),
            "{name}: {err} should name line 6"
        );
        assert!(table.next().is_none(), "nothing after an error");
    }
}

#[test]
fn dialects_bom_and_headerless_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "semi.csv",
        "\u{feff}id;amount\nx@y.org;12,50\n'a;b';3\n".as_bytes(),
    );
    let table = Table::open(&spec(&path, ",delimiter=semicolon,quote='")).unwrap();
    assert_eq!(
        table.header(),
        ["id", "amount"],
        "the BOM is not part of the name"
    );
    let all = rows(table);
    assert_eq!(all[0].cells, [text("x@y.org"), text("12,50")]);
    assert_eq!(all[1].cells, [text("a;b"), text("3")]);

    let path = write(dir.path(), "nohead.txt", b"\xef\xbb\xbfu1,5\nu2,6\n");
    let table = Table::open(&spec(&path, ",has_header=false")).unwrap();
    assert_eq!(table.header(), ["column_1", "column_2"]);
    let all = rows(table);
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].cells[0], text("u1"));
    assert_eq!(all[0].position, Position::Line(1));
}

#[test]
fn null_spellings_become_null() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "n.csv",
        b"id,v\n,1\nNULL,2\nnull,3\n\\N,4\n  ,5\nNull,6\nnone,7\n",
    );
    let ids: Vec<Cell> = rows(Table::open(&spec(&path, "")).unwrap())
        .into_iter()
        .map(|r| r.cells[0].clone())
        .collect();
    assert_eq!(
        ids,
        [
            Cell::Null,
            Cell::Null,
            Cell::Null,
            Cell::Null,
            Cell::Null,
            text("Null"),
            text("none")
        ]
    );
}

#[test]
fn duplicate_header_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "dup.csv", b"email,amount,email\na,1,b\n");
    let err = Table::open(&spec(&path, "")).unwrap_err();
    assert!(matches!(err, ReadError::DuplicateColumn { ref column, .. } if column == "email"));
    assert!(err.to_string().contains("dup.csv"), "{err}");
}

#[test]
fn missing_files_and_bad_options_say_so() {
    let err = Table::open(&spec(Path::new("/nonexistent/t.csv"), "")).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/t.csv"), "{err}");
    assert!(TableSpec::parse_with("t.csv,delimiter=;;", SourceOptions::default()).is_err());
}

#[cfg(feature = "parquet")]
mod parquet_files {
    use super::*;
    use arrow_array::{Decimal128Array, Int64Array, RecordBatch, StringArray};
    use arrow_schema::{DataType, Field, Schema};
    use parquet::arrow::ArrowWriter;
    use parquet::file::properties::WriterProperties;

    /// Writes `n` rows (id, visits, amount) in row groups of 1,000 rows: every 10th id NULL,
    /// every 7th amount NULL.
    fn write_parquet(path: &Path, n: usize) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, true),
            Field::new("visits", DataType::Int64, false),
            Field::new("amount", DataType::Decimal128(10, 2), true),
        ]));
        let props = WriterProperties::builder()
            .set_max_row_group_size(1000)
            .build();
        let file = std::fs::File::create(path).unwrap();
        let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(props)).unwrap();
        let ids: StringArray = (0..n)
            .map(|i| (i % 10 != 0).then(|| format!("u{i}@x.org")))
            .collect();
        let visits: Int64Array = (0..n as i64).collect();
        let amounts = Decimal128Array::from(
            (0..n)
                .map(|i| (i % 7 != 0).then_some(i as i128 * 101))
                .collect::<Vec<_>>(),
        )
        .with_precision_and_scale(10, 2)
        .unwrap();
        let batch = RecordBatch::try_new(
            schema,
            vec![Arc::new(ids), Arc::new(visits), Arc::new(amounts)],
        )
        .unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
    }

    #[test]
    fn parquet_cells_are_typed_and_nulls_stay_null() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        write_parquet(&path, 2500);
        let table = Table::open(&spec(&path, "")).unwrap();
        assert_eq!(table.header(), ["id", "visits", "amount"]);
        let all = rows(table);
        assert_eq!(all.len(), 2500);
        assert_eq!(all[0].cells[0], Cell::Null);
        assert_eq!(all[0].cells[2], Cell::Null);
        assert_eq!(
            all[1501].cells,
            [
                text("u1501@x.org"),
                Cell::Int(1501),
                Cell::Decimal(Decimal {
                    units: 1501 * 101,
                    scale: 2
                })
            ]
        );
        assert_eq!(all[1501].position, Position::Row(1502));
        // The same rows through `format=parquet` on a name without the extension.
        let other = dir.path().join("t.bin");
        std::fs::copy(&path, &other).unwrap();
        assert_eq!(
            rows(Table::open(&spec(&other, ",format=parquet")).unwrap()),
            all
        );
    }

    #[test]
    fn unsupported_types_name_the_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.parquet");
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Float64, false)]));
        let file = std::fs::File::create(&path).unwrap();
        let mut writer = ArrowWriter::try_new(file, schema.clone(), None).unwrap();
        let batch = RecordBatch::try_new(
            schema,
            vec![Arc::new(arrow_array::Float64Array::from(vec![1.5]))],
        )
        .unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        let err = Table::open(&spec(&path, "")).unwrap_err();
        assert!(
            matches!(err, ReadError::UnsupportedType { ref column, .. } if column == "x"),
            "{err}"
        );
    }
}
