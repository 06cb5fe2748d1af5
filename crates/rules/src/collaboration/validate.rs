//! The second stage of loading: validation of the raw shapes ([`super::raw`]) into typed
//! values. A [`Locator`] turns each value's position into the line of a keyed error, so
//! every mistake names its key and line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use cleanroom_data::{NullValues, SourceOptions};
use cleanroom_psi::Normalization;
use cleanroom_psi::sealed::SealingKey;
/// Largest value the engine sums per item and column.
const MAX_ITEM_VALUE: u64 = cleanroom_psi::Capabilities::ECDH.max_item_value;
use toml::Spanned;

use super::raw::{
    RawFile, RawLimits, RawMember, RawPricing, RawPrivacy, RawSumBounds, RawTable, SpannedList,
};
use super::{
    Ability, AggregateFunction, AggregationRule, AnalysisRule, Collaboration, CollaborationError,
    DEFAULT_MEMBER_ROWS_PER_SESSION, Identifier, ListRule, MAX_MEMBER_ROWS_PER_SESSION,
    MAX_THRESHOLD, MIN_THRESHOLD, Member, Pricing, Problem, Table,
};
use crate::privacy::{
    DEFAULT_MAX_GROUPS_PER_IDENTIFIER, Epsilon, Privacy, QueryLimits, SumRanges, sum_bound_fits,
};

/// Turns byte offsets into keyed, lined errors.
struct Locator<'a> {
    text: &'a str,
    origin: &'a str,
}

impl Locator<'_> {
    fn line(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        1 + self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
    }

    fn invalid<T>(&self, key: &str, span: &Spanned<T>, problem: Problem) -> CollaborationError {
        CollaborationError::Invalid {
            origin: self.origin.to_owned(),
            line: self.line(span.span().start),
            key: key.to_owned(),
            problem,
        }
    }
}

impl Collaboration {
    /// Reads and validates the collaboration file at `path`; errors name the path, key and line.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, CollaborationError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| CollaborationError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml_str(&text, &path.display().to_string())
    }

    /// Parses and validates a collaboration file's text; `origin` (a path or a label) prefixes
    /// every error, followed by the line and key of the mistake.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self, CollaborationError> {
        let at = Locator { text, origin };
        let raw: RawFile = toml::from_str(text).map_err(|e| CollaborationError::Toml {
            origin: origin.to_owned(),
            line: e.span().map_or(1, |s| at.line(s.start)),
            message: e.message().trim().to_owned(),
        })?;

        let id = raw.collaboration.id;
        if id.get_ref().trim().is_empty() {
            return Err(at.invalid("collaboration.id", &id, Problem::Empty));
        }
        let id = id.into_inner();
        let name = raw.collaboration.name.unwrap_or_else(|| id.clone());
        let privacy = match &raw.collaboration.privacy {
            Some(p) => Some(validate_privacy(&at, p.get_ref())?),
            None => None,
        };
        let limits = match &raw.collaboration.limits {
            Some(l) => validate_limits(&at, l)?,
            None => QueryLimits::default(),
        };

        let mut members: Vec<Member> = Vec::with_capacity(raw.member.len());
        for m in raw.member {
            members.push(validate_member(&at, m, &members)?);
        }
        let nulls = match raw.collaboration.null_values {
            Some(list) => NullValues::new(list.into_inner()),
            None => NullValues::default(),
        };
        let mut tables: Vec<Table> = Vec::with_capacity(raw.table.len());
        for t in raw.table {
            let table = validate_table(&at, t, &members, &tables, privacy.as_ref(), &nulls)?;
            tables.push(table);
        }
        let payer = match raw.collaboration.payer {
            None => None,
            Some(payer) => {
                if !members.iter().any(|m| &m.name == payer.get_ref()) {
                    return Err(at.invalid(
                        "collaboration.payer",
                        &payer,
                        Problem::UnknownPayer(payer.get_ref().clone()),
                    ));
                }
                Some(payer.into_inner())
            }
        };
        let pricing = match &raw.collaboration.pricing {
            Some(p) => Some(validate_pricing(&at, p)?),
            None => None,
        };
        Ok(Self {
            id,
            name,
            members,
            tables,
            privacy,
            limits,
            sha256: Self::digest_of(text),
            payer,
            pricing,
        })
    }
}

