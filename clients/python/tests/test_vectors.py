"""The published vectors of tests/vectors/*.json, checked against the Python implementation."""

import json
import pathlib

import pytest

from cleanroom_client import psi, sodium

VECTORS = pathlib.Path(__file__).resolve().parents[3] / "tests" / "vectors"


def load(name):
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


def h(s):
    return bytes.fromhex(s)


def test_normalization():
    for case in load("normalization.json")["cases"]:
        assert psi.normalize(case["normalization"], case["input"]) == case["output"], case


def test_hash_to_group():
    for case in load("hash_to_group.json")["cases"]:
        domain = psi.Domain(case["collaboration_id"], case["domain_label"])
        assert domain.hash_input(case["identifier"]) == h(case["hash_input"])
        assert domain.hash_bytes(case["identifier"]) == h(case["hash"])
        assert domain.hash_to_group(case["identifier"]) == h(case["point"])


def test_blinding_and_tags():
    v = load("blinding.json")
    a, b = h(v["matcher_key"]), h(v["receiver_key"])
    domain = psi.Domain(v["collaboration_id"], v["domain_label"])
    for case in v["cases"]:
        p = domain.hash_to_group(case["identifier"])
        assert p == h(case["point"])
        assert sodium.mul(a, p) == h(case["matcher_blinded"])
        assert sodium.mul(b, p) == h(case["receiver_blinded"])
        ab = sodium.mul(b, sodium.mul(a, p))
        assert ab == sodium.mul(a, sodium.mul(b, p)) == h(case["doubly_blinded"])
        assert psi.tag(ab) == h(case["tag"])


def test_elgamal():
    v = load("elgamal.json")
    key = psi.ValueKey([h(s) for s in v["secret_keys"]])
    assert key.public_keys == [h(p) for p in v["public_keys"]]
    total = None
    for item in v["items"]:
        assert psi.limbs(item["values"]) == item["limbs"]
        ct = key.encrypt(item["values"], h(item["randomness"]))
        assert psi.split_points(ct) == [h(p) for p in item["ciphertext"]]
        total = ct if total is None else psi.add_ciphertexts(total, ct)
    assert psi.split_points(total) == [h(p) for p in v["sum"]]
    released = psi.add_ciphertexts(total, psi.encrypt_zero(key.public_keys, h(v["rerandomization"])))
    assert psi.split_points(released) == [h(p) for p in v["released"]]
    assert key.decrypt(released, len(v["items"])) == v["totals"]


def test_wire_messages_round_trip():
    for m in load("wire.json")["messages"]:
        data = h(m["hex"])
        msg = psi.decode(data)
        assert type(msg).__name__ == m["kind"]
        assert psi.encode(msg) == data
        f = m["fields"]
        if m["kind"] == "MatcherResult":
            assert [g.matcher_group for g in msg.groups] == [g["matcher_group"] for g in f["groups"]]
            assert [g.sums for g in msg.groups] == [b"".join(map(h, g["sums"])) for g in f["groups"]]
        if m["kind"] in ("MatcherPoints", "ReceiverItems"):
            assert msg.points == [h(p) for p in f["points"]]


def test_wire_rejects_invalid_encodings():
    for case in load("wire.json")["invalid"]:
        if "hex" in case:
            data = h(case["hex"])
        else:
            prefix = h(case["hex_prefix"])
            data = prefix + bytes(case["zero_padded_to"] - len(prefix))
        with pytest.raises(psi.WireError):
            psi.decode(data)


def test_test_vector_rng():
    v = load("test_vector_rng.json")
    rng = psi.TestVectorRng(h(v["seed"]))
    for b in v["blocks"]:
        assert rng.block(b["label"], b["index"]) == h(b["block"])
    for s in v["scalars"]:
        assert rng.scalar(s["label"], s["index"]) == h(s["scalar"])
    items = list(v["shuffle"]["input"])
    rng.shuffle(v["shuffle"]["label"], items)
    assert items == v["shuffle"]["output"]


def receiver_groups(vector):
    """The receiver's table of a session vector: items per group, values summed."""
    r = vector["receiver"]
    groups = {}
    for row in r["rows"]:
        n = psi.normalize(vector["normalization"], row["identifier"])
        if n is None:
            continue
        items = groups.setdefault(row["group"], {})
        values = items.setdefault(n, [0] * r["value_columns"])
        for i, x in enumerate(row["values"]):
            values[i] += x
    keys = sorted(groups, key=lambda k: k.encode())
    assert keys == r["groups"]
    return [(k, sorted(groups[k].items())) for k in keys]


