"""The receiver (querying) side of cleanroom's cardinality and intersection-sum protocols.

Written from PROTOCOL.md: normalization (5.2), hash to group (5.3), keys (5.4), blinding and
tags (5.5), exponential ElGamal (5.6), the message format (6) and the receiver's role (7.3).
The role does no I/O: feed it the matcher's messages with ``handle`` and send what ``poll``
returns, over any transport.
"""

from __future__ import annotations

import hashlib
import random
import struct
from dataclasses import dataclass, field
from math import isqrt
from typing import Optional, Sequence, Union

from . import sodium
from .sodium import PointError

# ----------------------------------------------------------------------------- constants

PROTOCOL_VERSION = b"cleanroom-psi/1"
HASH_LABEL = b"cleanroom/psi/hash-to-group"
TAG_LABEL = b"cleanroom/psi/tag"
WIRE_VERSION = 1
MAX_MESSAGE_BYTES = 4 * 1024 * 1024 - 64 * 1024
CHUNK_ITEMS = 8192
RESULT_CHUNK_GROUPS = 1024
MAX_GROUP_KEY_BYTES = 1024
MAX_HELLO_GROUPS = 400_000
MAX_VALUE_COLUMNS = 4
LIMBS_PER_VALUE = 2
MAX_ITEM_VALUE = 2**32 - 1
MAX_LIMB_SUM = 2**40


class ProtocolError(Exception):
    """The peer broke the protocol; the session must end."""


class WireError(ProtocolError):
    """Bytes that are not a valid protocol message."""


def lp(b: bytes) -> bytes:
    """``u64_be(len(b)) || b``."""
    return struct.pack(">Q", len(b)) + b


# ----------------------------------------------------------------------------- normalization

# The Unicode White_Space property (PROTOCOL.md 5.2), not Python's str.isspace().
WHITE_SPACE = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680"
    + "".join(chr(c) for c in range(0x2000, 0x200B))
    + "\u2028\u2029\u202f\u205f\u3000"
)


def trim(s: str) -> str:
    """Remove leading and trailing White_Space characters."""
    i, j = 0, len(s)
    while i < j and s[i] in WHITE_SPACE:
        i += 1
    while j > i and s[j - 1] in WHITE_SPACE:
        j -= 1
    return s[i:j]


def _phone(raw: str) -> Optional[str]:
    s = trim(raw)
    if s.startswith("+"):
        out, rest = "+", s[1:]
    elif s.startswith("00"):
        out, rest = "+", s[2:]
    else:
        out, rest = "", s
    digits = []
    for c in rest:
        if "0" <= c <= "9":
            digits.append(c)
        elif c in " .-()\t":
            continue
        else:
            return None
    return out + "".join(digits) if digits else None


def normalize(normalization: str, raw: str) -> Optional[str]:
    """The normalized identifier, or ``None`` when it is skipped (empty or invalid)."""
    if normalization == "email":
        out = trim(raw).lower()
    elif normalization == "trim":
        out = trim(raw)
    elif normalization == "none":
        out = raw
    elif normalization == "phone":
        out = _phone(raw) or ""
    else:
        raise ValueError(f"unknown normalization {normalization!r}")
    return out or None


# ----------------------------------------------------------------------------- hashing, tags


class Domain:
    """Where identifiers are hashed: one collaboration and one join (domain label)."""

    def __init__(self, collaboration_id: str, domain_label: str):
        self.collaboration_id = collaboration_id
        self.domain_label = domain_label
        self._prefix = (
            lp(HASH_LABEL)
            + lp(PROTOCOL_VERSION)
            + lp(collaboration_id.encode())
            + lp(domain_label.encode())
        )

    def hash_input(self, identifier: str) -> bytes:
        return self._prefix + lp(identifier.encode())

    def hash_bytes(self, identifier: str) -> bytes:
        return hashlib.sha512(self.hash_input(identifier)).digest()

    def hash_to_group(self, identifier: str) -> bytes:
        return sodium.from_hash(self.hash_bytes(identifier))