fn validate_pricing(
    at: &Locator<'_>,
    raw: &Spanned<RawPricing>,
) -> Result<Pricing, CollaborationError> {
    let section = raw.get_ref();
    let currency = section.currency.get_ref();
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(at.invalid(
            "collaboration.pricing.currency",
            &section.currency,
            Problem::BadCurrency(currency.clone()),
        ));
    }
    let price = |key: &str, value: &Option<Spanned<f64>>| match value {
        None => Ok(None),
        Some(v) if v.get_ref().is_finite() && *v.get_ref() >= 0.0 => Ok(Some(*v.get_ref())),
        Some(v) => Err(at.invalid(
            &format!("collaboration.pricing.{key}"),
            v,
            Problem::BadPrice(v.get_ref().to_string()),
        )),
    };
    let pricing = Pricing {
        currency: currency.clone(),
        per_million_rows: price("per_million_rows", &section.per_million_rows)?,
        per_gib: price("per_gib", &section.per_gib)?,
        per_cpu_hour: price("per_cpu_hour", &section.per_cpu_hour)?,
    };
    if pricing.per_million_rows.is_none()
        && pricing.per_gib.is_none()
        && pricing.per_cpu_hour.is_none()
    {
        return Err(at.invalid("collaboration.pricing", raw, Problem::NoPrice));
    }
    Ok(pricing)
}

fn validate_privacy(at: &Locator<'_>, raw: &RawPrivacy) -> Result<Privacy, CollaborationError> {
    let epsilon = |key: &str, value: &Spanned<f64>| {
        Epsilon::parse(*value.get_ref())
            .ok_or_else(|| at.invalid(key, value, Problem::BadEpsilon(value.get_ref().to_string())))
    };
    let epsilon_budget = epsilon("collaboration.privacy.epsilon_budget", &raw.epsilon_budget)?;
    let epsilon_per_query = epsilon(
        "collaboration.privacy.epsilon_per_query",
        &raw.epsilon_per_query,
    )?;
    if epsilon_per_query > epsilon_budget {
        return Err(at.invalid(
            "collaboration.privacy.epsilon_per_query",
            &raw.epsilon_per_query,
            Problem::EpsilonAboveBudget {
                per_query: epsilon_per_query.to_string(),
                budget: epsilon_budget.to_string(),
            },
        ));
    }
    let sum_ranges = match &raw.sum_ranges {
        None => SumRanges::Proven,
        Some(v) => match v.get_ref().as_str() {
            "proven" => SumRanges::Proven,
            "trusted" => SumRanges::Trusted,
            other => {
                return Err(at.invalid(
                    "collaboration.privacy.sum_ranges",
                    v,
                    Problem::BadSumRanges(other.to_owned()),
                ));
            }
        },
    };
    let max_groups_per_identifier = match &raw.max_groups_per_identifier {
        None => DEFAULT_MAX_GROUPS_PER_IDENTIFIER,
        Some(v) => u32::try_from(*v.get_ref())
            .ok()
            .filter(|k| (1..=cleanroom_psi::Capabilities::ECDH.max_contributions).contains(k))
            .ok_or_else(|| {
                at.invalid(
                    "collaboration.privacy.max_groups_per_identifier",
                    v,
                    Problem::BadMaxGroups(*v.get_ref()),
                )
            })?,
    };
    Ok(Privacy {
        epsilon_budget,
        epsilon_per_query,
        sum_ranges,
        max_groups_per_identifier,
    })
}

fn validate_limits(at: &Locator<'_>, raw: &RawLimits) -> Result<QueryLimits, CollaborationError> {
    let limit = |key: &str, value: &Option<Spanned<i64>>| match value {
        None => Ok(None),
        Some(v) => u64::try_from(*v.get_ref())
            .ok()
            .filter(|n| *n > 0)
            .map(Some)
            .ok_or_else(|| at.invalid(key, v, Problem::BadQueryLimit(*v.get_ref()))),
    };
    Ok(QueryLimits {
        per_member: limit(
            "collaboration.limits.queries_per_member",
            &raw.queries_per_member,
        )?,
        per_member_per_day: limit(
            "collaboration.limits.queries_per_member_per_day",
            &raw.queries_per_member_per_day,
        )?,
    })
}

