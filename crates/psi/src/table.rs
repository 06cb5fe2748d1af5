//! The parties' inputs: rows normalized, deduplicated per group, and counted.

use crate::Normalization;
use crate::ecdh::elgamal::{MAX_ITEM_VALUE, MAX_VALUE_COLUMNS};
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
    /// Bounds for a number of value columns other than the table's.
    #[error("{got} value bounds for {expected} value columns")]
    WrongBoundCount {
        /// value columns of the table
        expected: usize,
        /// bounds given
        got: usize,
    },
    /// A value bound whose low end is above its high end, or whose high end exceeds what one
    /// item may carry.
    #[error("value bound [{low}, {high}] is empty or above {MAX_ITEM_VALUE}")]
    BadBound {
        /// low end
        low: u64,
        /// high end
        high: u64,
    },
    /// More value columns than a session supports.
    #[error("at most {MAX_VALUE_COLUMNS} value columns are supported, got {0}")]
    TooManyValueColumns(usize),
    /// A group key longer than the wire allows.
    #[error("group key longer than {} bytes", crate::wire::MAX_GROUP_KEY_BYTES)]
    GroupKeyTooLong,
    /// More list columns than a list session supports.
    #[error("at most {max} list columns are supported, got {0}", max = crate::format::MAX_LIST_COLUMNS)]
    TooManyListColumns(usize),
    /// The rows of one identifier do not fit in one list payload.
    #[error(
        "the rows of one identifier take more than the {} bytes of a list payload",
        crate::format::MAX_PLAINTEXT_BYTES
    )]
    PayloadTooLarge,
    /// One identifier has more rows than one list payload may carry.
    #[error("one identifier has more than {} rows", crate::format::MAX_LIST_ROWS)]
    TooManyRows,
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

    /// Make sure the group `key` exists, empty if no row was pushed to it: a noisy release
    /// announces an ungrouped table's one group even when no row passed the filters, so that
    /// its absence reveals nothing.
    pub fn ensure_group(&mut self, key: &str) -> Result<(), InputError> {
        if key.len() > crate::wire::MAX_GROUP_KEY_BYTES {
            return Err(InputError::GroupKeyTooLong);
        }
        self.groups.entry(key.to_owned()).or_default();
        Ok(())
    }

    /// Distinct identifiers summed over groups (what the receiver learns as set sizes).
    pub fn distinct(&self) -> u64 {
        self.groups.values().map(|s| s.len() as u64).sum()
    }

    /// This table split into `buckets` tables by `key` ([`bucket`](crate::bucket)): each
    /// identifier goes to its bucket, and every group exists in every bucket, empty or not, so
    /// that group numbers agree across buckets. The parts' input counts are zero: the whole
    /// table's are [`stats`](Self::stats) before the split.
    pub fn into_buckets(
        self,
        key: &crate::bucket::BucketKey,
        domain: &crate::Domain,
        buckets: u32,
    ) -> Vec<MatcherTable> {
        let empty: BTreeMap<String, HashSet<String>> = self
            .groups
            .keys()
            .map(|k| (k.clone(), HashSet::new()))
            .collect();
        let mut parts: Vec<MatcherTable> = (0..buckets.max(1))
            .map(|_| MatcherTable {
                normalization: self.normalization,
                groups: empty.clone(),
                stats: InputStats::default(),
            })
            .collect();
        for (group, ids) in self.groups {
            for id in ids {
                let b = key.bucket(domain, &id, buckets) as usize;
                parts[b]
                    .groups
                    .get_mut(&group)
                    .expect("every group is in every part")
                    .insert(id);
            }
        }
        parts
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
    /// Per value column, the interval each identifier's total is clamped into.
    bounds: Option<Vec<(u64, u64)>>,
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
            bounds: None,
        })
    }

    /// Clamp each identifier's total of value column `i` (over its rows in a group) into
    /// `bounds[i] = (low, high)`, as differential privacy requires: one identifier then moves a
    /// sum by at most `high`. Totals above [`MAX_ITEM_VALUE`] are clamped too instead of being
    /// refused. Call before pushing rows.
    pub fn bound_totals(&mut self, bounds: Vec<(u64, u64)>) -> Result<(), InputError> {
        if bounds.len() != self.value_columns {
            return Err(InputError::WrongBoundCount {
                expected: self.value_columns,
                got: bounds.len(),
            });
        }
        if let Some(&(low, high)) = bounds
            .iter()
            .find(|(low, high)| low > high || *high > MAX_ITEM_VALUE)
        {
            return Err(InputError::BadBound { low, high });
        }
        self.bounds = Some(bounds);
        Ok(())
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
            *total = match &self.bounds {
                // Clamped at the end; saturating keeps "above the bound" true meanwhile.
                Some(_) => total.saturating_add(*v),
                None => total
                    .checked_add(*v)
                    .filter(|t| *t <= MAX_ITEM_VALUE)
                    .ok_or(InputError::ValueTooLarge { column })?,
            };
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

    /// Distinct identifiers over all groups together (an identifier in two groups counts
    /// once), as a matcher made with
    /// [`require_receiver_identifiers`](crate::Matcher::require_receiver_identifiers) counts them.
    pub fn distinct_identifiers(&self) -> u64 {
        if self.groups.len() <= 1 {
            return self.distinct();
        }
        let all: HashSet<&str> = self
            .groups
            .values()
            .flat_map(|g| g.keys().map(String::as_str))
            .collect();
        all.len() as u64
    }

    /// Keep each identifier in at most `k` of its groups, chosen uniformly at random (from a
    /// CSPRNG-seeded generator, never by key order); returns how many identifiers were in
    /// more. A noisy matcher counts a match in `k` pairs of groups at most whatever the
    /// receiver sends ([`Matcher::with_noise`](crate::Matcher::with_noise)); bounding here
    /// first makes the choice the grouping's owner's, and its count exact.
    pub fn bound_groups(&mut self, k: u32) -> u64 {
        let k = k as usize;
        if self.groups.len() <= k {
            return 0;
        }
        let mut memberships: HashMap<String, Vec<String>> = HashMap::new();
        for (group, ids) in &self.groups {
            for id in ids.keys() {
                memberships
                    .entry(id.clone())
                    .or_default()
                    .push(group.clone());
            }
        }
        let mut rng = rand::rng();
        let mut bounded = 0;
        for (id, groups) in memberships {
            if groups.len() > k {
                bounded += 1;
                for i in rand::seq::index::sample(&mut rng, groups.len(), groups.len() - k) {
                    if let Some(g) = self.groups.get_mut(&groups[i]) {
                        g.remove(&id);
                    }
                }
            }
        }
        bounded
    }

    /// How many identifiers are in more than `k` groups: under noise, a match of one of them
    /// counts in `k` of its groups only, chosen at random by the matcher
    /// ([`Matcher::with_noise`](crate::Matcher::with_noise)).
    pub fn identifiers_in_more_groups_than(&self, k: u32) -> u64 {
        if self.groups.len() <= k as usize {
            return 0;
        }
        let mut memberships: HashMap<&str, u32> = HashMap::new();
        for id in self.groups.values().flat_map(|g| g.keys()) {
            *memberships.entry(id.as_str()).or_default() += 1;
        }
        memberships.values().filter(|&&n| n > k).count() as u64
    }

    /// Make sure the group `key` exists, empty if no row was pushed to it: every bucket of a
    /// job announces every group ([`MatcherTable::ensure_group`] for the matcher).
    pub fn ensure_group(&mut self, key: &str) -> Result<(), InputError> {
        if key.len() > crate::wire::MAX_GROUP_KEY_BYTES {
            return Err(InputError::GroupKeyTooLong);
        }
        self.groups.entry(key.to_owned()).or_default();
        Ok(())
    }

    /// Each group's key and number of distinct identifiers, in group order: what a job's
    /// release is checked against once its buckets are done.
    pub fn group_sizes(&self) -> Vec<(String, u64)> {
        self.groups
            .iter()
            .map(|(k, items)| (k.clone(), items.len() as u64))
            .collect()
    }

    /// This table split into `buckets` tables by `key`, as
    /// [`MatcherTable::into_buckets`]: every group in every part, each identifier (with its
    /// totals) in its bucket, the bounds kept, the parts' input counts zero.
    pub fn into_buckets(
        self,
        key: &crate::bucket::BucketKey,
        domain: &crate::Domain,
        buckets: u32,
    ) -> Vec<ReceiverTable> {
        let empty: BTreeMap<String, HashMap<String, Vec<u64>>> = self
            .groups
            .keys()
            .map(|k| (k.clone(), HashMap::new()))
            .collect();
        let mut parts: Vec<ReceiverTable> = (0..buckets.max(1))
            .map(|_| ReceiverTable {
                normalization: self.normalization,
                value_columns: self.value_columns,
                groups: empty.clone(),
                stats: InputStats::default(),
                bounds: self.bounds.clone(),
            })
            .collect();
        for (group, items) in self.groups {
            for (id, totals) in items {
                let b = key.bucket(domain, &id, buckets) as usize;
                parts[b]
                    .groups
                    .get_mut(&group)
                    .expect("every group is in every part")
                    .insert(id, totals);
            }
        }
        parts
    }

    pub(crate) fn into_groups(self) -> Vec<ReceiverGroup> {
        let bounds = self.bounds;
        self.groups
            .into_iter()
            .map(|(k, v)| {
                let mut items: Vec<(String, Vec<u64>)> = v.into_iter().collect();
                if let Some(bounds) = &bounds {
                    for (_, totals) in &mut items {
                        for (t, &(low, high)) in totals.iter_mut().zip(bounds) {
                            *t = (*t).clamp(low, high);
                        }
                    }
                }
                (k, items)
            })
            .collect()
    }
}

