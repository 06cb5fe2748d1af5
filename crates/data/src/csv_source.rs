//! The CSV adapter: a dialect, a byte-order mark dropped, physical line numbers, NULL spellings.
//!
//! Line numbers: with the default terminator the `csv` crate reports a CRLF file's records one
//! line early (a record "starts" on the `\n` of the line before). Records are therefore split
//! at `\n` only and the `\r` of a CRLF ending is removed from the last field, so the line
//! reported is the physical line the record starts on, with LF or CRLF endings and with quoted
//! line breaks. (Files with bare-`\r` line endings are read as one line.)

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use crate::{Cell, CsvDialect, NullValues, Position, ReadError, Row, Source};

pub(crate) struct CsvSource {
    reader: csv::Reader<Box<dyn Read + Send>>,
    location: String,
    nulls: NullValues,
    /// A record read ahead to name the columns of a headerless file.
    pending: Option<Row>,
    record: csv::ByteRecord,
    /// Where the input ends when its last line has no line break (the last record then has no
    /// terminator); `None` when it ends with one.
    unterminated_end: Option<u64>,
}

pub(crate) fn open(
    path: &Path,
    location: &str,
    dialect: &CsvDialect,
    nulls: &NullValues,
) -> Result<(Vec<String>, CsvSource), ReadError> {
    let io = |source| ReadError::Io {
        location: location.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    let unterminated_end = unterminated_end(&mut file).map_err(io)?;
    let mut file = BufReader::with_capacity(1 << 16, file);
    let mut start = [0u8; 3];
    let mut got = 0;
    while got < 3 {
        match file.read(&mut start[got..]).map_err(io)? {
            0 => break,
            n => got += n,
        }
    }
    let bom = start[..got] == [0xEF, 0xBB, 0xBF];
    let prefix: Vec<u8> = if bom {
        Vec::new()
    } else {
        start[..got].to_vec()
    };
    let unterminated_end = unterminated_end.map(|end| if bom { end - 3 } else { end });
    let input: Box<dyn Read + Send> = Box::new(std::io::Cursor::new(prefix).chain(file));
    let reader = csv::ReaderBuilder::new()
        .delimiter(dialect.delimiter)
        .quote(dialect.quote)
        .terminator(csv::Terminator::Any(b'\n'))
        .has_headers(false)
        .flexible(true)
        .from_reader(input);
    let mut source = CsvSource {
        reader,
        location: location.to_owned(),
        nulls: nulls.clone(),
        pending: None,
        record: csv::ByteRecord::new(),
        unterminated_end,
    };
    let header = if dialect.has_header {
        let Some((_, fields)) = source.read_fields()? else {
            return Err(ReadError::Empty {
                location: location.to_owned(),
            });
        };
        fields.into_iter().map(|f| f.trim().to_owned()).collect()
    } else {
        match source.next_row() {
            Some(Ok(row)) => {
                let names = (1..=row.cells.len())
                    .map(|i| format!("column_{i}"))
                    .collect();
                source.pending = Some(row);
                names
            }
            Some(Err(e)) => return Err(e),
            None => Vec::new(),
        }
    };
    Ok((header, source))
}

/// The length of `file` when its last byte is not a line break (`None` when it is, or the file
/// is empty); the file is left at its start.
fn unterminated_end(file: &mut File) -> std::io::Result<Option<u64>> {
    use std::io::{Seek, SeekFrom};
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(None);
    }
    file.seek(SeekFrom::Start(len - 1))?;
    let mut last = [0u8; 1];
    file.read_exact(&mut last)?;
    file.seek(SeekFrom::Start(0))?;
    Ok((last[0] != b'\n').then_some(len))
}

impl CsvSource {
    /// The next record's fields as text, with the physical line it starts on. Blank lines
    /// (also `\r\n` alone) are skipped.
    fn read_fields(&mut self) -> Result<Option<(u64, Vec<String>)>, ReadError> {
        loop {
            let more = self.reader.read_byte_record(&mut self.record);
            let looked_from = self.record.position().map_or(1, csv::Position::line);
            let more = more.map_err(|e| ReadError::Csv {
                location: self.location.clone(),
                position: Position::Line(e.position().map_or(looked_from, csv::Position::line)),
                message: e.to_string(),
            })?;
            if !more {
                return Ok(None);
            }
            // The reader now stands after the record's terminator (none at the end of a file
            // that does not end with one); the record began the line breaks it holds before.
            let inner = self
                .record
                .iter()
                .map(|f| f.iter().filter(|&&b| b == b'\n').count() as u64)
                .sum::<u64>();
            let at = self.reader.position();
            let terminated = u64::from(self.unterminated_end != Some(at.byte()));
            let line = at
                .line()
                .saturating_sub(inner + terminated)
                .max(looked_from);
            let count = self.record.len();
            let mut fields = Vec::with_capacity(count);
            for (i, bytes) in self.record.iter().enumerate() {
                let bytes = match bytes {
                    [rest @ .., b'\r'] if i + 1 == count => rest,
                    _ => bytes,
                };
                let text = std::str::from_utf8(bytes).map_err(|_| ReadError::Csv {
                    location: self.location.clone(),
                    position: Position::Line(line),
                    message: format!("field {} is not valid UTF-8", i + 1),
                })?;
                fields.push(text.to_owned());
            }
            if fields.len() == 1 && fields[0].is_empty() {
                continue;
            }
            return Ok(Some((line, fields)));
        }
    }
}

impl Source for CsvSource {
    fn next_row(&mut self) -> Option<Result<Row, ReadError>> {
        if let Some(row) = self.pending.take() {
            return Some(Ok(row));
        }
        match self.read_fields() {
            Ok(None) => None,
            Err(e) => Some(Err(e)),
            Ok(Some((line, fields))) => {
                let cells = fields
                    .into_iter()
                    .map(|f| {
                        if self.nulls.is_null(&f) {
                            Cell::Null
                        } else {
                            Cell::Text(f)
                        }
                    })
                    .collect();
                Some(Ok(Row {
                    position: Position::Line(line),
                    cells,
                }))
            }
        }
    }
}
