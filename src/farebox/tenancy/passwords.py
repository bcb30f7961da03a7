"""Password hashing with scrypt (memory-hard, in the standard library).

A stored hash describes itself: `scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>`, so the cost
can be raised later and old hashes still verify with the parameters they were made with.
Hashing is deliberately slow: callers on the event loop run it in a thread.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os

SALT_BYTES = 16
HASH_BYTES = 32
# Bounds on what a stored string may ask for, so a corrupt row cannot make verification
# allocate gigabytes (n=2**20, r=8 is 1 GiB; we never store more than the settings allow).
_N_MAX = 2**20
_R_MAX = 32
_P_MAX = 16


def _maxmem(n: int, r: int, p: int) -> int:
    """OpenSSL's scrypt needs 128*r*(n+2) bytes for V and 128*r*p for B; hashlib's
    default limit (32 MiB) is below what n=2**15, r=8 needs."""
    return 128 * r * (n + p + 2) + 1024 * 1024


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8", "surrogatepass"), salt=salt, n=n, r=r, p=p,
                          maxmem=_maxmem(n, r, p), dklen=HASH_BYTES)


def _check_parameters(n: int, r: int, p: int) -> None:
    if n < 2 or n & (n - 1) or n > _N_MAX:
        raise ValueError(f"scrypt n must be a power of two between 2 and {_N_MAX}, got {n}")
    if not 1 <= r <= _R_MAX or not 1 <= p <= _P_MAX:
        raise ValueError(f"scrypt r and p out of range: r={r}, p={p}")


def _encode(n: int, r: int, p: int, salt: bytes, digest: bytes) -> str:
    return "$".join(("scrypt", str(n), str(r), str(p), base64.b64encode(salt).decode(),
                     base64.b64encode(digest).decode()))


def hash_password(password: str, *, n: int = 2**15, r: int = 8, p: int = 1, salt: bytes | None = None) -> str:
    _check_parameters(n, r, p)
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    return _encode(n, r, p, salt, _scrypt(password, salt, n, r, p))


def decoy_hash(*, n: int = 2**15, r: int = 8, p: int = 1) -> str:
    """A stored hash no password matches, made without running scrypt: its digest is random.
    Verifying a password against it costs exactly what verifying against a real hash with
    the same parameters costs, which is all a decoy is for. (Hashing a decoy password at
    start-up took 0.1 s and 32 MiB, issue 7.)"""
    _check_parameters(n, r, p)
    return _encode(n, r, p, os.urandom(SALT_BYTES), os.urandom(HASH_BYTES))


def verify_password(password: str, stored: str) -> bool:
    """True when `password` matches `stored`; False for a wrong password and for any
    stored string that is not a hash this module made (never raises)."""
    try:
        scheme, n_text, r_text, p_text, salt_b64, hash_b64 = stored.split("$")
        if scheme != "scrypt" or not (n_text.isdigit() and r_text.isdigit() and p_text.isdigit()):
            return False
        n, r, p = int(n_text), int(r_text), int(p_text)
        if n < 2 or n & (n - 1) or n > _N_MAX or not 1 <= r <= _R_MAX or not 1 <= p <= _P_MAX:
            return False
        salt = base64.b64decode(salt_b64, validate=True)
        expected = base64.b64decode(hash_b64, validate=True)
        if not salt or len(expected) != HASH_BYTES:
            return False
        return hmac.compare_digest(_scrypt(password, salt, n, r, p), expected)
    except (AttributeError, ValueError, TypeError, binascii.Error, MemoryError, UnicodeError):
        return False
