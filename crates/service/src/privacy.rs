//! Differential privacy and budgets on the wire: what the server tells the client about the
//! noise of a query (`SessionAccepted.privacy`) and about the member's budget after it
//! (`SessionSummary.standing`), and the client's check that the server's noise is its own
//! plan's.

use cleanroom_rules::Plan;
use cleanroom_rules::privacy::MECHANISM;

use crate::proto::{MemberStanding, OutputNoise, PrivacyInfo};
use crate::state::Standing;

/// The privacy description of `plan`'s release; `None` when it is exact.
pub fn privacy_info(plan: &Plan) -> Option<PrivacyInfo> {
    let privacy = plan.privacy()?;
    Some(PrivacyInfo {
        mechanism: MECHANISM.to_owned(),
        epsilon: privacy.epsilon.as_f64(),
        outputs: privacy
            .outputs(plan)
            .into_iter()
            .map(|o| OutputNoise {
                column: o.column,
                kind: o.kind.to_owned(),
                scale: o.scale,
                interval95: o.interval95,
                count_scale: o.count_scale.unwrap_or_default(),
                count_interval95: o.count_interval95.unwrap_or_default(),
            })
            .collect(),
        sum_noise_bounds: privacy.sums.iter().map(|n| n.bound).collect(),
        sum_ranges: if privacy.value_bounds.is_empty() {
            String::new()
        } else {
            privacy.sum_ranges.as_str().to_owned()
        },
        max_groups_per_identifier: privacy.max_groups,
        bounded_scale: privacy.bounded.map_or(0.0, |n| n.scale.as_f64()),
        bounded_interval95: privacy.bounded.map_or(0, |n| n.interval95()),
    })
}

/// The wire form of a member's standing.
pub fn standing_proto(standing: &Standing) -> MemberStanding {
    MemberStanding {
        epsilon_spent: standing.epsilon_spent.as_f64(),
        epsilon_budget: standing.epsilon_budget.map(|e| e.as_f64()),
        epsilon_remaining: standing.epsilon_remaining.map(|e| e.as_f64()),
        queries: standing.queries,
        queries_today: standing.queries_today,
        queries_per_member: standing.queries_per_member,
        queries_per_member_per_day: standing.queries_per_member_per_day,
    }
}

/// Whether the server's privacy description is the one of the client's own plan (the client
/// decodes the noisy sums with its own bounds, so they must agree).
pub(crate) fn check_accepted(plan: &Plan, server: Option<&PrivacyInfo>) -> Result<(), String> {
    let ours = privacy_info(plan);
    match (&ours, server) {
        (None, None) => Ok(()),
        (Some(_), None) => {
            Err("differentially private results here, exact results on the server".to_owned())
        }
        (None, Some(_)) => {
            Err("exact results here, differentially private results on the server".to_owned())
        }
        (Some(ours), Some(theirs)) => {
            if ours.sum_ranges != theirs.sum_ranges {
                Err(format!(
                    "sum ranges {:?} here, {:?} on the server",
                    ours.sum_ranges, theirs.sum_ranges
                ))
            } else if ours.max_groups_per_identifier != theirs.max_groups_per_identifier {
                Err(format!(
                    "an identifier counts in at most {} output rows here, {} on the server",
                    ours.max_groups_per_identifier, theirs.max_groups_per_identifier
                ))
            } else if ours.mechanism != theirs.mechanism
                || ours.epsilon != theirs.epsilon
                || ours.sum_noise_bounds != theirs.sum_noise_bounds
            {
                Err(format!(
                    "{} with epsilon {} and sum noise bounds {:?} here, {} with epsilon {} and \
                     bounds {:?} on the server",
                    ours.mechanism,
                    ours.epsilon,
                    ours.sum_noise_bounds,
                    theirs.mechanism,
                    theirs.epsilon,
                    theirs.sum_noise_bounds
                ))
            } else {
                Ok(())
            }
        }
    }
}
