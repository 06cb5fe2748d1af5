//! Labeled PSI for list queries: the querier learns which of its own identifiers the provider
//! holds and, for exactly those, the provider's rows of the allowed list columns.
//!
//! ```text
//!   provider (data provider, key a)                        querier (key b)
//!   ListProviderHello {n, columns, width}           ──►
//!   ListProviderItems {T(x), Seal_K(x)(rows(x))}*   ──►   (shuffled)
//!                                                   ◄──  ListQuerierHello {m}
//!                                                   ◄──  ListQuerierPoints {b·H(y)}*  (shuffled)
//!   ListProviderEvaluations {a·b·H(y)}*             ──►   (each chunk in the order it came)
//!                                                         b⁻¹·(a·b·H(y)) = a·H(y)
//!                                                         T(y) among the tags → open Seal_K(y)
//! ```
//!
//! # Construction
//! `F_a(x) = compress(a·H(x))` is the Diffie–Hellman oblivious PRF ("2HashDH", Jarecki,
//! Kiayias and Krawczyk 2014) with `H` the [hash to the group](crate::hash) and `a` the
//! provider's fresh [key](crate::ecdh::key). The provider computes it on its own identifiers; the
//! querier obtains it on its own identifiers only, by sending `b·H(y)` and unblinding the
//! provider's `a·b·H(y)` with `b⁻¹ mod ℓ`. From `P = F_a(x)`, HKDF-SHA256 (RFC 5869) derives
//! two independent values with distinct labels:
//!
//! ```text
//! PRK  = HKDF-Extract(salt = "cleanroom/psi/list", IKM = P)
//! T(x) = HKDF-Expand(PRK, "cleanroom/psi/list/lookup-tag", 16)     the lookup tag (sent)
//! K(x) = HKDF-Expand(PRK, "cleanroom/psi/list/payload-key", 32)    the AEAD key (never sent)
//! ```
//!
//! The provider sends `T(x)` and `ChaCha20-Poly1305(K(x), nonce = 0⁹⁶, aad, plaintext)` for
//! each of its distinct identifiers, never `P` itself (from `P` anyone could derive the key).
//! Each `K(x)` depends on the session's fresh `a` and seals exactly one plaintext, so the fixed
//! nonce never repeats under one key. The associated data binds the announced shape:
//! `aad = "cleanroom/psi/list/payload" || u16 columns || u32 width`. The plaintext is
//!
//! ```text
//! u32 rows || per row, per list column: u32 byte length || UTF-8 value || zero padding
//! ```
//!
//! (big-endian), with the rows of the identifier sorted, padded with zeros to `width − 16`
//! bytes: the longest encoding in the provider's set rounded up to whole [`PAD_BLOCK`]s. The
//! querier decodes strictly: exact counts, valid UTF-8, and nothing but zeros after the rows.
//!
//! # What each party learns (semi-honest parties, DDH and one-more-DH in Ristretto255, `H`
//! and HKDF random oracles)
//! - The provider learns the querier's number of distinct identifiers `m`, nothing more: the
//!   points `b·H(y)` are uniformly random to it and it receives no output.
//! - The querier learns the provider's number of distinct identifiers `n`, the number of list
//!   columns, the payload width (so the size of the longest payload, to within a block), and
//!   for each of its own identifiers whether the provider holds it and then all of its rows of
//!   the list columns, as often as the data has them. Other columns are never sent. The
//!   payloads of identifiers it does not hold are encrypted under keys derived from PRF values
//!   it never obtained; they all have the same length and sit at shuffled positions.
//! - Order: the provider's set is shuffled. Evaluations come back in the order of the
//!   querier's (shuffled) points, which tells the querier which of its own identifiers matched
//!   — the point of a list query — and the provider nothing, as it cannot link the points.
//!
//! A querier that deviates can choose the identifiers it asks about, but obtains at most as
//! many PRF values as the set size it announced, which the provider bounds with its
//! [`Limits`]. A provider that deviates can make the list wrong or incomplete, not learn more;
//! a matched payload that was tampered with fails authentication and ends the session.

mod bucket;
mod message;

pub use bucket::{ListBucketError, ParkedListBucket};
pub use message::ListMessage;

use crate::Domain;
use crate::ecdh::aggregate::{Limits, ProtocolError, admit, check_sizes, point_error};
use crate::ecdh::batch::{hash_and_blind, reblind};
use crate::ecdh::key::BlindingKey;
use crate::party::{Stage, impl_party};
use crate::randomness::{OsRandomness, Stream, shuffle};
use crate::table::{ListProviderTable, ListQuerierTable};
use crate::wire::WireMessage;
use crate::wire::{CHUNK_ITEMS, MAX_MESSAGE_BYTES, PointBytes, Tag, WireError};
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use rayon::prelude::*;
use sha2::Sha256;
use std::collections::VecDeque;
use zeroize::Zeroizing;

use crate::format::is_payload_width;
pub use crate::format::{
    AEAD_TAG_BYTES, MAX_LIST_COLUMNS, MAX_LIST_ROWS, MAX_PLAINTEXT_BYTES, PAD_BLOCK,
};

const HKDF_SALT: &[u8] = b"cleanroom/psi/list";
const TAG_INFO: &[u8] = b"cleanroom/psi/list/lookup-tag";
const KEY_INFO: &[u8] = b"cleanroom/psi/list/payload-key";
const AAD_LABEL: &[u8] = b"cleanroom/psi/list/payload";
/// Bytes of a `ListProviderItems` message before its items.
const ITEMS_HEADER_BYTES: usize = 1 + 1 + 4 + 4;

/// Payloads of `width` bytes that fit in one message.
fn items_per_message(width: usize) -> usize {
    ((MAX_MESSAGE_BYTES - ITEMS_HEADER_BYTES) / (16 + width)).min(CHUNK_ITEMS)
}

