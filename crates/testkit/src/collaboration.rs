//! Collaboration files, written in one place: a builder of the TOML text (members with their
//! bearer tokens' digests, tables with an aggregation or a list rule) and the members' tokens
//! the tests use.
//!
//! The text keeps one setting per line (`id = "…"`, `token_sha256 = "…"`), so a test may still
//! edit a rendered file line by line ([`Fixture::edited`](crate::Fixture::edited)).

use sha2::{Digest, Sha256};

/// The publisher's bearer token (it serves the other table).
pub const PUBLISHER_TOKEN: &str = "publisher-secret-token";
/// The advertiser's bearer token (it queries).
pub const ADVERTISER_TOKEN: &str = "advertiser-secret-token";
/// The analyst's bearer token (it may only receive results).
pub const ANALYST_TOKEN: &str = "analyst-secret-token";
/// The retailer's bearer token (a second querier).
pub const RETAILER_TOKEN: &str = "retailer-secret-token";

/// The lowercase hex SHA-256 of `text` (how a collaboration file names a token).
pub fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// A collaboration file being written: `[collaboration]`, then its members, then its tables,
/// in the order they were added.
#[derive(Debug, Clone)]
pub struct CollaborationToml {
    id: String,
    name: Option<String>,
    header: Vec<String>,
    members: Vec<MemberToml>,
    tables: Vec<TableToml>,
}

impl CollaborationToml {
    /// A collaboration called `id`, with no name, members or tables yet.
    pub fn new(id: &str) -> CollaborationToml {
        CollaborationToml {
            id: id.to_owned(),
            name: None,
            header: Vec::new(),
            members: Vec::new(),
            tables: Vec::new(),
        }
    }

    /// Gives the collaboration a display name.
    pub fn name(mut self, name: &str) -> CollaborationToml {
        self.name = Some(name.to_owned());
        self
    }

    /// Adds `text` (lines or whole sections, e.g. `[collaboration.privacy]`) right after the
    /// `[collaboration]` settings.
    pub fn header(mut self, text: &str) -> CollaborationToml {
        self.header.push(text.to_owned());
        self
    }

    /// Adds a member.
    pub fn member(mut self, member: MemberToml) -> CollaborationToml {
        self.members.push(member);
        self
    }

    /// Adds a table.
    pub fn table(mut self, table: TableToml) -> CollaborationToml {
        self.tables.push(table);
        self
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let mut out = format!("\n[collaboration]\nid = {:?}\n", self.id);
        if let Some(name) = &self.name {
            out.push_str(&format!("name = {name:?}\n"));
        }
        for text in &self.header {
            out.push_str(text);
            out.push('\n');
        }
        for member in &self.members {
            out.push('\n');
            member.render_into(&mut out);
        }
        for table in &self.tables {
            out.push('\n');
            table.render_into(&mut out);
        }
        out
    }
}

/// A `[[member]]` entry.
#[derive(Debug, Clone)]
pub struct MemberToml {
    name: String,
    abilities: Vec<String>,
    token: String,
    lines: Vec<String>,
}

impl MemberToml {
    /// Member `name`, authenticated by `token`, with no abilities.
    pub fn new(name: &str, token: &str) -> MemberToml {
        MemberToml {
            name: name.to_owned(),
            abilities: Vec::new(),
            token: token.to_owned(),
            lines: Vec::new(),
        }
    }

    /// A member who may query and receive results.
    pub fn querier(name: &str, token: &str) -> MemberToml {
        MemberToml::new(name, token).abilities(&["query", "receive_results"])
    }

    /// Sets the member's abilities.
    pub fn abilities(mut self, abilities: &[&str]) -> MemberToml {
        self.abilities = abilities.iter().map(|&a| a.to_owned()).collect();
        self
    }

    /// Adds one more setting line (e.g. `max_rows_per_session = 10`).
    pub fn line(mut self, line: &str) -> MemberToml {
        self.lines.push(line.to_owned());
        self
    }

    /// The entry's text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_into(&mut out);
        out
    }

    fn render_into(&self, out: &mut String) {
        out.push_str(&format!(
            "[[member]]\nname = {:?}\nabilities = {:?}\ntoken_sha256 = \"{}\"\n",
            self.name,
            self.abilities,
            sha256_hex(&self.token)
        ));
        for line in &self.lines {
            out.push_str(line);
            out.push('\n');
        }
    }
}

/// A `[[table]]` entry with its rule; its identifier is the `email` column, normalized as an
/// email, and its join column too.
#[derive(Debug, Clone)]
pub struct TableToml {
    name: String,
    owner: String,
    columns: Vec<String>,
    lines: Vec<String>,
    rule: Rule,
}

/// The rule of a [`TableToml`].
#[derive(Debug, Clone)]
enum Rule {
    Aggregation {
        dimensions: Option<Vec<String>>,
        aggregates: String,
        lines: Vec<String>,
        min_threshold: u64,
    },
    List {
        list_columns: Vec<String>,
    },
}