def tag(doubly_blinded: bytes) -> bytes:
    """``SHA-256("cleanroom/psi/tag" || compress(Q))[0..16]``."""
    return hashlib.sha256(TAG_LABEL + doubly_blinded).digest()[:16]


def random_scalar() -> bytes:
    """A uniform non-zero scalar from libsodium's CSPRNG."""
    return sodium.scalar_random()


# ----------------------------------------------------------------------------- messages


@dataclass
class MatcherHello:
    group_sizes: list


@dataclass
class MatcherPoints:
    group: int
    points: list


@dataclass
class ReceiverHello:
    value_keys: list
    group_sizes: list


@dataclass
class ReceiverItems:
    group: int
    value_columns: int
    points: list
    ciphertexts: bytes


@dataclass
class ReceiverTags:
    group: int
    tags: list


@dataclass
class ReceiverTagPoints:
    """Kind 14: a noisy session's re-blinded points of one matcher group (PROTOCOL.md 7.7)."""

    group: int
    points: list


@dataclass
class ReleasedGroup:
    matcher_group: str
    receiver_group: int
    intersection_size: int
    sums: bytes


@dataclass
class MatcherResult:
    groups: list


@dataclass
class MatcherDone:
    released: int
    suppressed: int
    bounded: int = 0


Message = Union[
    MatcherHello,
    MatcherPoints,
    ReceiverHello,
    ReceiverItems,
    ReceiverTags,
    ReceiverTagPoints,
    MatcherResult,
    MatcherDone,
]

KINDS = {
    MatcherHello: 1,
    MatcherPoints: 2,
    ReceiverHello: 3,
    ReceiverItems: 4,
    ReceiverTags: 5,
    MatcherResult: 6,
    MatcherDone: 7,
    ReceiverTagPoints: 14,
}


def ciphertext_bytes(value_columns: int) -> int:
    return 0 if value_columns == 0 else 32 * (1 + LIMBS_PER_VALUE * value_columns)


def _u32(n: int) -> bytes:
    return struct.pack(">I", n)


def _u64s(values: Sequence[int]) -> bytes:
    return _u32(len(values)) + b"".join(struct.pack(">Q", v) for v in values)


def _points(points: Sequence[bytes]) -> bytes:
    return _u32(len(points)) + b"".join(points)


def encode(msg: Message) -> bytes:
    """The wire encoding of a message (PROTOCOL.md section 6)."""
    out = bytes([WIRE_VERSION, KINDS[type(msg)]])
    if isinstance(msg, MatcherHello):
        return out + _u64s(msg.group_sizes)
    if isinstance(msg, MatcherPoints):
        return out + _u32(msg.group) + _points(msg.points)
    if isinstance(msg, ReceiverHello):
        return out + _points(msg.value_keys) + _u64s(msg.group_sizes)
    if isinstance(msg, ReceiverItems):
        return (
            out
            + _u32(msg.group)
            + bytes([msg.value_columns])
            + _points(msg.points)
            + msg.ciphertexts
        )
    if isinstance(msg, ReceiverTags):
        return out + _u32(msg.group) + _u32(len(msg.tags)) + b"".join(msg.tags)
    if isinstance(msg, ReceiverTagPoints):
        return out + _u32(msg.group) + _points(msg.points)
    if isinstance(msg, MatcherResult):
        parts = [out, _u32(len(msg.groups))]
        for g in msg.groups:
            key = g.matcher_group.encode()
            parts += [
                _u32(len(key)),
                key,
                _u32(g.receiver_group),
                struct.pack(">Q", g.intersection_size),
                _u32(len(g.sums)),
                g.sums,
            ]
        return b"".join(parts)
    if isinstance(msg, MatcherDone):
        return out + struct.pack(">QQQ", msg.released, msg.suppressed, msg.bounded)
    raise TypeError(f"not a message: {msg!r}")


