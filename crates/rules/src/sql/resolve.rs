//! Resolving names: the two tables of `FROM` and their aliases, the join and its condition,
//! column references, and what each column's analysis rule lets a query do with it.

use sqlparser::ast::{
    BinaryOperator, Expr, Ident, JoinConstraint, JoinOperator, ObjectName, ObjectNamePart, Select,
    TableFactor,
};

use super::parse::{is_column_syntax, strip_nested};
use super::{Checker, ColumnRef, QueryRule, Source};
use crate::collaboration::{AggregationRule, AnalysisRule, Collaboration, ListRule, Table};
use crate::plan::Role;
use crate::reason::{Reason, ReasonCode as Code};

/// Whether an SQL identifier names `name`: exactly when quoted, ignoring ASCII case otherwise.
pub(super) fn ident_matches(ident: &Ident, name: &str) -> bool {
    if ident.quote_style.is_some() {
        ident.value == name
    } else {
        ident.value.eq_ignore_ascii_case(name)
    }
}

/// Finds `ident` among `names`: an exact match first, then a unique case-insensitive one.
fn find_name<'n>(ident: &Ident, names: impl Iterator<Item = &'n str> + Clone) -> Option<&'n str> {
    if let Some(exact) = names.clone().find(|n| *n == ident.value) {
        return Some(exact);
    }
    let mut matches = names.filter(|n| ident_matches(ident, n));
    match (matches.next(), matches.next()) {
        (Some(one), None) => Some(one),
        _ => None,
    }
}

fn single_ident(name: &ObjectName) -> Option<&Ident> {
    match name.0.as_slice() {
        [ObjectNamePart::Identifier(ident)] => Some(ident),
        _ => None,
    }
}

impl<'c, R: QueryRule> Checker<'c, R> {
    // ----- FROM -----

    /// Resolves the joined tables (two, or up to [`QueryRule::MAX_TABLES`]: the querier's and
    /// one per other member) and checks each join; false when the query cannot be judged
    /// further.
    pub(super) fn resolve_from(&mut self, select: &Select) -> bool {
        match select.from.as_slice() {
            [] => {
                self.refuse(Reason::new(
                    Code::JoinRequired,
                    "the query must join the querier's table with another member's table",
                ));
                return false;
            }
            [_, _, ..] => {
                self.refuse(Reason::new(
                    Code::CrossJoin,
                    "comma-separated tables are a cross join; use INNER JOIN ... ON a.id = b.id",
                ));
                return false;
            }
            [_] => {}
        }
        let from = &select.from[0];
        let Some(first) = self.resolve_table(&from.relation) else {
            return false;
        };
        if from.joins.is_empty() {
            self.refuse(
                Reason::new(
                    Code::JoinRequired,
                    format!(
                        "table {:?} must be joined with a table of another member",
                        first.0.name()
                    ),
                )
                .table(first.0.name()),
            );
            return false;
        }
        if from.joins.len() + 1 > R::MAX_TABLES {
            let message = if R::MAX_TABLES == 2 {
                "exactly two tables (one per member) may be joined".to_owned()
            } else {
                format!(
                    "the query joins {} tables; at most {} may be joined: the querier's and one \
                     of each of up to {} other members",
                    from.joins.len() + 1,
                    R::MAX_TABLES,
                    R::MAX_TABLES - 1
                )
            };
            self.refuse(Reason::new(Code::TooManyTables, message));
            return false;
        }
        let mut tables = vec![first];
        for join in &from.joins {
            match self.resolve_table(&join.relation) {
                Some(table) => tables.push(table),
                None => return false,
            }
        }
        if !self.check_owners(&tables) {
            return false;
        }
        for (i, (table, alias)) in tables.iter().enumerate() {
            let Some(rule) = R::of(table.rule()) else {
                let other = tables
                    .iter()
                    .map(|(t, _)| *t)
                    .find(|t| {
                        std::mem::discriminant(t.rule()) != std::mem::discriminant(table.rule())
                    })
                    .unwrap_or(tables[usize::from(i == 0)].0);
                let (list, aggregation) = match table.rule() {
                    AnalysisRule::List(_) => (*table, other),
                    AnalysisRule::Aggregation(_) => (other, *table),
                };
                self.refuse(
                    Reason::new(
                        Code::ListRuleUnsupported,
                        format!(
                            "table {:?} has a list rule but {:?} an aggregation rule; a query \
                             lists the matched rows of two list-rule tables or aggregates \
                             aggregation-rule tables",
                            list.name(),
                            aggregation.name()
                        ),
                    )
                    .table(list.name()),
                );
                continue;
            };
            let role = if table.owner() == self.querier {
                Role::Receiver
            } else {
                Role::Matcher
            };
            self.sources.push(Source {
                table,
                rule,
                alias: alias.clone(),
                role,
            });
        }
        if self.sources.len() != tables.len() {
            return false;
        }

        for (i, join) in from.joins.iter().enumerate() {
            match &join.join_operator {
                JoinOperator::Join(constraint) | JoinOperator::Inner(constraint) => {
                    self.check_join_constraint(constraint, i + 1)
                }
                JoinOperator::Left(_)
                | JoinOperator::LeftOuter(_)
                | JoinOperator::Right(_)
                | JoinOperator::RightOuter(_)
                | JoinOperator::FullOuter(_) => self.refuse(Reason::new(
                    Code::OuterJoin,
                    "outer joins are not allowed; use INNER JOIN",
                )),
                JoinOperator::CrossJoin(_) => self.refuse(Reason::new(
                    Code::CrossJoin,
                    "cross joins are not allowed; use INNER JOIN ... ON a.id = b.id",
                )),
                _ => self.refuse(Reason::new(
                    Code::UnsupportedJoin,
                    "only INNER JOIN ... ON equality of identifiers is allowed",
                )),
            }
            if join.global {
                self.unsupported_clause("GLOBAL JOIN");
            }
        }
        true
    }

