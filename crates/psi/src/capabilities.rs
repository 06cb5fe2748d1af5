//! What an engine can compute, as one value: how many value columns it sums, over which range
//! of values, how much noise its sums carry, how many output rows one identifier may count in
//! under noise, whether (and how wide) it answers list queries, and how many members it joins.
//!
//! Planners (`cleanroom-rules`) check a query against these figures instead of an engine's
//! internal constants, so that a second engine (OT-based, bucketed) is one more value here.
//! Invariant: every figure is one the engine's protocols enforce themselves; a plan within them
//! never fails in the protocol for being too large.

use crate::ecdh::chain::MAX_FILTERS;
use crate::ecdh::elgamal::{MAX_ITEM_VALUE, MAX_VALUE_COLUMNS};
use crate::ecdh::list::{MAX_LIST_COLUMNS, MAX_LIST_ROWS};
use crate::ecdh::noise::{MAX_CONTRIBUTIONS, MAX_NOISY_PAIRS, MAX_SUM_NOISE};

/// What one engine can compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Most value columns one aggregation session sums.
    pub value_columns: usize,
    /// Largest value one item carries in one value column (values start at 0).
    pub max_item_value: u64,
    /// Largest bound on the absolute noise of one noisy sum.
    pub max_sum_noise: u64,
    /// Largest number of output rows one identifier may count in under noise.
    pub max_contributions: u32,
    /// Most output rows (pairs of groups) one noisy release decides on.
    pub max_noisy_pairs: u64,
    /// List queries, when the engine answers them.
    pub list: Option<ListCapabilities>,
    /// Joins across three or more members, when the engine runs them.
    pub chain: Option<ChainCapabilities>,
}

/// What an engine's joins across three or more members can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainCapabilities {
    /// Most providers one join reaches (the querier's table comes on top).
    pub providers: usize,
    /// Whether proofs of the querier's value ranges travel to the matcher.
    pub range_proofs: bool,
}

/// What an engine's list queries can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListCapabilities {
    /// Most list columns one session carries.
    pub columns: usize,
    /// Most rows one identifier's payload carries.
    pub rows_per_identifier: usize,
}

impl Capabilities {
    /// The ECDH engine of this crate: aggregation over exponential ElGamal, with noise, and
    /// labeled PSI for lists.
    pub const ECDH: Self = Self {
        value_columns: MAX_VALUE_COLUMNS,
        max_item_value: MAX_ITEM_VALUE,
        max_sum_noise: MAX_SUM_NOISE,
        max_contributions: MAX_CONTRIBUTIONS,
        max_noisy_pairs: MAX_NOISY_PAIRS,
        list: Some(ListCapabilities {
            columns: MAX_LIST_COLUMNS,
            rows_per_identifier: MAX_LIST_ROWS,
        }),
        // Each filter re-randomizes the ciphertexts, which no range proof survives.
        chain: Some(ChainCapabilities {
            providers: MAX_FILTERS + 1,
            range_proofs: false,
        }),
    };
}
