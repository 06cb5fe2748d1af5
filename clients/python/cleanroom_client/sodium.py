"""ristretto255 through libsodium, loaded with ctypes (PROTOCOL.md section 11).

Only the handful of libsodium functions the querying side needs. Points and scalars are
``bytes`` of length 32 (scalars little-endian, always reduced); the identity point is 32 zero
bytes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

IDENTITY = bytes(32)
SCALAR_ZERO = bytes(32)

_CANDIDATES = (
    os.environ.get("CLEANROOM_LIBSODIUM"),
    ctypes.util.find_library("sodium"),
    "libsodium.so.23",
    "/lib/x86_64-linux-gnu/libsodium.so.23",
    "libsodium.dylib",
)


def _load() -> ctypes.CDLL:
    errors = []
    for name in _CANDIDATES:
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
        except OSError as e:
            errors.append(f"{name}: {e}")
            continue
        if lib.sodium_init() < 0:
            raise OSError("sodium_init failed")
        return lib
    raise OSError("libsodium not found (set CLEANROOM_LIBSODIUM): " + "; ".join(errors))


_lib = _load()


class PointError(ValueError):
    """Bytes that are not an acceptable point encoding."""


def _out() -> ctypes.Array:
    return ctypes.create_string_buffer(32)


def _check32(b: bytes, what: str) -> None:
    if len(b) != 32:
        raise PointError(f"{what}: {len(b)} bytes, expected 32")


def from_hash(h: bytes) -> bytes:
    """The ristretto255 one-way map (RFC 9496 element derivation) of 64 bytes."""
    if len(h) != 64:
        raise ValueError("from_hash takes 64 bytes")
    out = _out()
    if _lib.crypto_core_ristretto255_from_hash(out, h) != 0:
        raise PointError("from_hash failed")
    return out.raw


def is_canonical(p: bytes) -> bool:
    """Whether ``p`` is a canonical encoding (the identity included)."""
    return len(p) == 32 and _lib.crypto_core_ristretto255_is_valid_point(p) == 1


def check_blinded(p: bytes) -> bytes:
    """A blinded point or public key: canonical and not the identity (PROTOCOL.md 5.1)."""
    _check32(p, "point")
    if p == IDENTITY:
        raise PointError("the identity point is not a valid blinded value")
    if not is_canonical(p):
        raise PointError("not a canonical ristretto255 encoding")
    return p


def check_component(p: bytes) -> bytes:
    """A ciphertext component: canonical, the identity allowed."""
    _check32(p, "ciphertext component")
    if not is_canonical(p):
        raise PointError("not a canonical ristretto255 encoding")
    return p


def add(p: bytes, q: bytes) -> bytes:
    out = _out()
    if _lib.crypto_core_ristretto255_add(out, p, q) != 0:
        raise PointError("invalid point in addition")
    return out.raw


def sub(p: bytes, q: bytes) -> bytes:
    out = _out()
    if _lib.crypto_core_ristretto255_sub(out, p, q) != 0:
        raise PointError("invalid point in subtraction")
    return out.raw


def mul(n: bytes, p: bytes) -> bytes:
    """``n·p`` for a reduced scalar ``n`` and a canonical point ``p`` (identity allowed)."""
    if p == IDENTITY or n == SCALAR_ZERO:
        return IDENTITY
    out = _out()
    if _lib.crypto_scalarmult_ristretto255(out, n, p) != 0:
        # Only an identity result is left (n·p = 0 needs n = 0 mod ℓ, excluded above), or an
        # invalid encoding.
        if not is_canonical(p):
            raise PointError("not a canonical ristretto255 encoding")
        return IDENTITY
    return out.raw


def mul_base(n: bytes) -> bytes:
    """``n·B`` for a reduced scalar ``n`` (the identity for 0)."""
    if n == SCALAR_ZERO:
        return IDENTITY
    out = _out()
    if _lib.crypto_scalarmult_ristretto255_base(out, n) != 0:
        return IDENTITY
    return out.raw


def scalar_reduce(b64: bytes) -> bytes:
    """64 bytes, read as a little-endian integer, modulo ℓ."""
    if len(b64) != 64:
        raise ValueError("scalar_reduce takes 64 bytes")
    out = _out()
    _lib.crypto_core_ristretto255_scalar_reduce(out, b64)
    return out.raw


def scalar_random() -> bytes:
    """A uniform scalar in [1, ℓ-1] from libsodium's CSPRNG."""
    out = _out()
    _lib.crypto_core_ristretto255_scalar_random(out)
    return out.raw


def scalar_add(x: bytes, y: bytes) -> bytes:
    out = _out()
    _lib.crypto_core_ristretto255_scalar_add(out, x, y)
    return out.raw


def scalar_mul(x: bytes, y: bytes) -> bytes:
    out = _out()
    _lib.crypto_core_ristretto255_scalar_mul(out, x, y)
    return out.raw


def scalar_from_int(v: int) -> bytes:
    """A small non-negative integer as a scalar."""
    return v.to_bytes(32, "little")


ELL = 2**252 + 27742317777372353535851937790883648493


def is_canonical_scalar(s: bytes) -> bool:
    return len(s) == 32 and int.from_bytes(s, "little") < ELL


BASE = mul_base(scalar_from_int(1))