fn owned(items: &[&str]) -> Vec<String> {
    items.iter().map(|&i| i.to_owned()).collect()
}

impl TableToml {
    /// Table `name` of `owner` with `columns` under an aggregation rule: distinct identifiers
    /// may be counted, no dimensions (the line is left out), threshold 3.
    pub fn aggregation(name: &str, owner: &str, columns: &[&str]) -> TableToml {
        TableToml {
            name: name.to_owned(),
            owner: owner.to_owned(),
            columns: owned(columns),
            lines: Vec::new(),
            rule: Rule::Aggregation {
                dimensions: None,
                aggregates: r#"email = ["COUNT_DISTINCT"]"#.to_owned(),
                lines: Vec::new(),
                min_threshold: 3,
            },
        }
    }

    /// Table `name` of `owner` with `columns` under a list rule releasing `list_columns`.
    pub fn list(name: &str, owner: &str, columns: &[&str], list_columns: &[&str]) -> TableToml {
        TableToml {
            name: name.to_owned(),
            owner: owner.to_owned(),
            columns: owned(columns),
            lines: Vec::new(),
            rule: Rule::List {
                list_columns: owned(list_columns),
            },
        }
    }

    /// Adds a setting line to the table, before its rule (e.g. `delimiter = ";"`).
    pub fn line(mut self, line: &str) -> TableToml {
        self.lines.push(line.to_owned());
        self
    }

    /// Sets the aggregation rule's dimension columns (no effect on a list rule).
    pub fn dimensions(mut self, columns: &[&str]) -> TableToml {
        if let Rule::Aggregation { dimensions, .. } = &mut self.rule {
            *dimensions = Some(owned(columns));
        }
        self
    }

    /// Sets the aggregation rule's `aggregate_columns`, as the inside of an inline table
    /// (e.g. `email = ["COUNT_DISTINCT"], amount = ["SUM"]`).
    pub fn aggregates(mut self, inline: &str) -> TableToml {
        if let Rule::Aggregation { aggregates, .. } = &mut self.rule {
            *aggregates = inline.to_owned();
        }
        self
    }

    /// Adds a line to the aggregation rule before its threshold (e.g. `sum_bounds = …`).
    pub fn rule_line(mut self, line: &str) -> TableToml {
        if let Rule::Aggregation { lines, .. } = &mut self.rule {
            lines.push(line.to_owned());
        }
        self
    }

    /// Sets the aggregation rule's `min_threshold`.
    pub fn min_threshold(mut self, threshold: u64) -> TableToml {
        if let Rule::Aggregation { min_threshold, .. } = &mut self.rule {
            *min_threshold = threshold;
        }
        self
    }

    /// The entry's text (with its rule).
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_into(&mut out);
        out
    }

    fn render_into(&self, out: &mut String) {
        out.push_str(&format!(
            "[[table]]\nname = {:?}\nowner = {:?}\ncolumns = {:?}\n\
             identifier = {{ column = \"email\", normalize = \"email\" }}\n",
            self.name, self.owner, self.columns
        ));
        for line in &self.lines {
            out.push_str(line);
            out.push('\n');
        }
        out.push_str("\n[table.rule]\n");
        match &self.rule {
            Rule::Aggregation {
                dimensions,
                aggregates,
                lines,
                min_threshold,
            } => {
                out.push_str("type = \"aggregation\"\njoin_columns = [\"email\"]\n");
                if let Some(dimensions) = dimensions {
                    out.push_str(&format!("dimension_columns = {dimensions:?}\n"));
                }
                out.push_str(&format!("aggregate_columns = {{ {aggregates} }}\n"));
                for line in lines {
                    out.push_str(line);
                    out.push('\n');
                }
                out.push_str(&format!("min_threshold = {min_threshold}\n"));
            }
            Rule::List { list_columns } => {
                out.push_str(&format!(
                    "type = \"list\"\njoin_columns = [\"email\"]\nlist_columns = {list_columns:?}\n"
                ));
            }
        }
    }
}

/// The list collaboration `id`: the publisher's `subscribers` (email, newsletter, region,
/// signup_date; newsletter and region listed) and the advertiser's `customers` (email,
/// customer_id, segment, lifetime_value; customer_id and segment listed).
pub fn list_collaboration(id: &str, name: &str) -> CollaborationToml {
    CollaborationToml::new(id)
        .name(name)
        .member(MemberToml::new("publisher", PUBLISHER_TOKEN))
        .member(MemberToml::querier("advertiser", ADVERTISER_TOKEN))
        .table(TableToml::list(
            "subscribers",
            "publisher",
            &["email", "newsletter", "region", "signup_date"],
            &["newsletter", "region"],
        ))
        .table(TableToml::list(
            "customers",
            "advertiser",
            &["email", "customer_id", "segment", "lifetime_value"],
            &["customer_id", "segment"],
        ))
}