    /// Refuses a table joined twice, two tables of one member, and a join without the
    /// querier's table; true when the owners are as a join needs them.
    fn check_owners(&mut self, tables: &[(&'c Table, Option<Ident>)]) -> bool {
        for (j, (b, _)) in tables.iter().enumerate() {
            for (a, _) in &tables[..j] {
                if a.name() == b.name() {
                    self.refuse(
                        Reason::new(
                            Code::SameOwnerTables,
                            format!("table {:?} cannot be joined with itself", a.name()),
                        )
                        .table(a.name()),
                    );
                    return false;
                }
                if a.owner() == b.owner() {
                    self.refuse(
                        Reason::new(
                            Code::SameOwnerTables,
                            format!(
                                "tables {:?} and {:?} both belong to {:?}; a join must match \
                                 different members' data, one table each",
                                a.name(),
                                b.name(),
                                a.owner()
                            ),
                        )
                        .table(b.name()),
                    );
                    return false;
                }
            }
        }
        if tables.iter().all(|(t, _)| t.owner() != self.querier) {
            self.refuse(Reason::new(
                Code::QuerierTableRequired,
                format!(
                    "one of the joined tables must belong to the querying member {:?}",
                    self.querier
                ),
            ));
            return false;
        }
        true
    }

    fn resolve_table(&mut self, factor: &TableFactor) -> Option<(&'c Table, Option<Ident>)> {
        let TableFactor::Table {
            name,
            alias,
            args,
            with_hints,
            version,
            with_ordinality,
            partitions,
            json_path,
            sample,
            index_directives,
            inheritance,
        } = factor
        else {
            let reason = match factor {
                TableFactor::Derived { .. } => {
                    Reason::new(Code::Subquery, "subqueries are not allowed")
                }
                TableFactor::NestedJoin { .. } => {
                    Reason::new(Code::UnsupportedJoin, "parenthesized joins are not allowed")
                }
                _ => Reason::new(
                    Code::UnsupportedClause,
                    "only collaboration tables may appear in FROM",
                ),
            };
            self.refuse(reason);
            return None;
        };
        if args.is_some() {
            self.unsupported_clause("a table function");
            return None;
        }
        if !with_hints.is_empty()
            || version.is_some()
            || *with_ordinality
            || !partitions.is_empty()
            || json_path.is_some()
            || sample.is_some()
            || !index_directives.is_empty()
            || inheritance.is_some()
        {
            self.unsupported_clause("a table modifier (hints, sampling, versions, partitions)");
        }
        if let Some(alias) = alias
            && !alias.columns.is_empty()
        {
            self.unsupported_clause("column aliases on a table");
        }
        let table = single_ident(name).and_then(|ident| {
            find_name(ident, self.collab.tables().iter().map(Table::name))
                .and_then(|n| self.collab.table(n))
        });
        match table {
            Some(table) => Some((table, alias.as_ref().map(|a| a.name.clone()))),
            None => {
                self.refuse(
                    Reason::new(
                        Code::UnknownTable,
                        format!(
                            "table {name} is not in collaboration {:?}",
                            self.collab.id()
                        ),
                    )
                    .table(name.to_string()),
                );
                None
            }
        }
    }

    /// Checks the condition of the join of `sources[joined]` with the tables before it.
    fn check_join_constraint(&mut self, constraint: &JoinConstraint, joined: usize) {
        match constraint {
            JoinConstraint::On(expr) => {
                let expr = strip_nested(expr);
                let Expr::BinaryOp {
                    left,
                    op: BinaryOperator::Eq,
                    right,
                } = expr
                else {
                    let hint = if matches!(
                        expr,
                        Expr::BinaryOp {
                            op: BinaryOperator::And,
                            ..
                        }
                    ) {
                        "; put filters in WHERE"
                    } else {
                        ""
                    };
                    self.refuse(Reason::new(
                        Code::NonEqualityJoin,
                        format!(
                            "the join condition must be a single equality of the two tables' \
                             identifier columns{hint}"
                        ),
                    ));
                    return;
                };
                if !is_column_syntax(left) || !is_column_syntax(right) {
                    self.refuse(Reason::new(
                        Code::NonEqualityJoin,
                        "the join condition must compare two columns",
                    ));
                    return;
                }
                let (Some(l), Some(r)) = (self.column(left), self.column(right)) else {
                    return;
                };
                self.check_join_columns(&l, &r, joined);
            }
            JoinConstraint::Using(names) => {
                let [name] = names.as_slice() else {
                    self.refuse(Reason::new(
                        Code::NonEqualityJoin,
                        "USING must name exactly one column, the identifier of both tables",
                    ));
                    return;
                };
                let Some(ident) = single_ident(name) else {
                    self.refuse(
                        Reason::new(Code::UnknownColumn, format!("unknown column {name}"))
                            .column(name.to_string()),
                    );
                    return;
                };
                // The joined table's column and the first earlier table's that has it (with
                // two tables: the first table's).
                let earlier = (0..joined)
                    .find(|&i| self.column_in(i, ident).is_some())
                    .unwrap_or(0);
                let mut refs = Vec::new();
                for i in [earlier, joined] {
                    match self.column_in(i, ident) {
                        Some(column) => refs.push(column),
                        None => {
                            let table = self.sources[i].table.name();
                            let reason = Reason::new(
                                Code::UnknownColumn,
                                format!("table {table:?} has no column {:?}", ident.value),
                            )
                            .table(table)
                            .column(ident.value.clone());
                            self.reasons.push(reason);
                        }
                    }
                }
                if let [l, r] = refs.as_slice() {
                    let (l, r) = (l.clone(), r.clone());
                    self.check_join_columns(&l, &r, joined);
                }
            }
            JoinConstraint::Natural => self.refuse(Reason::new(
                Code::UnsupportedJoin,
                "NATURAL JOIN is not allowed; use INNER JOIN ... ON a.id = b.id",
            )),
            JoinConstraint::UsingAlias(..) => self.unsupported_clause("USING ... AS"),
            JoinConstraint::None => self.refuse(Reason::new(
                Code::CrossJoin,
                "a join without a condition is a cross join; add ON a.id = b.id",
            )),
        }
    }

    fn check_join_columns(&mut self, l: &ColumnRef, r: &ColumnRef, joined: usize) {
        if l.source == r.source {
            self.refuse(Reason::new(
                Code::JoinNotOnIdentifiers,
                format!(
                    "the join condition compares two columns of table {:?}; it must compare the \
                     identifier columns of both tables",
                    l.table
                ),
            ));
            return;
        }
        let (early, late) = (l.source.min(r.source), l.source.max(r.source));
        if late != joined {
            let table = self.sources[joined].table.name().to_owned();
            let (earlier, later) = (&self.sources[early], &self.sources[late]);
            let why = if late < joined {
                format!(
                    "it compares {:?} and {:?}, joined before it",
                    earlier.table.name(),
                    later.table.name()
                )
            } else {
                format!("{:?} is joined after it", later.table.name())
            };
            self.refuse(
                Reason::new(
                    Code::JoinConditionMissesTable,
                    format!(
                        "the condition of JOIN {table} must compare the identifier of {table:?} \
                         with that of a table joined before it: {why}"
                    ),
                )
                .table(table.clone()),
            );
            return;
        }
        let mut ok = true;
        for c in [l, r] {
            let source = &self.sources[c.source];
            let identifier = source.table.identifier().column();
            if c.column != identifier {
                ok = false;
                let reason = Reason::new(
                    Code::JoinNotOnIdentifiers,
                    format!(
                        "tables can only be joined on their identifier columns; the identifier of \
                         {:?} is {:?}, not {:?}",
                        c.table, identifier, c.column
                    ),
                )
                .table(c.table.clone())
                .column(c.column.clone());
                self.refuse(reason);
            } else if !source.rule.is_join_column(&c.column) {
                ok = false;
                let reason = Reason::new(
                    Code::JoinColumnNotAllowed,
                    format!(
                        "the rule of table {:?} does not list {:?} in join_columns",
                        c.table, c.column
                    ),
                )
                .table(c.table.clone())
                .column(c.column.clone());
                self.refuse(reason);
            }
        }
        if ok {
            let (nl, nr) = (
                self.sources[l.source].table.identifier().normalization(),
                self.sources[r.source].table.identifier().normalization(),
            );
            if nl != nr {
                self.refuse(Reason::new(
                    Code::NormalizationMismatch,
                    format!(
                        "{}.{} is normalized as {nl} but {}.{} as {nr}; they cannot be matched",
                        l.table, l.column, r.table, r.column
                    ),
                ));
            }
        }
    }

    // ----- columns -----

    fn source_named(&self, qualifier: &Ident) -> Option<usize> {
        let by_alias = self.sources.iter().position(|s| {
            s.alias
                .as_ref()
                .is_some_and(|a| ident_matches(qualifier, &a.value))
        });
        by_alias.or_else(|| {
            self.sources
                .iter()
                .position(|s| ident_matches(qualifier, s.table.name()))
        })
    }

    pub(super) fn column_in(&self, source: usize, ident: &Ident) -> Option<ColumnRef> {
        let s = &self.sources[source];
        find_name(ident, s.table.columns().iter().map(String::as_str)).map(|column| ColumnRef {
            source,
            role: s.role,
            table: s.table.name().to_owned(),
            column: column.to_owned(),
        })
    }

    /// Resolves a column reference, refusing unknown and ambiguous ones; `None` when `expr`
    /// is not a column or was refused.
    pub(super) fn column(&mut self, expr: &Expr) -> Option<ColumnRef> {
        match strip_nested(expr) {
            Expr::Identifier(ident) => {
                let found: Vec<ColumnRef> = (0..self.sources.len())
                    .filter_map(|i| self.column_in(i, ident))
                    .collect();
                match found.as_slice() {
                    [one] => Some(one.clone()),
                    [] => {
                        self.refuse(
                            Reason::new(
                                Code::UnknownColumn,
                                format!("no joined table has a column {:?}", ident.value),
                            )
                            .column(ident.value.clone()),
                        );
                        None
                    }
                    _ => {
                        self.refuse(
                            Reason::new(
                                Code::AmbiguousColumn,
                                format!(
                                    "column {:?} exists in {} tables; qualify it (table.column)",
                                    ident.value,
                                    if found.len() == 2 { "both" } else { "several" }
                                ),
                            )
                            .column(ident.value.clone()),
                        );
                        None
                    }
                }
            }
            Expr::CompoundIdentifier(parts) => {
                let [qualifier, column] = parts.as_slice() else {
                    self.refuse(
                        Reason::new(
                            Code::UnknownColumn,
                            format!("unknown column {expr}; write table.column"),
                        )
                        .column(expr.to_string()),
                    );
                    return None;
                };
                let Some(source) = self.source_named(qualifier) else {
                    self.refuse(
                        Reason::new(
                            Code::UnknownTable,
                            format!(
                                "{:?} is not a table or alias of this query",
                                qualifier.value
                            ),
                        )
                        .table(qualifier.value.clone()),
                    );
                    return None;
                };
                match self.column_in(source, column) {
                    Some(c) => Some(c),
                    None => {
                        let table = self.sources[source].table.name().to_owned();
                        self.refuse(
                            Reason::new(
                                Code::UnknownColumn,
                                format!("table {table:?} has no column {:?}", column.value),
                            )
                            .table(table)
                            .column(column.value.clone()),
                        );
                        None
                    }
                }
            }
            _ => None,
        }
    }

    /// Refuses `c` with `code`, saying what it was used as and why it may not be; always false.
    pub(super) fn refuse_column(
        &mut self,
        c: &ColumnRef,
        code: Code,
        used_as: &str,
        why: &str,
    ) -> bool {
        self.refuse(
            Reason::new(
                code,
                format!("{}.{} cannot be {used_as}: {why}", c.table, c.column),
            )
            .table(c.table.clone())
            .column(c.column.clone()),
        );
        false
    }

    pub(super) fn is_identifier(&self, c: &ColumnRef) -> bool {
        self.sources[c.source].table.identifier().column() == c.column
    }
}

impl Checker<'_, AggregationRule> {
    /// Refuses `c` unless it is a dimension column; `code` says where it was used.
    pub(super) fn require_dimension(&mut self, c: &ColumnRef, code: Code, used_as: &str) -> bool {
        let rule = self.sources[c.source].rule;
        if rule.is_dimension(&c.column) {
            return true;
        }
        let why = if rule.is_join_column(&c.column) || self.is_identifier(c) {
            "it is a join column (identifiers never leave their owner)"
        } else {
            "it is not a dimension column of its table's rule"
        };
        self.refuse_column(c, code, used_as, why)
    }
}

impl Checker<'_, ListRule> {
    /// Refuses `c` unless its table's list rule lists it; `code` says where it was used.
    pub(super) fn require_list_column(&mut self, c: &ColumnRef, code: Code, used_as: &str) -> bool {
        let rule = self.sources[c.source].rule;
        if rule.is_list_column(&c.column) {
            return true;
        }
        let why = if rule.is_join_column(&c.column) || self.is_identifier(c) {
            "it is a join column that the rule does not list in list_columns"
        } else {
            "it is not in list_columns of its table's rule"
        };
        self.refuse_column(c, code, used_as, why)
    }
}

/// Whether FROM names at least one table and only collaboration tables with list rules: then
/// the query is judged as a list query. Decided before the clauses are checked, because a list
/// query may be `SELECT DISTINCT`.
pub(super) fn names_only_list_tables(collab: &Collaboration, select: &Select) -> bool {
    let mut relations = select
        .from
        .iter()
        .flat_map(|t| std::iter::once(&t.relation).chain(t.joins.iter().map(|j| &j.relation)))
        .peekable();
    if relations.peek().is_none() {
        return false;
    }
    relations.all(|relation| {
        let TableFactor::Table { name, .. } = relation else {
            return false;
        };
        single_ident(name)
            .and_then(|ident| find_name(ident, collab.tables().iter().map(Table::name)))
            .and_then(|n| collab.table(n))
            .is_some_and(|t| matches!(t.rule(), AnalysisRule::List(_)))
    })
}
