//! The Parquet adapter: Apache Arrow's reader, one row group at a time.
//!
//! `ParquetRecordBatchReader` decodes the file row group by row group into record batches of at
//! most [`BATCH_ROWS`] rows, so memory is bounded by one row group's column chunks plus one
//! batch, whatever the file's size. Integer columns become [`Cell::Int`], string columns
//! [`Cell::Text`] (a string equal to a NULL spelling becomes NULL, as in CSV), `DECIMAL`
//! columns [`Cell::Decimal`] with the column's scale; a Parquet NULL is always [`Cell::Null`].
//! Other types are refused when the file is opened, naming the column.
//!
//! The `parquet` crate still panics on some malformed files (an out-of-bounds RLE run in
//! 57.3, found by this crate's damaged-file test): every call into it runs under
//! [`guarded`], which turns such a panic into [`ReadError::Parquet`] naming the file, so
//! untrusted bytes end in an error, never a crashed command or server. (The panic message is
//! still printed by the process's panic hook.)

use std::fs::File;
use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Decimal128Type, Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type, UInt32Type,
    UInt64Type,
};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use crate::{Cell, Decimal, NullValues, Position, ReadError, Row, Source};

/// Rows per decoded batch.
const BATCH_ROWS: usize = 8192;

/// How a column's values become cells.
#[derive(Clone, Copy)]
enum Kind {
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
    Utf8,
    LargeUtf8,
    Utf8View,
    Decimal(u8),
}

impl Kind {
    fn of(data_type: &DataType) -> Option<Kind> {
        Some(match data_type {
            DataType::Int8 => Kind::I8,
            DataType::Int16 => Kind::I16,
            DataType::Int32 => Kind::I32,
            DataType::Int64 => Kind::I64,
            DataType::UInt8 => Kind::U8,
            DataType::UInt16 => Kind::U16,
            DataType::UInt32 => Kind::U32,
            DataType::UInt64 => Kind::U64,
            DataType::Utf8 => Kind::Utf8,
            DataType::LargeUtf8 => Kind::LargeUtf8,
            DataType::Utf8View => Kind::Utf8View,
            DataType::Decimal128(_, scale) if (0..=Decimal::MAX_SCALE as i8).contains(scale) => {
                Kind::Decimal(*scale as u8)
            }
            _ => return None,
        })
    }
}

pub(crate) struct ParquetSource {
    reader: ParquetRecordBatchReader,
    location: String,
    header: Vec<String>,
    kinds: Vec<Kind>,
    nulls: NullValues,
    batch: Option<RecordBatch>,
    /// The next row of `batch`.
    next: usize,
    /// Data rows yielded so far.
    rows: u64,
}

/// Runs `read`, a call into the Parquet reader, turning a panic inside it into an error
/// naming `location`.
fn guarded<T>(location: &str, read: impl FnOnce() -> Result<T, ReadError>) -> Result<T, ReadError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(read)).unwrap_or_else(|panic| {
        let detail = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".to_owned());
        Err(parquet_error(
            location,
            format!("malformed file: the Parquet reader failed ({detail})"),
        ))
    })
}

fn parquet_error(location: &str, e: impl std::fmt::Display) -> ReadError {
    ReadError::Parquet {
        location: location.to_owned(),
        message: e.to_string(),
    }
}

pub(crate) fn open(
    path: &Path,
    location: &str,
    nulls: &NullValues,
) -> Result<(Vec<String>, ParquetSource), ReadError> {
    let file = File::open(path).map_err(|source| ReadError::Io {
        location: location.to_owned(),
        source,
    })?;
    let builder = guarded(location, || {
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| parquet_error(location, e))
    })?;
    let schema = builder.schema().clone();
    let mut header = Vec::with_capacity(schema.fields().len());
    let mut kinds = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let kind = Kind::of(field.data_type()).ok_or_else(|| ReadError::UnsupportedType {
            location: location.to_owned(),
            column: field.name().clone(),
            data_type: field.data_type().to_string(),
        })?;
        header.push(field.name().clone());
        kinds.push(kind);
    }
    let reader = guarded(location, || {
        builder
            .with_batch_size(BATCH_ROWS)
            .build()
            .map_err(|e| parquet_error(location, e))
    })?;
    Ok((
        header.clone(),
        ParquetSource {
            reader,
            location: location.to_owned(),
            header,
            kinds,
            nulls: nulls.clone(),
            batch: None,
            next: 0,
            rows: 0,
        },
    ))
}

