//! The aggregate functions: one table, [`FUNCTIONS`], with one entry per function a
//! collaboration file can allow and a query can name.
//!
//! An entry says everything the crate needs of its function: its name in the collaboration
//! file and in SQL, and either how the protocols compute it ([`Computation`]: its operand, the
//! receiver value columns it needs, how its result follows from a group's intersection size
//! and sums, the noise it is released with, how `cleanroom check` describes it) or why no
//! query can use it ([`Support::Refused`]). The collaboration's validation, the SQL checker,
//! the plan, the result, the privacy accounting and the CLI all read this table, so a new
//! function is one [`AggregateFunction`] variant and one entry here.
//!
//! Invariant: a planned aggregate ([`Aggregate`](crate::Aggregate)) holds a [`Computation`],
//! so a function the protocols cannot compute (`SUM(DISTINCT)`) cannot be planned at all.

use std::fmt;

use cleanroom_data::Decimal;
use serde::Serialize;

use crate::plan::ValueKind;
use crate::reason::ReasonCode;
use crate::value::Value;

/// An aggregate function an aggregation rule can allow on a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AggregateFunction {
    /// `COUNT(c)`: rows where `c` is not NULL.
    Count,
    /// `COUNT(DISTINCT c)`.
    CountDistinct,
    /// `SUM(c)`.
    Sum,
    /// `SUM(DISTINCT c)`.
    SumDistinct,
    /// `AVG(c)`.
    Avg,
}

/// What a computed aggregate is taken over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operand {
    /// The identifier column of either table: the result follows from the number of matched
    /// distinct identifiers, and no value column is needed.
    MatchedIdentifiers,
    /// A column of the querier's (receiver's) own table, fed to the intersection-sum protocol
    /// as the entry's value columns.
    QuerierColumn,
}

/// How the protocols compute a function.
pub(crate) struct Computation {
    /// The function.
    pub(crate) function: AggregateFunction,
    /// What it is taken over.
    pub(crate) operand: Operand,
    /// The receiver value columns it reads, in this order (empty for
    /// [`Operand::MatchedIdentifiers`]).
    pub(crate) values: &'static [ValueKind],
    /// The `kind` of its output in the plan's JSON.
    pub(crate) kind: &'static str,
    /// The JSON names of the indices of its value columns, one per entry of `values`.
    pub(crate) index_names: &'static [&'static str],
    /// The `kind` of its noise ([`OutputNoise`](crate::privacy::OutputNoise)): the released
    /// value carries the noise of its first value column (of the intersection count when it
    /// reads none); a second value column's noise is reported as the `count_*` fields.
    pub(crate) noise: &'static str,
    /// Its value in one released group, from the group's intersection size and, per value
    /// column of `values`, the group's sum and the column's scale.
    pub(crate) result: fn(intersection: u64, values: &[(u64, u8)]) -> Value,
    /// How `cleanroom check` says it is computed, given `table.column`.
    pub(crate) describe: fn(column: &str) -> String,
}

/// Whether and how the clean room runs a function.
pub(crate) enum Support {
    /// The protocols compute it.
    Computed(Computation),
    /// A rule may allow it (for compatibility with other clean rooms) but no query can run
    /// it: refused with this code and the message made from the column.
    Refused {
        code: ReasonCode,
        message: fn(column: &str) -> String,
    },
}

/// One function of the table.
pub(crate) struct Entry {
    /// The function.
    pub(crate) function: AggregateFunction,
    /// Its name in the collaboration file (`COUNT_DISTINCT`, ...).
    pub(crate) name: &'static str,
    /// Its SQL name, upper case (`COUNT`).
    pub(crate) sql_name: &'static str,
    /// Whether it is the `DISTINCT` form of `sql_name`.
    pub(crate) distinct: bool,
    /// Whether and how it is computed.
    pub(crate) support: Support,
}

/// Every aggregate function, in the order refusals list the ones a query can use.
pub(crate) const FUNCTIONS: &[Entry] = &[
    Entry {
        function: AggregateFunction::CountDistinct,
        name: "COUNT_DISTINCT",
        sql_name: "COUNT",
        distinct: true,
        support: Support::Computed(Computation {
            function: AggregateFunction::CountDistinct,
            operand: Operand::MatchedIdentifiers,
            values: &[],
            kind: "count_distinct",
            index_names: &[],
            noise: "count",
            result: |intersection, _| Value::Integer(intersection),
            describe: |column| format!("matched distinct {column}"),
        }),
    },
    Entry {
        function: AggregateFunction::Count,
        name: "COUNT",
        sql_name: "COUNT",
        distinct: false,
        support: Support::Computed(Computation {
            function: AggregateFunction::Count,
            operand: Operand::QuerierColumn,
            values: &[ValueKind::NonNull],
            kind: "count",
            index_names: &["value_index"],
            noise: "count",
            result: |_, values| Value::Integer(values[0].0),
            describe: |column| format!("COUNT({column})"),
        }),
    },
    Entry {
        function: AggregateFunction::Sum,
        name: "SUM",
        sql_name: "SUM",
        distinct: false,
        support: Support::Computed(Computation {
            function: AggregateFunction::Sum,
            operand: Operand::QuerierColumn,
            values: &[ValueKind::Integer],
            kind: "sum",
            index_names: &["value_index"],
            noise: "sum",
            result: |_, values| match values[0] {
                (sum, 0) => Value::Integer(sum),
                (sum, scale) => Value::Decimal(Decimal {
                    units: i128::from(sum),
                    scale,
                }),
            },
            describe: |column| format!("SUM({column})"),
        }),
    },
    Entry {
        function: AggregateFunction::Avg,
        name: "AVG",
        sql_name: "AVG",
        distinct: false,
        support: Support::Computed(Computation {
            function: AggregateFunction::Avg,
            operand: Operand::QuerierColumn,
            values: &[ValueKind::Integer, ValueKind::NonNull],
            kind: "avg",
            index_names: &["sum_index", "count_index"],
            noise: "avg",
            result: |_, values| match values[1].0 {
                0 => Value::Null,
                n => {
                    let (sum, scale) = values[0];
                    let unit = 10f64.powi(i32::from(scale));
                    Value::Float(sum as f64 / unit / n as f64)
                }
            },
            describe: |column| format!("AVG({column})"),
        }),
    },
    Entry {
        function: AggregateFunction::SumDistinct,
        name: "SUM_DISTINCT",
        sql_name: "SUM",
        distinct: true,
        support: Support::Refused {
            code: ReasonCode::SumDistinctUnsupported,
            message: |column| {
                format!(
                    "SUM(DISTINCT {column}) cannot be computed by the matching protocols; use \
                     SUM({column})"
                )
            },
        },
    },
];

