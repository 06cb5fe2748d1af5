//! Output formats shared by the subcommands: an aligned text table for people, JSON and CSV
//! for programs.

use std::borrow::Cow;

use clap::ValueEnum;

/// How a command prints its result.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns for a terminal.
    #[default]
    Table,
    /// One JSON document on stdout.
    Json,
    /// RFC 4180 CSV with a header row.
    Csv,
}

/// Whether a character could drive a terminal or reorder what it shows: C0 and C1 controls
/// (escape sequences, carriage returns) and the Unicode bidirectional overrides and isolates.
fn is_unsafe(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// `text` with every unsafe character written as a Rust escape (`\u{1b}`, `\n`): a cell
/// from another member (a SQL text, a provider's value) cannot move the cursor, clear the
/// screen or hide what follows. Text without such characters is returned as it is.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_unsafe(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// How CSV cells are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CsvCells {
    /// Control characters escaped, and a cell that starts with `=`, `+`, `-` or `@` and is
    /// not a number prefixed with `'`, so that a spreadsheet shows it as text instead of
    /// running it as a formula (OWASP's CSV injection advice).
    #[default]
    Safe,
    /// Every cell as it is (`--csv-raw`), for programs that read the values themselves.
    Raw,
}

/// A CSV cell as [`CsvCells::Safe`] writes it.
fn safe_csv_cell(text: &str) -> Cow<'_, str> {
    let text = escape_controls(text);
    let formula = text.starts_with(['=', '+', '-', '@']) && text.parse::<f64>().is_err();
    if formula {
        Cow::Owned(format!("'{text}"))
    } else {
        text
    }
}

/// Render rows as an aligned text table with a header rule. Columns whose every cell is a
/// number are right-aligned, header included. Control characters in any cell or header are
/// escaped ([`escape_controls`]).
pub fn render_table(columns: &[String], rows: &[Vec<String>]) -> String {
    let columns: Vec<String> = columns
        .iter()
        .map(|c| escape_controls(c).into_owned())
        .collect();
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| escape_controls(c).into_owned()).collect())
        .collect();
    let (columns, rows) = (&columns[..], &rows[..]);
    let mut widths: Vec<usize> = columns.iter().map(|c| c.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let numeric: Vec<bool> = (0..columns.len())
        .map(|i| {
            !rows.is_empty()
                && rows
                    .iter()
                    .all(|r| r.get(i).is_some_and(|c| c.parse::<f64>().is_ok()))
        })
        .collect();
    let line = |cells: &[String]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(widths.iter().zip(&numeric))
            .map(|(c, (&w, &right))| {
                if right {
                    format!("{c:>w$}")
                } else {
                    format!("{c:<w$}")
                }
            })
            .collect();
        parts.join("  ").trim_end().to_owned()
    };
    let mut out = line(columns);
    out.push('\n');
    out.push_str(
        &widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("  "),
    );
    out.push('\n');
    for row in rows {
        out.push_str(&line(row));
        out.push('\n');
    }
    out
}

/// Render rows as CSV with a header row, cells written as `cells` says.
pub fn render_csv(
    columns: &[String],
    rows: &[Vec<String>],
    cells: CsvCells,
) -> anyhow::Result<String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let write = |w: &mut csv::Writer<Vec<u8>>, record: &[String]| match cells {
        CsvCells::Raw => w.write_record(record),
        CsvCells::Safe => w.write_record(record.iter().map(|c| safe_csv_cell(c).into_owned())),
    };
    write(&mut w, columns)?;
    for row in rows {
        write(&mut w, row)?;
    }
    Ok(String::from_utf8(w.into_inner()?)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_and_csv_quotes() {
        let cols = vec!["campaign".to_owned(), "n".to_owned()];
        let rows = vec![
            vec!["spring, 2026".to_owned(), "1200".to_owned()],
            vec!["f".to_owned(), "7".to_owned()],
        ];
        assert_eq!(
            render_table(&cols, &rows),
            "campaign         n\n------------  ----\nspring, 2026  1200\nf                7\n"
        );
        assert_eq!(
            render_csv(&cols, &rows, CsvCells::Safe).unwrap(),
            "campaign,n\n\"spring, 2026\",1200\nf,7\n"
        );
    }

    #[test]
    fn other_members_text_cannot_drive_a_terminal_or_a_spreadsheet() {
        let cols = vec!["sql".to_owned(), "n".to_owned()];
        let rows = vec![
            vec![
                "\x1b[2J\x1b]0;owned\x07ok\r\u{202E}".to_owned(),
                "-5".to_owned(),
            ],
            vec!["=HYPERLINK(\"http://x\")".to_owned(), "+1".to_owned()],
            vec!["@SUM(A1)".to_owned(), "-x".to_owned()],
        ];
        let table = render_table(&cols, &rows);
        assert!(
            table.lines().all(|l| !l.chars().any(is_unsafe)),
            "{table:?}"
        );
        assert_eq!(table.lines().count(), 5, "one line per row: {table:?}");
        assert!(
            table.contains("\\u{1b}[2J\\u{1b}]0;owned\\u{7}ok\\r\\u{202e}"),
            "{table}"
        );
        let csv = render_csv(&cols, &rows, CsvCells::Safe).unwrap();
        assert_eq!(
            csv,
            "sql,n\n\\u{1b}[2J\\u{1b}]0;owned\\u{7}ok\\r\\u{202e},-5\n\
             \"'=HYPERLINK(\"\"http://x\"\")\",+1\n'@SUM(A1),'-x\n"
        );
        // Raw keeps every cell as it is.
        let raw = render_csv(&cols, &rows, CsvCells::Raw).unwrap();
        assert!(raw.contains("\x1b[2J") && raw.contains("=HYPERLINK"));
    }
}
