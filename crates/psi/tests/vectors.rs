//! The published test vectors of PROTOCOL.md (`tests/vectors/*.json` at the repository's root,
//! where the Python client reads them too): generated here from the
//! implementation and compared with the files on every test run, so the document, the vectors
//! and the code cannot drift apart. Each vector is also checked against an independent
//! computation from the document's formulas (SHA-512 input layout, tag formula, ElGamal
//! equations), not only against the code that produced it.
//!
//! After an intentional protocol change, regenerate the files with
//! `CLEANROOM_WRITE_VECTORS=1 cargo test -p cleanroom-psi --test vectors` and review the diff.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use cleanroom_psi::elgamal::{Ciphertext, LIMBS_PER_VALUE, ValueKey};
use cleanroom_psi::hash::PROTOCOL_VERSION;
use cleanroom_psi::key::BlindingKey;
use cleanroom_psi::test_vector::TestVectorRng;
use cleanroom_psi::wire::{PointBytes, Tag};
use cleanroom_psi::{
    AggregateMessage, Domain, Limits, ListMessage, ListProvider, ListProviderTable, ListQuerier,
    ListQuerierTable, Matcher, MatcherTable, Normalization, Receiver, ReceiverTable, ReleasedGroup,
    WireMessage,
};
use common::AnyMessage;
use curve25519_dalek::constants::RISTRETTO_BASEPOINT_POINT as B;
use curve25519_dalek::{RistrettoPoint, Scalar};
use serde_json::{Value, json};
use sha2::{Digest, Sha256, Sha512};

/// The seed every fixed key and every test-vector randomness comes from.
const SEED: &[u8] = b"cleanroom/psi test vectors v1";
const COLLABORATION: &str = "acme-newsco-q4";
const DOMAIN_LABEL: &str = "impressions.email=conversions.email";

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors")
}

/// Compares `generated` with the file, or writes it when `CLEANROOM_WRITE_VECTORS` is set.
fn check_file(name: &str, generated: &Value) {
    let path = vectors_dir().join(name);
    let mut text = serde_json::to_string_pretty(generated).unwrap();
    text.push('\n');
    if std::env::var_os("CLEANROOM_WRITE_VECTORS").is_some() {
        std::fs::create_dir_all(vectors_dir()).unwrap();
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let stored =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let stored_value: Value = serde_json::from_str(&stored).unwrap();
    if stored_value != *generated {
        let line = stored
            .lines()
            .zip(text.lines())
            .position(|(a, b)| a != b)
            .map_or(0, |i| i + 1);
        panic!(
            "{} differs from what the implementation produces (first difference near line \
             {line}). If the protocol changed on purpose, regenerate with \
             CLEANROOM_WRITE_VECTORS=1 cargo test -p cleanroom-psi --test vectors and update \
             PROTOCOL.md.",
            path.display()
        );
    }
}

fn lp(out: &mut Vec<u8>, field: &[u8]) {
    out.extend_from_slice(&(field.len() as u64).to_be_bytes());
    out.extend_from_slice(field);
}

fn hexs(bytes: impl AsRef<[u8]>) -> String {
    hex::encode(bytes)
}

fn point_hex(p: &RistrettoPoint) -> String {
    hexs(p.compress().to_bytes())
}

/// The fixed keys: scalar `i` of stream `keys/<name>`.
fn fixed_scalar(name: &str, i: u64) -> Scalar {
    TestVectorRng::new(SEED).scalar(&format!("keys/{name}"), i)
}

fn blinding_key(scalar: &Scalar) -> BlindingKey {
    BlindingKey::from_test_vector_bytes(scalar.to_bytes()).expect("non-zero canonical scalar")
}

/// The tag formula of PROTOCOL.md, computed independently of `Tag::of`.
fn tag_by_hand(compressed: &[u8; 32]) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(b"cleanroom/psi/tag");
    h.update(compressed);
    h.finalize()[..16].try_into().unwrap()
}

// ------------------------------------------------------------------------- normalization

fn normalization_vectors() -> Value {
    let cases: &[(&str, &str)] = &[
        ("email", "  Alice@Example.COM \t"),
        ("email", "\u{a0}Bob@EXAMPLE.org\u{2003}"),
        ("email", "ÉLODIE@Exemple.FR"),
        ("email", "ΟΔΥΣΣΕΥΣ@MAIL.GR"),
        ("email", "\u{1f}carol@x.com"),
        ("email", "\u{feff}dave@x.com"),
        ("email", "   "),
        ("email", ""),
        ("phone", "+1 (555) 010-9999"),
        ("phone", "0044 20.7946.0000"),
        ("phone", "555 0100"),
        ("phone", "\t+33\t1 23 45 67 89 "),
        ("phone", "+0044 1"),
        ("phone", "(0) 12"),
        ("phone", "+"),
        ("phone", "00"),
        ("phone", " - "),
        ("phone", "555-CALL-NOW"),
        ("phone", "+1 555 010 9999 ext. 4"),
        ("phone", "\u{663}\u{663}\u{663}"),
        ("phone", "1\u{a0}2"),
        ("trim", "  Id-7 "),
        ("trim", "\u{3000}x y\u{2029}"),
        ("trim", "\u{85}\u{b}z\u{c}"),
        ("none", "  Id-7 "),
        ("none", " "),
        ("none", ""),
    ];
    let cases: Vec<Value> = cases
        .iter()
        .map(|(name, raw)| {
            let n: Normalization = name.parse().unwrap();
            json!({ "normalization": name, "input": raw, "output": n.apply(raw) })
        })
        .collect();
    json!({
        "description": "Identifier normalization (PROTOCOL.md, section Normalization). \
            `output` null: the identifier is skipped (never matched).",
        "cases": cases,
    })
}