/// The rows of one provider identifier and the length of their payload encoding.
#[derive(Debug, Clone)]
struct ListRows {
    encoded: usize,
    rows: Vec<Vec<String>>,
}

/// The list provider's input: per distinct normalized identifier, every row of its list
/// columns (duplicates kept: the querier's result repeats a row as often as the data has it).
#[derive(Debug, Clone)]
pub struct ListProviderTable {
    normalization: Normalization,
    columns: usize,
    items: HashMap<String, ListRows>,
    stats: InputStats,
}

impl ListProviderTable {
    /// An empty table whose rows carry `columns` list columns (0 when the query lists none of
    /// the provider's columns: matched identifiers then only count how often they occur).
    pub fn new(normalization: Normalization, columns: usize) -> Result<Self, InputError> {
        if columns > crate::format::MAX_LIST_COLUMNS {
            return Err(InputError::TooManyListColumns(columns));
        }
        Ok(Self {
            normalization,
            columns,
            items: HashMap::new(),
            stats: InputStats::default(),
        })
    }

    /// Number of list columns.
    pub fn columns(&self) -> usize {
        self.columns
    }

    /// Add a row with one value per list column. Returns whether the identifier was usable
    /// (non-empty after normalization). Fails when the identifier's rows outgrow one payload.
    pub fn push<S: AsRef<str>>(
        &mut self,
        raw_identifier: &str,
        values: &[S],
    ) -> Result<bool, InputError> {
        if values.len() != self.columns {
            return Err(InputError::WrongValueCount {
                expected: self.columns,
                got: values.len(),
            });
        }
        self.stats.rows += 1;
        let Some(id) = self.normalization.apply(raw_identifier) else {
            self.stats.skipped_empty += 1;
            return Ok(false);
        };
        let (encoded, rows) = self
            .items
            .get(&id)
            .map_or((crate::format::EMPTY_PAYLOAD_BYTES, 0), |item| {
                (item.encoded, item.rows.len())
            });
        if rows >= crate::format::MAX_LIST_ROWS {
            return Err(InputError::TooManyRows);
        }
        let encoded = values
            .iter()
            .map(|v| crate::format::field_bytes(v.as_ref()))
            .fold(encoded, usize::saturating_add);
        if encoded > crate::format::MAX_PLAINTEXT_BYTES {
            return Err(InputError::PayloadTooLarge);
        }
        let row = values.iter().map(|v| v.as_ref().to_owned()).collect();
        let item = self.items.entry(id).or_insert_with(|| ListRows {
            encoded,
            rows: Vec::new(),
        });
        item.encoded = encoded;
        item.rows.push(row);
        Ok(true)
    }

