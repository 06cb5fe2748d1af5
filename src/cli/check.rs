//! `cleanroom check`: validate a query against the collaboration without touching any data.
//!
//! Exit codes: 0 when the query is allowed, 1 when it is refused (a syntax error is a refusal),
//! 2 for a bad invocation or collaboration file (reported on stderr).

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use cleanroom_psi::sealed::SealingKey;
use cleanroom_rules::{
    AggregateValue, AllowedPlan, ChainPlan, Collaboration, OrderKey, Plan, Protocol, QueryPlan,
    Reason, Refusal, Role, SidePlan, SumRanges,
};
use serde::Serialize;

use super::output::{Format, render_table};

/// Arguments of `cleanroom check`.
#[derive(Args, Debug)]
pub struct CheckArgs {
    /// The collaboration file (TOML), identical on every member's side.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// The member running the query.
    #[arg(long, value_name = "NAME")]
    pub member: String,
    /// A member the result would go to (repeat for several; default: the querying member).
    /// Refused unless each has `receive_results` and, other than the querier, a `result_key`.
    #[arg(long = "receiver", value_name = "MEMBER")]
    pub receivers: Vec<String>,
    /// Output format: `table` for people, `json` for programs.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// The SQL query; `-` reads it from standard input.
    #[arg(value_name = "SQL")]
    pub sql: String,
}

/// Runs `cleanroom check`: prints the plan or the reasons; exit 0 allowed, 1 refused. Errors
/// (unreadable or invalid collaboration file, unknown member, unsupported format) become exit 2.
pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    if args.format == Format::Csv {
        bail!("`check` prints `table` or `json`, not `csv`");
    }
    let collaboration = Collaboration::load(&args.config)?;
    if collaboration.member(&args.member).is_none() {
        let members: Vec<&str> = collaboration.members().iter().map(|m| m.name()).collect();
        bail!(
            "{:?} is not a member of collaboration {:?} (members: {})",
            args.member,
            collaboration.id(),
            members.join(", ")
        );
    }
    let sql = if args.sql == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the query from standard input")?;
        text
    } else {
        args.sql
    };

    // Every kind the planner knows, joins across three or more members included (which
    // `query` does not run yet).
    let verdict = collaboration.plan_query(&args.member, &sql, &args.receivers);
    let json = args.format == Format::Json;
    match &verdict {
        Ok(QueryPlan::TwoParty(plan)) if json => println!("{}", AllowedPlan::new(plan).to_json()),
        Ok(plan) if json => println!("{}", plan.to_json()),
        Err(refusal) if json => println!(
            "{}",
            serde_json::to_string_pretty(&Refused {
                allowed: false,
                reasons: &refusal.reasons
            })?
        ),
        Ok(QueryPlan::TwoParty(plan)) => print!("{}", describe_plan(plan)),
        Ok(QueryPlan::Chain(plan)) => print!("{}", describe_chain(plan)),
        Err(refusal) => print!("{}", describe_refusal(refusal)),
    }
    Ok(if verdict.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `{"allowed": false, "reasons": [...]}`.
#[derive(Serialize)]
struct Refused<'a> {
    allowed: bool,
    reasons: &'a [Reason],
}

/// The serde name of a unit enum value (`intersection_sum`, `non_null`, ...).
fn name_of(value: impl Serialize) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn describe_side(side: &SidePlan) -> String {
    let mut line = format!(
        "{}'s table {} (identifier {}, normalized as {})",
        side.member, side.table, side.identifier, side.normalization
    );
    if let Some(filter) = &side.filter {
        line.push_str(&format!("\n    filter:   {filter}"));
    }
    if !side.group_columns.is_empty() {
        line.push_str(&format!(
            "\n    group by: {}",
            side.group_columns.join(", ")
        ));
    }
    if !side.value_columns.is_empty() {
        let values: Vec<String> = side
            .value_columns
            .iter()
            .map(|v| format!("{} ({})", v.column, name_of(v.kind)))
            .collect();
        line.push_str(&format!("\n    values:   {}", values.join(", ")));
    }
    if !side.list_columns.is_empty() {
        line.push_str(&format!("\n    lists:    {}", side.list_columns.join(", ")));
    }
    line
}