// ------------------------------------------------------------------------- hash to group

fn hash_vectors() -> Value {
    let cases: &[(&str, &str, &str)] = &[
        (COLLABORATION, DOMAIN_LABEL, "alice@example.com"),
        (COLLABORATION, DOMAIN_LABEL, "élodie@exemple.fr"),
        (COLLABORATION, DOMAIN_LABEL, "+15550109999"),
        ("another-collaboration", DOMAIN_LABEL, "alice@example.com"),
        ("ab", "c", "d"),
        ("a", "bc", "d"),
    ];
    let cases: Vec<Value> = cases
        .iter()
        .map(|(collaboration, label, id)| {
            let mut input = Vec::new();
            for field in [
                b"cleanroom/psi/hash-to-group".as_slice(),
                PROTOCOL_VERSION.as_bytes(),
                collaboration.as_bytes(),
                label.as_bytes(),
                id.as_bytes(),
            ] {
                lp(&mut input, field);
            }
            let digest: [u8; 64] = Sha512::digest(&input).into();
            let domain = Domain::new(collaboration, label);
            assert_eq!(domain.hash_bytes(id), digest, "documented hash input");
            let point = RistrettoPoint::from_uniform_bytes(&digest);
            assert_eq!(domain.hash_to_group(id), point);
            json!({
                "collaboration_id": collaboration,
                "domain_label": label,
                "identifier": id,
                "hash_input": hexs(&input),
                "hash": hexs(digest),
                "point": point_hex(&point),
            })
        })
        .collect();
    json!({
        "description": "Hash to group (PROTOCOL.md, section Hash to group): \
            hash = SHA-512(hash_input), point = ristretto255 one-way map (RFC 9496 \
            element derivation, libsodium crypto_core_ristretto255_from_hash) of hash.",
        "protocol_version": PROTOCOL_VERSION,
        "cases": cases,
    })
}

// ------------------------------------------------------------------------- blinding and tags

fn blinding_vectors() -> Value {
    let a = fixed_scalar("matcher-blinding", 0);
    let b = fixed_scalar("receiver-blinding", 0);
    let (ka, kb) = (blinding_key(&a), blinding_key(&b));
    let domain = Domain::new(COLLABORATION, DOMAIN_LABEL);
    let cases: Vec<Value> = ["alice@example.com", "bob@example.com", "+15550109999"]
        .iter()
        .map(|id| {
            let p = domain.hash_to_group(id);
            let ap = a * p;
            let bp = b * p;
            let abp = (a * b) * p;
            assert_eq!(ka.blind(&p), ap);
            assert_eq!(kb.blind(&ap), abp);
            assert_eq!(ka.blind(&bp), abp);
            let abp_bytes = abp.compress().to_bytes();
            assert_eq!(Tag::of(&abp_bytes).0, tag_by_hand(&abp_bytes));
            json!({
                "identifier": id,
                "point": point_hex(&p),
                "matcher_blinded": point_hex(&ap),
                "receiver_blinded": point_hex(&bp),
                "doubly_blinded": point_hex(&abp),
                "tag": hexs(tag_by_hand(&abp_bytes)),
            })
        })
        .collect();
    json!({
        "description": "Blinding and tags (PROTOCOL.md, sections Blinding and Tags): \
            matcher_blinded = a*point, receiver_blinded = b*point, doubly_blinded = \
            b*(a*point) = a*(b*point), tag = SHA-256(\"cleanroom/psi/tag\" || \
            doubly_blinded)[0..16]. Scalars are 32-byte little-endian.",
        "collaboration_id": COLLABORATION,
        "domain_label": DOMAIN_LABEL,
        "matcher_key": hexs(a.to_bytes()),
        "receiver_key": hexs(b.to_bytes()),
        "cases": cases,
    })
}

// ------------------------------------------------------------------------- ElGamal

fn value_key(columns: usize, name: &str) -> (Vec<Scalar>, ValueKey) {
    let secrets: Vec<Scalar> = (0..columns * LIMBS_PER_VALUE)
        .map(|i| fixed_scalar(name, i as u64))
        .collect();
    let bytes: Vec<[u8; 32]> = secrets.iter().map(Scalar::to_bytes).collect();
    let key = ValueKey::from_test_vector_bytes(&bytes).expect("valid secrets");
    (secrets, key)
}

fn points_hex(bytes: &[u8]) -> Vec<String> {
    bytes.chunks(32).map(hexs).collect()
}

