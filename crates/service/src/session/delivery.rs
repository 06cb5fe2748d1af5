//! Result receivers: who a session's result goes to, and how a receiver that is not the
//! querier gets it.
//!
//! A query names its receivers (none named: the querier). When the querier is among them it
//! gets the result in the session, as always. For every other receiver `R`:
//!
//! - the querier seals its [`ResultKeys`] (value decryption keys, its groups' keys and sizes)
//!   and its value columns' scales to `R`'s `result_key` from the collaboration file, under
//!   associated data binding the box to the collaboration, the querier, `R` and the SQL
//!   ([`keys_ad`]), and sends the boxes in its session start, or, when it asks for buckets, in
//!   a `LaterResultKeys` once its group sizes over the job are known (PROTOCOL.md 3.6, step
//!   7: after the last bucket, or after the acceptance of one session);
//! - the server keeps, with the release and in its transaction, its hello and closing messages
//!   and `R`'s box ([`Delivery`](crate::state::Delivery));
//! - `R` fetches them with its own token (`FetchResult`), opens the box with its opening key
//!   and checks and opens the result as the querier would have ([`open_delivered`]).
//!
//! When the querier is not a receiver, it is sent no result message and its summary counts no
//! released or suppressed rows: it learns nothing of the result. The server cannot open a box;
//! no member but `R` is ever given `R`'s delivery.

use cleanroom_psi::sealed::{OpeningKey, SEALED_OVERHEAD};
use cleanroom_psi::{AggregateMessage, Limits, ResultKeys, ResultOpener, WireMessage};
use cleanroom_rules::{Collaboration, Plan, ResultTable, Role};
use prost::Message as _;

use crate::outcome::SessionError;
use crate::proto::{ResultKeysEnvelope, SealedResultKeys};

/// The largest sealed box of result keys the server keeps (1 MiB of keys and group keys).
pub const MAX_SEALED_KEYS: usize = (1 << 20) + SEALED_OVERHEAD;

/// Who a session's result goes to, as admitted: whether the querier receives it, and the
/// other receivers with the querier's keys sealed to each, or still to come.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Recipients {
    /// The querier receives the result in its session.
    pub querier_receives: bool,
    /// The other receivers.
    pub others: OtherReceivers,
}

/// The receivers of a result other than the querier, and where their sealed keys are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OtherReceivers {
    /// Each receiver with its box, from the session start (none: no other receiver).
    Sealed(Vec<(String, Vec<u8>)>),
    /// The receivers whose boxes the client sends later, in one `LaterResultKeys` (a start
    /// that asked for buckets: its group sizes are known only once its table is split).
    KeysToFollow(Vec<String>),
}

impl Recipients {
    /// The recipients a session start names: `receivers` (empty: the querier) with one sealed
    /// box in `result_keys` for each receiver but the querier, or none at all when the start
    /// asks for 2 or more `buckets` (the boxes then follow). The rules have checked each
    /// receiver's ability and key; this checks the start's own shape.
    pub(crate) fn of(
        querier: &str,
        receivers: &[String],
        result_keys: &[SealedResultKeys],
        buckets: u32,
    ) -> Result<Recipients, SessionError> {
        let invalid = |m: String| Err(SessionError::InvalidArgument(m));
        for (i, name) in receivers.iter().enumerate() {
            if receivers[..i].contains(name) {
                return invalid(format!("receiver {name:?} is named twice"));
            }
        }
        let querier_receives = receivers.is_empty() || receivers.iter().any(|r| r == querier);
        let names: Vec<String> = receivers
            .iter()
            .filter(|r| *r != querier)
            .cloned()
            .collect();
        let others = if !names.is_empty() && result_keys.is_empty() && buckets > 1 {
            OtherReceivers::KeysToFollow(names)
        } else {
            OtherReceivers::Sealed(boxes_for(querier, &names, result_keys, "session start")?)
        };
        Ok(Recipients {
            querier_receives,
            others,
        })
    }

    /// The names of the receivers other than the querier.
    pub(crate) fn other_names(&self) -> Vec<String> {
        match &self.others {
            OtherReceivers::Sealed(sealed) => sealed.iter().map(|(name, _)| name.clone()).collect(),
            OtherReceivers::KeysToFollow(names) => names.clone(),
        }
    }
}

