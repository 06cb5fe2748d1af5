//! The `SELECT` list: outputs of an aggregation query (dimension columns and allowed,
//! executable aggregates), the meaning of any output expression, and the number of value
//! columns the intersection-sum protocol can carry.

/// Most value columns the engine sums in one session.
const MAX_VALUE_COLUMNS: usize = cleanroom_psi::Capabilities::ECDH.value_columns;
use sqlparser::ast::{
    DuplicateTreatment, Expr, Function, FunctionArg, FunctionArgExpr, FunctionArguments, Select,
};

use super::parse::{is_column_syntax, literal, strip_nested};
use super::{Checker, ColumnRef, MAX_DEPTH, QueryRule, Spec};
use crate::aggregate::{self as functions, Operand, Support};
use crate::collaboration::{AggregationRule, AnalysisRule};
use crate::plan::{Role, ValueKind};
use crate::reason::{Reason, ReasonCode as Code};

impl QueryRule for AggregationRule {
    const SELECT_DISTINCT: bool = false;
    const MAX_TABLES: usize = crate::chain::MAX_CHAIN_TABLES;

    fn of(rule: &AnalysisRule) -> Option<&Self> {
        match rule {
            AnalysisRule::Aggregation(rule) => Some(rule),
            AnalysisRule::List(_) => None,
        }
    }

    fn is_join_column(&self, column: &str) -> bool {
        AggregationRule::is_join_column(self, column)
    }

    fn min_threshold(&self) -> u64 {
        AggregationRule::min_threshold(self)
    }

    fn output_spec(checker: &mut Checker<'_, Self>, expr: &Expr) -> Option<Spec> {
        checker.output_spec(expr, 0)
    }

    fn allows_filter_on(checker: &mut Checker<'_, Self>, column: &ColumnRef) -> bool {
        checker.require_dimension(column, Code::FilterNotDimension, "filtered on")
    }
}

/// Whether `name` (upper case) is an aggregate function of SQL, offered or not.
pub(super) fn is_aggregate(name: &str) -> bool {
    functions::offered(name) || OTHER_AGGREGATES.contains(&name)
}

/// Aggregate functions of common SQL dialects that the clean room does not offer.
pub(super) const OTHER_AGGREGATES: &[&str] = &[
    "MIN",
    "MAX",
    "STDDEV",
    "STDDEV_POP",
    "STDDEV_SAMP",
    "VARIANCE",
    "VAR_POP",
    "VAR_SAMP",
    "APPROX_COUNT_DISTINCT",
    "MEDIAN",
    "PERCENTILE_CONT",
    "PERCENTILE_DISC",
    "ARRAY_AGG",
    "STRING_AGG",
    "LISTAGG",
    "GROUP_CONCAT",
    "ANY_VALUE",
    "BOOL_AND",
    "BOOL_OR",
    "COUNT_IF",
];

