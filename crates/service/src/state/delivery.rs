//! Deliveries: the released results kept for receivers that were not the querier.
//!
//! When a query names receivers other than the querying member, the server keeps, per such
//! receiver, the protocol messages it would have sent the querier at the end (its hello, the
//! results, its end) and the querier's keys sealed to that receiver. They are written in the
//! same transaction that records the release ([`StateDb::release_delivering`]), so a result
//! exists for its receivers exactly when the release is in the audit log, once. A receiver
//! reads its own with [`StateDb::delivery`]; nobody else can, and the server cannot open the
//! keys.

use rusqlite::{OptionalExtension, params};

use super::{StateDb, StateError};

/// A released result kept for one receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The receiving member.
    pub receiver: String,
    /// The querier's result keys, sealed to the receiver's `result_key`.
    pub sealed_keys: Vec<u8>,
    /// The protocol messages of the result, in the order the matcher made them.
    pub messages: Vec<Vec<u8>>,
}

/// A delivery as its receiver fetches it, with the session it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveredResult {
    /// The session's collaboration.
    pub collaboration_id: String,
    /// The member that ran the query.
    pub querier: String,
    /// The query.
    pub sql: String,
    /// When the release was recorded (RFC 3339, UTC).
    pub released_at: String,
    /// The result kept for this receiver.
    pub delivery: Delivery,
}

/// The messages as one blob: each a `u32` big-endian length and its bytes.
pub(super) fn pack(messages: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(messages.iter().map(|m| 4 + m.len()).sum());
    for m in messages {
        out.extend_from_slice(&(m.len() as u32).to_be_bytes());
        out.extend_from_slice(m);
    }
    out
}

pub(super) fn unpack(mut blob: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    while !blob.is_empty() {
        let (len, rest) = blob.split_at_checked(4)?;
        let len = u32::from_be_bytes(len.try_into().ok()?) as usize;
        let (message, rest) = rest.split_at_checked(len)?;
        out.push(message.to_vec());
        blob = rest;
    }
    Some(out)
}

impl StateDb {
    /// Writes `deliveries` of session `session_id` inside the release's transaction.
    pub(super) fn insert_deliveries(
        &self,
        tx: &rusqlite::Transaction<'_>,
        session_id: &str,
        deliveries: &[Delivery],
    ) -> Result<(), StateError> {
        for d in deliveries {
            tx.execute(
                "INSERT INTO delivery (session_id, receiver, sealed_keys, messages)
                 VALUES (?1, ?2, ?3, ?4)",
                params![session_id, d.receiver, d.sealed_keys, pack(&d.messages)],
            )
            .map_err(|e| self.sqlite(e))?;
        }
        Ok(())
    }

    /// The result of released session `session_id` in `collaboration_id` kept for `receiver`;
    /// `None` when there is none (no such session, not released, or not for this receiver: the
    /// caller cannot tell which).
    pub fn delivery(
        &self,
        collaboration_id: &str,
        session_id: &str,
        receiver: &str,
    ) -> Result<Option<DeliveredResult>, StateError> {
        let conn = self.conn();
        let row = conn
            .query_row(
                "SELECT a.collaboration_id, a.member, a.sql, a.finished_at, d.sealed_keys,
                        d.messages
                 FROM delivery d JOIN audit a ON a.session_id = d.session_id
                 WHERE d.session_id = ?1 AND d.receiver = ?2 AND a.collaboration_id = ?3
                   AND a.decision = 'released'",
                params![session_id, receiver, collaboration_id],
                |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, Option<String>>(3)?,
                        row.get::<_, Vec<u8>>(4)?,
                        row.get::<_, Vec<u8>>(5)?,
                    ))
                },
            )
            .optional()
            .map_err(|e| self.sqlite(e))?;
        let Some((collaboration_id, querier, sql, released_at, sealed_keys, messages)) = row else {
            return Ok(None);
        };
        let messages = unpack(&messages).ok_or_else(|| {
            StateError::Corrupt(format!("the result of session {session_id} is truncated"))
        })?;
        Ok(Some(DeliveredResult {
            collaboration_id,
            querier,
            sql,
            released_at: released_at.unwrap_or_default(),
            delivery: Delivery {
                receiver: receiver.to_owned(),
                sealed_keys,
                messages,
            },
        }))
    }

    /// The receivers a released session's result was kept for, by name.
    pub fn delivered_to(&self, session_id: &str) -> Result<Vec<String>, StateError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT receiver FROM delivery WHERE session_id = ?1 ORDER BY receiver")
            .map_err(|e| self.sqlite(e))?;
        let rows = stmt
            .query_map(params![session_id], |row| row.get(0))
            .map_err(|e| self.sqlite(e))?;
        rows.collect::<Result<Vec<String>, _>>()
            .map_err(|e| self.sqlite(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_pack_and_unpack_and_truncation_is_detected() {
        let messages = vec![vec![1, 2, 3], Vec::new(), vec![9; 70_000]];
        assert_eq!(unpack(&pack(&messages)), Some(messages.clone()));
        let packed = pack(&messages);
        assert_eq!(unpack(&packed[..packed.len() - 1]), None);
        assert_eq!(unpack(&[]), Some(Vec::new()));
    }
}
