//! Where a table is and how to read it: [`TableSpec`] = [`Location`] + [`SourceOptions`].

use std::fmt;
use std::path::{Path, PathBuf};

/// A file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Delimited text with a [`CsvDialect`].
    Csv,
    /// Apache Parquet.
    Parquet,
}

impl Format {
    /// Parses `csv` or `parquet`.
    pub fn parse(name: &str) -> Option<Format> {
        match name.to_ascii_lowercase().as_str() {
            "csv" | "tsv" | "txt" => Some(Format::Csv),
            "parquet" | "pq" => Some(Format::Parquet),
            _ => None,
        }
    }

    /// The format a file name's extension says (`.csv`, `.tsv`, `.txt`, `.parquet`, `.pq`),
    /// if any.
    pub fn from_extension(name: &str) -> Option<Format> {
        let file = name.rsplit('/').next().unwrap_or(name);
        let (_, extension) = file.rsplit_once('.')?;
        Format::parse(extension)
    }
}

/// Where a table is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A file on this machine.
    Local(PathBuf),
    /// An object: `s3://bucket/key`, `gs://bucket/key` or `az://container/key`.
    Remote(String),
}

impl Location {
    /// A URL with an object-store scheme is remote; anything else is a local path.
    pub fn parse(text: &str) -> Location {
        const SCHEMES: [&str; 6] = ["s3://", "s3a://", "gs://", "az://", "abfs://", "abfss://"];
        if SCHEMES.iter().any(|s| text.starts_with(s)) {
            Location::Remote(text.to_owned())
        } else {
            Location::Local(PathBuf::from(text))
        }
    }

    /// The local path, if the table is local.
    pub fn local_path(&self) -> Option<&Path> {
        match self {
            Location::Local(p) => Some(p),
            Location::Remote(_) => None,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
            Location::Remote(url) => f.write_str(url),
        }
    }
}

/// How a CSV file is written. The default is RFC 4180: comma, double quote, a header row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CsvDialect {
    /// The field separator (one ASCII byte).
    pub delimiter: u8,
    /// The quote character (one ASCII byte); a doubled quote inside quotes is a literal one.
    pub quote: u8,
    /// Whether line 1 names the columns. Without it the columns are `column_1`, `column_2`, ...
    pub has_header: bool,
}

impl Default for CsvDialect {
    fn default() -> Self {
        CsvDialect {
            delimiter: b',',
            quote: b'"',
            has_header: true,
        }
    }
}

/// The spellings of SQL `NULL` in text fields, compared after trimming whitespace. The
/// default is the empty field, `NULL`, `null` and `\N`. An empty field is always NULL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NullValues(Vec<String>);

impl Default for NullValues {
    fn default() -> Self {
        NullValues::new(["", "NULL", "null", "\\N"].map(str::to_owned))
    }
}

impl NullValues {
    /// These spellings (trimmed), plus the empty field.
    pub fn new(spellings: impl IntoIterator<Item = String>) -> NullValues {
        let mut all: Vec<String> = spellings.into_iter().map(|s| s.trim().to_owned()).collect();
        all.push(String::new());
        all.sort();
        all.dedup();
        NullValues(all)
    }

    /// Whether `text` spells NULL.
    pub fn is_null(&self, text: &str) -> bool {
        let t = text.trim();
        self.0.iter().any(|s| s == t)
    }

    /// The spellings, sorted (the empty one first).
    pub fn spellings(&self) -> &[String] {
        &self.0
    }
}

/// How to read a table: its format (by default from the extension), its CSV dialect and its
/// NULL spellings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceOptions {
    /// The format; `None` means "from the file extension, CSV otherwise".
    pub format: Option<Format>,
    /// The CSV dialect (ignored for Parquet).
    pub csv: CsvDialect,
    /// The NULL spellings of text fields.
    pub nulls: NullValues,
}

/// An option in a table spec that cannot be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OptionError(String);

impl SourceOptions {
    /// Sets one option by name: `format=csv|parquet`, `delimiter=`, `quote=` (one character, or
    /// `comma`, `semicolon`, `tab`, `pipe`, `space`), `has_header=true|false`.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), OptionError> {
        match key {
            "format" => {
                self.format = Some(Format::parse(value).ok_or_else(|| {
                    OptionError(format!("format={value}: expected csv or parquet"))
                })?);
            }
            "delimiter" => self.csv.delimiter = separator(key, value)?,
            "quote" => self.csv.quote = separator(key, value)?,
            "has_header" | "header" => {
                self.csv.has_header = match value {
                    "true" | "yes" | "1" => true,
                    "false" | "no" | "0" => false,
                    _ => {
                        return Err(OptionError(format!(
                            "{key}={value}: expected true or false"
                        )));
                    }
                }
            }
            _ => {
                return Err(OptionError(format!(
                    "unknown option {key:?}: expected format, delimiter, quote or has_header"
                )));
            }
        }
        Ok(())
    }
}

