//! Sizes: how many bytes an item's ciphertext takes, how many elements a peer may announce and
//! send, and the cursor that hands out a role's own groups in chunks.
//!
//! Invariants:
//!
//! - a hello is accepted only if its number of groups and its total size (saturating) are
//!   within the role's [`Limits`], and the total within what the peer declared out of band;
//! - an element is admitted only into an announced group and only while the group has fewer
//!   than its announced size: a peer can never make a role hold more than it announced;
//! - a [`Sender`] hands out every element of every group exactly once, in group order, in
//!   chunks of at most the given size, and then nothing.

use super::{Limits, ProtocolError};
pub use crate::format::ciphertext_bytes;

/// Validate a hello's group sizes against limits.
pub(crate) fn check_sizes(sizes: &[u64], limits: &Limits) -> Result<(), ProtocolError> {
    if sizes.len() as u64 > u64::from(limits.max_groups) {
        return Err(ProtocolError::LimitExceeded {
            what: "groups",
            value: sizes.len() as u64,
            limit: limits.max_groups.into(),
        });
    }
    let total = sizes
        .iter()
        .try_fold(0u64, |a, s| a.checked_add(*s))
        .unwrap_or(u64::MAX);
    if total > limits.max_set_size {
        return Err(ProtocolError::LimitExceeded {
            what: "set size",
            value: total,
            limit: limits.max_set_size,
        });
    }
    if let Some(declared) = limits.declared_set_size
        && total > declared
    {
        return Err(ProtocolError::AboveDeclared {
            announced: total,
            declared,
        });
    }
    Ok(())
}

/// Account `n` more elements of `group` against announced sizes.
pub(crate) fn admit(
    received: &mut [u64],
    sizes: &[u64],
    group: u32,
    n: usize,
) -> Result<(), ProtocolError> {
    let g = group as usize;
    let slot = received
        .get_mut(g)
        .ok_or(ProtocolError::UnknownGroup(group))?;
    let announced = sizes[g];
    if *slot + n as u64 > announced {
        return Err(ProtocolError::TooManyElements { group, announced });
    }
    *slot += n as u64;
    Ok(())
}

/// A cursor over groups of items, yielding one chunk message at a time.
#[derive(Debug, Default)]
pub(super) struct Sender {
    /// The group being sent.
    pub(super) group: usize,
    /// Elements of that group already handed out.
    pub(super) offset: usize,
}

impl Sender {
    /// The next (group index, range) of at most `chunk` elements to send, advancing the cursor;
    /// `None` when all are sent.
    pub(super) fn next(
        &mut self,
        sizes: impl Fn(usize) -> Option<usize>,
        chunk: usize,
    ) -> Option<(u32, std::ops::Range<usize>)> {
        loop {
            let len = sizes(self.group)?;
            if self.offset < len {
                let end = (self.offset + chunk).min(len);
                let range = self.offset..end;
                self.offset = end;
                return Some((self.group as u32, range));
            }
            self.group += 1;
            self.offset = 0;
        }
    }

    /// Whether every element of every group was handed out.
    pub(super) fn is_done(&self, sizes: impl Fn(usize) -> Option<usize>) -> bool {
        let (mut group, mut offset) = (self.group, self.offset);
        while let Some(len) = sizes(group) {
            if offset < len {
                return false;
            }
            group += 1;
            offset = 0;
        }
        true
    }
}