class _Reader:
    def __init__(self, data: bytes):
        self.data = memoryview(data)
        self.at = 0

    def remaining(self) -> int:
        return len(self.data) - self.at

    def take(self, n: int, field_name: str) -> bytes:
        if self.remaining() < n:
            raise WireError(f"message truncated while reading {field_name}")
        out = bytes(self.data[self.at : self.at + n])
        self.at += n
        return out

    def u8(self, f: str) -> int:
        return self.take(1, f)[0]

    def u32(self, f: str) -> int:
        return struct.unpack(">I", self.take(4, f))[0]

    def u64(self, f: str) -> int:
        return struct.unpack(">Q", self.take(8, f))[0]

    def count(self, f: str, min_size: int) -> int:
        n = self.u32(f)
        if n * min_size > self.remaining():
            raise WireError(f"message truncated while reading {f}")
        return n

    def u64s(self, f: str) -> list:
        n = self.count(f, 8)
        if n > MAX_HELLO_GROUPS:
            raise WireError(f"{f}: {n} elements exceed the limit of {MAX_HELLO_GROUPS}")
        return list(struct.unpack(f">{n}Q", self.take(8 * n, f)))

    def points(self, f: str) -> list:
        n = self.count(f, 32)
        if n > CHUNK_ITEMS:
            raise WireError(f"{f}: {n} elements exceed the limit of {CHUNK_ITEMS}")
        raw = self.take(32 * n, f)
        return [raw[i : i + 32] for i in range(0, len(raw), 32)]


