//! Agreement: what both sides of a session must share, and each side's check that the other
//! computes under the same terms.
//!
//! Both sides plan the SQL from their own copy of the collaboration. Two checks, each before
//! the side that makes it sends any protocol message:
//!
//! - the client's [`Agreement`] in the session start (the collaboration file's digest, the
//!   join's hash domain, both normalizations, the plan's digest) must equal the server's own,
//!   or the server refuses the session at admission, naming every term that differs;
//! - the server's acceptance repeats its agreement and its terms (matcher table, release
//!   threshold, value columns, noise), which the client checks against its own plan.
//!
//! A side whose terms differ would otherwise run: a normalization of `none` against `email`, or
//! another collaboration id hashed into the points, matches fewer identifiers or none, and the
//! result is wrong without an error.

use cleanroom_rules::{Collaboration, Plan};
use sha2::{Digest, Sha256};

use crate::proto::{Agreement, SessionAccepted};

/// This side's view of the terms of a session of `plan`, planned from `collaboration`: what a
/// client sends in its session start (and the server in its acceptance).
pub fn agreement(collaboration: &Collaboration, plan: &Plan) -> Agreement {
    Agreement {
        collaboration_sha256: collaboration.sha256().to_vec(),
        domain: plan.domain_label().to_owned(),
        matcher_normalization: plan.matcher().normalization.name().to_owned(),
        receiver_normalization: plan.receiver().normalization.name().to_owned(),
        plan_sha256: plan_sha256(plan).to_vec(),
    }
}

/// SHA-256 of `plan`'s canonical JSON: the document `check --format json` prints under
/// "plan", object keys sorted by their UTF-8 bytes, no white space (serde_json's compact form).
pub(crate) fn plan_sha256(plan: &Plan) -> [u8; 32] {
    // A `serde_json::Value` keeps its objects sorted by key: its compact form is canonical.
    let value = serde_json::to_value(plan).expect("a plan has only string keys and finite numbers");
    Sha256::digest(value.to_string().as_bytes()).into()
}

/// Checks `theirs` (the other side's agreement, `there` naming it: "the client", "the
/// server") against `ours`; the error names every term that differs, ours first.
pub(crate) fn check_agreement(
    ours: &Agreement,
    theirs: Option<&Agreement>,
    there: &str,
) -> Result<(), String> {
    let Some(theirs) = theirs else {
        return Err(format!(
            "{there} sent no agreement (collaboration digest, hash domain, normalizations, \
             plan digest); a client older than this server's protocol?"
        ));
    };
    let mut differs = Vec::new();
    let mut text = |what: &str, here: &str, other: &str| {
        if here != other {
            differs.push(format!("{what}: {here:?} here, {other:?} at {there}"));
        }
    };
    text("hash domain", &ours.domain, &theirs.domain);
    text(
        "normalization of the matcher's identifier",
        &ours.matcher_normalization,
        &theirs.matcher_normalization,
    );
    text(
        "normalization of the receiver's identifier",
        &ours.receiver_normalization,
        &theirs.receiver_normalization,
    );
    let mut digest = |what: &str, here: &[u8], other: &[u8]| {
        if here != other {
            differs.push(format!(
                "{what}: sha256 {} here, {} at {there}",
                short_hex(here),
                short_hex(other)
            ));
        }
    };
    digest(
        "collaboration file",
        &ours.collaboration_sha256,
        &theirs.collaboration_sha256,
    );
    digest("plan of the query", &ours.plan_sha256, &theirs.plan_sha256);
    if differs.is_empty() {
        Ok(())
    } else {
        Err(differs.join("; "))
    }
}

/// The first 8 bytes of a digest in hex (the whole value when shorter), enough to tell two
/// files apart in a message.
fn short_hex(digest: &[u8]) -> String {
    if digest.is_empty() {
        return "(none)".to_owned();
    }
    let hex = hex::encode(&digest[..digest.len().min(8)]);
    if digest.len() > 8 {
        format!("{hex}…")
    } else {
        hex
    }
}

/// The server's acceptance of session `session_id` under `plan` and its `agreement`: the terms
/// the client checks.
pub(crate) fn accepted(
    plan: &Plan,
    agreement: Agreement,
    session_id: &str,
    job: Option<&crate::job::JobTerms>,
) -> SessionAccepted {
    SessionAccepted {
        job: job.map(crate::job::JobTerms::to_proto),
        session_id: session_id.to_owned(),
        matcher_member: plan.matcher().member.clone(),
        matcher_table: plan.matcher().table.clone(),
        min_release: plan.min_release(),
        value_columns: plan.receiver().value_columns.len() as u32,
        privacy: crate::privacy::privacy_info(plan),
        agreement: Some(agreement),
    }
}

/// Checks that the server's terms are `plan`'s and its agreement is `ours`; the error says
/// what differs.
pub(crate) fn check_accepted(
    plan: &Plan,
    ours: &Agreement,
    accepted: &SessionAccepted,
) -> Result<(), String> {
    check_agreement(ours, accepted.agreement.as_ref(), "the server")?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Agreement {
        Agreement {
            collaboration_sha256: vec![1; 32],
            domain: "impressions.email=purchases.email".to_owned(),
            matcher_normalization: "email".to_owned(),
            receiver_normalization: "email".to_owned(),
            plan_sha256: vec![2; 32],
        }
    }

    #[test]
    fn equal_terms_agree_and_each_difference_is_named() {
        let ours = sample();
        assert_eq!(
            check_agreement(&ours, Some(&sample()), "the client"),
            Ok(())
        );
        let mut theirs = sample();
        theirs.receiver_normalization = "none".to_owned();
        theirs.collaboration_sha256 = vec![3; 32];
        let error = check_agreement(&ours, Some(&theirs), "the client").unwrap_err();
        assert_eq!(
            error,
            "normalization of the receiver's identifier: \"email\" here, \"none\" at the client; \
             collaboration file: sha256 0101010101010101… here, 0303030303030303… at the client"
        );
        assert!(check_agreement(&ours, None, "the client").is_err());
    }
}
