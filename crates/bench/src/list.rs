//! `cleanroom bench --protocol list`: the labeled-PSI list protocol on generated identifiers,
//! in memory, as one session or as a job of buckets run as the service runs one (docs/scale-out.md
//! §1): per bucket a provider with a fresh key sealing to the job's one width, and a querier
//! that writes the provider's items to a file and parks; every bucket's evaluations are
//! withheld in a file of their own until the last bucket, then each bucket is opened. The
//! provider's row of identifier `i` is `value_of(i)` as text, so the listed values of the
//! matches must add up to the sum of `value_of` over the shared identifiers.

use std::io::{BufReader, BufWriter};
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use cleanroom_psi::{
    Domain, Limits, ListMessage, ListOutcome, ListProvider, ListProviderTable, ListQuerier,
    ListQuerierTable, Normalization, Party, WireMessage, list_offline_observed,
};

use cleanroom_data::bucket_files::{read_messages, write_messages};

use crate::bench::{CpuTrace, Measured, session_progress};
use crate::fixture::{identifier, value_of};

/// The provider's table of identifiers `range`, each with its value as its one list column.
fn provider_table(range: std::ops::Range<u64>) -> Result<ListProviderTable> {
    let mut table = ListProviderTable::new(Normalization::None, 1)?;
    for i in range {
        table.push(&identifier(i), &[value_of(i).to_string()])?;
    }
    Ok(table)
}

/// The querier's table of identifiers `range`.
fn querier_table(range: std::ops::Range<u64>) -> ListQuerierTable {
    let mut table = ListQuerierTable::new(Normalization::None);
    for i in range {
        table.push(&identifier(i));
    }
    table
}

/// The matches, and the listed values added up (each match must list exactly one row).
fn tally(outcome: &ListOutcome) -> Result<(u64, u64)> {
    let mut sum = 0;
    for m in &outcome.matches {
        ensure!(
            m.rows.len() == 1 && m.rows[0].len() == 1,
            "{} lists {:?}",
            m.identifier,
            m.rows
        );
        sum += m.rows[0][0].parse::<u64>().context("a listed value")?;
    }
    ensure!(
        outcome.unopened == 0,
        "{} payloads did not open",
        outcome.unopened
    );
    Ok((outcome.matches.len() as u64, sum))
}

/// Runs the list protocol on `n` generated identifiers per party, `common` shared, as one
/// session or a job of `buckets`.
pub(crate) fn run_generated(
    n: u64,
    common: u64,
    buckets: u32,
    interactive: bool,
) -> Result<Measured> {
    let domain = Domain::new("cleanroom-bench", "email");
    if buckets > 1 {
        return run_job(&domain, n, common, buckets, interactive);
    }
    let (provider, querier) = (
        provider_table(0..n)?,
        querier_table(n - common..2 * n - common),
    );
    let progress = session_progress(n, interactive && n >= 50_000)?;
    let trace = CpuTrace::start();
    let started = Instant::now();
    let report = list_offline_observed(&domain, provider, querier, |m, _| {
        progress.inc(list_elements(m));
    })?;
    progress.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let (size, sum) = tally(&report.outcome)?;
    Ok(Measured {
        seconds,
        size,
        sum,
        bytes: report.bytes,
        serial: trace.stop(),
    })
}

/// Curve elements a message carries, for the progress bar.
fn list_elements(message: &ListMessage) -> u64 {
    match message {
        ListMessage::ListProviderItems { tags, .. } => tags.len() as u64,
        ListMessage::ListQuerierPoints { points }
        | ListMessage::ListProviderEvaluations { points } => points.len() as u64,
        _ => 0,
    }
}

/// The generated sets as a job of `buckets`: bucket `b` is the `b`-th of `buckets` equal ranges
/// of the indices `0 .. 2n - common` on both sides (as the aggregate job of `cleanroom bench`
/// splits them), generated when its turn comes; items and withheld evaluations go to files in
/// a temporary directory.
fn run_job(
    domain: &Domain,
    n: u64,
    common: u64,
    buckets: u32,
    interactive: bool,
) -> Result<Measured> {
    let work = tempfile::Builder::new()
        .prefix("cleanroom-bench-list-")
        .tempdir()?;
    let (all, first_querier) = (2 * n - common, n - common);
    let span = all.div_ceil(u64::from(buckets));
    // Every value has at most 3 digits: the width of a row of "999" is every bucket's.
    let width = provider_table(999..1000)?.payload_bytes();
    let progress = session_progress(n, interactive)?;
    let trace = CpuTrace::start();
    let started = Instant::now();
    let mut bytes = 0;
    let mut parked = Vec::new();
    for bucket in 0..buckets {
        let low = (u64::from(bucket) * span).min(all);
        let high = (low + span).min(all);
        let provider = provider_table(low..high.min(n))?;
        let querier = querier_table(low.max(first_querier)..high);
        let items = work.path().join(format!("items-{bucket}"));
        let evaluations = work.path().join(format!("evaluations-{bucket}"));
        let mut p = ListProvider::new(domain, provider, Limits::unlimited()).with_job_width(width);
        let sink = Box::new(BufWriter::new(std::fs::File::create(&items)?));
        let mut q = ListQuerier::for_bucket(domain, querier, 1, Limits::unlimited(), sink);
        let mut withheld = Vec::new();
        loop {
            let mut moved = false;
            while let Some(message) = p.poll() {
                moved = true;
                let encoded = message.encode();
                bytes += encoded.len() as u64;
                progress.inc(list_elements(&message));
                match message {
                    ListMessage::ListProviderEvaluations { .. } => withheld.push(encoded),
                    _ => q.handle(ListMessage::decode(&encoded)?)?,
                }
            }
            while let Some(message) = q.poll() {
                moved = true;
                let encoded = message.encode();
                bytes += encoded.len() as u64;
                progress.inc(list_elements(&message));
                p.handle(ListMessage::decode(&encoded)?)?;
            }
            if !moved {
                break;
            }
        }
        write_messages(&evaluations, &withheld)?;
        ensure!(p.is_done() && q.is_finished(), "bucket {bucket} stalled");
        parked.push((q.park()?, items, evaluations));
    }
    // The release: every bucket's evaluations, then every bucket opened.
    let mut outcomes = Vec::with_capacity(parked.len());
    for (mut bucket, items, evaluations) in parked {
        for message in read_messages(&evaluations)? {
            bucket.handle_message(ListMessage::decode(&message)?)?;
        }
        let items = BufReader::with_capacity(1 << 16, std::fs::File::open(&items)?);
        outcomes.push(bucket.open(items)?);
    }
    progress.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let (size, sum) = tally(&ListOutcome::of_buckets(outcomes))?;
    Ok(Measured {
        seconds,
        size,
        sum,
        bytes,
        serial: trace.stop(),
    })
}