fn elgamal_vectors() -> Value {
    let rng = TestVectorRng::new(SEED);
    let (secrets, key) = value_key(2, "elgamal-value-key");
    let public: Vec<RistrettoPoint> = secrets.iter().map(|s| s * B).collect();
    assert_eq!(
        key.public_key()
            .to_bytes()
            .iter()
            .map(|p| p.0)
            .collect::<Vec<_>>(),
        public
            .iter()
            .map(|p| p.compress().to_bytes())
            .collect::<Vec<_>>()
    );
    let items: [[u64; 2]; 3] = [[5, 1], [70_000, 2], [u32::MAX as u64, 0]];
    let mut total = Ciphertext::zero(2);
    let mut item_vectors = Vec::new();
    for (i, values) in items.iter().enumerate() {
        let r = rng.scalar("elgamal/encrypt", i as u64);
        let ct = key.encrypt_with_randomness(values, r);
        // The documented equations: C0 = r·B, Ci = (limb_i + r·s_i)·B.
        let limbs: Vec<u64> = values.iter().flat_map(|v| [v & 0xFFFF, v >> 16]).collect();
        let mut by_hand = vec![r * B];
        for (limb, s) in limbs.iter().zip(&secrets) {
            by_hand.push((Scalar::from(*limb) + r * s) * B);
        }
        let by_hand: Vec<u8> = by_hand
            .iter()
            .flat_map(|p| p.compress().to_bytes())
            .collect();
        assert_eq!(ct.to_bytes(), by_hand);
        total.add_assign(&ct);
        item_vectors.push(json!({
            "values": values,
            "limbs": limbs,
            "randomness": hexs(r.to_bytes()),
            "ciphertext": points_hex(&ct.to_bytes()),
        }));
    }
    let sum_bytes = total.to_bytes();
    let r = rng.scalar("elgamal/rerandomize", 0);
    let mut released = total.clone();
    released.add_assign(&key.public_key().encrypt_zero_with_randomness(r));
    let released_bytes = released.to_bytes();
    let limb_sums: Vec<u64> = (0..4)
        .map(|i| {
            items
                .iter()
                .map(|v| (v[i / 2] >> (16 * (i % 2))) & 0xFFFF)
                .sum()
        })
        .collect();
    let totals: Vec<u64> = (0..2).map(|c| items.iter().map(|v| v[c]).sum()).collect();
    assert_eq!(key.decrypt(&released).unwrap(), totals);
    // Decryption by hand: Ci − s_i·C0 = limb_sum_i·B.
    let decoded = Ciphertext::from_bytes(&released_bytes, 2).unwrap();
    assert_eq!(decoded, released);
    let points: Vec<RistrettoPoint> = released_bytes
        .chunks(32)
        .map(|c| {
            curve25519_dalek::ristretto::CompressedRistretto::from_slice(c)
                .unwrap()
                .decompress()
                .unwrap()
        })
        .collect();
    for (i, s) in secrets.iter().enumerate() {
        assert_eq!(
            points[1 + i] - s * points[0],
            Scalar::from(limb_sums[i]) * B
        );
    }
    json!({
        "description": "Exponential ElGamal of the intersection-sum protocol (PROTOCOL.md, \
            section Homomorphic encryption), two value columns: public_keys[i] = \
            secret_keys[i]*B; per item C0 = r*B, C(1+i) = (limbs[i] + r*secret_keys[i])*B; \
            sum = component-wise sum of the items' ciphertexts; released = sum + (r'*B, \
            r'*public_keys[0], ...) with r' = rerandomization; decryption: C(1+i) - \
            secret_keys[i]*C0 = limb_sums[i]*B, totals[c] = limb_sums[2c] + 65536*limb_sums[2c+1].",
        "secret_keys": secrets.iter().map(|s| hexs(s.to_bytes())).collect::<Vec<_>>(),
        "public_keys": public.iter().map(point_hex).collect::<Vec<_>>(),
        "items": item_vectors,
        "sum": points_hex(&sum_bytes),
        "rerandomization": hexs(r.to_bytes()),
        "released": points_hex(&released_bytes),
        "limb_sums": limb_sums,
        "totals": totals,
    })
}

// ------------------------------------------------------------------------- wire format

fn describe(msg: &AnyMessage) -> Value {
    match msg {
        AnyMessage::Aggregate(m) => describe_aggregate(m),
        AnyMessage::List(m) => describe_list(m),
    }
}