    /// Rows pushed and rows skipped.
    pub fn stats(&self) -> InputStats {
        self.stats
    }

    /// Distinct identifiers (what the querier learns as the provider's set size).
    pub fn distinct(&self) -> u64 {
        self.items.len() as u64
    }

    /// Bytes of every encrypted payload this table sends: the longest payload encoding,
    /// padded up to whole blocks, plus the AEAD tag (what the querier learns about the rows).
    pub fn payload_bytes(&self) -> usize {
        let longest = self
            .items
            .values()
            .map(|i| i.encoded)
            .max()
            .unwrap_or(crate::format::EMPTY_PAYLOAD_BYTES);
        crate::format::padded_width(longest)
    }

    /// This table split into `buckets` tables by `key` ([`bucket`](crate::bucket)), each
    /// identifier with all its rows in its bucket. The parts' input counts are zero: the whole
    /// table's are [`stats`](Self::stats) before the split.
    pub fn into_buckets(
        self,
        key: &crate::bucket::BucketKey,
        domain: &crate::Domain,
        buckets: u32,
    ) -> Vec<ListProviderTable> {
        let mut parts: Vec<ListProviderTable> = (0..buckets.max(1))
            .map(|_| ListProviderTable {
                normalization: self.normalization,
                columns: self.columns,
                items: HashMap::new(),
                stats: InputStats::default(),
            })
            .collect();
        for (id, item) in self.items {
            let b = key.bucket(domain, &id, buckets) as usize;
            parts[b].items.insert(id, item);
        }
        parts
    }