/// One ASCII character, by itself or by name.
fn separator(key: &str, value: &str) -> Result<u8, OptionError> {
    let byte = match value {
        "comma" => b',',
        "semicolon" => b';',
        "tab" | "\\t" => b'\t',
        "pipe" => b'|',
        "space" => b' ',
        "double_quote" => b'"',
        "single_quote" => b'\'',
        v if v.len() == 1 && v.is_ascii() => v.as_bytes()[0],
        _ => {
            return Err(OptionError(format!(
                "{key}={value}: expected one ASCII character or comma, semicolon, tab, pipe, space"
            )));
        }
    };
    if matches!(byte, b'\n' | b'\r') {
        return Err(OptionError(format!(
            "{key}: a line break cannot be a {key}"
        )));
    }
    Ok(byte)
}

/// A table to read: where, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSpec {
    /// Where the table is.
    pub location: Location,
    /// How to read it.
    pub options: SourceOptions,
}

impl TableSpec {
    /// A table at `location` (a path or an object URL) read with `options`.
    pub fn new(location: &str, options: SourceOptions) -> TableSpec {
        TableSpec {
            location: Location::parse(location),
            options,
        }
    }

    /// Parses `LOCATION[,key=value]...` (the command-line form, e.g.
    /// `sales.csv,delimiter=semicolon` or `s3://bucket/t.parquet`) on top of `defaults`.
    pub fn parse_with(text: &str, defaults: SourceOptions) -> Result<TableSpec, OptionError> {
        let mut parts = text.split(',');
        let location = parts.next().unwrap_or_default();
        if location.is_empty() {
            return Err(OptionError("no location before the options".into()));
        }
        let mut options = defaults;
        for part in parts {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| OptionError(format!("{part:?}: expected key=value")))?;
            options.set(key.trim(), value.trim())?;
        }
        Ok(TableSpec::new(location, options))
    }

    /// The format to read: the declared one, else the one the extension names, else CSV.
    pub fn format(&self) -> Format {
        self.options.format.unwrap_or_else(|| {
            Format::from_extension(&self.location.to_string()).unwrap_or(Format::Csv)
        })
    }
}

impl From<PathBuf> for TableSpec {
    /// A local file read with the default options (format from the extension, RFC 4180 CSV).
    fn from(path: PathBuf) -> TableSpec {
        TableSpec {
            location: Location::Local(path),
            options: SourceOptions::default(),
        }
    }
}

impl From<&Path> for TableSpec {
    /// A local file read with the default options (format from the extension, RFC 4180 CSV).
    fn from(path: &Path) -> TableSpec {
        TableSpec {
            location: Location::Local(path.to_path_buf()),
            options: SourceOptions::default(),
        }
    }
}

impl fmt::Display for TableSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.location.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_locations_and_options() {
        let s = TableSpec::parse_with(
            "a.csv,delimiter=semicolon,has_header=false",
            Default::default(),
        )
        .unwrap();
        assert_eq!(s.location, Location::Local("a.csv".into()));
        assert_eq!(s.options.csv.delimiter, b';');
        assert!(!s.options.csv.has_header);
        assert_eq!(s.format(), Format::Csv);
        let s = TableSpec::parse_with("s3://b/k/t.parquet", Default::default()).unwrap();
        assert_eq!(s.location, Location::Remote("s3://b/k/t.parquet".into()));
        assert_eq!(s.format(), Format::Parquet);
        let s = TableSpec::parse_with("data.bin,format=parquet", Default::default()).unwrap();
        assert_eq!(s.format(), Format::Parquet);
        assert!(TableSpec::parse_with("a.csv,delimiter=ab", Default::default()).is_err());
        assert!(TableSpec::parse_with("a.csv,colour=red", Default::default()).is_err());
        assert!(TableSpec::parse_with("a.csv,format=xlsx", Default::default()).is_err());
    }

    #[test]
    fn null_spellings_are_trimmed_and_include_empty() {
        let n = NullValues::default();
        for s in ["", "  ", "NULL", " null ", "\\N"] {
            assert!(n.is_null(s), "{s:?}");
        }
        for s in ["Null", "none", "0", "n"] {
            assert!(!n.is_null(s), "{s:?}");
        }
        let only_na = NullValues::new(["NA".to_owned()]);
        assert!(only_na.is_null("NA") && only_na.is_null("") && !only_na.is_null("NULL"));
    }
}