/// The lookup tag and the payload key of a PRF value `compress(a·H(x))`.
fn derive(prf: &PointBytes) -> (Tag, Zeroizing<[u8; 32]>) {
    let hkdf = Hkdf::<Sha256>::new(Some(HKDF_SALT), &prf.0);
    let mut tag = [0u8; 16];
    let mut key = Zeroizing::new([0u8; 32]);
    hkdf.expand(TAG_INFO, &mut tag)
        .expect("16 bytes is a valid HKDF-SHA256 length");
    hkdf.expand(KEY_INFO, key.as_mut())
        .expect("32 bytes is a valid HKDF-SHA256 length");
    (Tag(tag), key)
}

const AAD_BYTES: usize = AAD_LABEL.len() + 2 + 4;

/// `"cleanroom/psi/list/payload" || u16 columns || u32 width`.
fn aad(columns: u16, width: u32) -> [u8; AAD_BYTES] {
    let mut aad = [0u8; AAD_BYTES];
    let (label, shape) = aad.split_at_mut(AAD_LABEL.len());
    label.copy_from_slice(AAD_LABEL);
    shape[..2].copy_from_slice(&columns.to_be_bytes());
    shape[2..].copy_from_slice(&width.to_be_bytes());
    aad
}

fn cipher(key: &[u8; 32]) -> ChaCha20Poly1305 {
    ChaCha20Poly1305::new(&Key::from(*key))
}

/// Encrypt the rows of one identifier under `key` into a payload of exactly `width` bytes.
fn seal(key: &[u8; 32], rows: &[Vec<String>], columns: u16, width: u32) -> Vec<u8> {
    let mut payload = Vec::with_capacity(width as usize);
    payload.extend_from_slice(&(rows.len() as u32).to_be_bytes());
    for value in rows.iter().flatten() {
        payload.extend_from_slice(&(value.len() as u32).to_be_bytes());
        payload.extend_from_slice(value.as_bytes());
    }
    let plaintext = width as usize - AEAD_TAG_BYTES;
    assert!(
        payload.len() <= plaintext,
        "the table bounds every encoding"
    );
    payload.resize(plaintext, 0);
    let tag = cipher(key)
        .encrypt_inout_detached(
            &Nonce::default(),
            &aad(columns, width),
            payload.as_mut_slice().into(),
        )
        .expect("payloads are far below the ChaCha20 length limit");
    payload.extend_from_slice(&tag);
    payload
}

/// Decrypt and decode one payload sealed by [`seal`].
fn open(
    key: &[u8; 32],
    payload: &[u8],
    columns: u16,
    width: u32,
) -> Result<Vec<Vec<String>>, ProtocolError> {
    let (ciphertext, tag) = payload.split_at(payload.len() - AEAD_TAG_BYTES);
    let mut plaintext = Zeroizing::new(ciphertext.to_vec());
    let tag = chacha20poly1305::Tag::try_from(tag).expect("16-byte tag");
    cipher(key)
        .decrypt_inout_detached(
            &Nonce::default(),
            &aad(columns, width),
            plaintext.as_mut_slice().into(),
            &tag,
        )
        .map_err(|_| ProtocolError::PayloadUnauthentic)?;
    decode_rows(&plaintext, usize::from(columns))
}

fn decode_rows(mut bytes: &[u8], columns: usize) -> Result<Vec<Vec<String>>, ProtocolError> {
    let mut take = |n: usize, what: &'static str| -> Result<&[u8], ProtocolError> {
        if bytes.len() < n {
            return Err(ProtocolError::PayloadMalformed(what));
        }
        let (head, rest) = bytes.split_at(n);
        bytes = rest;
        Ok(head)
    };
    let u32_at = |b: &[u8]| u32::from_be_bytes(b.try_into().expect("4 bytes")) as usize;
    let count = u32_at(take(4, "row count")?);
    if count > MAX_LIST_ROWS {
        return Err(ProtocolError::PayloadMalformed(
            "more rows than a payload may carry",
        ));
    }
    let mut rows = Vec::with_capacity(count);
    for _ in 0..count {
        let mut row = Vec::with_capacity(columns);
        for _ in 0..columns {
            let len = u32_at(take(4, "value length")?);
            let value = std::str::from_utf8(take(len, "value")?)
                .map_err(|_| ProtocolError::PayloadMalformed("a value is not UTF-8"))?;
            row.push(value.to_owned());
        }
        rows.push(row);
    }
    if bytes.iter().any(|&b| b != 0) {
        return Err(ProtocolError::PayloadMalformed("non-zero padding"));
    }
    Ok(rows)
}

// ---------------------------------------------------------------- provider

/// What the provider expects of the querier next (in the style of rustls's `Expect*` states).
enum ProviderExpects {
    /// The querier's hello, announcing how many points it sends.
    QuerierHello,
    /// The querier's points: `received` of the `size` it announced so far.
    QuerierPoints { size: u64, received: u64 },
}

/// The list provider role (the data provider): sends its labeled set and evaluates the
/// querier's blinded points under its key.
pub struct ListProvider {
    key: BlindingKey,
    domain: Domain,
    limits: Limits,
    columns: u16,
    width: u32,
    per_message: usize,
    items: Vec<(String, Vec<Vec<String>>)>,
    hello_sent: bool,
    next_item: usize,
    expects: ProviderExpects,
    outbox: VecDeque<ListMessage>,
}

impl ListProvider {
    /// Start a session with a fresh key. The set is shuffled here; blinding and sealing happen
    /// lazily as messages are polled.
    pub fn new(domain: &Domain, table: ListProviderTable, limits: Limits) -> Self {
        Self::with_key(domain, table, limits, BlindingKey::generate())
    }