@pytest.mark.parametrize("name", ["session_cardinality.json", "session_intersection_sum.json"])
def test_session_transcript(name):
    v = load(name)
    r = v["receiver"]
    domain = psi.Domain(v["collaboration_id"], v["domain_label"])
    value_key = psi.ValueKey([h(s) for s in r["value_keys"]]) if r["value_columns"] else None
    receiver = psi.Receiver(
        domain,
        receiver_groups(v),
        r["value_columns"],
        blinding_key=h(r["blinding_key"]),
        value_key=value_key,
        test_vector_rng=psi.TestVectorRng(h(v["test_vector_seed"])),
    )
    sent = []

    def drain():
        while (msg := receiver.poll()) is not None:
            sent.append(psi.encode(msg))

    drain()
    for m in v["matcher_to_receiver"]:
        receiver.handle(psi.decode(h(m["hex"])))
        drain()
    assert [s.hex() for s in sent] == [m["hex"] for m in v["receiver_to_matcher"]]
    assert receiver.finished
    receiver.open()
    learns = v["receiver_learns"]
    assert receiver.outcome.suppressed_groups == learns["suppressed_groups"]
    assert [
        {
            "matcher_group": g.matcher_group,
            "receiver_group": g.receiver_group,
            "intersection_size": g.intersection_size,
            "sums": g.sums,
        }
        for g in receiver.outcome.groups
    ] == learns["groups"]


def test_receiver_rejects_tampered_results():
    v = load("session_intersection_sum.json")
    r = v["receiver"]

    def receiver_at_result():
        receiver = psi.Receiver(
            psi.Domain(v["collaboration_id"], v["domain_label"]),
            receiver_groups(v),
            r["value_columns"],
            blinding_key=h(r["blinding_key"]),
            value_key=psi.ValueKey([h(s) for s in r["value_keys"]]),
            test_vector_rng=psi.TestVectorRng(h(v["test_vector_seed"])),
        )
        while receiver.poll() is not None:
            pass
        for m in v["matcher_to_receiver"]:
            msg = psi.decode(h(m["hex"]))
            if isinstance(msg, psi.MatcherResult):
                return receiver, msg
            receiver.handle(msg)
            while receiver.poll() is not None:
                pass
        pytest.fail("no MatcherResult in the transcript")

    for tamper in (
        lambda s: s[:-32],  # a component missing
        lambda s: b"\xff" * 32 + s[32:],  # not a canonical encoding
        lambda s: s + s[:32],  # a component too many
    ):
        receiver, msg = receiver_at_result()
        msg.groups[0].sums = tamper(msg.groups[0].sums)
        with pytest.raises(psi.ProtocolError):
            receiver.handle(msg)

    # A sum whose randomness point was replaced decrypts nowhere in range.
    key = psi.ValueKey([h(s) for s in r["value_keys"]])
    _, msg = receiver_at_result()
    sums = msg.groups[0].sums
    with pytest.raises(psi.ProtocolError):
        key.decrypt(sodium.BASE + sums[32:], 3, limit=1 << 20)
    assert key.decrypt(sums, 3) == v["receiver_learns"]["groups"][0]["sums"]


# ----------------------------------------------------------------------------- list protocol
# The client does not run list queries; these checks recompute the list vector from PROTOCOL.md
# section 8 with the standard library and libsodium, as another implementation would.


def hkdf_sha256(ikm, salt, info, length):
    import hashlib
    import hmac

    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        out += block
        i += 1
    return out[:length]


def chacha20poly1305_open(key, aad, sealed):
    import ctypes

    lib = sodium._lib
    out = ctypes.create_string_buffer(len(sealed))
    out_len = ctypes.c_ulonglong(0)
    rc = lib.crypto_aead_chacha20poly1305_ietf_decrypt(
        out, ctypes.byref(out_len), None, sealed, ctypes.c_ulonglong(len(sealed)),
        aad, ctypes.c_ulonglong(len(aad)), bytes(12), key,
    )
    assert rc == 0, "payload fails authentication"
    return out.raw[: out_len.value]


def scalar_invert(s):
    import ctypes

    out = ctypes.create_string_buffer(32)
    assert sodium._lib.crypto_core_ristretto255_scalar_invert(out, s) == 0
    return out.raw