fn describe_aggregate(msg: &AggregateMessage) -> Value {
    let points = |p: &[PointBytes]| p.iter().map(|p| hexs(p.0)).collect::<Vec<_>>();
    match msg {
        AggregateMessage::MatcherHello { group_sizes } => json!({ "group_sizes": group_sizes }),
        AggregateMessage::MatcherPoints { group, points: p } => {
            json!({ "group": group, "points": points(p) })
        }
        AggregateMessage::ReceiverHello {
            value_keys,
            group_sizes,
        } => json!({ "value_keys": points(value_keys), "group_sizes": group_sizes }),
        AggregateMessage::ReceiverItems {
            group,
            value_columns,
            points: p,
            ciphertexts,
        } => json!({
            "group": group,
            "value_columns": value_columns,
            "points": points(p),
            "ciphertexts": ciphertexts
                .chunks(cleanroom_psi::ecdh::aggregate::ciphertext_bytes(usize::from(*value_columns)).max(1))
                .map(points_hex)
                .collect::<Vec<_>>(),
        }),
        AggregateMessage::ReceiverProvenItems {
            group,
            value_columns,
            points: p,
            ciphertexts,
            proof,
        } => json!({
            "group": group,
            "value_columns": value_columns,
            "points": points(p),
            "ciphertexts": ciphertexts
                .chunks(cleanroom_psi::ecdh::aggregate::ciphertext_bytes(usize::from(*value_columns)).max(1))
                .map(points_hex)
                .collect::<Vec<_>>(),
            "proof": hex::encode(proof),
        }),
        AggregateMessage::ReceiverTags { group, tags } => json!({
            "group": group,
            "tags": tags.iter().map(|t| hexs(t.0)).collect::<Vec<_>>(),
        }),
        AggregateMessage::ReceiverTagPoints { group, points: p } => json!({
            "group": group,
            "points": points(p),
        }),
        AggregateMessage::MatcherResult { groups } => json!({
            "groups": groups
                .iter()
                .map(|g| json!({
                    "matcher_group": g.matcher_group,
                    "receiver_group": g.receiver_group,
                    "intersection_size": g.intersection_size,
                    "sums": points_hex(&g.sums),
                }))
                .collect::<Vec<_>>(),
        }),
        AggregateMessage::MatcherDone {
            released,
            suppressed,
            bounded,
        } => json!({ "released": released, "suppressed": suppressed, "bounded": bounded }),
    }
}

fn describe_list(msg: &ListMessage) -> Value {
    let points = |p: &[PointBytes]| p.iter().map(|p| hexs(p.0)).collect::<Vec<_>>();
    match msg {
        ListMessage::ListProviderHello {
            set_size,
            columns,
            payload_bytes,
        } => json!({ "set_size": set_size, "columns": columns, "payload_bytes": payload_bytes }),
        ListMessage::ListProviderItems {
            payload_bytes,
            tags,
            payloads,
        } => json!({
            "payload_bytes": payload_bytes,
            "tags": tags.iter().map(|t| hexs(t.0)).collect::<Vec<_>>(),
            "payloads": payloads.chunks(*payload_bytes as usize).map(hexs).collect::<Vec<_>>(),
        }),
        ListMessage::ListQuerierHello { set_size } => json!({ "set_size": set_size }),
        ListMessage::ListQuerierPoints { points: p }
        | ListMessage::ListProviderEvaluations { points: p } => {
            json!({ "points": points(p) })
        }
    }
}

fn message_vector(msg: impl Into<AnyMessage>) -> Value {
    let msg = msg.into();
    let bytes = msg.encode();
    assert_eq!(AnyMessage::decode(&bytes).unwrap(), msg, "round trip");
    json!({ "kind": msg.kind(), "fields": describe(&msg), "hex": hexs(&bytes) })
}

