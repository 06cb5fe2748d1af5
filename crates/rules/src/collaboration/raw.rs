//! The first stage of loading: the raw shapes, as they appear in the file. serde deserializes
//! the TOML into these `Raw*` structs, which reject unknown keys and keep each value's
//! position ([`Spanned`]) so that the second stage ([`super::validate`]) can name its line.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// A list of strings, each with its position in the file.
pub(super) type SpannedList = Spanned<Vec<Spanned<String>>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    pub(super) collaboration: RawHeader,
    #[serde(default)]
    pub(super) member: Vec<RawMember>,
    #[serde(default)]
    pub(super) table: Vec<RawTable>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHeader {
    pub(super) id: Spanned<String>,
    pub(super) name: Option<String>,
    pub(super) privacy: Option<Spanned<RawPrivacy>>,
    pub(super) limits: Option<RawLimits>,
    pub(super) null_values: Option<Spanned<Vec<String>>>,
    pub(super) payer: Option<Spanned<String>>,
    pub(super) pricing: Option<Spanned<RawPricing>>,
}

/// `[collaboration.pricing]`: a currency and unit prices, each optional.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPricing {
    pub(super) currency: Spanned<String>,
    pub(super) per_million_rows: Option<Spanned<f64>>,
    pub(super) per_gib: Option<Spanned<f64>>,
    pub(super) per_cpu_hour: Option<Spanned<f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPrivacy {
    pub(super) epsilon_budget: Spanned<f64>,
    pub(super) epsilon_per_query: Spanned<f64>,
    pub(super) sum_ranges: Option<Spanned<String>>,
    pub(super) max_groups_per_identifier: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) queries_per_member: Option<Spanned<i64>>,
    pub(super) queries_per_member_per_day: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMember {
    pub(super) name: Spanned<String>,
    #[serde(default)]
    pub(super) abilities: Vec<Spanned<String>>,
    pub(super) token_sha256: Spanned<String>,
    pub(super) client_cert_sha256: Option<Spanned<String>>,
    pub(super) max_rows_per_session: Option<Spanned<i64>>,
    pub(super) result_key: Option<Spanned<String>>,
    pub(super) relay_key: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTable {
    pub(super) name: Spanned<String>,
    pub(super) owner: Spanned<String>,
    pub(super) columns: SpannedList,
    pub(super) identifier: RawIdentifier,
    pub(super) rule: Option<RawRule>,
    pub(super) format: Option<Spanned<String>>,
    pub(super) delimiter: Option<Spanned<String>>,
    pub(super) quote: Option<Spanned<String>>,
    pub(super) has_header: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIdentifier {
    pub(super) column: Spanned<String>,
    pub(super) normalize: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    #[serde(rename = "type")]
    pub(super) kind: Spanned<String>,
    pub(super) join_columns: Option<SpannedList>,
    pub(super) dimension_columns: Option<SpannedList>,
    pub(super) aggregate_columns: Option<Spanned<BTreeMap<String, SpannedList>>>,
    pub(super) min_threshold: Option<Spanned<i64>>,
    pub(super) list_columns: Option<SpannedList>,
    pub(super) sum_bounds: Option<RawSumBounds>,
    pub(super) decimal_columns: Option<Spanned<BTreeMap<String, Spanned<RawDecimal>>>>,
}

/// `decimal_columns = { column = { scale = 2 } }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDecimal {
    pub(super) scale: i64,
}

/// `sum_bounds = { column = [low, high], ... }`, with positions.
pub(super) type RawSumBounds = Spanned<BTreeMap<String, Spanned<Vec<i64>>>>;