    /// A provider for published test vectors only: the key is `key`, and the set is sorted
    /// by identifier and then shuffled by `rng` (stream `provider/shuffle`), so the whole
    /// transcript is reproducible. A session run this way protects nothing.
    #[cfg(feature = "test-vectors")]
    pub fn for_test_vector(
        domain: &Domain,
        table: ListProviderTable,
        limits: Limits,
        key: BlindingKey,
        rng: &crate::test_vector::TestVectorRng,
    ) -> Self {
        let mut provider = Self::with_key(domain, table, limits, key);
        provider.items.sort_unstable();
        shuffle(rng, Stream::ProviderSet, &mut provider.items);
        provider
    }

    /// This provider sealing every payload to `width` bytes (a job's width: the widest of
    /// its buckets' [`payload_bytes`](ListProviderTable::payload_bytes)), so that a bucket's
    /// hello does not tell its own longest payload. A width below the provider's own is
    /// ignored: payloads never lose bytes.
    pub fn with_job_width(mut self, width: usize) -> Self {
        if is_payload_width(width) && width as u64 > u64::from(self.width) {
            self.width = u32::try_from(width).expect("payload widths fit in u32");
            self.per_message = items_per_message(width);
        }
        self
    }

    fn with_key(
        domain: &Domain,
        table: ListProviderTable,
        limits: Limits,
        key: BlindingKey,
    ) -> Self {
        let columns = u16::try_from(table.columns()).expect("tables bound the column count");
        let width = table.payload_bytes();
        let mut items = table.into_items();
        shuffle(&OsRandomness, Stream::ProviderSet, &mut items);
        Self {
            key,
            domain: domain.clone(),
            limits,
            columns,
            width: u32::try_from(width).expect("tables bound the payload width"),
            per_message: items_per_message(width),
            items,
            hello_sent: false,
            next_item: 0,
            expects: ProviderExpects::QuerierHello,
            outbox: VecDeque::new(),
        }
    }

    /// The next message to send, or `None` while waiting for the peer (or when finished).
    pub fn poll_message(&mut self) -> Option<ListMessage> {
        if !self.hello_sent {
            self.hello_sent = true;
            return Some(ListMessage::ListProviderHello {
                set_size: self.items.len() as u64,
                columns: self.columns,
                payload_bytes: self.width,
            });
        }
        if self.next_item < self.items.len() {
            let end = (self.next_item + self.per_message).min(self.items.len());
            let chunk = &self.items[self.next_item..end];
            self.next_item = end;
            return Some(self.seal_chunk(chunk));
        }
        self.outbox.pop_front()
    }

    fn seal_chunk(&self, chunk: &[(String, Vec<Vec<String>>)]) -> ListMessage {
        let ids: Vec<&str> = chunk.iter().map(|(id, _)| id.as_str()).collect();
        let prfs = hash_and_blind(&self.domain, &self.key, &ids);
        let sealed: Vec<(Tag, Vec<u8>)> = prfs
            .par_iter()
            .zip(chunk)
            .map(|(prf, (_, rows))| {
                let (tag, key) = derive(prf);
                (tag, seal(&key, rows, self.columns, self.width))
            })
            .collect();
        let mut tags = Vec::with_capacity(sealed.len());
        let mut payloads = Vec::with_capacity(sealed.len() * self.width as usize);
        for (tag, payload) in sealed {
            tags.push(tag);
            payloads.extend_from_slice(&payload);
        }
        ListMessage::ListProviderItems {
            payload_bytes: self.width,
            tags,
            payloads,
        }
    }

    /// Consume one message from the querier.
    pub fn handle_message(&mut self, msg: ListMessage) -> Result<(), ProtocolError> {
        let kind = msg.kind();
        match (&mut self.expects, msg) {
            (ProviderExpects::QuerierHello, ListMessage::ListQuerierHello { set_size }) => {
                check_sizes(&[set_size], &self.limits)?;
                self.expects = ProviderExpects::QuerierPoints {
                    size: set_size,
                    received: 0,
                };
                Ok(())
            }
            (ProviderExpects::QuerierPoints { .. }, ListMessage::ListQuerierHello { .. }) => {
                Err(ProtocolError::Unexpected {
                    got: kind,
                    why: "hello already received",
                })
            }
            (ProviderExpects::QuerierHello, ListMessage::ListQuerierPoints { .. }) => {
                Err(ProtocolError::Unexpected {
                    got: kind,
                    why: "points before the querier's hello",
                })
            }
            (
                ProviderExpects::QuerierPoints { size, received },
                ListMessage::ListQuerierPoints { points },
            ) => {
                let mut now = [*received];
                admit(&mut now, &[*size], 0, points.len())?;
                *received = now[0];
                let evaluations = reblind(&self.key, &points).map_err(point_error(kind))?;
                self.outbox.push_back(ListMessage::ListProviderEvaluations {
                    points: evaluations,
                });
                Ok(())
            }
            (_, other) => Err(ProtocolError::Unexpected {
                got: other.kind(),
                why: "the list provider only accepts list querier messages",
            }),
        }
    }

    /// The querier's number of distinct identifiers, once its hello arrived: all the provider
    /// learns.
    pub fn querier_set_size(&self) -> Option<u64> {
        match self.expects {
            ProviderExpects::QuerierHello => None,
            ProviderExpects::QuerierPoints { size, .. } => Some(size),
        }
    }

    /// Whether every point the querier announced has been evaluated: the session is over once
    /// this holds and `poll_message` returns `None`.
    pub fn is_done(&self) -> bool {
        matches!(self.expects, ProviderExpects::QuerierPoints { size, received } if received == size)
    }
}

impl_party!(
    /// Finished once every point the querier announced arrived and was evaluated
    /// ([`ListProvider::is_done`]); the evaluations may still wait in `poll`.
    ListProvider,
    ListMessage,
    |this| Stage::finished_if(this.is_done())
);

impl std::fmt::Debug for ListProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListProvider")
            .field("set_size", &self.items.len())
            .field("columns", &self.columns)
            .field("payload_bytes", &self.width)
            .finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------- querier