/// A plan, for people.
fn describe_plan(plan: &Plan) -> String {
    let protocol = name_of(plan.protocol());
    let grouping = match plan.grouped_by() {
        Some(Role::Matcher) => ", grouped on the matcher's side",
        Some(Role::Receiver) => ", grouped on the receiver's side",
        None => "",
    };
    let mut out = format!("allowed: {} may run this query\n", plan.querier());
    out.push_str(&format!("protocol: {protocol}{grouping}\n"));
    out.push_str(&format!("matcher:  {}\n", describe_side(plan.matcher())));
    out.push_str(&format!("receiver: {}\n", describe_side(plan.receiver())));
    if plan.protocol() == Protocol::List {
        out.push_str(
            "release:  every matched row (list rules have no threshold); the receiver learns \
             the matcher's list columns of all its matched rows, whatever the LIMIT\n",
        );
    } else {
        out.push_str(&format!(
            "release:  rows with at least {} matched identifiers; others are suppressed\n",
            plan.min_release()
        ));
    }
    if let Some(privacy) = plan.privacy() {
        out.push_str(&format!(
            "privacy:  spends epsilon {} of the querier's budget; discrete Laplace noise on the \
             provider's set sizes (scale {}), the counts (scale {}) and the sums; the threshold \
             applies to the noisy count\n",
            privacy.epsilon,
            privacy.set_size.scale.as_f64(),
            privacy.count.scale.as_f64()
        ));
        if !privacy.value_bounds.is_empty() {
            let bounds: Vec<String> = plan
                .receiver()
                .value_columns
                .iter()
                .zip(&privacy.value_bounds)
                .map(|(c, (lo, hi))| {
                    format!("{} ({}) into [{lo}, {hi}]", c.column, name_of(c.kind))
                })
                .collect();
            out.push_str(&format!(
                "clamping: each identifier's total over its rows in a group is clamped: {}; SUM \
                 adds those totals and AVG averages them (per identifier, not per row)\n",
                bounds.join(", ")
            ));
        }
        if let Some(bounded) = &privacy.bounded {
            out.push_str(&format!(
                "bounding: each identifier counts in at most {k} output rows \
                 (max_groups_per_identifier); one in more is kept in {k} chosen at random, and \
                 the result says about how many were (noise scale {}, ±{} with 95% \
                 probability)\n",
                bounded.scale.as_f64(),
                bounded.interval95(),
                k = privacy.max_groups,
            ));
        }
        if !privacy.value_bounds.is_empty() {
            out.push_str(match privacy.sum_ranges {
                SumRanges::Proven => {
                    "sums:     your values are proven to lie in their sum_bounds (range proofs \
                     the provider verifies), so sums are private even against a querier that \
                     lies\n"
                }
                SumRanges::Trusted => {
                    "sums:     sum_ranges = \"trusted\": nothing proves your values lie in their \
                     sum_bounds, so sums are differentially private only against an honest \
                     querier\n"
                }
            });
        }
    }
    let noise = plan.privacy().map(|p| p.outputs(plan));
    let outputs: Vec<(&str, String)> = match plan {
        Plan::Aggregate(plan) => plan
            .outputs()
            .iter()
            .map(|o| (o.name.as_str(), describe_aggregate(&o.value)))
            .collect(),
        Plan::List(plan) => plan
            .outputs()
            .iter()
            .map(|o| {
                let c = &o.value;
                (
                    o.name.as_str(),
                    format!("{}.{} of each matched row", c.table, c.column),
                )
            })
            .collect(),
    };
    out.push_str(&describe_outputs(
        &outputs,
        noise.as_deref(),
        plan.order_by(),
        plan.distinct(),
        plan.limit(),
    ));
    out
}

/// The outputs table, then the order, `DISTINCT` and limit, for people.
fn describe_outputs(
    outputs: &[(&str, String)],
    noise: Option<&[cleanroom_rules::privacy::OutputNoise]>,
    order_by: &[OrderKey],
    distinct: bool,
    limit: Option<u64>,
) -> String {
    let rows: Vec<Vec<String>> = outputs
        .iter()
        .enumerate()
        .map(|(i, (name, source))| {
            let mut row = vec![name.to_string(), source.clone()];
            if let Some(n) = noise.and_then(|n| n.get(i)) {
                row.push(match n.kind {
                    "none" => "exact".to_owned(),
                    "avg" => format!(
                        "noisy sum / noisy count: discrete Laplace, sum scale {} (±{}), count \
                         scale {} (±{})",
                        n.scale,
                        n.interval95,
                        n.count_scale.unwrap_or_default(),
                        n.count_interval95.unwrap_or_default()
                    ),
                    _ => format!(
                        "discrete Laplace, scale {}: within ±{} with 95% probability",
                        n.scale, n.interval95
                    ),
                });
            }
            row
        })
        .collect();
    let mut header = vec!["output".to_owned(), "computed as".to_owned()];
    if noise.is_some() {
        header.push("noise (95% interval)".to_owned());
    }
    let mut out = String::from("\n");
    out.push_str(&render_table(&header, &rows));
    if !order_by.is_empty() {
        let keys: Vec<String> = order_by
            .iter()
            .map(|k| {
                format!(
                    "{} {}",
                    outputs[k.output].0,
                    if k.descending { "DESC" } else { "ASC" }
                )
            })
            .collect();
        out.push_str(&format!("order by: {}\n", keys.join(", ")));
    }
    if distinct {
        out.push_str("distinct: one of each output row\n");
    }
    if let Some(limit) = limit {
        out.push_str(&format!("limit:    {limit}\n"));
    }
    out
}