/// Checks `sum_bounds` against the rule's summed columns and the privacy section.
fn validate_sum_bounds(
    at: &Locator<'_>,
    raw: Option<&RawSumBounds>,
    aggregate_columns: &BTreeMap<String, BTreeSet<AggregateFunction>>,
    privacy: Option<&Privacy>,
    kind: &Spanned<String>,
) -> Result<BTreeMap<String, (u64, u64)>, CollaborationError> {
    let summed = |functions: &BTreeSet<AggregateFunction>| functions.iter().any(|f| f.sums());
    let Some(privacy) = privacy else {
        return match raw {
            Some(raw) => Err(at.invalid(
                "table.rule.sum_bounds",
                raw,
                Problem::SumBoundsWithoutPrivacy,
            )),
            None => Ok(BTreeMap::new()),
        };
    };
    let mut bounds = BTreeMap::new();
    if let Some(raw) = raw {
        for (column, value) in raw.get_ref() {
            let key = format!("table.rule.sum_bounds.{column}");
            if !aggregate_columns.get(column).is_some_and(summed) {
                return Err(at.invalid(&key, value, Problem::SumBoundsNotSummed(column.clone())));
            }
            let (low, high) = match value.get_ref().as_slice() {
                &[low, high] => (u64::try_from(low).ok(), u64::try_from(high).ok()),
                _ => (None, None),
            };
            let (Some(low), Some(high)) = (low, high) else {
                return Err(at.invalid(&key, value, Problem::BadSumBounds));
            };
            if low > high || high > MAX_ITEM_VALUE {
                return Err(at.invalid(&key, value, Problem::BadSumBounds));
            }
            if !sum_bound_fits(high, privacy) {
                return Err(at.invalid(
                    &key,
                    value,
                    Problem::SumBoundTooLarge {
                        high,
                        epsilon: privacy.epsilon_per_query().to_string(),
                    },
                ));
            }
            bounds.insert(column.clone(), (low, high));
        }
    }
    if let Some((column, _)) = aggregate_columns
        .iter()
        .find(|(c, f)| summed(f) && !bounds.contains_key(*c))
    {
        let problem = Problem::MissingSumBounds(column.clone());
        return Err(match raw {
            Some(raw) => at.invalid("table.rule.sum_bounds", raw, problem),
            None => at.invalid("table.rule.sum_bounds", kind, problem),
        });
    }
    Ok(bounds)
}

