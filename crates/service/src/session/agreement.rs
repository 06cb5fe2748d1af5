//! Plan agreement: the terms the server announces when it accepts a session, and the client's
//! check that they are its own plan's.
//!
//! Both sides plan the SQL from their own copy of the collaboration; the protocol starts only
//! when the server's terms (matcher table, release threshold, value columns, noise) equal the
//! client's, so a side never runs a protocol it did not plan.

use cleanroom_rules::Plan;

use crate::proto::SessionAccepted;

/// The server's acceptance of session `session_id` under `plan`: the terms the client checks.
pub(crate) fn accepted(plan: &Plan, session_id: &str) -> SessionAccepted {
    SessionAccepted {
        session_id: session_id.to_owned(),
        matcher_member: plan.matcher().member.clone(),
        matcher_table: plan.matcher().table.clone(),
        min_release: plan.min_release(),
        value_columns: plan.receiver().value_columns.len() as u32,
        privacy: crate::privacy::privacy_info(plan),
    }
}

/// Checks that the server's terms are `plan`'s; the error says the first that differs.
pub(crate) fn check_accepted(plan: &Plan, accepted: &SessionAccepted) -> Result<(), String> {
    if accepted.min_release != plan.min_release() {
        return Err(format!(
            "release threshold {} here, {} on the server",
            plan.min_release(),
            accepted.min_release
        ));
    }
    if accepted.matcher_table != plan.matcher().table {
        return Err(format!(
            "matcher table {:?} here, {:?} on the server",
            plan.matcher().table,
            accepted.matcher_table
        ));
    }
    if accepted.value_columns as usize != plan.receiver().value_columns.len() {
        return Err(format!(
            "{} value columns here, {} on the server",
            plan.receiver().value_columns.len(),
            accepted.value_columns
        ));
    }
    crate::privacy::check_accepted(plan, accepted.privacy.as_ref())
}
