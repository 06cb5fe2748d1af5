//! The parties' inputs: rows normalized, deduplicated per group, and counted.

use crate::Normalization;
use crate::elgamal::{MAX_ITEM_VALUE, MAX_VALUE_COLUMNS};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Why a row was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// The row does not carry one value per value column.
    #[error("expected {expected} values, got {got}")]
    WrongValueCount {
        /// value columns of the table
        expected: usize,
        /// values in the row
        got: usize,
    },
    /// An identifier's values, summed over its rows, exceed what one item may carry.
    #[error("the values of one identifier add up to more than {MAX_ITEM_VALUE} in column {column}")]
    ValueTooLarge {
        /// value column index
        column: usize,
    },
    /// More value columns than a session supports.
    #[error("at most {MAX_VALUE_COLUMNS} value columns are supported, got {0}")]
    TooManyValueColumns(usize),
    /// A group key longer than the wire allows.
    #[error("group key longer than {} bytes", crate::wire::MAX_GROUP_KEY_BYTES)]
    GroupKeyTooLong,
}

/// One receiver group as the protocol consumes it: its key and its distinct identifiers, each
/// with its per-column value totals.
pub(crate) type ReceiverGroup = (String, Vec<(String, Vec<u64>)>);

/// Counts every table keeps about its input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InputStats {
    /// Rows pushed, including skipped ones.
    pub rows: u64,
    /// Rows whose identifier was empty after normalization (never matched).
    pub skipped_empty: u64,
}

/// The matcher's input: distinct normalized identifiers per group key. An ungrouped table
/// puts every row in the group `""`.
#[derive(Debug, Clone)]
pub struct MatcherTable {
    normalization: Normalization,
    groups: BTreeMap<String, HashSet<String>>,
    stats: InputStats,
}

impl MatcherTable {
    /// An empty table whose identifiers are normalized with `normalization`.
    pub fn new(normalization: Normalization) -> Self {
        Self {
            normalization,
            groups: BTreeMap::new(),
            stats: InputStats::default(),
        }
    }

    /// Add a row. Returns whether the identifier was usable (non-empty after normalization).
    pub fn push(&mut self, group: &str, raw_identifier: &str) -> Result<bool, InputError> {
        self.stats.rows += 1;
        if group.len() > crate::wire::MAX_GROUP_KEY_BYTES {
            return Err(InputError::GroupKeyTooLong);
        }
        let Some(id) = self.normalization.apply(raw_identifier) else {
            self.stats.skipped_empty += 1;
            return Ok(false);
        };
        match self.groups.get_mut(group) {
            Some(set) => {
                set.insert(id);
            }
            None => {
                self.groups.insert(group.to_owned(), HashSet::from([id]));
            }
        }
        Ok(true)
    }

    /// Rows pushed and rows skipped.
    pub fn stats(&self) -> InputStats {
        self.stats
    }

    /// Distinct identifiers summed over groups (what the receiver learns as set sizes).
    pub fn distinct(&self) -> u64 {
        self.groups.values().map(|s| s.len() as u64).sum()
    }

    pub(crate) fn into_groups(self) -> Vec<(String, Vec<String>)> {
        self.groups
            .into_iter()
            .map(|(k, v)| (k, v.into_iter().collect()))
            .collect()
    }
}

/// The receiver's input: per group key, distinct normalized identifiers, each with its values
/// summed over the identifier's rows (one sum per value column).
#[derive(Debug, Clone)]
pub struct ReceiverTable {
    normalization: Normalization,
    value_columns: usize,
    groups: BTreeMap<String, HashMap<String, Vec<u64>>>,
    stats: InputStats,
}

impl ReceiverTable {
    /// An empty table; `value_columns` is 0 for cardinality, else the number of summed columns.
    pub fn new(normalization: Normalization, value_columns: usize) -> Result<Self, InputError> {
        if value_columns > MAX_VALUE_COLUMNS {
            return Err(InputError::TooManyValueColumns(value_columns));
        }
        Ok(Self {
            normalization,
            value_columns,
            groups: BTreeMap::new(),
            stats: InputStats::default(),
        })
    }

    /// Number of value columns.
    pub fn value_columns(&self) -> usize {
        self.value_columns
    }

    /// Add a row with one value per value column. Returns whether the identifier was usable.
    pub fn push(
        &mut self,
        group: &str,
        raw_identifier: &str,
        values: &[u64],
    ) -> Result<bool, InputError> {
        if values.len() != self.value_columns {
            return Err(InputError::WrongValueCount {
                expected: self.value_columns,
                got: values.len(),
            });
        }
        if group.len() > crate::wire::MAX_GROUP_KEY_BYTES {
            return Err(InputError::GroupKeyTooLong);
        }
        self.stats.rows += 1;
        let Some(id) = self.normalization.apply(raw_identifier) else {
            self.stats.skipped_empty += 1;
            return Ok(false);
        };
        if !self.groups.contains_key(group) {
            self.groups.insert(group.to_owned(), HashMap::new());
        }
        let totals = self
            .groups
            .get_mut(group)
            .expect("inserted above")
            .entry(id)
            .or_insert_with(|| vec![0; values.len()]);
        for (column, (total, v)) in totals.iter_mut().zip(values).enumerate() {
            *total = total
                .checked_add(*v)
                .filter(|t| *t <= MAX_ITEM_VALUE)
                .ok_or(InputError::ValueTooLarge { column })?;
        }
        Ok(true)
    }

    /// Rows pushed and rows skipped.
    pub fn stats(&self) -> InputStats {
        self.stats
    }

    /// Distinct identifiers summed over groups (what the matcher learns as set sizes).
    pub fn distinct(&self) -> u64 {
        self.groups.values().map(|s| s.len() as u64).sum()
    }

    pub(crate) fn into_groups(self) -> Vec<ReceiverGroup> {
        self.groups
            .into_iter()
            .map(|(k, v)| (k, v.into_iter().collect()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receiver_sums_values_per_identifier_and_counts_skips() {
        let mut t = ReceiverTable::new(Normalization::Email, 1).unwrap();
        assert!(t.push("", "A@x.com", &[5]).unwrap());
        assert!(t.push("", " a@X.com ", &[7]).unwrap());
        assert!(!t.push("", "   ", &[9]).unwrap());
        assert_eq!(
            t.stats(),
            InputStats {
                rows: 3,
                skipped_empty: 1
            }
        );
        assert_eq!(t.distinct(), 1);
        let groups = t.into_groups();
        assert_eq!(groups[0].1, vec![("a@x.com".to_owned(), vec![12])]);
    }

    #[test]
    fn receiver_rejects_overflow_and_wrong_arity() {
        let mut t = ReceiverTable::new(Normalization::None, 1).unwrap();
        t.push("", "a", &[MAX_ITEM_VALUE]).unwrap();
        assert_eq!(
            t.push("", "a", &[1]),
            Err(InputError::ValueTooLarge { column: 0 })
        );
        assert!(matches!(
            t.push("", "a", &[]),
            Err(InputError::WrongValueCount { .. })
        ));
        assert!(ReceiverTable::new(Normalization::None, MAX_VALUE_COLUMNS + 1).is_err());
    }

    #[test]
    fn matcher_dedupes_within_groups_only() {
        let mut t = MatcherTable::new(Normalization::Trim);
        t.push("x", "1").unwrap();
        t.push("x", " 1 ").unwrap();
        t.push("y", "1").unwrap();
        assert_eq!(t.distinct(), 2);
    }
}