impl Computation {
    /// Whether it sums the values of its column (and so needs `sum_bounds` under privacy and
    /// may have a decimal scale).
    pub(crate) fn sums(&self) -> bool {
        self.values.contains(&ValueKind::Integer)
    }
}

/// Computations are the same when their functions are.
impl PartialEq for Computation {
    fn eq(&self, other: &Self) -> bool {
        self.function == other.function
    }
}

impl Eq for Computation {}

impl fmt::Debug for Computation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Computation").field(&self.function).finish()
    }
}

/// The entry of SQL function `sql_name` (upper case) in its plain or `DISTINCT` form.
pub(crate) fn by_sql(sql_name: &str, distinct: bool) -> Option<&'static Entry> {
    FUNCTIONS
        .iter()
        .find(|e| e.sql_name == sql_name && e.distinct == distinct)
}

/// Whether SQL function `sql_name` (upper case) is one of the table's.
pub(crate) fn offered(sql_name: &str) -> bool {
    FUNCTIONS.iter().any(|e| e.sql_name == sql_name)
}

/// The forms a query can use, for refusals: `COUNT(DISTINCT <identifier>), COUNT, SUM or AVG`.
pub(crate) fn usable_forms() -> String {
    let forms: Vec<String> = FUNCTIONS
        .iter()
        .filter_map(|e| match &e.support {
            Support::Computed(c) if c.operand == Operand::MatchedIdentifiers => {
                Some(e.function.sql("<identifier>"))
            }
            Support::Computed(_) => Some(e.sql_name.to_owned()),
            Support::Refused { .. } => None,
        })
        .collect();
    match forms.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

impl AggregateFunction {
    fn entry(self) -> &'static Entry {
        FUNCTIONS
            .iter()
            .find(|e| e.function == self)
            .expect("every function has an entry in FUNCTIONS")
    }

    /// The name used in the collaboration file (`COUNT_DISTINCT`, ...).
    pub fn name(self) -> &'static str {
        self.entry().name
    }

    /// How the function is written in SQL, with `column` as its argument.
    pub fn sql(self, column: &str) -> String {
        let entry = self.entry();
        let distinct = if entry.distinct { "DISTINCT " } else { "" };
        format!("{}({distinct}{column})", entry.sql_name)
    }

    /// Whether the function sums its column's values (`SUM`, `AVG`): such a column needs
    /// `sum_bounds` under privacy and may declare a decimal scale.
    pub fn sums(self) -> bool {
        match self.support() {
            Support::Computed(c) => c.sums(),
            Support::Refused { .. } => false,
        }
    }

    /// The function named `name` in the collaboration file.
    pub(crate) fn parse(name: &str) -> Option<Self> {
        FUNCTIONS
            .iter()
            .find(|e| e.name == name)
            .map(|e| e.function)
    }

    /// Whether and how the clean room runs it.
    pub(crate) fn support(self) -> &'static Support {
        &self.entry().support
    }
}

impl fmt::Display for AggregateFunction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_function_has_one_entry_and_names_round_trip() {
        for function in [
            AggregateFunction::Count,
            AggregateFunction::CountDistinct,
            AggregateFunction::Sum,
            AggregateFunction::SumDistinct,
            AggregateFunction::Avg,
        ] {
            assert_eq!(
                FUNCTIONS.iter().filter(|e| e.function == function).count(),
                1
            );
            assert_eq!(AggregateFunction::parse(function.name()), Some(function));
            if let Support::Computed(c) = function.support() {
                assert_eq!(c.function, function);
                assert_eq!(c.values.len(), c.index_names.len());
            }
        }
        assert_eq!(
            AggregateFunction::CountDistinct.sql("x"),
            "COUNT(DISTINCT x)"
        );
        assert_eq!(AggregateFunction::Avg.sql("x"), "AVG(x)");
        assert_eq!(
            usable_forms(),
            "COUNT(DISTINCT <identifier>), COUNT, SUM or AVG"
        );
    }
}
