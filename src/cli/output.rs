//! Output formats shared by the subcommands: an aligned text table for people, JSON and CSV
//! for programs.

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

/// Render rows as an aligned text table with a header rule. Columns whose every cell is a
/// number are right-aligned, header included.
pub fn render_table(columns: &[String], rows: &[Vec<String>]) -> String {
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

/// Render rows as CSV with a header row.
pub fn render_csv(columns: &[String], rows: &[Vec<String>]) -> anyhow::Result<String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(columns)?;
    for row in rows {
        w.write_record(row)?;
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
            render_csv(&cols, &rows).unwrap(),
            "campaign,n\n\"spring, 2026\",1200\nf,7\n"
        );
    }
}