impl Checker<'_, AggregationRule> {
    pub(super) fn check_projection(&mut self, select: &Select) -> Vec<(String, Option<Spec>)> {
        let mut outputs = Vec::new();
        let before = self.reasons.len();
        for item in &select.projection {
            let Some((expr, name)) =
                self.select_item(item, "name dimension columns and aggregates")
            else {
                continue;
            };
            let spec = self.output_spec(expr, 0);
            if let Some(Spec::Column(c)) = &spec {
                self.require_dimension(c, Code::OutputNotDimension, "output");
            }
            let name = name.unwrap_or_else(|| match &spec {
                Some(Spec::Column(c)) => c.column.clone(),
                _ => expr.to_string(),
            });
            outputs.push((name, spec));
        }
        let aggregates = outputs
            .iter()
            .filter(|(_, spec)| matches!(spec, Some(Spec::Aggregate(..))))
            .count();
        if aggregates == 0 && self.reasons.len() == before {
            self.refuse(Reason::new(
                Code::NoAggregate,
                "an aggregation query must output at least one aggregate, e.g. \
                 COUNT(DISTINCT <identifier>)",
            ));
        }
        outputs
    }

    /// What an output expression means: a column or an allowed, executable aggregate.
    pub(super) fn output_spec(&mut self, expr: &Expr, depth: usize) -> Option<Spec> {
        if depth > MAX_DEPTH {
            self.refuse(Reason::new(
                Code::QueryTooComplex,
                "an expression is nested too deeply",
            ));
            return None;
        }
        match strip_nested(expr) {
            e @ (Expr::Identifier(_) | Expr::CompoundIdentifier(_)) => {
                self.column(e).map(Spec::Column)
            }
            Expr::Function(f) => self.aggregate(f),
            other => {
                self.refuse(Reason::new(
                    Code::UnsupportedExpression,
                    format!(
                        "output {other} is not allowed: outputs are dimension columns and \
                         aggregates of single columns"
                    ),
                ));
                None
            }
        }
    }

    fn aggregate(&mut self, f: &Function) -> Option<Spec> {
        let name = f.name.to_string().to_ascii_uppercase();
        if !functions::offered(&name) {
            let message = if OTHER_AGGREGATES.contains(&name.as_str()) {
                format!(
                    "aggregate {name} is not supported; use {}",
                    functions::usable_forms()
                )
            } else {
                format!("function {name} is not supported")
            };
            self.refuse(Reason::new(Code::UnsupportedFunction, message));
            return None;
        }
        if f.uses_odbc_syntax
            || !matches!(f.parameters, FunctionArguments::None)
            || f.null_treatment.is_some()
        {
            self.unsupported_clause(&format!("this form of {name}"));
            return None;
        }
        if f.filter.is_some() {
            self.unsupported_clause(&format!("{name}(...) FILTER (WHERE ...); use WHERE"));
            return None;
        }
        if !f.within_group.is_empty() {
            self.unsupported_clause("WITHIN GROUP");
            return None;
        }
        let list = match &f.args {
            FunctionArguments::List(list) => list,
            FunctionArguments::Subquery(_) => {
                self.refuse(Reason::new(Code::Subquery, "subqueries are not allowed"));
                return None;
            }
            FunctionArguments::None => {
                self.refuse(Reason::new(
                    Code::AggregateOverExpression,
                    format!("{name} needs exactly one column"),
                ));
                return None;
            }
        };
        if !list.clauses.is_empty() {
            self.unsupported_clause(&format!("clauses inside {name}(...)"));
            return None;
        }
        let distinct = matches!(list.duplicate_treatment, Some(DuplicateTreatment::Distinct));
        let identifiers: Vec<String> = self
            .sources
            .iter()
            .map(|s| {
                let qualifier = s
                    .alias
                    .as_ref()
                    .map_or(s.table.name(), |a| a.value.as_str());
                format!(
                    "COUNT(DISTINCT {qualifier}.{})",
                    s.table.identifier().column()
                )
            })
            .collect();
        let count_star = || {
            Reason::new(
                Code::CountStar,
                format!(
                    "COUNT(*) counts joined rows, which the clean room does not release; use {} \
                     to count matched identifiers",
                    identifiers.join(" or ")
                ),
            )
        };
        let arg = match list.args.as_slice() {
            [FunctionArg::Unnamed(arg)] => arg,
            [] if name == "COUNT" => {
                self.refuse(count_star());
                return None;
            }
            _ => {
                self.refuse(Reason::new(
                    Code::AggregateOverExpression,
                    format!("{name} takes exactly one column"),
                ));
                return None;
            }
        };
        let expr = match arg {
            FunctionArgExpr::Expr(expr) => strip_nested(expr),
            FunctionArgExpr::Wildcard | FunctionArgExpr::QualifiedWildcard(_)
                if name == "COUNT" =>
            {
                self.refuse(count_star());
                return None;
            }
            _ => {
                self.refuse(Reason::new(
                    Code::AggregateOverExpression,
                    format!("{name}(*) is not allowed; aggregate a single column"),
                ));
                return None;
            }
        };
        if !is_column_syntax(expr) {
            if name == "COUNT" && literal(expr).is_some() {
                self.refuse(count_star());
            } else {
                self.refuse(Reason::new(
                    Code::AggregateOverExpression,
                    format!("{name}({expr}) aggregates an expression; aggregate a single column"),
                ));
            }
            return None;
        }
        let column = self.column(expr)?;
        let Some(entry) = functions::by_sql(&name, distinct) else {
            let form = if distinct { "DISTINCT ..." } else { "..." };
            self.refuse(Reason::new(
                Code::UnsupportedFunction,
                format!("{name}({form}) is not supported"),
            ));
            return None;
        };
        let function = entry.function;
        let rule = self.sources[column.source].rule;
        if !rule.allows(function, &column.column) {
            let allowed: Vec<&str> = rule
                .aggregate_columns()
                .get(&column.column)
                .map(|set| set.iter().map(|f| f.name()).collect())
                .unwrap_or_default();
            let allowed = if allowed.is_empty() {
                "no aggregate".to_owned()
            } else {
                allowed.join(", ")
            };
            self.refuse(
                Reason::new(
                    Code::AggregateNotAllowed,
                    format!(
                        "the rule of table {:?} does not allow {} on column {:?} (allowed: {allowed})",
                        column.table,
                        function.name(),
                        column.column
                    ),
                )
                .table(column.table.clone())
                .column(column.column.clone()),
            );
            return None;
        }
        let (computation, refusal) = match &entry.support {
            Support::Refused { code, message } => (None, Some((*code, message(&column.column)))),
            Support::Computed(c) => (
                Some(c),
                match c.operand {
                    Operand::MatchedIdentifiers if !self.is_identifier(&column) => Some((
                        Code::CountDistinctNotIdentifier,
                        format!(
                            "{} cannot be computed: only the number of matched distinct \
                             identifiers is; use {}",
                            function.sql(&column.column),
                            function.sql(self.sources[column.source].table.identifier().column())
                        ),
                    )),
                    Operand::QuerierColumn if column.role == Role::Matcher => Some((
                        Code::ProviderAggregateUnsupported,
                        format!(
                            "{} of {}.{} cannot be computed: the protocols only aggregate the \
                             querying member's own columns",
                            function.sql(&column.column),
                            column.table,
                            column.column
                        ),
                    )),
                    _ => None,
                },
            ),
        };
        if let Some((code, message)) = refusal {
            self.refuse(
                Reason::new(code, message)
                    .table(column.table.clone())
                    .column(column.column.clone()),
            );
            return None;
        }
        // A refused function has a refusal, so only computed ones get here.
        computation.map(|c| Spec::Aggregate(c, column))
    }

    /// Refuses more value columns than the intersection-sum protocol carries.
    pub(super) fn check_value_columns(&mut self, outputs: &[(String, Option<Spec>)]) {
        let mut columns: Vec<(&str, ValueKind)> = Vec::new();
        for (_, spec) in outputs {
            let Some(Spec::Aggregate(computation, c)) = spec else {
                continue;
            };
            let kinds = computation.values;
            for kind in kinds {
                if !columns.contains(&(c.column.as_str(), *kind)) {
                    columns.push((c.column.as_str(), *kind));
                }
            }
        }
        if columns.len() > MAX_VALUE_COLUMNS {
            self.refuse(Reason::new(
                Code::TooManyValueColumns,
                format!(
                    "the query needs {} value columns (a SUM or COUNT counts one, an AVG two); \
                     one query can carry at most {MAX_VALUE_COLUMNS}",
                    columns.len()
                ),
            ));
        }
    }
}