/// One of the querier's identifiers that the provider also holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListMatch {
    /// The normalized identifier.
    pub identifier: String,
    /// The provider's rows for it, one value per list column, sorted; a row appears as often
    /// as the provider's data has it.
    pub rows: Vec<Vec<String>>,
}

/// What the querier learns at the end of a list session.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListOutcome {
    /// The matched identifiers, sorted.
    pub matches: Vec<ListMatch>,
    /// The provider's number of distinct identifiers.
    pub provider_set_size: u64,
    /// Identifiers whose lookup tag the provider sent but whose payload does not open (it was
    /// altered, or sealed under another key): counted as not matched, and only ever reported
    /// locally, after the session ended.
    pub unopened: u64,
}

impl ListOutcome {
    /// The provider's rows for a normalized identifier, if it matched.
    pub fn rows_of(&self, identifier: &str) -> Option<&[Vec<String>]> {
        self.matches
            .binary_search_by(|m| m.identifier.as_str().cmp(identifier))
            .ok()
            .map(|i| self.matches[i].rows.as_slice())
    }
}

/// The shape of the provider's set, as its hello announced it, and how much of it arrived.
#[derive(Clone, Copy)]
struct ProviderSide {
    size: u64,
    columns: u16,
    width: u32,
    received: u64,
}

/// What the querier expects of the provider next (in the style of rustls's `Expect*` states).
enum QuerierExpects {
    /// The provider's hello, announcing its set.
    ProviderHello,
    /// The provider's items, and the evaluations of the points this querier sent.
    ItemsAndEvaluations(ProviderSide),
    /// Nothing: every payload and every evaluation arrived and the provider's set passed its
    /// checks; nothing was opened yet.
    Nothing(ProviderSide),
    /// In a bucket of a job: every payload arrived (written to the items sink) and the
    /// provider's set passed its checks; the evaluations come after the job's last bucket, to
    /// the [`ParkedListBucket`] this querier becomes.
    EvaluationsLater(ProviderSide),
}

/// Where the provider's items go as they arrive.
enum ItemStore {
    /// One session: in memory, `(lookup tag, item)` and the payloads side by side.
    InMemory {
        index: Vec<(u128, u32)>,
        payloads: Vec<u8>,
    },
    /// A bucket of a job: each item written to `sink` as one fixed record `tag ‖ payload`;
    /// only the tags stay, to be checked for repeats. The first write error is kept and
    /// returned by [`ListQuerier::park`].
    Spilled {
        tags: Vec<u128>,
        sink: Box<dyn std::io::Write + Send>,
        failed: Option<std::io::Error>,
    },
}

/// The list querier role: sends its blinded identifiers, unblinds the provider's evaluations
/// and opens the payloads of the identifiers both hold.
pub struct ListQuerier {
    key: BlindingKey,
    unblind: BlindingKey,
    domain: Domain,
    limits: Limits,
    columns: usize,
    identifiers: Vec<String>,
    hello_sent: bool,
    sent: usize,
    /// Per identifier sent and evaluated, in order: its lookup tag and payload key.
    lookups: Vec<(Tag, Zeroizing<[u8; 32]>)>,
    expects: QuerierExpects,
    items: ItemStore,
}

impl ListQuerier {
    /// Start a session with a fresh key, expecting payloads of `columns` list columns (the
    /// provider's columns the plan lists). Identifiers are shuffled here.
    pub fn new(domain: &Domain, table: ListQuerierTable, columns: usize, limits: Limits) -> Self {
        let mut identifiers = table.into_identifiers();
        shuffle(&OsRandomness, Stream::QuerierSet, &mut identifiers);
        let key = BlindingKey::generate();
        Self {
            unblind: key.inverse(),
            key,
            domain: domain.clone(),
            limits,
            columns,
            identifiers,
            hello_sent: false,
            sent: 0,
            lookups: Vec::new(),
            expects: QuerierExpects::ProviderHello,
            items: ItemStore::InMemory {
                index: Vec::new(),
                payloads: Vec::new(),
            },
        }
    }

    /// The querier of one bucket of a job (`table` holds the bucket's identifiers): the
    /// provider's items are written to `items` as they arrive, one fixed record
    /// `tag ‖ payload` each, and the bucket ends without evaluations: once finished, the
    /// querier is [parked](Self::park) until the job's release.
    pub fn for_bucket(
        domain: &Domain,
        table: ListQuerierTable,
        columns: usize,
        limits: Limits,
        items: Box<dyn std::io::Write + Send>,
    ) -> Self {
        let mut querier = Self::new(domain, table, columns, limits);
        querier.items = ItemStore::Spilled {
            tags: Vec::new(),
            sink: items,
            failed: None,
        };
        querier
    }

    /// A querier for published test vectors only: the key is `key`, and the identifiers are
    /// sorted and then shuffled by `rng` (stream `querier/shuffle`), so the whole transcript is
    /// reproducible. A session run this way protects nothing.
    #[cfg(feature = "test-vectors")]
    pub fn for_test_vector(
        domain: &Domain,
        table: ListQuerierTable,
        columns: usize,
        limits: Limits,
        key: BlindingKey,
        rng: &crate::test_vector::TestVectorRng,
    ) -> Self {
        let mut querier = Self::new(domain, table, columns, limits);
        querier.unblind = key.inverse();
        querier.key = key;
        querier.identifiers.sort_unstable();
        shuffle(rng, Stream::QuerierSet, &mut querier.identifiers);
        querier
    }