def decode(data: bytes) -> Message:
    """Decode one message strictly (PROTOCOL.md section 6)."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise WireError(f"message of {len(data)} bytes exceeds the limit")
    r = _Reader(data)
    version = r.u8("version")
    if version != WIRE_VERSION:
        raise WireError(f"unsupported wire version {version}")
    kind = r.u8("kind")
    if kind == 1:
        msg: Message = MatcherHello(r.u64s("group_sizes"))
    elif kind == 2:
        msg = MatcherPoints(r.u32("group"), r.points("points"))
    elif kind == 3:
        keys = r.points("value_keys")
        if len(keys) > MAX_VALUE_COLUMNS * LIMBS_PER_VALUE:
            raise WireError("value_keys: too many")
        msg = ReceiverHello(keys, r.u64s("group_sizes"))
    elif kind == 4:
        group = r.u32("group")
        columns = r.u8("value_columns")
        if columns > MAX_VALUE_COLUMNS:
            raise WireError("invalid field value_columns")
        points = r.points("points")
        cts = r.take(len(points) * ciphertext_bytes(columns), "ciphertexts")
        msg = ReceiverItems(group, columns, points, cts)
    elif kind == 5:
        group = r.u32("group")
        n = r.count("tags", 16)
        if n > CHUNK_ITEMS:
            raise WireError("tags: too many")
        raw = r.take(16 * n, "tags")
        msg = ReceiverTags(group, [raw[i : i + 16] for i in range(0, len(raw), 16)])
    elif kind == 6:
        n = r.count("groups", 20)
        if n > RESULT_CHUNK_GROUPS:
            raise WireError("groups: too many")
        groups = []
        for _ in range(n):
            length = r.count("group key", 1)
            if length > MAX_GROUP_KEY_BYTES:
                raise WireError("invalid group key")
            try:
                key = r.take(length, "group key").decode("utf-8")
            except UnicodeDecodeError:
                raise WireError("invalid group key") from None
            receiver_group = r.u32("receiver_group")
            size = r.u64("intersection_size")
            sums = r.take(r.count("sums", 1), "sums")
            groups.append(ReleasedGroup(key, receiver_group, size, sums))
        msg = MatcherResult(groups)
    elif kind == 7:
        msg = MatcherDone(r.u64("released"), r.u64("suppressed"), r.u64("bounded"))
    elif 8 <= kind <= 12:
        raise WireError(f"message kind {kind} belongs to the list protocol")
    elif kind == 14:
        msg = ReceiverTagPoints(r.u32("group"), r.points("points"))
    else:
        raise WireError(f"unknown message kind {kind}")
    if r.remaining():
        raise WireError(f"{r.remaining()} unexpected bytes after the message")
    return msg


# ----------------------------------------------------------------------------- ElGamal


def limbs(values: Sequence[int]) -> list:
    """16-bit limbs, low limb first, per value."""
    out = []
    for v in values:
        out += [v & 0xFFFF, v >> 16]
    return out


def split_points(data: bytes) -> list:
    return [data[i : i + 32] for i in range(0, len(data), 32)]


class DiscreteLog:
    """Baby-step giant-step for ``j·B`` with ``0 ≤ j ≤ 2^40``; the baby table is kept."""

    MIN_TABLE = 1 << 8
    MAX_TABLE = 1 << 18

    def __init__(self) -> None:
        self._table = {sodium.IDENTITY: 0}
        self._next = sodium.BASE  # len(table)·B

    def _grow(self, size: int) -> None:
        p = self._next
        for j in range(len(self._table), size):
            self._table[p] = j
            p = sodium.add(p, sodium.BASE)
        self._next = p

    def _search(self, target: bytes, bound: int) -> Optional[int]:
        want = min(max(isqrt(bound) + 1, self.MIN_TABLE), self.MAX_TABLE)
        if len(self._table) < want:
            self._grow(want)
        m = len(self._table)
        giant = sodium.mul_base(sodium.scalar_from_int(m))
        current = target
        for i in range(bound // m + 1):
            j = self._table.get(current)
            if j is not None:
                v = i * m + j
                return v if v <= bound else None
            current = sodium.sub(current, giant)
        return None

    def solve(
        self, target: bytes, expected: int = MAX_LIMB_SUM, limit: int = MAX_LIMB_SUM
    ) -> Optional[int]:
        """The ``j`` in ``[0, limit]`` with ``j·B = target``, or ``None``. The search starts
        with ``[0, expected]`` and widens up to ``limit`` (2^40, the protocol's range), so a
        good ``expected`` is fast and a wrong one only slow: a total that decrypts nowhere
        costs a search of the whole range (about a minute here)."""
        bound = min(max(expected, 1 << 16), limit)
        while True:
            v = self._search(target, bound)
            if v is not None or bound >= limit:
                return v
            bound = min(bound * 64, limit)


class ValueKey:
    """The receiver's ElGamal keys: two secrets per value column, in limb order."""

    def __init__(self, secrets: Sequence[bytes]):
        if len(secrets) % LIMBS_PER_VALUE or len(secrets) > MAX_VALUE_COLUMNS * LIMBS_PER_VALUE:
            raise ValueError("two secrets per value column, at most four columns")
        self.secrets = list(secrets)
        self.public_keys = [sodium.mul_base(s) for s in self.secrets]
        self._dlog = DiscreteLog()

    @classmethod
    def generate(cls, value_columns: int) -> "ValueKey":
        return cls([random_scalar() for _ in range(value_columns * LIMBS_PER_VALUE)])

    @property
    def value_columns(self) -> int:
        return len(self.secrets) // LIMBS_PER_VALUE

    def encrypt(self, values: Sequence[int], r: Optional[bytes] = None) -> bytes:
        """``r·B || (m_i + r·s_i)·B ...`` (PROTOCOL.md 5.6)."""
        if len(values) != self.value_columns:
            raise ValueError("one value per column")
        if r is None:
            r = sodium.scalar_reduce(_urandom(64))
        out = [sodium.mul_base(r)]
        for m, s in zip(limbs(values), self.secrets):
            out.append(sodium.mul_base(sodium.scalar_add(sodium.scalar_from_int(m), sodium.scalar_mul(r, s))))
        return b"".join(out)

    def decrypt(self, ciphertext: bytes, max_items: int, limit: int = MAX_LIMB_SUM) -> list:
        """Totals per value column of a sum, expected to be of at most ``max_items``
        encryptions (which only speeds the search up: any limb sum up to 2^40 decrypts)."""
        expected = 32 * (1 + len(self.secrets))
        if len(ciphertext) != expected:
            raise ProtocolError(f"sums of {len(ciphertext)} bytes, expected {expected}")
        points = [sodium.check_component(p) for p in split_points(ciphertext)]
        expected = max_items * 0xFFFF
        sums = []
        for s, c in zip(self.secrets, points[1:]):
            m = sodium.sub(c, sodium.mul(s, points[0]))
            v = self._dlog.solve(m, expected, limit)
            if v is None:
                raise ProtocolError("an encrypted total is outside the decryptable range")
            sums.append(v)
        return [sums[i] + (sums[i + 1] << 16) for i in range(0, len(sums), 2)]


def encrypt_zero(public_keys: Sequence[bytes], r: bytes) -> bytes:
    """An encryption of zero, as the matcher adds to re-randomize a total."""
    return sodium.mul_base(r) + b"".join(sodium.mul(r, s) for s in public_keys)


def add_ciphertexts(a: bytes, b: bytes) -> bytes:
    return b"".join(sodium.add(x, y) for x, y in zip(split_points(a), split_points(b)))


def _urandom(n: int) -> bytes:
    import os

    return os.urandom(n)


# ----------------------------------------------------------------------------- test vectors


class TestVectorRng:
    """The deterministic randomness of the published session vectors (PROTOCOL.md 10.1).
    For test vectors only: a session run with it protects nothing."""

    __test__ = False  # not a pytest test class

    def __init__(self, seed: bytes):
        self._prefix = lp(b"cleanroom/test-vector-rng") + lp(seed)

    def block(self, label: str, i: int) -> bytes:
        return hashlib.sha512(self._prefix + lp(label.encode()) + struct.pack(">Q", i)).digest()

    def scalar(self, label: str, i: int) -> bytes:
        return sodium.scalar_reduce(self.block(label, i))

    def shuffle(self, label: str, items: list) -> None:
        n = len(items)
        for t in range(max(n - 1, 0)):
            i = n - 1 - t
            j = struct.unpack(">Q", self.block(label, t)[:8])[0] % (i + 1)
            items[i], items[j] = items[j], items[i]


# ----------------------------------------------------------------------------- the receiver


@dataclass
class Limits:
    """Bounds on what the matcher may announce (the Rust receiver's defaults)."""

    max_set_size: int = 100_000_000
    max_groups: int = 100_000


@dataclass
class GroupResult:
    matcher_group: str
    receiver_group: str
    intersection_size: int
    sums: list


@dataclass
class Outcome:
    groups: list
    suppressed_groups: int


@dataclass
class _PeerGroups:
    sizes: list
    received: list = field(default_factory=list)
    tags: list = field(default_factory=list)


class Receiver:
    """The receiver role of PROTOCOL.md 7.3.

    ``groups`` is a list of ``(group key, [(normalized identifier, [values...]), ...])`` in
    ascending key order, each identifier once per group. Keys and randomness are fresh unless
    given (test vectors only).
    """

    def __init__(
        self,
        domain: Domain,
        groups: Sequence,
        value_columns: int,
        limits: Limits = Limits(),
        *,
        blinding_key: Optional[bytes] = None,
        value_key: Optional[ValueKey] = None,
        test_vector_rng: Optional[TestVectorRng] = None,
        matcher_groups: Optional[int] = None,
    ):
        """``matcher_groups``: how many groups the plan lets the matcher announce (1 for a plan
        not grouped on the matcher's side), or ``None`` for any number within the limits."""
        if value_columns > MAX_VALUE_COLUMNS:
            raise ValueError("at most four value columns")
        self.domain = domain
        self.value_columns = value_columns
        self.limits = limits
        self._rng = test_vector_rng
        self._key = blinding_key or random_scalar()
        if value_columns:
            self._value_key = value_key or ValueKey.generate(value_columns)
            if self._value_key.value_columns != value_columns:
                raise ValueError("value key for another number of columns")
        else:
            self._value_key = None
        system = random.SystemRandom()
        self.groups = []
        for g, (key, items) in enumerate(groups):
            items = list(items)
            if test_vector_rng is not None:
                items.sort(key=lambda item: item[0].encode())
                test_vector_rng.shuffle(f"receiver/shuffle/{g}", items)
            else:
                system.shuffle(items)
            self.groups.append((key, items))
        self._hello_sent = False
        self._cursor = (0, 0)  # (group, offset) of the next items to send
        self._peer: Optional[_PeerGroups] = None
        self._outbox: list = []
        self._results: list = []
        self._matcher_groups = matcher_groups
        self._suppressed: Optional[int] = None
        self.outcome: Optional[Outcome] = None

    # -- sending

    def _items_done(self) -> bool:
        return self._cursor[0] >= len(self.groups)

    def poll(self) -> Optional[Message]:
        """The next message to send, or ``None`` while waiting for the matcher."""
        if not self._hello_sent:
            self._hello_sent = True
            keys = self._value_key.public_keys if self._value_key else []
            return ReceiverHello(list(keys), [len(items) for _, items in self.groups])
        while not self._items_done():
            g, offset = self._cursor
            items = self.groups[g][1]
            if offset >= len(items):
                self._cursor = (g + 1, 0)
                continue
            chunk = items[offset : offset + CHUNK_ITEMS]
            self._cursor = (g, offset + len(chunk))
            return self._items_message(g, offset, chunk)
        if self._outbox:
            return self._outbox.pop(0)
        return None

    def _items_message(self, g: int, offset: int, chunk: list) -> ReceiverItems:
        points = [sodium.mul(self._key, self.domain.hash_to_group(i)) for i, _ in chunk]
        ciphertexts = b""
        if self._value_key is not None:
            parts = []
            for k, (_, values) in enumerate(chunk):
                r = None
                if self._rng is not None:
                    r = self._rng.scalar(f"receiver/encrypt/{g}", offset + k)
                parts.append(self._value_key.encrypt(values, r))
            ciphertexts = b"".join(parts)
        return ReceiverItems(g, self.value_columns, points, ciphertexts)

    # -- receiving

    def handle(self, msg: Message) -> None:
        """Consume one message of the matcher; raises ProtocolError on a violation."""
        if self.finished:
            raise ProtocolError("a message after the session finished")
        if isinstance(msg, MatcherHello):
            if self._peer is not None:
                raise ProtocolError("hello already received")
            self._check_sizes(msg.group_sizes)
            if self._matcher_groups is not None and len(msg.group_sizes) != self._matcher_groups:
                raise ProtocolError(
                    f"the peer announced {len(msg.group_sizes)} groups; the plan has {self._matcher_groups}"
                )
            n = len(msg.group_sizes)
            self._peer = _PeerGroups(list(msg.group_sizes), [0] * n, [[] for _ in range(n)])
            for g in range(n):
                self._flush_if_complete(g)
        elif isinstance(msg, MatcherPoints):
            peer = self._require_peer("points before the matcher's hello")
            g = msg.group
            if g >= len(peer.sizes):
                raise ProtocolError(f"unknown group {g}")
            if peer.received[g] + len(msg.points) > peer.sizes[g]:
                raise ProtocolError(f"group {g}: more points than the {peer.sizes[g]} announced")
            peer.received[g] += len(msg.points)
            try:
                peer.tags[g] += [
                    tag(sodium.mul(self._key, sodium.check_blinded(p))) for p in msg.points
                ]
            except PointError as e:
                raise ProtocolError(f"invalid point in MatcherPoints: {e}") from None
            self._flush_if_complete(g)
        elif isinstance(msg, MatcherResult):
            peer = self._peer
            if peer is None or peer.received != peer.sizes:
                raise ProtocolError("results before the matcher's sets")
            self._results += [self._check(g) for g in msg.groups]
        elif isinstance(msg, MatcherDone):
            peer = self._peer
            if peer is None or peer.received != peer.sizes:
                raise ProtocolError("the end before the matcher's sets")
            if msg.released != len(self._results):
                raise ProtocolError("released count differs from the groups received")
            if msg.released + msg.suppressed != len(peer.sizes) * len(self.groups):
                raise ProtocolError(
                    "released and suppressed pairs do not add up to the announced groups"
                )
            # This client runs exact sessions only: nothing is bounded there (PROTOCOL.md 4.5).
            if msg.bounded != 0:
                raise ProtocolError("bounded contributions in an exact session")
            self._suppressed = msg.suppressed
        else:
            raise ProtocolError(f"unexpected {type(msg).__name__}: the receiver only accepts matcher messages")

    def _require_peer(self, why: str) -> _PeerGroups:
        if self._peer is None:
            raise ProtocolError(why)
        return self._peer

    def _check_sizes(self, sizes: list) -> None:
        if len(sizes) > self.limits.max_groups:
            raise ProtocolError(f"groups: {len(sizes)} exceeds the limit of {self.limits.max_groups}")
        if sum(sizes) > self.limits.max_set_size:
            raise ProtocolError(f"set size: {sum(sizes)} exceeds the limit of {self.limits.max_set_size}")

    def _flush_if_complete(self, g: int) -> None:
        peer = self._peer
        if peer.received[g] != peer.sizes[g]:
            return
        tags, peer.tags[g] = peer.tags[g], []
        if self._rng is not None:
            self._rng.shuffle(f"receiver/tags/{g}", tags)
        else:
            random.SystemRandom().shuffle(tags)
        for i in range(0, len(tags), CHUNK_ITEMS):
            self._outbox.append(ReceiverTags(g, tags[i : i + CHUNK_ITEMS]))

    @property
    def finished(self) -> bool:
        """Whether ``MatcherDone`` arrived: end the session, then call :meth:`open`."""
        return self._suppressed is not None

    def _check(self, g: ReleasedGroup) -> ReleasedGroup:
        """Checks a released group on arrival, without decrypting (PROTOCOL.md 7.3, step 5)."""
        if g.receiver_group >= len(self.groups):
            raise ProtocolError(f"unknown group {g.receiver_group}")
        _, items = self.groups[g.receiver_group]
        if g.intersection_size > len(items):
            raise ProtocolError("intersection larger than the receiver's group")
        if self._value_key is not None:
            width = 32 * (1 + 2 * self.value_columns)
            if len(g.sums) != width:
                raise ProtocolError("sums of the wrong length")
            try:
                for i in range(0, width, 32):
                    sodium.check_component(g.sums[i : i + 32])
            except PointError as e:
                raise ProtocolError(f"invalid point in MatcherResult sums: {e}") from None
        elif g.sums:
            raise ProtocolError("sums in a cardinality session")
        return g

    def open(self) -> Outcome:
        """Decrypts the released sums, once the session ended on the wire (PROTOCOL.md 7.3,
        step 6): a failure here is this receiver's alone, never an abort the matcher sees."""
        if not self.finished:
            raise ProtocolError("the matcher's results are incomplete")
        results = []
        for g in self._results:
            key, _ = self.groups[g.receiver_group]
            sums = []
            if self._value_key is not None:
                try:
                    sums = self._value_key.decrypt(g.sums, g.intersection_size)
                except PointError as e:
                    raise ProtocolError(f"invalid point in MatcherResult sums: {e}") from None
            results.append(GroupResult(g.matcher_group, key, g.intersection_size, sums))
        groups = sorted(results, key=lambda r: (r.matcher_group.encode(), r.receiver_group.encode()))
        self.outcome = Outcome(groups, self._suppressed)
        return self.outcome