    /// Every identifier with its rows in a canonical order (sorted), so the payload shows
    /// nothing of the order of the provider's data.
    pub(crate) fn into_items(self) -> Vec<(String, Vec<Vec<String>>)> {
        self.items
            .into_iter()
            .map(|(id, mut item)| {
                item.rows.sort_unstable();
                (id, item.rows)
            })
            .collect()
    }
}

/// The list querier's input: its distinct normalized identifiers. Its rows stay with the
/// caller, which joins them with the provider's rows of the matched identifiers.
#[derive(Debug, Clone)]
pub struct ListQuerierTable {
    normalization: Normalization,
    identifiers: HashSet<String>,
    stats: InputStats,
}

impl ListQuerierTable {
    /// An empty table whose identifiers are normalized with `normalization`.
    pub fn new(normalization: Normalization) -> Self {
        Self {
            normalization,
            identifiers: HashSet::new(),
            stats: InputStats::default(),
        }
    }

    /// Add a row's identifier. Returns whether it was usable (non-empty after normalization).
    pub fn push(&mut self, raw_identifier: &str) -> bool {
        self.stats.rows += 1;
        match self.normalization.apply(raw_identifier) {
            Some(id) => {
                self.identifiers.insert(id);
                true
            }
            None => {
                self.stats.skipped_empty += 1;
                false
            }
        }
    }

    /// Rows pushed and rows skipped.
    pub fn stats(&self) -> InputStats {
        self.stats
    }

    /// Distinct identifiers (what the provider learns as the querier's set size).
    pub fn distinct(&self) -> u64 {
        self.identifiers.len() as u64
    }

    /// The distinct normalized identifiers, in no particular order.
    pub fn identifiers(&self) -> impl ExactSizeIterator<Item = &str> {
        self.identifiers.iter().map(String::as_str)
    }

    /// This table split into `buckets` tables by `key` ([`bucket`](crate::bucket)). The
    /// parts' input counts are zero: the whole table's are [`stats`](Self::stats) before the
    /// split.
    pub fn into_buckets(
        self,
        key: &crate::bucket::BucketKey,
        domain: &crate::Domain,
        buckets: u32,
    ) -> Vec<ListQuerierTable> {
        let mut parts: Vec<ListQuerierTable> = (0..buckets.max(1))
            .map(|_| ListQuerierTable::new(self.normalization))
            .collect();
        for id in self.identifiers {
            let b = key.bucket(domain, &id, buckets) as usize;
            parts[b].identifiers.insert(id);
        }
        parts
    }