fn validate_member(
    at: &Locator<'_>,
    raw: RawMember,
    earlier: &[Member],
) -> Result<Member, CollaborationError> {
    let name = raw.name.get_ref();
    if name.trim().is_empty() {
        return Err(at.invalid("member.name", &raw.name, Problem::Empty));
    }
    if earlier.iter().any(|m| &m.name == name) {
        return Err(at.invalid(
            "member.name",
            &raw.name,
            Problem::DuplicateMember(name.clone()),
        ));
    }
    let mut abilities = BTreeSet::new();
    for a in &raw.abilities {
        let ability = Ability::parse(a.get_ref()).ok_or_else(|| {
            at.invalid(
                "member.abilities",
                a,
                Problem::UnknownAbility(a.get_ref().clone()),
            )
        })?;
        if !abilities.insert(ability) {
            return Err(at.invalid(
                "member.abilities",
                a,
                Problem::DuplicateAbility(a.get_ref().clone()),
            ));
        }
    }
    let mut token_sha256 = [0u8; 32];
    let hex_text = raw.token_sha256.get_ref().trim();
    if hex_text.len() != 64 || hex::decode_to_slice(hex_text, &mut token_sha256).is_err() {
        return Err(at.invalid(
            "member.token_sha256",
            &raw.token_sha256,
            Problem::BadTokenHash,
        ));
    }
    if let Some(other) = earlier.iter().find(|m| m.token_sha256 == token_sha256) {
        return Err(at.invalid(
            "member.token_sha256",
            &raw.token_sha256,
            Problem::DuplicateTokenHash(other.name.clone()),
        ));
    }
    let client_cert_sha256 = match &raw.client_cert_sha256 {
        None => None,
        Some(pin) => {
            let mut digest = [0u8; 32];
            let text = pin.get_ref().trim();
            if text.len() != 64 || hex::decode_to_slice(text, &mut digest).is_err() {
                return Err(at.invalid(
                    "member.client_cert_sha256",
                    pin,
                    Problem::BadCertificateHash,
                ));
            }
            if let Some(other) = earlier
                .iter()
                .find(|m| m.client_cert_sha256 == Some(digest))
            {
                return Err(at.invalid(
                    "member.client_cert_sha256",
                    pin,
                    Problem::DuplicateCertificate(other.name.clone()),
                ));
            }
            Some(digest)
        }
    };
    let max_rows_per_session = match &raw.max_rows_per_session {
        None => DEFAULT_MEMBER_ROWS_PER_SESSION,
        Some(rows) => u64::try_from(*rows.get_ref())
            .ok()
            .filter(|r| (1..=MAX_MEMBER_ROWS_PER_SESSION).contains(r))
            .ok_or_else(|| {
                at.invalid(
                    "member.max_rows_per_session",
                    rows,
                    Problem::BadMemberRows(*rows.get_ref()),
                )
            })?,
    };
    let result_key = sealing_key(
        at,
        "member.result_key",
        &raw.result_key,
        Problem::BadResultKey,
    )?;
    let relay_key = sealing_key(at, "member.relay_key", &raw.relay_key, Problem::BadRelayKey)?;
    Ok(Member {
        name: raw.name.into_inner(),
        abilities,
        token_sha256,
        client_cert_sha256,
        max_rows_per_session,
        result_key,
        relay_key,
    })
}

/// A member's public key (`result_key`, `relay_key`): 64 hex digits of a ristretto255 point,
/// or `problem` at `key`.
fn sealing_key(
    at: &Locator<'_>,
    key: &str,
    raw: &Option<Spanned<String>>,
    problem: Problem,
) -> Result<Option<SealingKey>, CollaborationError> {
    let Some(text) = raw else {
        return Ok(None);
    };
    let mut bytes = [0u8; 32];
    let hex_text = text.get_ref().trim();
    if hex_text.len() != 64 || hex::decode_to_slice(hex_text, &mut bytes).is_err() {
        return Err(at.invalid(key, text, problem));
    }
    SealingKey::from_bytes(bytes)
        .map(Some)
        .map_err(|_| at.invalid(key, text, problem))
}

