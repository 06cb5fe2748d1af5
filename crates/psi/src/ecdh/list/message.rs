//! The list protocol's messages and their encoding (see [`wire`](crate::wire) for the framing
//! every message shares).
//!
//! Decoding checks what the message alone can tell — counts against the bytes present, chunk
//! limits, a payload width the format allows and the same width for every payload — before
//! anything is allocated; the roles check the rest against the session.

use crate::format::{MAX_LIST_COLUMNS, is_payload_width};
use crate::wire::{
    PointBytes, Reader, Tag, WireError, WireMessage, open, put_points, put_tags, start,
};

/// A message of the list protocol (kinds 8–12; see [`wire`](crate::wire)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListMessage {
    /// List provider → querier: the shape of the labeled set that follows.
    ListProviderHello {
        /// distinct identifiers the provider sends
        set_size: u64,
        /// list columns per payload row
        columns: u16,
        /// bytes of every encrypted payload (padded plaintext and AEAD tag)
        payload_bytes: u32,
    },
    /// List provider → querier: a chunk of the provider's labeled set, shuffled: per
    /// identifier a lookup tag and an encrypted payload, both derived from `a·H(x)`.
    ListProviderItems {
        /// bytes of every payload in this chunk (as announced in the hello)
        payload_bytes: u32,
        /// lookup tags, one per identifier
        tags: Vec<Tag>,
        /// `tags.len()` payloads of `payload_bytes` each, concatenated
        payloads: Vec<u8>,
    },
    /// List querier → provider: the number of distinct identifiers it will send.
    ListQuerierHello {
        /// distinct identifiers the querier sends
        set_size: u64,
    },
    /// List querier → provider: a chunk of the querier's points blinded by the querier,
    /// shuffled.
    ListQuerierPoints {
        /// blinded points `b·H(y)`
        points: Vec<PointBytes>,
    },
    /// List provider → querier: the querier's points of one [`ListMessage::ListQuerierPoints`]
    /// chunk re-blinded by the provider, in the order they came.
    ListProviderEvaluations {
        /// doubly blinded points `a·b·H(y)`
        points: Vec<PointBytes>,
    },
}

const KIND_LIST_PROVIDER_HELLO: u8 = 8;
const KIND_LIST_PROVIDER_ITEMS: u8 = 9;
const KIND_LIST_QUERIER_HELLO: u8 = 10;
const KIND_LIST_QUERIER_POINTS: u8 = 11;
const KIND_LIST_PROVIDER_EVALUATIONS: u8 = 12;

impl WireMessage for ListMessage {
    fn kind(&self) -> &'static str {
        match self {
            ListMessage::ListProviderHello { .. } => "ListProviderHello",
            ListMessage::ListProviderItems { .. } => "ListProviderItems",
            ListMessage::ListQuerierHello { .. } => "ListQuerierHello",
            ListMessage::ListQuerierPoints { .. } => "ListQuerierPoints",
            ListMessage::ListProviderEvaluations { .. } => "ListProviderEvaluations",
        }
    }

    fn encode(&self) -> Vec<u8> {
        match self {
            ListMessage::ListProviderHello {
                set_size,
                columns,
                payload_bytes,
            } => {
                let mut out = start(KIND_LIST_PROVIDER_HELLO);
                out.extend_from_slice(&set_size.to_be_bytes());
                out.extend_from_slice(&columns.to_be_bytes());
                out.extend_from_slice(&payload_bytes.to_be_bytes());
                out
            }
            ListMessage::ListProviderItems {
                payload_bytes,
                tags,
                payloads,
            } => {
                let mut out = start(KIND_LIST_PROVIDER_ITEMS);
                out.extend_from_slice(&payload_bytes.to_be_bytes());
                put_tags(&mut out, tags);
                out.extend_from_slice(payloads);
                out
            }
            ListMessage::ListQuerierHello { set_size } => {
                let mut out = start(KIND_LIST_QUERIER_HELLO);
                out.extend_from_slice(&set_size.to_be_bytes());
                out
            }
            ListMessage::ListQuerierPoints { points } => {
                let mut out = start(KIND_LIST_QUERIER_POINTS);
                put_points(&mut out, points);
                out
            }
            ListMessage::ListProviderEvaluations { points } => {
                let mut out = start(KIND_LIST_PROVIDER_EVALUATIONS);
                put_points(&mut out, points);
                out
            }
        }
    }

    fn decode(bytes: &[u8]) -> Result<ListMessage, WireError> {
        let (kind, mut r) = open(bytes)?;
        let msg = match kind {
            KIND_LIST_PROVIDER_HELLO => {
                let set_size = r.u64("set_size")?;
                let columns = r.u16("columns")?;
                if usize::from(columns) > MAX_LIST_COLUMNS {
                    return Err(WireError::Invalid("columns"));
                }
                ListMessage::ListProviderHello {
                    set_size,
                    columns,
                    payload_bytes: payload_bytes(&mut r)?,
                }
            }
            KIND_LIST_PROVIDER_ITEMS => {
                let payload_bytes = payload_bytes(&mut r)?;
                let width = payload_bytes as usize;
                let tags = r.tags("tags", width)?;
                let payloads = r.take(tags.len() * width, "payloads")?.to_vec();
                ListMessage::ListProviderItems {
                    payload_bytes,
                    tags,
                    payloads,
                }
            }
            KIND_LIST_QUERIER_HELLO => ListMessage::ListQuerierHello {
                set_size: r.u64("set_size")?,
            },
            KIND_LIST_QUERIER_POINTS => ListMessage::ListQuerierPoints {
                points: r.points("points")?,
            },
            KIND_LIST_PROVIDER_EVALUATIONS => ListMessage::ListProviderEvaluations {
                points: r.points("points")?,
            },
            other => return Err(WireError::UnknownKind(other)),
        };
        r.finish()?;
        Ok(msg)
    }
}

/// The width of a list payload: an AEAD tag and a padded plaintext of a whole number of
/// padding blocks, at most the protocol's largest payload.
fn payload_bytes(r: &mut Reader<'_>) -> Result<u32, WireError> {
    let width = r.u32("payload_bytes")?;
    if !is_payload_width(width as usize) {
        return Err(WireError::Invalid("payload_bytes"));
    }
    Ok(width)
}