/// The box of each receiver of `names` (the receivers other than `querier`) in `boxes`, which
/// `message` carried: exactly one each, of a size a server keeps, and none for anyone else.
pub(crate) fn boxes_for(
    querier: &str,
    names: &[String],
    boxes: &[SealedResultKeys],
    message: &str,
) -> Result<Vec<(String, Vec<u8>)>, SessionError> {
    let invalid = |m: String| Err(SessionError::InvalidArgument(m));
    let mut sealed = Vec::with_capacity(names.len());
    for name in names {
        let mut found = boxes.iter().filter(|k| &k.receiver == name);
        let (Some(one), None) = (found.next(), found.next()) else {
            return invalid(format!(
                "the {message} must carry exactly one sealed box of result keys for receiver \
                 {name:?}"
            ));
        };
        if !(SEALED_OVERHEAD..=MAX_SEALED_KEYS).contains(&one.sealed.len()) {
            return invalid(format!(
                "the sealed result keys for {name:?} are {} bytes; a box holds {SEALED_OVERHEAD} \
                 to {MAX_SEALED_KEYS}",
                one.sealed.len()
            ));
        }
        sealed.push((name.clone(), one.sealed.clone()));
    }
    if let Some(extra) = boxes.iter().find(|k| !names.contains(&k.receiver)) {
        return invalid(format!(
            "result keys for {:?}, which is not a receiver other than the querier {querier:?}",
            extra.receiver
        ));
    }
    Ok(sealed)
}

/// The associated data of the keys sealed for `receiver`: they open only as the keys of
/// `querier`'s `sql` in `collaboration_id`.
pub fn keys_ad(collaboration_id: &str, querier: &str, receiver: &str, sql: &str) -> Vec<u8> {
    let mut ad = b"cleanroom/result-keys/v1".to_vec();
    for part in [collaboration_id, querier, receiver, sql] {
        ad.extend_from_slice(&(part.len() as u64).to_be_bytes());
        ad.extend_from_slice(part.as_bytes());
    }
    ad
}

/// The querier's result keys `keys` (a session's receiver's, or a job's) sealed for each
/// receiver of `receivers` other than `querier`, with the scales of `plan`'s value columns. A
/// receiver without a `result_key` was refused by the rules; it is an error here too.
pub(crate) fn seal_result_keys(
    collaboration: &Collaboration,
    querier: &str,
    sql: &str,
    plan: &Plan,
    receivers: &[String],
    keys: &ResultKeys,
) -> Result<Vec<SealedResultKeys>, String> {
    let others: Vec<&String> = receivers.iter().filter(|r| *r != querier).collect();
    if others.is_empty() {
        return Ok(Vec::new());
    }
    let keys = keys.to_bytes();
    let envelope = zeroize::Zeroizing::new(
        ResultKeysEnvelope {
            keys: keys.to_vec(),
            value_scales: plan
                .receiver()
                .value_columns
                .iter()
                .map(|c| u32::from(c.scale))
                .collect(),
        }
        .encode_to_vec(),
    );
    others
        .into_iter()
        .map(|name| {
            let key = collaboration
                .member(name)
                .and_then(|m| m.result_key())
                .ok_or_else(|| format!("receiver {name:?} has no result_key"))?;
            let sealed = key.seal(&envelope, &keys_ad(collaboration.id(), querier, name, sql));
            if sealed.len() > MAX_SEALED_KEYS {
                return Err(format!(
                    "the result keys for {name:?} take {} bytes, over the {MAX_SEALED_KEYS} a \
                     server keeps: too many or too long group keys to deliver",
                    sealed.len()
                ));
            }
            Ok(SealedResultKeys {
                receiver: name.clone(),
                sealed,
            })
        })
        .collect()
}