def test_list_session_transcript():
    import struct

    v = load("session_list.json")
    domain = psi.Domain(v["collaboration_id"], v["domain_label"])
    a, b = h(v["provider"]["blinding_key"]), h(v["querier"]["blinding_key"])
    rng = psi.TestVectorRng(h(v["test_vector_seed"]))

    # The provider's derivations.
    rows_of = {}
    for row in v["provider"]["rows"]:
        n = psi.normalize(v["normalization"], row["identifier"])
        if n is not None:
            rows_of.setdefault(n, []).append(row["values"])
    assert [d["identifier"] for d in v["derivations"]] == sorted(rows_of)
    for d in v["derivations"]:
        prf = sodium.mul(a, domain.hash_to_group(d["identifier"]))
        assert prf == h(d["prf"])
        assert hkdf_sha256(prf, b"cleanroom/psi/list", b"cleanroom/psi/list/lookup-tag", 16) == h(d["lookup_tag"])
        assert hkdf_sha256(prf, b"cleanroom/psi/list", b"cleanroom/psi/list/payload-key", 32) == h(d["payload_key"])
        plain = struct.pack(">I", len(rows_of[d["identifier"]]))
        for r in sorted(rows_of[d["identifier"]], key=lambda r: [x.encode() for x in r]):
            for value in r:
                plain += struct.pack(">I", len(value.encode())) + value.encode()
        assert plain == h(d["plaintext_unpadded"])

    # The provider's messages: hello, then items (tags and payloads).
    p2q = [h(m["hex"]) for m in v["provider_to_querier"]]
    assert p2q[0][:2] == bytes([1, 8])
    set_size, columns, width = struct.unpack(">QHI", p2q[0][2:])
    assert set_size == len(rows_of) and columns == 2 and (width - 16) % 64 == 0
    payloads = {}
    evaluations = []
    for m in p2q[1:]:
        kind = m[1]
        if kind == 9:
            (w, n) = struct.unpack(">II", m[2:10])
            assert w == width
            tags = [m[10 + 16 * i : 26 + 16 * i] for i in range(n)]
            body = m[10 + 16 * n :]
            assert len(body) == n * width
            for i, t in enumerate(tags):
                payloads[t] = body[i * width : (i + 1) * width]
        else:
            assert kind == 12
            (n,) = struct.unpack(">I", m[2:6])
            evaluations += [m[6 + 32 * i : 38 + 32 * i] for i in range(n)]
    aad = b"cleanroom/psi/list/payload" + struct.pack(">HI", columns, width)
    for d in v["derivations"]:
        plain = chacha20poly1305_open(h(d["payload_key"]), aad, payloads[h(d["lookup_tag"])])
        unpadded = h(d["plaintext_unpadded"])
        assert plain == unpadded + bytes(width - 16 - len(unpadded))

    # The querier's messages, recomputed: hello, then its shuffled blinded identifiers.
    ids = sorted({psi.normalize(v["normalization"], i) for i in v["querier"]["identifiers"]} - {None})
    rng.shuffle("querier/shuffle", ids)
    points = [sodium.mul(b, domain.hash_to_group(i)) for i in ids]
    expected = [bytes([1, 10]) + struct.pack(">Q", len(ids)), bytes([1, 11]) + struct.pack(">I", len(points)) + b"".join(points)]
    assert [m["hex"] for m in v["querier_to_provider"]] == [e.hex() for e in expected]

    # Unblind the evaluations and open what matches.
    b_inv = scalar_invert(b)
    matches = []
    for identifier, evaluation in zip(ids, evaluations):
        prf = sodium.mul(b_inv, evaluation)
        t = hkdf_sha256(prf, b"cleanroom/psi/list", b"cleanroom/psi/list/lookup-tag", 16)
        if t in payloads:
            k = hkdf_sha256(prf, b"cleanroom/psi/list", b"cleanroom/psi/list/payload-key", 32)
            plain = chacha20poly1305_open(k, aad, payloads[t])
            (count,), at, rows = struct.unpack(">I", plain[:4]), 4, []
            for _ in range(count):
                row = []
                for _ in range(columns):
                    (n,) = struct.unpack(">I", plain[at : at + 4])
                    row.append(plain[at + 4 : at + 4 + n].decode())
                    at += 4 + n
                rows.append(row)
            assert not any(plain[at:])
            matches.append({"identifier": identifier, "rows": rows})
    matches.sort(key=lambda m: m["identifier"].encode())
    assert v["querier_learns"] == {"provider_set_size": set_size, "matches": matches}