fn validate_table(
    at: &Locator<'_>,
    raw: RawTable,
    members: &[Member],
    earlier: &[Table],
    privacy: Option<&Privacy>,
    nulls: &NullValues,
) -> Result<Table, CollaborationError> {
    let mut source = SourceOptions {
        nulls: nulls.clone(),
        ..SourceOptions::default()
    };
    let options = [
        ("format", raw.format.as_ref()),
        ("delimiter", raw.delimiter.as_ref()),
        ("quote", raw.quote.as_ref()),
    ];
    for (key, value) in options {
        if let Some(value) = value {
            source.set(key, value.get_ref()).map_err(|e| {
                at.invalid(
                    &format!("table.{key}"),
                    value,
                    Problem::BadSourceOption(e.to_string()),
                )
            })?;
        }
    }
    if let Some(h) = &raw.has_header {
        source.csv.has_header = *h.get_ref();
    }
    let name = raw.name.get_ref().clone();
    if name.trim().is_empty() {
        return Err(at.invalid("table.name", &raw.name, Problem::Empty));
    }
    if earlier.iter().any(|t| t.name == name) {
        return Err(at.invalid("table.name", &raw.name, Problem::DuplicateTable(name)));
    }
    let owner = raw.owner.get_ref();
    if !members.iter().any(|m| &m.name == owner) {
        return Err(at.invalid(
            "table.owner",
            &raw.owner,
            Problem::UnknownOwner(owner.clone()),
        ));
    }
    if raw.columns.get_ref().is_empty() {
        return Err(at.invalid("table.columns", &raw.columns, Problem::Empty));
    }
    let mut columns: Vec<String> = Vec::with_capacity(raw.columns.get_ref().len());
    for c in raw.columns.get_ref() {
        if c.get_ref().trim().is_empty() {
            return Err(at.invalid("table.columns", c, Problem::Empty));
        }
        if columns.contains(c.get_ref()) {
            return Err(at.invalid(
                "table.columns",
                c,
                Problem::DuplicateColumn(c.get_ref().clone()),
            ));
        }
        columns.push(c.get_ref().clone());
    }
    let known = |key: &str, c: &Spanned<String>| -> Result<String, CollaborationError> {
        if columns.contains(c.get_ref()) {
            Ok(c.get_ref().clone())
        } else {
            Err(at.invalid(
                key,
                c,
                Problem::UnknownColumn {
                    table: name.clone(),
                    column: c.get_ref().clone(),
                },
            ))
        }
    };

    let identifier_column = known("table.identifier.column", &raw.identifier.column)?;
    let normalization: Normalization =
        raw.identifier.normalize.get_ref().parse().map_err(|_| {
            at.invalid(
                "table.identifier.normalize",
                &raw.identifier.normalize,
                Problem::UnknownNormalization(raw.identifier.normalize.get_ref().clone()),
            )
        })?;

    let Some(rule) = raw.rule else {
        return Err(at.invalid("table", &raw.name, Problem::MissingRule(name.clone())));
    };
    let column_list = |key: &str,
                       list: &SpannedList,
                       non_empty: bool|
     -> Result<Vec<String>, CollaborationError> {
        if non_empty && list.get_ref().is_empty() {
            return Err(at.invalid(key, list, Problem::Empty));
        }
        let mut out: Vec<String> = Vec::with_capacity(list.get_ref().len());
        for c in list.get_ref() {
            let column = known(key, c)?;
            if out.contains(&column) {
                return Err(at.invalid(key, c, Problem::DuplicateColumn(column)));
            }
            out.push(column);
        }
        Ok(out)
    };

    let rule = match rule.kind.get_ref().as_str() {
        "aggregation" => {
            const TYPE: &str = "aggregation";
            if let Some(list) = &rule.list_columns {
                return Err(at.invalid(
                    "table.rule.list_columns",
                    list,
                    Problem::KeyNotInRule { rule_type: TYPE },
                ));
            }
            let missing = |key: &'static str| {
                at.invalid(
                    &format!("table.rule.{key}"),
                    &rule.kind,
                    Problem::MissingRuleKey {
                        key,
                        rule_type: TYPE,
                    },
                )
            };
            let join = rule
                .join_columns
                .as_ref()
                .ok_or_else(|| missing("join_columns"))?;
            let join_columns = column_list("table.rule.join_columns", join, true)?;
            let dimension_columns = match &rule.dimension_columns {
                Some(list) => column_list("table.rule.dimension_columns", list, false)?,
                None => Vec::new(),
            };
            if let Some(list) = &rule.dimension_columns {
                for c in list.get_ref() {
                    if join_columns.contains(c.get_ref()) {
                        return Err(at.invalid(
                            "table.rule.dimension_columns",
                            c,
                            Problem::JoinDimensionOverlap(c.get_ref().clone()),
                        ));
                    }
                }
            }
            let aggregates = rule
                .aggregate_columns
                .as_ref()
                .ok_or_else(|| missing("aggregate_columns"))?;
            if aggregates.get_ref().is_empty() {
                return Err(at.invalid("table.rule.aggregate_columns", aggregates, Problem::Empty));
            }
            let mut aggregate_columns = BTreeMap::new();
            for (column, functions) in aggregates.get_ref() {
                let key = format!("table.rule.aggregate_columns.{column}");
                if !columns.contains(column) {
                    return Err(at.invalid(
                        &key,
                        functions,
                        Problem::UnknownColumn {
                            table: name.clone(),
                            column: column.clone(),
                        },
                    ));
                }
                if functions.get_ref().is_empty() {
                    return Err(at.invalid(&key, functions, Problem::Empty));
                }
                let mut set = BTreeSet::new();
                for f in functions.get_ref() {
                    let function = AggregateFunction::parse(f.get_ref()).ok_or_else(|| {
                        at.invalid(&key, f, Problem::UnknownAggregate(f.get_ref().clone()))
                    })?;
                    if !set.insert(function) {
                        return Err(at.invalid(
                            &key,
                            f,
                            Problem::DuplicateAggregate(f.get_ref().clone()),
                        ));
                    }
                }
                aggregate_columns.insert(column.clone(), set);
            }
            let threshold = rule
                .min_threshold
                .as_ref()
                .ok_or_else(|| missing("min_threshold"))?;
            let value = *threshold.get_ref();
            let min_threshold = u64::try_from(value)
                .ok()
                .filter(|t| (MIN_THRESHOLD..=MAX_THRESHOLD).contains(t))
                .ok_or_else(|| {
                    at.invalid(
                        "table.rule.min_threshold",
                        threshold,
                        Problem::ThresholdOutOfRange(value),
                    )
                })?;
            let sum_bounds = validate_sum_bounds(
                at,
                rule.sum_bounds.as_ref(),
                &aggregate_columns,
                privacy,
                &rule.kind,
            )?;
            let mut scales = BTreeMap::new();
            if let Some(decimals) = &rule.decimal_columns {
                for (column, decimal) in decimals.get_ref() {
                    let key = format!("table.rule.decimal_columns.{column}");
                    let summed = aggregate_columns
                        .get(column)
                        .is_some_and(|f| f.iter().any(|f| f.sums()));
                    if !summed {
                        return Err(at.invalid(
                            &key,
                            decimal,
                            Problem::ScaleNotSummed(column.clone()),
                        ));
                    }
                    let scale = decimal.get_ref().scale;
                    let scale = u8::try_from(scale)
                        .ok()
                        .filter(|s| (1..=18).contains(s))
                        .ok_or_else(|| at.invalid(&key, decimal, Problem::BadScale(scale)))?;
                    scales.insert(column.clone(), scale);
                }
            }
            AnalysisRule::Aggregation(AggregationRule {
                join_columns,
                dimension_columns,
                aggregate_columns,
                min_threshold,
                sum_bounds,
                scales,
            })
        }
        "list" => {
            const TYPE: &str = "list";
            let misplaced = [
                (
                    "dimension_columns",
                    rule.dimension_columns.as_ref().map(|s| s.span()),
                ),
                (
                    "aggregate_columns",
                    rule.aggregate_columns.as_ref().map(|s| s.span()),
                ),
                (
                    "min_threshold",
                    rule.min_threshold.as_ref().map(|s| s.span()),
                ),
                ("sum_bounds", rule.sum_bounds.as_ref().map(|s| s.span())),
                (
                    "decimal_columns",
                    rule.decimal_columns.as_ref().map(|s| s.span()),
                ),
            ];
            for (key, span) in misplaced {
                if let Some(span) = span {
                    return Err(CollaborationError::Invalid {
                        origin: at.origin.to_owned(),
                        line: at.line(span.start),
                        key: format!("table.rule.{key}"),
                        problem: Problem::KeyNotInRule { rule_type: TYPE },
                    });
                }
            }
            let missing = |key: &'static str| {
                at.invalid(
                    &format!("table.rule.{key}"),
                    &rule.kind,
                    Problem::MissingRuleKey {
                        key,
                        rule_type: TYPE,
                    },
                )
            };
            let join = rule
                .join_columns
                .as_ref()
                .ok_or_else(|| missing("join_columns"))?;
            let list = rule
                .list_columns
                .as_ref()
                .ok_or_else(|| missing("list_columns"))?;
            AnalysisRule::List(ListRule {
                join_columns: column_list("table.rule.join_columns", join, true)?,
                list_columns: column_list("table.rule.list_columns", list, true)?,
            })
        }
        other => {
            return Err(at.invalid(
                "table.rule.type",
                &rule.kind,
                Problem::UnknownRuleType(other.to_owned()),
            ));
        }
    };

    Ok(Table {
        owner: owner.clone(),
        name,
        columns,
        identifier: Identifier {
            column: identifier_column,
            normalization,
        },
        rule,
        source,
    })
}
