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

    /// Writes `n` rows (id, small, medium, large): three `DECIMAL` columns of scale 2, 3 and 4
    /// whose precisions (8, 16, 30) make the writer store them as `INT32`, `INT64` and
    /// `FIXED_LEN_BYTE_ARRAY`; every 9th value NULL, some negative. Pages compressed with
    /// `compression`, row groups of 700 rows.
    fn write_decimals(path: &Path, n: usize, compression: parquet::basic::Compression) {
        let columns = [("small", 8u8, 2i8), ("medium", 16, 3), ("large", 30, 4)];
        let mut fields = vec![Field::new("id", DataType::Utf8, false)];
        for (name, precision, scale) in columns {
            fields.push(Field::new(
                name,
                DataType::Decimal128(precision, scale),
                true,
            ));
        }
        let schema = Arc::new(Schema::new(fields));
        let props = WriterProperties::builder()
            .set_compression(compression)
            .set_max_row_group_size(700)
            .build();
        let file = std::fs::File::create(path).unwrap();
        let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(props)).unwrap();
        let ids: StringArray = (0..n).map(|i| Some(format!("u{i}"))).collect();
        let mut arrays: Vec<Arc<dyn arrow_array::Array>> = vec![Arc::new(ids)];
        for (c, (_, precision, scale)) in columns.into_iter().enumerate() {
            let values: Vec<Option<i128>> = (0..n).map(|i| decimal_value(c, i)).collect();
            arrays.push(Arc::new(
                Decimal128Array::from(values)
                    .with_precision_and_scale(precision, scale)
                    .unwrap(),
            ));
        }
        writer
            .write(&RecordBatch::try_new(schema, arrays).unwrap())
            .unwrap();
        writer.close().unwrap();
    }

    /// The units of row `i` of decimal column `c` of [`write_decimals`].
    fn decimal_value(c: usize, i: usize) -> Option<i128> {
        let i = i as i128;
        let magnitude = [99_999_999, 999_999_999_999_999, 10i128.pow(29) - 1][c];
        (i % 9 != 4).then(|| {
            let v = (i * 7_919 * 10i128.pow(4 * c as u32) + i * i) % magnitude;
            if i % 5 == 3 { -v } else { v }
        })
    }

    #[test]
    fn decimal_columns_carry_their_scale_whatever_their_physical_type() {
        use parquet::basic::{Compression, Type as PhysicalType};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.parquet");
        let n = 2_000;
        write_decimals(&path, n, Compression::UNCOMPRESSED);
        let reader =
            parquet::file::reader::SerializedFileReader::new(std::fs::File::open(&path).unwrap())
                .unwrap();
        use parquet::file::reader::FileReader;
        let physical: Vec<PhysicalType> =
            reader.metadata().file_metadata().schema_descr().columns()[1..]
                .iter()
                .map(|c| c.physical_type())
                .collect();
        assert_eq!(
            physical,
            [
                PhysicalType::INT32,
                PhysicalType::INT64,
                PhysicalType::FIXED_LEN_BYTE_ARRAY
            ]
        );

        let table = Table::open(&spec(&path, "")).unwrap();
        let scales: Vec<Option<u8>> = (0..5).map(|i| table.declared_scale(i)).collect();
        assert_eq!(scales, [None, Some(2), Some(3), Some(4), None]);
        let mut sums = [0i128; 3];
        let mut nulls = [0usize; 3];
        for (i, row) in rows(table).into_iter().enumerate() {
            for c in 0..3 {
                match (&row.cells[c + 1], decimal_value(c, i)) {
                    (Cell::Null, None) => nulls[c] += 1,
                    (Cell::Decimal(d), Some(units)) => {
                        assert_eq!(
                            *d,
                            Decimal {
                                units,
                                scale: [2, 3, 4][c]
                            },
                            "row {i}"
                        );
                        sums[c] += d.units;
                    }
                    (cell, expected) => {
                        panic!("row {i}, column {c}: {cell:?}, expected {expected:?}")
                    }
                }
            }
        }
        // The plain computation, and the exact figures it gives.
        let plain: Vec<i128> = (0..3)
            .map(|c| (0..n).filter_map(|i| decimal_value(c, i)).sum())
            .collect();
        assert_eq!(sums.to_vec(), plain);
        assert_eq!(nulls, [222, 222, 222]);
        let printed: Vec<String> = (0..3)
            .map(|c| {
                Decimal {
                    units: sums[c],
                    scale: [2, 3, 4][c],
                }
                .to_string()
            })
            .collect();
        assert_eq!(
            printed,
            ["98744775.92", "84513228867.035", "84511805712329.7035"]
        );
    }

    #[test]
    fn every_common_codec_reads_back_the_same_cells() {
        use parquet::basic::{Compression, GzipLevel, ZstdLevel};
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let dir = tempfile::tempdir().unwrap();
        let reference = dir.path().join("plain.parquet");
        write_decimals(&reference, 1_500, Compression::UNCOMPRESSED);
        let expected = rows(Table::open(&spec(&reference, "")).unwrap());
        assert_eq!(expected.len(), 1_500);
        for codec in [
            Compression::SNAPPY,
            Compression::GZIP(GzipLevel::default()),
            Compression::LZ4,
            Compression::LZ4_RAW,
            Compression::ZSTD(ZstdLevel::default()),
        ] {
            let path = dir.path().join(format!("{codec:?}.parquet"));
            write_decimals(&path, 1_500, codec);
            // The pages really are compressed with this codec.
            let file = SerializedFileReader::new(std::fs::File::open(&path).unwrap()).unwrap();
            let used = file.metadata().row_group(0).column(1).compression();
            assert_eq!(
                std::mem::discriminant(&used),
                std::mem::discriminant(&codec),
                "{codec:?}"
            );
            let table = Table::open(&spec(&path, "")).unwrap();
            assert_eq!(rows(table), expected, "{codec:?}");
        }
    }

    #[test]
    fn undecodable_parquet_bytes_are_an_error_naming_the_file() {
        use parquet::basic::{Compression, ZstdLevel};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("z.parquet");
        write_decimals(&path, 3_000, Compression::ZSTD(ZstdLevel::default()));
        let mut bytes = std::fs::read(&path).unwrap();
        // Damage the middle of the first column chunks (page data), not the footer.
        for b in &mut bytes[200..2_000] {
            *b ^= 0x5a;
        }
        std::fs::write(&path, &bytes).unwrap();
        let outcome = Table::open(&spec(&path, "")).map(|t| t.collect::<Result<Vec<_>, _>>());
        let err = match outcome {
            Err(e) | Ok(Err(e)) => e,
            Ok(Ok(rows)) => panic!("{} rows from a damaged file", rows.len()),
        };
        assert!(err.to_string().contains("z.parquet"), "{err}");
    }

    #[test]
    fn damaged_parquet_files_are_errors_not_panics() {
        use parquet::basic::{Compression, GzipLevel, ZstdLevel};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.parquet");
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut outcomes = [0usize; 2];
        for codec in [
            Compression::SNAPPY,
            Compression::GZIP(GzipLevel::default()),
            Compression::LZ4_RAW,
            Compression::ZSTD(ZstdLevel::default()),
        ] {
            write_decimals(&path, 300, codec);
            let original = std::fs::read(&path).unwrap();
            for _ in 0..150 {
                let mut bytes = original.clone();
                // A few flipped bytes anywhere, or the file cut short.
                match next() % 4 {
                    0 => bytes.truncate((next() as usize) % bytes.len()),
                    _ => {
                        for _ in 0..1 + next() % 4 {
                            let at = (next() as usize) % bytes.len();
                            bytes[at] ^= 1 << (next() % 8);
                        }
                    }
                }
                std::fs::write(&path, &bytes).unwrap();
                let read = Table::open(&spec(&path, "")).map(|t| t.collect::<Result<Vec<_>, _>>());
                match read {
                    Ok(Ok(_)) => outcomes[0] += 1,
                    Err(e) | Ok(Err(e)) => {
                        assert!(e.to_string().contains("m.parquet"), "{e}");
                        outcomes[1] += 1;
                    }
                }
            }
        }
        assert!(
            outcomes[1] > 100,
            "most damaged files are refused: {outcomes:?}"
        );
    }
}