    /// The next message to send, or `None` while waiting for the peer (or when finished).
    pub fn poll_message(&mut self) -> Option<ListMessage> {
        // In a bucket of a job, the bucket's last message (its last points, or its hello when
        // it has none) waits until every item of the provider arrived: once the provider has
        // it the bucket counts as done, and by then this querier can keep all it needs to open
        // the bucket later (`bucket.rs`).
        let holds_last = matches!(self.items, ItemStore::Spilled { .. })
            && !matches!(self.expects, QuerierExpects::EvaluationsLater(_));
        if !self.hello_sent {
            if holds_last && self.identifiers.is_empty() {
                return None;
            }
            self.hello_sent = true;
            return Some(ListMessage::ListQuerierHello {
                set_size: self.identifiers.len() as u64,
            });
        }
        if self.sent < self.identifiers.len() {
            let end = (self.sent + CHUNK_ITEMS).min(self.identifiers.len());
            if holds_last && end == self.identifiers.len() {
                return None;
            }
            let points = hash_and_blind(&self.domain, &self.key, &self.identifiers[self.sent..end]);
            self.sent = end;
            return Some(ListMessage::ListQuerierPoints { points });
        }
        None
    }

    /// Consume one message from the provider.
    pub fn handle_message(&mut self, msg: ListMessage) -> Result<(), ProtocolError> {
        let kind = msg.kind();
        match (&mut self.expects, msg) {
            (QuerierExpects::Nothing(_), _) => {
                return Err(ProtocolError::Unexpected {
                    got: kind,
                    why: "the session is finished",
                });
            }
            (QuerierExpects::EvaluationsLater(_), _) => {
                return Err(ProtocolError::Unexpected {
                    got: kind,
                    why: "the bucket is finished: its evaluations come after the job's last bucket",
                });
            }
            (
                QuerierExpects::ProviderHello,
                ListMessage::ListProviderHello {
                    set_size,
                    columns,
                    payload_bytes,
                },
            ) => {
                if usize::from(columns) != self.columns {
                    return Err(ProtocolError::ListColumns {
                        expected: self.columns,
                        got: columns.into(),
                    });
                }
                if !is_payload_width(payload_bytes as usize) {
                    return Err(WireError::Invalid("payload_bytes").into());
                }
                check_sizes(&[set_size], &self.limits)?;
                // What the provider may make this querier hold is fixed by its hello, before
                // any evaluation: memory never depends on which identifiers match.
                let bytes = set_size.saturating_mul(u64::from(payload_bytes));
                if bytes > self.limits.max_payload_bytes {
                    return Err(ProtocolError::LimitExceeded {
                        what: "list payload bytes",
                        value: bytes,
                        limit: self.limits.max_payload_bytes,
                    });
                }
                self.expects = QuerierExpects::ItemsAndEvaluations(ProviderSide {
                    size: set_size,
                    columns,
                    width: payload_bytes,
                    received: 0,
                });
            }
            (QuerierExpects::ProviderHello, _) => {
                return Err(ProtocolError::Unexpected {
                    got: kind,
                    why: "a list provider message before the provider's hello",
                });
            }
            (QuerierExpects::ItemsAndEvaluations(_), ListMessage::ListProviderHello { .. }) => {
                return Err(ProtocolError::Unexpected {
                    got: kind,
                    why: "hello already received",
                });
            }
            (
                QuerierExpects::ItemsAndEvaluations(provider),
                ListMessage::ListProviderItems {
                    payload_bytes,
                    tags,
                    payloads,
                },
            ) => {
                if payload_bytes != provider.width {
                    return Err(ProtocolError::PayloadWidth {
                        expected: provider.width,
                        got: payload_bytes,
                    });
                }
                if payloads.len() != tags.len() * payload_bytes as usize {
                    return Err(WireError::Invalid("payloads").into());
                }
                let mut received = [provider.received];
                admit(&mut received, &[provider.size], 0, tags.len())?;
                provider.received = received[0];
                match &mut self.items {
                    ItemStore::InMemory {
                        index,
                        payloads: all,
                    } => {
                        let first = index.len() as u32;
                        index.extend(
                            tags.iter()
                                .enumerate()
                                .map(|(i, t)| (t.as_u128(), first + i as u32)),
                        );
                        all.extend_from_slice(&payloads);
                    }
                    ItemStore::Spilled {
                        tags: all,
                        sink,
                        failed,
                    } => {
                        all.extend(tags.iter().map(Tag::as_u128));
                        if failed.is_none() {
                            let width = payload_bytes as usize;
                            let written = tags
                                .iter()
                                .zip(payloads.chunks_exact(width))
                                .try_for_each(|(tag, payload)| {
                                    sink.write_all(&tag.0)?;
                                    sink.write_all(payload)
                                });
                            *failed = written.err();
                        }
                    }
                }
            }
            (
                QuerierExpects::ItemsAndEvaluations(_),
                ListMessage::ListProviderEvaluations { .. },
            ) if matches!(self.items, ItemStore::Spilled { .. }) => {
                return Err(ProtocolError::Unexpected {
                    got: kind,
                    why: "evaluations within a bucket: they come after the job's last bucket",
                });
            }
            (
                QuerierExpects::ItemsAndEvaluations(_),
                ListMessage::ListProviderEvaluations { points },
            ) => {
                let got = (self.lookups.len() + points.len()) as u64;
                if got > self.sent as u64 {
                    return Err(ProtocolError::UnrequestedEvaluations {
                        sent: self.sent as u64,
                        got,
                    });
                }
                let prfs = reblind(&self.unblind, &points).map_err(point_error(kind))?;
                let lookups: Vec<_> = prfs.par_iter().map(derive).collect();
                self.lookups.extend(lookups);
            }
            (QuerierExpects::ItemsAndEvaluations(_), other) => {
                return Err(ProtocolError::Unexpected {
                    got: other.kind(),
                    why: "the list querier only accepts list provider messages",
                });
            }
        }
        self.finish_if_complete()
    }