fn wire_vectors() -> Value {
    let domain = Domain::new(COLLABORATION, DOMAIN_LABEL);
    let key = blinding_key(&fixed_scalar("matcher-blinding", 0));
    let point = |id: &str| PointBytes(key.blind(&domain.hash_to_group(id)).compress().to_bytes());
    let (_, value_key) = value_key(1, "wire-value-key");
    let ct = value_key
        .encrypt_with_randomness(&[70_000], TestVectorRng::new(SEED).scalar("wire", 0))
        .to_bytes();
    let messages = [
        AggregateMessage::MatcherHello {
            group_sizes: vec![2, 1],
        },
        AggregateMessage::MatcherPoints {
            group: 1,
            points: vec![point("alice@example.com"), point("bob@example.com")],
        },
        AggregateMessage::ReceiverHello {
            value_keys: value_key.public_key().to_bytes(),
            group_sizes: vec![1],
        },
        AggregateMessage::ReceiverItems {
            group: 0,
            value_columns: 1,
            points: vec![point("carol@example.com")],
            ciphertexts: ct.clone(),
        },
        AggregateMessage::ReceiverItems {
            group: 0,
            value_columns: 0,
            points: vec![point("carol@example.com")],
            ciphertexts: Vec::new(),
        },
        AggregateMessage::ReceiverTags {
            group: 0,
            tags: vec![Tag([0x11; 16]), Tag([0xee; 16])],
        },
        AggregateMessage::ReceiverTagPoints {
            group: 1,
            points: vec![point("alice@example.com")],
        },
        AggregateMessage::MatcherResult {
            groups: vec![
                ReleasedGroup {
                    matcher_group: "[\"spring\"]".to_owned(),
                    receiver_group: 0,
                    intersection_size: 3,
                    sums: ct,
                },
                ReleasedGroup {
                    matcher_group: String::new(),
                    receiver_group: 2,
                    intersection_size: 5,
                    sums: Vec::new(),
                },
            ],
        },
        AggregateMessage::MatcherDone {
            released: 2,
            suppressed: 1,
            bounded: 0,
        },
    ];
    let messages: Vec<Value> = messages.into_iter().map(message_vector).collect();
    let good_done = AggregateMessage::MatcherDone {
        released: 0,
        suppressed: 0,
        bounded: 0,
    }
    .encode();
    let mut invalid: Vec<(String, Vec<u8>)> = vec![
        ("empty".into(), Vec::new()),
        ("unsupported version 2".into(), {
            let mut b = good_done.clone();
            b[0] = 2;
            b
        }),
        ("unknown kind 0".into(), vec![1, 0]),
        ("unknown kind 15".into(), vec![1, 15]),
        (
            "truncated MatcherDone".into(),
            good_done[..good_done.len() - 1].to_vec(),
        ),
        ("trailing byte after MatcherDone".into(), {
            let mut b = good_done.clone();
            b.push(0);
            b
        }),
        ("MatcherPoints announcing 2 points but carrying 1".into(), {
            let mut b = vec![1, 2, 0, 0, 0, 0, 0, 0, 0, 2];
            b.extend_from_slice(&[0x42; 32]);
            b
        }),
        ("MatcherPoints with more than 8192 points".into(), {
            let mut b = vec![1, 2, 0, 0, 0, 0];
            b.extend_from_slice(&8193u32.to_be_bytes());
            b.extend(std::iter::repeat_n(0u8, 8193 * 32));
            b
        }),
        ("ReceiverItems with 5 value columns".into(), {
            let mut b = vec![1, 4, 0, 0, 0, 0, 5];
            b.extend_from_slice(&0u32.to_be_bytes());
            b
        }),
        ("ReceiverItems missing its ciphertext".into(), {
            let mut b = vec![1, 4, 0, 0, 0, 0, 1, 0, 0, 0, 1];
            b.extend_from_slice(&[0x42; 32]);
            b
        }),
        ("ReceiverHello with 9 value keys".into(), {
            let mut b = vec![1, 3];
            b.extend_from_slice(&9u32.to_be_bytes());
            b.extend(std::iter::repeat_n(0u8, 9 * 32));
            b.extend_from_slice(&0u32.to_be_bytes());
            b
        }),
        ("MatcherResult with a group key that is not UTF-8".into(), {
            let mut b = vec![1, 6, 0, 0, 0, 1, 0, 0, 0, 1, 0xff];
            b.extend_from_slice(&[0; 4 + 8 + 4]);
            b
        }),
        ("MatcherResult with a group key over 1024 bytes".into(), {
            let mut b = vec![1, 6, 0, 0, 0, 1];
            b.extend_from_slice(&1025u32.to_be_bytes());
            b.extend(std::iter::repeat_n(b'a', 1025));
            b.extend_from_slice(&[0; 4 + 8 + 4]);
            b
        }),
    ];
    // Long encodings are stored as a prefix followed by zero bytes up to their length.
    let mut cases = Vec::new();
    for (why, bytes) in invalid.drain(..) {
        let error = AnyMessage::decode(&bytes).expect_err(&why).to_string();
        if bytes.len() > 4096 {
            assert!(bytes[16..].iter().all(|b| *b == 0), "{why}");
            cases.push(json!({
                "why": why,
                "error": error,
                "hex_prefix": hexs(&bytes[..16]),
                "zero_padded_to": bytes.len(),
            }));
        } else {
            cases.push(json!({ "why": why, "error": error, "hex": hexs(&bytes) }));
        }
    }
    json!({
        "description": "The binary message format (PROTOCOL.md, section Messages). `fields` \
            shows each message decoded; `invalid` lists encodings a decoder must reject (the \
            error text is the Rust implementation's; a long one is given as `hex_prefix` followed by \
            zero bytes up to `zero_padded_to` bytes). Ciphertexts and sums are lists of 32-byte \
            points.",
        "messages": messages,
        "invalid": cases,
    })
}

// ------------------------------------------------------------------------- sessions

struct SessionSpec {
    name: &'static str,
    description: &'static str,
    normalization: Normalization,
    value_columns: usize,
    matcher_rows: Vec<(&'static str, &'static str)>,
    receiver_rows: Vec<(&'static str, &'static str, Vec<u64>)>,
    min_release: u64,
}