    pub(crate) fn into_identifiers(self) -> Vec<String> {
        self.identifiers.into_iter().collect()
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
    fn list_provider_keeps_duplicate_rows_and_sorts_them() {
        let mut t = ListProviderTable::new(Normalization::Email, 2).unwrap();
        assert!(t.push(" B@x.com", &["north", "gold"]).unwrap());
        assert!(t.push("b@X.COM ", &["east", "silver"]).unwrap());
        assert!(t.push("b@x.com", &["north", "gold"]).unwrap());
        assert!(!t.push("  ", &["south", "gold"]).unwrap());
        assert_eq!(
            t.push("c@x.com", &["only one"]),
            Err(InputError::WrongValueCount {
                expected: 2,
                got: 1
            })
        );
        assert_eq!(t.distinct(), 1);
        assert_eq!(
            t.stats(),
            InputStats {
                rows: 4,
                skipped_empty: 1
            }
        );
        // 4 + 3 rows · (4 + 5 + 4 + 4) or (4 + 4 + 4 + 6) = 4 + 17 + 18 + 17 = 56 bytes,
        // padded to one 64-byte block, plus the 16-byte tag.
        assert_eq!(t.payload_bytes(), 80);
        let row = |a: &str, b: &str| vec![a.to_owned(), b.to_owned()];
        assert_eq!(
            t.into_items(),
            vec![(
                "b@x.com".to_owned(),
                vec![
                    row("east", "silver"),
                    row("north", "gold"),
                    row("north", "gold")
                ]
            )]
        );
    }

    #[test]
    fn list_provider_bounds_payloads() {
        assert_eq!(
            ListProviderTable::new(Normalization::None, crate::format::MAX_LIST_COLUMNS + 1)
                .unwrap_err(),
            InputError::TooManyListColumns(crate::format::MAX_LIST_COLUMNS + 1)
        );
        let mut t = ListProviderTable::new(Normalization::None, 1).unwrap();
        let big = "x".repeat(crate::format::MAX_PLAINTEXT_BYTES / 2);
        t.push("a", &[big.as_str()]).unwrap();
        assert_eq!(
            t.push("a", &[big.as_str()]),
            Err(InputError::PayloadTooLarge)
        );
        // A first row too large for a payload leaves no trace of its identifier.
        let huge = "x".repeat(crate::format::MAX_PLAINTEXT_BYTES);
        assert_eq!(
            t.push("c", &[huge.as_str()]),
            Err(InputError::PayloadTooLarge)
        );
        assert_eq!(t.distinct(), 1);
        // Another identifier is not affected; the refused row was not kept.
        t.push("b", &["y"]).unwrap();
        assert_eq!(
            t.payload_bytes(),
            crate::format::padded_width(4 + 4 + big.len())
        );
        let mut t = ListProviderTable::new(Normalization::None, 0).unwrap();
        for _ in 0..crate::format::MAX_LIST_ROWS {
            t.push("a", &[] as &[&str]).unwrap();
        }
        assert_eq!(t.push("a", &[] as &[&str]), Err(InputError::TooManyRows));
    }

    #[test]
    fn list_querier_keeps_distinct_identifiers() {
        let mut t = ListQuerierTable::new(Normalization::Phone);
        assert!(t.push("+1 (555) 010-9999"));
        assert!(t.push("+15550109999"));
        assert!(!t.push("call me"));
        assert_eq!(t.distinct(), 1);
        assert_eq!(t.stats().skipped_empty, 1);
        assert_eq!(t.into_identifiers(), vec!["+15550109999".to_owned()]);
    }

    #[test]
    fn receiver_groups_are_bounded_at_random() {
        let mut seen = HashMap::<String, u32>::new();
        for _ in 0..30 {
            let mut t = ReceiverTable::new(Normalization::None, 0).unwrap();
            for g in ["a", "b", "c", "d"] {
                t.push(g, "many", &[]).unwrap();
            }
            t.push("a", "one", &[]).unwrap();
            assert_eq!(t.identifiers_in_more_groups_than(2), 1);
            assert_eq!(t.bound_groups(2), 1);
            assert_eq!(t.identifiers_in_more_groups_than(2), 0);
            assert_eq!(t.bound_groups(2), 0);
            for (g, ids) in &t.groups {
                if ids.contains_key("many") {
                    *seen.entry(g.clone()).or_default() += 1;
                }
            }
            assert!(t.groups["a"].contains_key("one"));
        }
        assert_eq!(seen.values().sum::<u32>(), 60);
        assert_eq!(seen.len(), 4, "every group is kept sometimes: {seen:?}");
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