/// Why a delivered result does not open.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The rules refuse the delivered query under this member's copy of the collaboration.
    #[error("the delivered query is refused here: {0}")]
    Refused(cleanroom_rules::Refusal),
    /// The sealed keys do not open with this key (another receiver's key, or altered).
    #[error("the sealed result keys do not open: {0}")]
    Sealed(#[from] cleanroom_psi::sealed::SealedError),
    /// The opened keys or the server's messages are malformed or inconsistent.
    #[error("the delivered result is malformed: {0}")]
    Malformed(String),
    /// The result does not become rows.
    #[error(transparent)]
    Result(#[from] cleanroom_rules::ResultError),
}

/// Opens a delivered result: plans `querier`'s `sql` from this receiver's own `collaboration`
/// (naming `receiver` as a receiver), opens `sealed_keys` with `key`, checks the server's
/// `messages` as the querier's receiver would, and makes the result rows.
pub fn open_delivered(
    collaboration: &Collaboration,
    receiver: &str,
    querier: &str,
    sql: &str,
    sealed_keys: &[u8],
    messages: &[Vec<u8>],
    key: &OpeningKey,
) -> Result<ResultTable, DeliveryError> {
    let mut plan = collaboration
        .plan_for(querier, sql, &[receiver.to_owned()])
        .or_else(|_| {
            // The query may have named the querier too; the rules check the same receiver.
            collaboration.plan_for(querier, sql, &[querier.to_owned(), receiver.to_owned()])
        })
        .map_err(DeliveryError::Refused)?;
    let envelope = key.open(
        sealed_keys,
        &keys_ad(collaboration.id(), querier, receiver, sql),
    )?;
    let envelope = ResultKeysEnvelope::decode(envelope.as_slice())
        .map_err(|e| DeliveryError::Malformed(e.to_string()))?;
    let keys = ResultKeys::from_bytes(&envelope.keys, &Limits::default())
        .map_err(|e| DeliveryError::Malformed(e.to_string()))?;
    let header: Vec<String> = plan
        .receiver()
        .value_columns
        .iter()
        .map(|c| c.column.clone())
        .collect();
    if envelope.value_scales.len() != header.len() || keys.value_columns() != header.len() {
        return Err(DeliveryError::Malformed(format!(
            "the keys are for {} value columns; the plan has {}",
            keys.value_columns(),
            header.len()
        )));
    }
    // The scales the querier's data set (a Parquet DECIMAL column's), checked by the rules
    // as the querier's own were.
    let scales = envelope
        .value_scales
        .iter()
        .map(|s| u8::try_from(*s).map(Some))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| DeliveryError::Malformed("a scale over 255 digits".to_owned()))?;
    plan.adopt_file_scales(&header, &scales)
        .map_err(|e| DeliveryError::Malformed(e.to_string()))?;
    let mut opener = ResultOpener::new(keys, Limits::default());
    if plan.grouped_by() != Some(Role::Matcher) {
        opener = opener.expect_matcher_groups(1);
    }
    if let Some(bounds) = plan.noise_bounds() {
        opener = opener
            .with_noise(bounds)
            .map_err(|e| DeliveryError::Malformed(e.to_string()))?;
    }
    for message in messages {
        let message = AggregateMessage::decode(message)
            .map_err(|e| DeliveryError::Malformed(e.to_string()))?;
        opener
            .handle_message(message)
            .map_err(|e| DeliveryError::Malformed(e.to_string()))?;
    }
    let outcome = opener
        .open()
        .map_err(|e| DeliveryError::Malformed(e.to_string()))?;
    Ok(plan.result(&outcome)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boxed(receiver: &str, bytes: usize) -> SealedResultKeys {
        SealedResultKeys {
            receiver: receiver.to_owned(),
            sealed: vec![7; bytes],
        }
    }

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_start_names_each_receiver_once_with_one_box_for_each_but_the_querier() {
        let ok = Recipients::of(
            "adv",
            &names(&["adv", "agency"]),
            &[boxed("agency", 100)],
            1,
        )
        .unwrap();
        assert!(ok.querier_receives);
        assert_eq!(ok.other_names(), ["agency"]);
        let elsewhere =
            Recipients::of("adv", &names(&["agency"]), &[boxed("agency", 48)], 8).unwrap();
        assert!(!elsewhere.querier_receives);
        assert_eq!(
            elsewhere.others,
            OtherReceivers::Sealed(vec![("agency".to_owned(), vec![7; 48])])
        );
        let default = Recipients::of("adv", &[], &[], 1).unwrap();
        assert!(default.querier_receives);
        assert_eq!(default.others, OtherReceivers::Sealed(Vec::new()));
        // A start that asks for buckets may leave the boxes to follow, all of them.
        let later = Recipients::of("adv", &names(&["adv", "agency"]), &[], 8).unwrap();
        assert_eq!(
            later.others,
            OtherReceivers::KeysToFollow(vec!["agency".to_owned()])
        );
        let boxes = [boxed("agency", 100)];
        assert_eq!(
            boxes_for("adv", &later.other_names(), &boxes, "keys").unwrap(),
            [("agency".to_owned(), vec![7; 100])]
        );
        for wrong in [
            vec![],
            vec![boxed("agency", 100), boxed("agency", 100)],
            vec![boxed("agency", 100), boxed("adv", 100)],
            vec![boxed("agency", 47)],
        ] {
            assert!(boxes_for("adv", &later.other_names(), &wrong, "keys").is_err());
        }

        let refused = [
            (names(&["agency", "agency"]), vec![boxed("agency", 100)]),
            (names(&["agency"]), vec![]),
            (
                names(&["agency"]),
                vec![boxed("agency", 100), boxed("agency", 100)],
            ),
            (names(&["agency"]), vec![boxed("agency", 47)]),
            (
                names(&["agency"]),
                vec![boxed("agency", MAX_SEALED_KEYS + 1)],
            ),
            (
                names(&["agency"]),
                vec![boxed("agency", 100), boxed("adv", 100)],
            ),
            (names(&[]), vec![boxed("agency", 100)]),
            (names(&["adv"]), vec![boxed("other", 100)]),
        ];
        for (receivers, keys) in refused {
            assert!(
                matches!(
                    Recipients::of("adv", &receivers, &keys, 1),
                    Err(SessionError::InvalidArgument(_))
                ),
                "{receivers:?} {:?}",
                keys.iter()
                    .map(|k| (&k.receiver, k.sealed.len()))
                    .collect::<Vec<_>>()
            );
        }
    }
}