    fn finish_if_complete(&mut self) -> Result<(), ProtocolError> {
        let QuerierExpects::ItemsAndEvaluations(provider) = self.expects else {
            return Ok(());
        };
        if provider.received != provider.size {
            return Ok(());
        }
        // The provider's tags are checked on their own, before any lookup: a repeat is an
        // error whatever this querier holds.
        match &mut self.items {
            ItemStore::InMemory { index, .. } => {
                if self.lookups.len() != self.identifiers.len() {
                    return Ok(());
                }
                index.par_sort_unstable();
                if index.windows(2).any(|w| w[0].0 == w[1].0) {
                    return Err(ProtocolError::DuplicateLookupTag);
                }
                self.expects = QuerierExpects::Nothing(provider);
            }
            ItemStore::Spilled { tags, .. } => {
                tags.par_sort_unstable();
                if tags.windows(2).any(|w| w[0] == w[1]) {
                    return Err(ProtocolError::DuplicateLookupTag);
                }
                *tags = Vec::new();
                self.expects = QuerierExpects::EvaluationsLater(provider);
            }
        }
        Ok(())
    }

    /// Whether nothing more is expected: every payload and every evaluation arrived (the
    /// transport should end the session before [`open`](Self::open) is called), or, in a
    /// bucket of a job, every payload arrived and every point was sent (the querier is then
    /// [parked](Self::park)).
    pub fn is_finished(&self) -> bool {
        match self.expects {
            QuerierExpects::Nothing(_) => true,
            QuerierExpects::EvaluationsLater(_) => {
                self.hello_sent && self.sent == self.identifiers.len()
            }
            _ => false,
        }
    }

    /// Looks up and opens the payloads of this querier's identifiers, once the session is
    /// finished (`None` before). Call it only after the session ended on the wire: which
    /// payloads exist for its identifiers, and whether they open, depends on what this querier
    /// holds, so nothing of it may show to the provider. A payload that does not open is
    /// counted in [`ListOutcome::unopened`] and treated as not matched.
    pub fn open(&self) -> Option<ListOutcome> {
        let QuerierExpects::Nothing(provider) = &self.expects else {
            return None;
        };
        let ItemStore::InMemory { index, payloads } = &self.items else {
            return None;
        };
        let (columns, width) = (provider.columns, provider.width);
        let opened: Vec<Result<ListMatch, ()>> = self
            .identifiers
            .par_iter()
            .zip(&self.lookups)
            .filter_map(|(identifier, (tag, key))| {
                let t = tag.as_u128();
                let at = index.binary_search_by(|&(k, _)| k.cmp(&t)).ok()?;
                let start = index[at].1 as usize * width as usize;
                let payload = payloads.get(start..start + width as usize)?;
                Some(
                    open(key, payload, columns, width)
                        .map(|rows| ListMatch {
                            identifier: identifier.clone(),
                            rows,
                        })
                        .map_err(drop),
                )
            })
            .collect();
        let unopened = opened.iter().filter(|m| m.is_err()).count() as u64;
        let mut matches: Vec<ListMatch> = opened.into_iter().filter_map(Result::ok).collect();
        matches.sort_unstable_by(|a, b| a.identifier.cmp(&b.identifier));
        Some(ListOutcome {
            matches,
            provider_set_size: provider.size,
            unopened,
        })
    }
}

impl_party!(
    /// Finished once every payload and every evaluation arrived; [`ListQuerier::open`] may
    /// then open the matched payloads.
    ListQuerier,
    ListMessage,
    |this| Stage::finished_if(this.is_finished())
);