fn session_vector(spec: &SessionSpec) -> Value {
    let domain = Domain::new(COLLABORATION, DOMAIN_LABEL);
    let seed = format!("{}/{}", String::from_utf8_lossy(SEED), spec.name);
    let rng = TestVectorRng::new(seed.as_bytes());
    let a = fixed_scalar(&format!("{}/matcher-blinding", spec.name), 0);
    let b = fixed_scalar(&format!("{}/receiver-blinding", spec.name), 0);
    let (secrets, value_key) = if spec.value_columns > 0 {
        let (s, k) = value_key(spec.value_columns, &format!("{}/value-key", spec.name));
        (s, Some(k))
    } else {
        (Vec::new(), None)
    };

    let build = || {
        let mut m = MatcherTable::new(spec.normalization);
        for (g, id) in &spec.matcher_rows {
            m.push(g, id).unwrap();
        }
        let mut r = ReceiverTable::new(spec.normalization, spec.value_columns).unwrap();
        for (g, id, v) in &spec.receiver_rows {
            r.push(g, id, v).unwrap();
        }
        (m, r)
    };
    let (mtable, rtable) = build();
    let mut matcher = Matcher::for_test_vector(
        &domain,
        mtable,
        Limits::default(),
        blinding_key(&a),
        rng.clone(),
    );
    let mut receiver = Receiver::for_test_vector(
        &domain,
        rtable,
        Limits::default(),
        blinding_key(&b),
        value_key,
        rng,
    );
    let (mut to_receiver, mut to_matcher) = (Vec::new(), Vec::new());
    let mut released = false;
    while !receiver.is_finished() {
        let mut progressed = false;
        while let Some(msg) = matcher.poll_message() {
            to_receiver.push(message_vector(msg.clone()));
            receiver
                .handle_message(WireMessage::decode(&msg.encode()).unwrap())
                .unwrap();
            progressed = true;
        }
        while let Some(msg) = receiver.poll_message() {
            to_matcher.push(message_vector(msg.clone()));
            matcher
                .handle_message(WireMessage::decode(&msg.encode()).unwrap())
                .unwrap();
            progressed = true;
        }
        if !released && matcher.counts().is_some() {
            matcher
                .release(|c| c.intersection_size >= spec.min_release)
                .unwrap();
            released = true;
            progressed = true;
        }
        assert!(progressed, "session stalled");
    }
    let outcome = receiver.open().unwrap();
    let counts = matcher.counts().unwrap().to_vec();

    // The same tables through the production roles (fresh keys, OS randomness) give the same
    // result: the test-vector roles differ only in where their randomness comes from.
    let (mtable, rtable) = build();
    let real = cleanroom_psi::match_offline(&domain, mtable, rtable, spec.min_release).unwrap();
    assert_eq!(real.outcome, outcome);
    assert_eq!(real.counts, counts);

    // An independent check of the matcher's points: exactly a·H(x) of its distinct
    // normalized identifiers, per group (order aside).
    let mut expected: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (g, id) in &spec.matcher_rows {
        if let Some(n) = spec.normalization.apply(id) {
            let p = point_hex(&(a * domain.hash_to_group(&n)));
            let e = expected.entry(g).or_default();
            if !e.contains(&p) {
                e.push(p);
            }
        }
    }
    let mut sent: Vec<Vec<String>> = vec![Vec::new(); expected.len()];
    for m in &to_receiver {
        if m["kind"] == "MatcherPoints" {
            let g = m["fields"]["group"].as_u64().unwrap() as usize;
            for p in m["fields"]["points"].as_array().unwrap() {
                sent[g].push(p.as_str().unwrap().to_owned());
            }
        }
    }
    for (mut want, mut got) in expected.into_values().zip(sent) {
        want.sort();
        got.sort();
        assert_eq!(want, got);
    }

    let matcher_groups: Vec<&str> = {
        let mut g: Vec<&str> = spec.matcher_rows.iter().map(|(g, _)| *g).collect();
        g.sort_unstable();
        g.dedup();
        g
    };
    let receiver_groups: Vec<&str> = {
        let mut g: Vec<&str> = spec.receiver_rows.iter().map(|(g, _, _)| *g).collect();
        g.sort_unstable();
        g.dedup();
        g
    };
    json!({
        "description": spec.description,
        "collaboration_id": COLLABORATION,
        "domain_label": DOMAIN_LABEL,
        "normalization": spec.normalization.name(),
        "min_release": spec.min_release,
        "test_vector_seed": hexs(seed.as_bytes()),
        "matcher": {
            "blinding_key": hexs(a.to_bytes()),
            "groups": matcher_groups,
            "rows": spec.matcher_rows.iter()
                .map(|(g, id)| json!({ "group": g, "identifier": id }))
                .collect::<Vec<_>>(),
        },
        "receiver": {
            "blinding_key": hexs(b.to_bytes()),
            "value_keys": secrets.iter().map(|s| hexs(s.to_bytes())).collect::<Vec<_>>(),
            "value_columns": spec.value_columns,
            "groups": receiver_groups,
            "rows": spec.receiver_rows.iter()
                .map(|(g, id, v)| json!({ "group": g, "identifier": id, "values": v }))
                .collect::<Vec<_>>(),
        },
        "matcher_to_receiver": to_receiver,
        "receiver_to_matcher": to_matcher,
        "matcher_learns": counts.iter().map(|c| json!({
            "matcher_group": c.matcher_group,
            "receiver_group": c.receiver_group,
            "intersection_size": c.intersection_size,
        })).collect::<Vec<_>>(),
        "receiver_learns": {
            "matcher_group_sizes": to_receiver[0]["fields"]["group_sizes"],
            "groups": outcome.groups.iter().map(|g| json!({
                "matcher_group": g.matcher_group,
                "receiver_group": g.receiver_group,
                "intersection_size": g.intersection_size,
                "sums": g.sums,
            })).collect::<Vec<_>>(),
            "suppressed_groups": outcome.suppressed_groups,
        },
    })
}