/// A join across three or more members, for people: which member serves which part.
fn describe_chain(plan: &ChainPlan) -> String {
    let mut out = format!(
        "allowed: {} may run this query across {} members (planned; `query` does not run \
         joins across more than two members yet)\n",
        plan.querier(),
        plan.members()
    );
    let grouping = match plan.grouped_by() {
        Some(Role::Matcher) => ", grouped on the matcher's side",
        Some(Role::Receiver) => ", grouped on the receiver's side",
        None => "",
    };
    out.push_str(&format!(
        "protocol: {} over the {}-way intersection{grouping}\n",
        name_of(plan.protocol()),
        plan.members()
    ));
    let key = |k: &SealingKey| hex::encode(k.to_bytes());
    let mut parts: Vec<String> = Vec::new();
    for filter in plan.filters() {
        let link = filter.link();
        parts.push(format!(
            "{} (member {}) filters at position {}",
            link.table(),
            link.member(),
            link.position()
        ));
    }
    let matcher = plan.matcher_link();
    let mut matches = format!(
        "{} (member {}) matches at position {}",
        matcher.table(),
        matcher.member(),
        matcher.position()
    );
    if !plan.matcher().group_columns.is_empty() {
        matches.push_str(&format!(
            " and groups by {}",
            plan.matcher().group_columns.join(", ")
        ));
    }
    parts.push(matches);
    let receiver = plan.receiver();
    let mut receives = format!("the querier {} receives", plan.querier());
    if !receiver.group_columns.is_empty() {
        receives.push_str(&format!(
            ", groups by {}",
            receiver.group_columns.join(", ")
        ));
    }
    if !receiver.value_columns.is_empty() {
        let values: Vec<&str> = receiver
            .value_columns
            .iter()
            .map(|v| v.column.as_str())
            .collect();
        receives.push_str(&format!(" and sums {}", values.join(", ")));
    }
    parts.push(receives);
    out.push_str(&format!("chain:    {}\n", parts.join("; ")));
    for filter in plan.filters() {
        let link = filter.link();
        out.push_str(&format!(
            "filter {}: {}\n    relay key: {}\n",
            link.position(),
            describe_side(filter.side()),
            key(link.relay_key())
        ));
    }
    out.push_str(&format!(
        "matcher:  {}\n    relay key: {}\n",
        describe_side(plan.matcher()),
        key(matcher.relay_key())
    ));
    out.push_str(&format!("receiver: {}\n", describe_side(plan.receiver())));
    out.push_str(&format!(
        "release:  rows with at least {} matched identifiers (the strictest min_threshold of \
         the {} tables); others are suppressed\n",
        plan.min_release(),
        plan.members()
    ));
    if let Some(privacy) = plan.privacy() {
        out.push_str(&format!(
            "privacy:  spends epsilon {} of the querier's budget, split over the count, every \
             provider's announced set size and the sums\n",
            privacy.epsilon
        ));
    }
    let noise = plan.privacy().map(|p| p.aggregate_outputs(plan.ends()));
    let outputs: Vec<(&str, String)> = plan
        .outputs()
        .iter()
        .map(|o| (o.name.as_str(), describe_aggregate(&o.value)))
        .collect();
    out.push_str(&describe_outputs(
        &outputs,
        noise.as_deref(),
        plan.order_by(),
        false,
        plan.limit(),
    ));
    out
}

/// How an aggregation plan's output is computed, for people.
fn describe_aggregate(value: &AggregateValue) -> String {
    match value {
        AggregateValue::Dimension { table, column, .. } => format!("{table}.{column}"),
        AggregateValue::Aggregate(aggregate) => aggregate.describe(),
    }
}

/// A refusal, for people.
fn describe_refusal(refusal: &Refusal) -> String {
    let mut out = format!(
        "refused ({} reason{})\n",
        refusal.reasons.len(),
        if refusal.reasons.len() == 1 { "" } else { "s" }
    );
    for reason in &refusal.reasons {
        let place = match (&reason.table, &reason.column) {
            (Some(t), Some(c)) => format!(" {t}.{c}:"),
            (Some(t), None) => format!(" {t}:"),
            (None, Some(c)) => format!(" {c}:"),
            (None, None) => String::new(),
        };
        out.push_str(&format!("  [{}]{place} {}\n", reason.code, reason.message));
    }
    out
}