/// The blank-line and byte-order-mark rules of PROTOCOL.md section 4.1, one file each.
#[test]
fn blank_lines_are_skipped_and_a_leading_byte_order_mark_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let open = |name: &str, bytes: &[u8], options: &str| {
        Table::open(&spec(&write(dir.path(), name, bytes), options))
    };
    let read = |name: &str, bytes: &[u8], options: &str| {
        let table = open(name, bytes, options).unwrap();
        let header = table.header().to_vec();
        let records: Vec<(Position, Vec<Cell>)> = rows(table)
            .into_iter()
            .map(|r| (r.position, r.cells))
            .collect();
        (header, records)
    };
    let id_v = ["id".to_owned(), "v".to_owned()];

    // Blank lines (empty, or `\r\n` alone) before the header, in the middle and at the end are
    // skipped, and each row keeps the physical line it is on.
    for (name, bytes) in [
        ("blank.csv", &b"\nid,v\na,1\n\n\nb,2\n\n"[..]),
        (
            "blank-crlf.csv",
            &b"\r\nid,v\r\na,1\r\n\r\n\r\nb,2\r\n\r\n"[..],
        ),
    ] {
        let (header, records) = read(name, bytes, "");
        assert_eq!(header, id_v, "{name}");
        assert_eq!(
            records,
            [
                (Position::Line(3), vec![text("a"), text("1")]),
                (Position::Line(6), vec![text("b"), text("2")]),
            ],
            "{name}"
        );
    }
    // The same after a quoted line break, and on a last line without a line break.
    let (_, records) = read("quoted.csv", b"id,v\n\"a\nb\",1\n\n\nc,2\n\nd,3", "");
    assert_eq!(
        records,
        [
            (Position::Line(2), vec![text("a\nb"), text("1")]),
            (Position::Line(6), vec![text("c"), text("2")]),
            (Position::Line(8), vec![text("d"), text("3")]),
        ]
    );
    // A line holding only delimiters is a row of NULL cells; a line of spaces is a row of one
    // (NULL) cell; a line holding only `""` is one empty field, skipped like a blank line.
    let (_, records) = read("delimiters.csv", b"id,v\n,\n  \n\"\"\na,1\n", "");
    assert_eq!(
        records,
        [
            (Position::Line(2), vec![Cell::Null, Cell::Null]),
            (Position::Line(3), vec![Cell::Null]),
            (Position::Line(5), vec![text("a"), text("1")]),
        ]
    );

    // A UTF-8 byte-order mark at the very start is dropped, with or without a header; anywhere
    // else it is part of the field.
    let (header, records) = read("bom.csv", b"\xEF\xBB\xBFid,v\na,1\n", "");
    assert_eq!(header, id_v);
    assert_eq!(records, [(Position::Line(2), vec![text("a"), text("1")])]);
    let (header, records) = read(
        "bom-headerless.csv",
        b"\xEF\xBB\xBFa,1\n",
        ",has_header=false",
    );
    assert_eq!(header, ["column_1", "column_2"]);
    assert_eq!(records, [(Position::Line(1), vec![text("a"), text("1")])]);
    let (header, records) = read(
        "bom-blank.csv",
        b"\xEF\xBB\xBF\nid,v\n\xEF\xBB\xBFa,1\n",
        "",
    );
    assert_eq!(
        header, id_v,
        "the mark alone on the first line is a blank line"
    );
    assert_eq!(
        records,
        [(Position::Line(3), vec![text("\u{feff}a"), text("1")])]
    );

    // A file of nothing but a mark and blank lines has no header.
    for (name, bytes) in [
        ("only-bom.csv", &b"\xEF\xBB\xBF"[..]),
        ("only-blank.csv", b"\n\r\n\n"),
    ] {
        assert!(
            matches!(open(name, bytes, ""), Err(ReadError::Empty { .. })),
            "{name}"
        );
    }
    // Without a header, such a file is a table without columns or rows.
    let (header, records) = read("only-blank-headerless.csv", b"\n\n", ",has_header=false");
    assert!(header.is_empty() && records.is_empty());
}