fn sum_session() -> SessionSpec {
    SessionSpec {
        name: "intersection-sum",
        description: "A complete intersection-sum session: two matcher groups (grouped by \
            campaign), two receiver groups (by channel), two value columns, release threshold \
            2. Messages in the order each side sends them; the two directions interleave \
            freely on a real connection.",
        normalization: Normalization::Email,
        value_columns: 2,
        matcher_rows: vec![
            ("[\"spring\"]", "alice@example.com"),
            ("[\"spring\"]", "Bob@Example.com"),
            ("[\"spring\"]", " carol@example.com"),
            ("[\"spring\"]", "dave@example.com"),
            ("[\"spring\"]", "BOB@example.com"),
            ("[\"summer\"]", "carol@example.com"),
            ("[\"summer\"]", "frank@example.com"),
            ("[\"summer\"]", "grace@example.com"),
            ("[\"summer\"]", "heidi@example.com"),
            ("[\"summer\"]", "   "),
        ],
        receiver_rows: vec![
            ("[\"web\"]", "ALICE@example.com", vec![10, 1]),
            ("[\"web\"]", "bob@example.com", vec![20, 1]),
            ("[\"web\"]", "carol@example.com", vec![70_000, 1]),
            ("[\"web\"]", "Carol@Example.com ", vec![5, 1]),
            ("[\"web\"]", "ivan@example.com", vec![1, 1]),
            ("[\"web\"]", "", vec![99, 1]),
            ("[\"store\"]", "dave@example.com", vec![7, 0]),
            ("[\"store\"]", "frank@example.com", vec![3, 1]),
            ("[\"store\"]", "grace@example.com", vec![4_000_000_000, 1]),
            ("[\"store\"]", "judy@example.com", vec![9, 1]),
        ],
        min_release: 2,
    }
}

fn cardinality_session() -> SessionSpec {
    SessionSpec {
        name: "cardinality",
        description: "A complete cardinality session: one group on each side (\"\"), no value \
            columns, release threshold 2. Messages in the order each side sends them; the two \
            directions interleave freely on a real connection.",
        normalization: Normalization::Email,
        value_columns: 0,
        matcher_rows: vec![
            ("", "alice@example.com"),
            ("", "bob@example.com"),
            ("", "carol@example.com"),
            ("", "dave@example.com"),
        ],
        receiver_rows: vec![
            ("", "Bob@example.com", vec![]),
            ("", "carol@example.com", vec![]),
            ("", "erin@example.com", vec![]),
            ("", " ALICE@example.com", vec![]),
        ],
        min_release: 2,
    }
}

// ------------------------------------------------------------------------- list protocol

/// HMAC-SHA256 as RFC 2104 writes it (keys of at most 64 bytes).
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

/// The lookup tag and payload key of a PRF value, by HKDF-SHA256 (RFC 5869) written out.
fn list_derive(prf: &[u8; 32]) -> ([u8; 16], [u8; 32]) {
    let prk = hmac_sha256(b"cleanroom/psi/list", prf);
    let expand = |info: &[u8]| hmac_sha256(&prk, &[info, &[1u8]].concat());
    let tag = expand(b"cleanroom/psi/list/lookup-tag")[..16]
        .try_into()
        .unwrap();
    (tag, expand(b"cleanroom/psi/list/payload-key"))
}