impl ParquetSource {
    /// Per column, the scale of a `DECIMAL` column and `None` for the others.
    pub(crate) fn scales(&self) -> Vec<Option<u8>> {
        self.kinds
            .iter()
            .map(|k| match k {
                Kind::Decimal(scale) => Some(*scale),
                _ => None,
            })
            .collect()
    }

    fn cell(&self, column: &dyn Array, kind: Kind, i: usize) -> Result<Cell, String> {
        if column.is_null(i) {
            return Ok(Cell::Null);
        }
        let text = |s: &str| {
            if self.nulls.is_null(s) {
                Cell::Null
            } else {
                Cell::Text(s.to_owned())
            }
        };
        Ok(match kind {
            Kind::I8 => Cell::Int(column.as_primitive::<Int8Type>().value(i).into()),
            Kind::I16 => Cell::Int(column.as_primitive::<Int16Type>().value(i).into()),
            Kind::I32 => Cell::Int(column.as_primitive::<Int32Type>().value(i).into()),
            Kind::I64 => Cell::Int(column.as_primitive::<Int64Type>().value(i)),
            Kind::U8 => Cell::Int(column.as_primitive::<UInt8Type>().value(i).into()),
            Kind::U16 => Cell::Int(column.as_primitive::<UInt16Type>().value(i).into()),
            Kind::U32 => Cell::Int(column.as_primitive::<UInt32Type>().value(i).into()),
            Kind::U64 => {
                let v = column.as_primitive::<UInt64Type>().value(i);
                Cell::Int(i64::try_from(v).map_err(|_| format!("{v} is above {}", i64::MAX))?)
            }
            Kind::Utf8 => text(column.as_string::<i32>().value(i)),
            Kind::LargeUtf8 => text(column.as_string::<i64>().value(i)),
            Kind::Utf8View => text(column.as_string_view().value(i)),
            Kind::Decimal(scale) => Cell::Decimal(Decimal {
                units: column.as_primitive::<Decimal128Type>().value(i),
                scale,
            }),
        })
    }
}

impl Source for ParquetSource {
    fn next_row(&mut self) -> Option<Result<Row, ReadError>> {
        loop {
            if let Some(batch) = &self.batch
                && self.next < batch.num_rows()
            {
                break;
            }
            let reader = &mut self.reader;
            let next = guarded(&self.location, || Ok(reader.next()));
            match next {
                Ok(None) => return None,
                Ok(Some(Ok(batch))) => {
                    self.batch = Some(batch);
                    self.next = 0;
                }
                Ok(Some(Err(e))) => return Some(Err(parquet_error(&self.location, e))),
                Err(e) => return Some(Err(e)),
            }
        }
        let batch = self.batch.as_ref()?;
        let i = self.next;
        self.next += 1;
        self.rows += 1;
        let position = Position::Row(self.rows);
        let mut cells = Vec::with_capacity(self.kinds.len());
        for (c, &kind) in self.kinds.iter().enumerate() {
            match self.cell(batch.column(c).as_ref(), kind, i) {
                Ok(cell) => cells.push(cell),
                Err(message) => {
                    return Some(Err(ReadError::Value {
                        location: self.location.clone(),
                        position,
                        column: self.header[c].clone(),
                        message,
                    }));
                }
            }
        }
        Some(Ok(Row { position, cells }))
    }
}