impl std::fmt::Debug for ListQuerier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListQuerier")
            .field("set_size", &self.identifiers.len())
            .field("columns", &self.columns)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Normalization;
    use crate::format::padded_width;
    use sha2::Digest;

    fn test_key(byte: u8) -> BlindingKey {
        let mut bytes = [0u8; 32];
        bytes[0] = byte;
        BlindingKey::from_test_vector_bytes(bytes).expect("small scalars are canonical")
    }

    fn prf(domain: &Domain, key: &BlindingKey, id: &str) -> PointBytes {
        PointBytes(key.blind(&domain.hash_to_group(id)).compress().to_bytes())
    }

    fn unlimited() -> Limits {
        Limits::unlimited()
    }

    fn rows(rows: &[&[&str]]) -> Vec<Vec<String>> {
        rows.iter()
            .map(|r| r.iter().map(|v| v.to_string()).collect())
            .collect()
    }

    /// HMAC-SHA256 written out from RFC 2104, independent of the `hmac` crate.
    fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
        assert!(key.len() <= 64);
        let mut block = [0u8; 64];
        block[..key.len()].copy_from_slice(key);
        let inner = Sha256::new()
            .chain_update(block.map(|b| b ^ 0x36))
            .chain_update(message)
            .finalize();
        Sha256::new()
            .chain_update(block.map(|b| b ^ 0x5c))
            .chain_update(inner)
            .finalize()
            .into()
    }

    #[test]
    fn derivation_is_the_documented_hkdf() {
        let point = prf(&Domain::new("c", "email"), &test_key(7), "ann@example.com");
        let prk = hmac_sha256(HKDF_SALT, &point.0);
        // One block of HKDF-Expand: T(1) = HMAC(PRK, info || 0x01).
        let expand = |info: &[u8]| hmac_sha256(&prk, &[info, &[1u8]].concat());
        let (tag, key) = derive(&point);
        assert_eq!(tag.0, expand(b"cleanroom/psi/list/lookup-tag")[..16]);
        assert_eq!(*key, expand(b"cleanroom/psi/list/payload-key"));
        // The tag is not a prefix of the key: the two are independent derivations.
        assert_ne!(tag.0, key[..16]);
        assert_eq!(
            &aad(3, 80)[..],
            b"cleanroom/psi/list/payload\x00\x03\x00\x00\x00\x50"
        );
    }

    #[test]
    fn widths_are_whole_blocks_plus_the_tag() {
        assert_eq!(padded_width(4), 80);
        assert_eq!(padded_width(64), 80);
        assert_eq!(padded_width(65), 144);
        assert_eq!(
            padded_width(MAX_PLAINTEXT_BYTES),
            MAX_PLAINTEXT_BYTES + AEAD_TAG_BYTES
        );
        assert!(is_payload_width(80) && is_payload_width(144));
        assert!(is_payload_width(MAX_PLAINTEXT_BYTES + AEAD_TAG_BYTES));
        for bad in [
            0,
            16,
            64,
            79,
            81,
            MAX_PLAINTEXT_BYTES + AEAD_TAG_BYTES + PAD_BLOCK,
        ] {
            assert!(!is_payload_width(bad), "{bad}");
        }
        // A message holds as many of the widest payloads as fit under the limit.
        let widest = MAX_PLAINTEXT_BYTES + AEAD_TAG_BYTES;
        let n = items_per_message(widest);
        assert_eq!(n, 62);
        assert!(ITEMS_HEADER_BYTES + n * (16 + widest) <= MAX_MESSAGE_BYTES);
        assert_eq!(items_per_message(80), CHUNK_ITEMS);
    }

    #[test]
    fn payloads_open_only_with_their_key_and_shape() {
        let (_, key) = derive(&prf(&Domain::new("c", "id"), &test_key(3), "x"));
        let (_, other) = derive(&prf(&Domain::new("c", "id"), &test_key(3), "y"));
        let data = rows(&[&["EU", "gold"], &["", "ünïcode"], &["EU", "gold"]]);
        let sealed = seal(&key, &data, 2, 80);
        assert_eq!(sealed.len(), 80);
        assert_eq!(open(&key, &sealed, 2, 80).unwrap(), data);
        assert_eq!(
            open(&other, &sealed, 2, 80),
            Err(ProtocolError::PayloadUnauthentic)
        );
        // The shape is authenticated: the same bytes under another announced shape fail.
        assert_eq!(
            open(&key, &sealed, 1, 80),
            Err(ProtocolError::PayloadUnauthentic)
        );
        for i in 0..sealed.len() {
            let mut tampered = sealed.clone();
            tampered[i] ^= 1;
            assert_eq!(
                open(&key, &tampered, 2, 80),
                Err(ProtocolError::PayloadUnauthentic)
            );
        }
        // Zero rows and zero columns are payloads too.
        assert_eq!(
            open(&key, &seal(&key, &[], 2, 80), 2, 80).unwrap(),
            rows(&[])
        );
        let empty_rows = vec![Vec::<String>::new(); 3];
        assert_eq!(
            open(&key, &seal(&key, &empty_rows, 0, 80), 0, 80).unwrap(),
            empty_rows
        );
    }

    #[test]
    fn authentic_payloads_are_still_decoded_strictly() {
        let (_, key) = derive(&prf(&Domain::new("c", "id"), &test_key(3), "x"));
        // Seal arbitrary plaintexts the way a deviating provider could.
        let seal_raw = |plaintext: &[u8]| {
            let mut buf = plaintext.to_vec();
            buf.resize(64, 0);
            let tag = cipher(&key)
                .encrypt_inout_detached(&Nonce::default(), &aad(1, 80), buf.as_mut_slice().into())
                .unwrap();
            buf.extend_from_slice(&tag);
            buf
        };
        let cases: [(&[u8], &str); 5] = [
            (&[0, 0, 0, 1, 0, 0, 0, 2, b'o', b'k', 7], "non-zero padding"),
            (
                &[0, 0, 0, 1, 0, 0, 0, 2, 0xff, 0xfe],
                "a value is not UTF-8",
            ),
            (&[0, 0, 0, 1, 0, 0, 0, 99], "value"),
            (&[0, 0, 0, 20], "value length"),
            (&[0, 1, 0, 0], "more rows than a payload may carry"),
        ];
        for (plaintext, why) in cases {
            assert_eq!(
                open(&key, &seal_raw(plaintext), 1, 80),
                Err(ProtocolError::PayloadMalformed(why)),
                "{plaintext:?}"
            );
        }
        assert_eq!(
            open(
                &key,
                &seal_raw(&[0, 0, 0, 1, 0, 0, 0, 2, b'o', b'k']),
                1,
                80
            )
            .unwrap(),
            rows(&[&["ok"]])
        );
    }

    /// A session with a provider key the test knows, and the full transcript.
    struct Run {
        domain: Domain,
        key: BlindingKey,
        provider_ids: Vec<String>,
        querier_ids: Vec<String>,
        outcome: ListOutcome,
        transcript: Vec<ListMessage>,
    }

    fn run(provider_ids: &[&str], querier_ids: &[&str]) -> Run {
        let domain = Domain::new("collab", "email");
        let mut pt = ListProviderTable::new(Normalization::Email, 2).unwrap();
        for (i, id) in provider_ids.iter().enumerate() {
            pt.push(id, &[format!("region-{i}"), format!("tier-{}", i % 3)])
                .unwrap();
        }
        let mut qt = ListQuerierTable::new(Normalization::Email);
        for id in querier_ids {
            qt.push(id);
        }
        let mut p = ListProvider::with_key(&domain, pt, unlimited(), test_key(11));
        let mut q = ListQuerier::new(&domain, qt, 2, unlimited());
        let mut transcript = Vec::new();
        let no_release = |_: &mut ListProvider| Ok(());
        crate::offline::drive(
            &mut p,
            &mut q,
            no_release,
            &mut |m: &ListMessage, _: &[u8]| transcript.push(m.clone()),
        )
        .unwrap();
        Run {
            domain,
            key: test_key(11),
            provider_ids: provider_ids.iter().map(|s| s.to_string()).collect(),
            querier_ids: querier_ids.iter().map(|s| s.to_string()).collect(),
            outcome: q.open().unwrap(),
            transcript,
        }
    }

    fn provider_items(transcript: &[ListMessage]) -> Vec<(Tag, Vec<u8>)> {
        let mut items = Vec::new();
        for m in transcript {
            if let ListMessage::ListProviderItems {
                payload_bytes,
                tags,
                payloads,
            } = m
            {
                let chunks = payloads.chunks_exact(*payload_bytes as usize);
                items.extend(tags.iter().copied().zip(chunks.map(<[u8]>::to_vec)));
            }
        }
        items
    }

    #[test]
    fn unmatched_payloads_cannot_be_opened() {
        let provider: Vec<String> = (0..40).map(|i| format!("p{i}@x.org")).collect();
        let mut querier: Vec<String> = (0..30).map(|i| format!("q{i}@x.org")).collect();
        querier.extend((0..10).map(|i| format!("P{i}@X.org ")));
        fn as_str(v: &[String]) -> Vec<&str> {
            v.iter().map(String::as_str).collect()
        }
        let r = run(&as_str(&provider), &as_str(&querier));
        assert_eq!(r.outcome.matches.len(), 10);
        assert_eq!(r.outcome.provider_set_size, 40);
        let items = provider_items(&r.transcript);
        assert_eq!(items.len(), 40);
        let width = 80;

        // Every key the querier could hold: the PRF of each of its identifiers (which the test
        // computes with the provider's key; the outcome shows the querier got exactly these).
        let normalized = |id: &String| Normalization::Email.apply(id).unwrap();
        let querier_keys: Vec<_> = r
            .querier_ids
            .iter()
            .map(|id| derive(&prf(&r.domain, &r.key, &normalized(id))))
            .collect();
        let opened: Vec<usize> = items
            .iter()
            .enumerate()
            .filter(|(_, (tag, _))| querier_keys.iter().any(|(t, _)| t == tag))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(opened.len(), 10);
        for &i in &opened {
            let (tag, key) = querier_keys.iter().find(|(t, _)| *t == items[i].0).unwrap();
            assert_eq!(*tag, items[i].0);
            open(key, &items[i].1, 2, width).unwrap();
        }
        // Keys from what crossed the wire, and from the bare hash of every provider identifier
        // (someone who knows the identifiers but not the provider's key).
        let mut guesses: Vec<(Tag, Zeroizing<[u8; 32]>)> = querier_keys;
        for m in &r.transcript {
            if let ListMessage::ListQuerierPoints { points }
            | ListMessage::ListProviderEvaluations { points } = m
            {
                guesses.extend(points.iter().map(derive));
            }
        }
        for id in &r.provider_ids {
            let bare = PointBytes(
                r.domain
                    .hash_to_group(&normalized(id))
                    .compress()
                    .to_bytes(),
            );
            guesses.push(derive(&bare));
        }
        assert_eq!(guesses.len(), 40 + 40 + 40 + 40);
        let mut attempts = 0;
        for (i, (tag, payload)) in items.iter().enumerate() {
            if opened.contains(&i) {
                continue;
            }
            for (guess_tag, guess_key) in &guesses {
                assert_ne!(guess_tag, tag);
                assert_eq!(
                    open(guess_key, payload, 2, width),
                    Err(ProtocolError::PayloadUnauthentic)
                );
                attempts += 1;
            }
        }
        assert_eq!(attempts, 30 * 160);
        // Control: with the provider's key, every unmatched payload does open.
        for id in &r.provider_ids {
            let (tag, key) = derive(&prf(&r.domain, &r.key, &normalized(id)));
            let (_, payload) = items.iter().find(|(t, _)| *t == tag).unwrap();
            let rows = open(&key, payload, 2, width).unwrap();
            assert_eq!(rows.len(), 1);
            assert!(rows[0][0].starts_with("region-"));
        }
    }

    #[test]
    fn the_querier_learns_its_matches_with_their_rows() {
        let r = run(
            &["a@x.org", "B@x.org", " b@x.org", "c@x.org"],
            &["A@X.ORG", "b@x.org", "d@x.org", "  "],
        );
        assert_eq!(
            r.outcome,
            ListOutcome {
                matches: vec![
                    ListMatch {
                        identifier: "a@x.org".into(),
                        rows: rows(&[&["region-0", "tier-0"]]),
                    },
                    ListMatch {
                        identifier: "b@x.org".into(),
                        rows: rows(&[&["region-1", "tier-1"], &["region-2", "tier-2"]]),
                    },
                ],
                provider_set_size: 3,
                unopened: 0,
            }
        );
        assert_eq!(r.outcome.rows_of("b@x.org").map(<[_]>::len), Some(2));
        assert_eq!(r.outcome.rows_of("d@x.org"), None);
        // hello, one items chunk; hello, one points chunk; one evaluations chunk.
        let kinds: Vec<&str> = r.transcript.iter().map(ListMessage::kind).collect();
        assert_eq!(
            kinds,
            [
                "ListProviderHello",
                "ListProviderItems",
                "ListQuerierHello",
                "ListQuerierPoints",
                "ListProviderEvaluations"
            ]
        );
    }

    #[test]
    fn evaluations_are_the_provider_key_applied_in_order() {
        let r = run(&["a@x.org"], &["a@x.org", "b@x.org", "c@x.org"]);
        let sent = r.transcript.iter().find_map(|m| match m {
            ListMessage::ListQuerierPoints { points } => Some(points.clone()),
            _ => None,
        });
        let back = r.transcript.iter().find_map(|m| match m {
            ListMessage::ListProviderEvaluations { points } => Some(points.clone()),
            _ => None,
        });
        let (sent, back) = (sent.unwrap(), back.unwrap());
        assert_eq!(sent.len(), 3);
        for (s, b) in sent.iter().zip(&back) {
            assert_eq!(b.0, r.key.blind(&s.decode().unwrap()).compress().to_bytes());
        }
    }
}