/// The documented payload plaintext of an identifier's rows (sorted), before padding.
fn list_plaintext(rows: &[Vec<&str>]) -> Vec<u8> {
    let mut rows = rows.to_vec();
    rows.sort();
    let mut out = (rows.len() as u32).to_be_bytes().to_vec();
    for value in rows.iter().flatten() {
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

fn list_session_vector() -> Value {
    let name = "list";
    let domain = Domain::new(COLLABORATION, "subscribers.email=customers.email");
    let seed = format!("{}/{name}", String::from_utf8_lossy(SEED));
    let rng = TestVectorRng::new(seed.as_bytes());
    let a = fixed_scalar("list/provider-blinding", 0);
    let b = fixed_scalar("list/querier-blinding", 0);
    let provider_rows: Vec<(&str, Vec<&str>)> = vec![
        ("alice@example.com", vec!["weekly", "EU"]),
        ("Bob@Example.com", vec!["daily", "US"]),
        ("bob@example.com ", vec!["weekly", "US"]),
        ("carol@example.com", vec!["monthly", ""]),
        ("dave@example.com", vec!["daily", "APAC, Oceania"]),
        ("", vec!["never", "EU"]),
    ];
    let querier_ids = [
        "BOB@example.com",
        "carol@example.com",
        "erin@example.com",
        " dave@example.com",
        "bob@example.com",
    ];
    let build = || {
        let mut p = ListProviderTable::new(Normalization::Email, 2).unwrap();
        for (id, values) in &provider_rows {
            p.push(id, values).unwrap();
        }
        let mut q = ListQuerierTable::new(Normalization::Email);
        for id in querier_ids {
            q.push(id);
        }
        (p, q)
    };
    let (ptable, qtable) = build();
    let mut provider =
        ListProvider::for_test_vector(&domain, ptable, Limits::default(), blinding_key(&a), &rng);
    let mut querier = ListQuerier::for_test_vector(
        &domain,
        qtable,
        2,
        Limits::default(),
        blinding_key(&b),
        &rng,
    );
    let (mut to_querier, mut to_provider) = (Vec::new(), Vec::new());
    while !querier.is_finished() {
        let mut progressed = false;
        while let Some(msg) = provider.poll_message() {
            to_querier.push(message_vector(msg.clone()));
            querier
                .handle_message(WireMessage::decode(&msg.encode()).unwrap())
                .unwrap();
            progressed = true;
        }
        while let Some(msg) = querier.poll_message() {
            to_provider.push(message_vector(msg.clone()));
            provider
                .handle_message(WireMessage::decode(&msg.encode()).unwrap())
                .unwrap();
            progressed = true;
        }
        assert!(progressed, "list session stalled");
    }
    assert!(provider.is_done());
    let outcome = querier.open().unwrap();
    let (ptable, qtable) = build();
    let real = cleanroom_psi::list_offline(&domain, ptable, qtable).unwrap();
    assert_eq!(real.outcome, outcome);

    // Per distinct provider identifier, the documented derivations, checked against the
    // transcript: its lookup tag was sent, next to a payload of the announced width.
    let mut by_id: BTreeMap<String, Vec<Vec<&str>>> = BTreeMap::new();
    for (id, values) in &provider_rows {
        if let Some(n) = Normalization::Email.apply(id) {
            by_id.entry(n).or_default().push(values.clone());
        }
    }
    let sent_tags: Vec<&str> = to_querier
        .iter()
        .filter(|m| m["kind"] == "ListProviderItems")
        .flat_map(|m| m["fields"]["tags"].as_array().unwrap())
        .map(|t| t.as_str().unwrap())
        .collect();
    let derivations: Vec<Value> = by_id
        .iter()
        .map(|(id, rows)| {
            let prf = (a * domain.hash_to_group(id)).compress().to_bytes();
            let (tag, key) = list_derive(&prf);
            assert!(sent_tags.contains(&hexs(tag).as_str()), "{id}");
            json!({
                "identifier": id,
                "prf": hexs(prf),
                "lookup_tag": hexs(tag),
                "payload_key": hexs(key),
                "plaintext_unpadded": hexs(list_plaintext(rows)),
            })
        })
        .collect();
    json!({
        "description": "A complete list session (PROTOCOL.md, section 8): the provider's set \
            with two list columns, the querier's identifiers, every message of each direction \
            in order, the derivations per provider identifier (prf = a*H(x), HKDF-SHA256 \
            lookup tag and payload key, the plaintext before its zero padding), and what the \
            querier learns. The payload of an identifier is ChaCha20-Poly1305(payload_key, \
            nonce 0^96, aad, plaintext padded with zeros to payload_bytes - 16).",
        "collaboration_id": COLLABORATION,
        "domain_label": "subscribers.email=customers.email",
        "normalization": "email",
        "test_vector_seed": hexs(seed.as_bytes()),
        "provider": {
            "blinding_key": hexs(a.to_bytes()),
            "rows": provider_rows.iter()
                .map(|(id, v)| json!({ "identifier": id, "values": v }))
                .collect::<Vec<_>>(),
        },
        "querier": {
            "blinding_key": hexs(b.to_bytes()),
            "identifiers": querier_ids,
        },
        "derivations": derivations,
        "provider_to_querier": to_querier,
        "querier_to_provider": to_provider,
        "querier_learns": {
            "provider_set_size": outcome.provider_set_size,
            "matches": outcome.matches.iter()
                .map(|m| json!({ "identifier": m.identifier, "rows": m.rows }))
                .collect::<Vec<_>>(),
        },
    })
}

// ------------------------------------------------------------------------- the tests

#[test]
fn normalization() {
    check_file("normalization.json", &normalization_vectors());
}

#[test]
fn hash_to_group() {
    check_file("hash_to_group.json", &hash_vectors());
}

#[test]
fn blinding_and_tags() {
    check_file("blinding.json", &blinding_vectors());
}

#[test]
fn elgamal() {
    check_file("elgamal.json", &elgamal_vectors());
}

#[test]
fn wire() {
    check_file("wire.json", &wire_vectors());
}

#[test]
fn test_vector_randomness() {
    let rng = TestVectorRng::new(b"example seed");
    let mut items: Vec<u32> = (0..10).collect();
    rng.shuffle("example/shuffle", &mut items);
    check_file(
        "test_vector_rng.json",
        &json!({
            "description": "The reproducible randomness of the session vectors (PROTOCOL.md, \
                appendix Test-vector randomness); never used by a real session.",
            "seed": hexs(b"example seed"),
            "blocks": (0..2).map(|i| json!({
                "label": "example/block", "index": i,
                "block": hexs(rng.block("example/block", i)),
            })).collect::<Vec<_>>(),
            "scalars": (0..2).map(|i| json!({
                "label": "example/scalar", "index": i,
                "scalar": hexs(rng.scalar("example/scalar", i).to_bytes()),
            })).collect::<Vec<_>>(),
            "shuffle": { "label": "example/shuffle", "input": (0..10).collect::<Vec<u32>>(),
                "output": items },
        }),
    );
}

#[test]
fn intersection_sum_session() {
    check_file(
        "session_intersection_sum.json",
        &session_vector(&sum_session()),
    );
}

#[test]
fn cardinality_session_transcript() {
    check_file(
        "session_cardinality.json",
        &session_vector(&cardinality_session()),
    );
}

#[test]
fn list_session_transcript() {
    check_file("session_list.json", &list_session_vector());
}
