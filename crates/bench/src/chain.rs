//! `cleanroom bench --parties N`: a join across `N` members (the querier, `N − 2` filters
//! and the matcher, [`chain`](cleanroom_psi::ecdh::chain)) on generated identifiers, in memory,
//! measured against the two-party session over the same querier and matcher in the same run.
//!
//! Every party holds `n` identifiers. The matcher holds `0 .. n`, the querier
//! `n − common .. 2n − common` (as in the two-party bench); each filter holds the `common`
//! shared ones and `n − common` of its own, so the N-way intersection is the same `common`
//! identifiers as the two-party one, and both answers are checked against it.

use std::time::Instant;

use anyhow::{Result, ensure};
use cleanroom_psi::{
    Domain, ListQuerierTable, MatcherTable, Normalization, ReceiverTable, chain_offline,
    match_offline,
};
use serde::Serialize;

use crate::fixture::{identifier, value_of};

/// What `--parties` measured, in the order of its JSON fields.
#[derive(Debug, Clone, Serialize)]
pub struct PartiesReport {
    /// Members joined (the querier included).
    pub parties: u8,
    /// Identifiers per party.
    pub size: u64,
    /// Identifiers every party holds.
    pub common: u64,
    /// The two-party session's wall time (best of the runs), seconds.
    pub two_party_seconds: f64,
    /// The N-party session's wall time (best of the runs), seconds.
    pub parties_seconds: f64,
    /// `parties_seconds / two_party_seconds`.
    pub time_ratio: f64,
    /// Bytes on the wire per identifier of all parties, two parties.
    pub two_party_bytes_per_element: f64,
    /// Bytes on the wire per identifier of all parties, N parties (a relayed hop counts
    /// once into and once out of the querier).
    pub parties_bytes_per_element: f64,
    /// The intersection size both sessions released (checked).
    pub intersection: u64,
    /// The sum both released (checked).
    pub sum: u64,
}

impl PartiesReport {
    /// The terminal table's rows (metric, value).
    pub fn rows(&self) -> Vec<Vec<String>> {
        let row = |m: &str, v: String| vec![m.to_owned(), v];
        vec![
            row("parties", self.parties.to_string()),
            row("identifiers per party", self.size.to_string()),
            row("shared by all", self.common.to_string()),
            row(
                "two parties, seconds",
                format!("{:.3}", self.two_party_seconds),
            ),
            row(
                &format!("{} parties, seconds", self.parties),
                format!("{:.3}", self.parties_seconds),
            ),
            row("time ratio", format!("{:.2}", self.time_ratio)),
            row(
                "two parties, bytes per element",
                format!("{:.1}", self.two_party_bytes_per_element),
            ),
            row(
                &format!("{} parties, bytes per element", self.parties),
                format!("{:.1}", self.parties_bytes_per_element),
            ),
            row("intersection (checked)", self.intersection.to_string()),
            row("sum (checked)", self.sum.to_string()),
        ]
    }
}

fn tables(
    n: u64,
    common: u64,
    filters: u8,
) -> Result<(ReceiverTable, Vec<ListQuerierTable>, MatcherTable)> {
    let mut matcher = MatcherTable::new(Normalization::None);
    for i in 0..n {
        matcher.push("", &identifier(i))?;
    }
    let mut receiver = ReceiverTable::new(Normalization::None, 1)?;
    for i in (n - common)..(2 * n - common) {
        receiver.push("", &identifier(i), &[value_of(i)])?;
    }
    let sets = (0..u64::from(filters))
        .map(|j| {
            let mut set = ListQuerierTable::new(Normalization::None);
            let own = 2 * n + j * n;
            for i in ((n - common)..n).chain(own..own + (n - common)) {
                set.push(&identifier(i));
            }
            set
        })
        .collect();
    Ok((receiver, sets, matcher))
}

/// Runs both sessions `runs` times on `n` identifiers per party, `common` shared by all, and
/// reports the best times; fails if either answer differs from the plain one.
pub fn run_parties(parties: u8, n: u64, common: u64, runs: u32) -> Result<PartiesReport> {
    ensure!(
        (3..=5).contains(&parties),
        "--parties takes 3 to 5 members (2 is the plain bench)"
    );
    ensure!(common <= n, "more shared identifiers than identifiers");
    let domain = Domain::new("cleanroom-bench", "email");
    let expected = (common, ((n - common)..n).map(value_of).sum::<u64>());
    let released = |outcome: &cleanroom_psi::ReceiverOutcome| {
        outcome
            .groups
            .first()
            .map_or((0, 0), |g| (g.intersection_size, g.sums[0]))
    };
    let (mut two, mut many) = (f64::INFINITY, f64::INFINITY);
    let (mut two_bytes, mut many_bytes) = (0, 0);
    for _ in 0..runs.max(1) {
        let (receiver, sets, matcher) = tables(n, common, parties - 2)?;
        let started = Instant::now();
        let report = match_offline(&domain, matcher, receiver, 1)?;
        two = two.min(started.elapsed().as_secs_f64());
        two_bytes = report.bytes;
        ensure!(
            released(&report.outcome) == expected,
            "two parties released {:?}, not {expected:?}",
            released(&report.outcome)
        );

        let (receiver, _, matcher) = tables(n, common, 0)?;
        let started = Instant::now();
        let report = chain_offline(&domain, receiver, sets, matcher, 1)?;
        many = many.min(started.elapsed().as_secs_f64());
        many_bytes = report.bytes;
        ensure!(
            released(&report.outcome) == expected,
            "{parties} parties released {:?}, not {expected:?}",
            released(&report.outcome)
        );
    }
    Ok(PartiesReport {
        parties,
        size: n,
        common,
        two_party_seconds: two,
        parties_seconds: many,
        time_ratio: many / two,
        two_party_bytes_per_element: two_bytes as f64 / (2 * n) as f64,
        parties_bytes_per_element: many_bytes as f64 / (u64::from(parties) * n) as f64,
        intersection: expected.0,
        sum: expected.1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_and_four_parties_release_the_shared_identifiers() {
        for parties in [3, 4] {
            let report = run_parties(parties, 300, 120, 1).unwrap();
            assert_eq!(report.intersection, 120);
            assert_eq!(report.sum, (180..300).map(value_of).sum::<u64>());
            assert!(report.parties_bytes_per_element > 0.0);
        }
        assert!(run_parties(2, 10, 5, 1).is_err());
    }
}
