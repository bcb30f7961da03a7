"""scrypt password hashes: self-describing, salted, verified in constant time, and never an
exception for a malformed stored string."""

from __future__ import annotations

import base64
import hashlib

import pytest

from farebox.tenancy.passwords import decoy_hash, hash_password, verify_password

N = 1024   # the smallest cost the settings allow: these tests are about format, not strength


def test_round_trip_and_the_self_describing_format():
    stored = hash_password("correct horse battery", n=N)
    scheme, n, r, p, salt, digest = stored.split("$")
    assert (scheme, n, r, p) == ("scrypt", "1024", "8", "1")
    assert len(base64.b64decode(salt)) == 16 and len(base64.b64decode(digest)) == 32
    # The digest is scrypt itself with the stored parameters (checked with hashlib directly).
    assert base64.b64decode(digest) == hashlib.scrypt(b"correct horse battery", salt=base64.b64decode(salt),
                                                      n=1024, r=8, p=1, dklen=32)
    assert verify_password("correct horse battery", stored)
    assert not verify_password("correct horse batterY", stored)
    assert not verify_password("", stored)


def test_each_hash_has_its_own_salt_and_a_given_salt_is_used():
    a, b = hash_password("same password", n=N), hash_password("same password", n=N)
    assert a != b and a.split("$")[4] != b.split("$")[4]
    fixed = hash_password("same password", n=N, salt=b"\x00" * 16)
    assert fixed == hash_password("same password", n=N, salt=b"\x00" * 16)
    assert fixed.split("$")[4] == base64.b64encode(b"\x00" * 16).decode()


def test_the_cost_travels_with_the_hash():
    stored = hash_password("pw-12345678", n=2048, r=4, p=2)
    assert stored.split("$")[1:4] == ["2048", "4", "2"]
    assert verify_password("pw-12345678", stored)


def test_the_default_cost_is_memory_hard():
    """n=2**15, r=8 needs 32 MiB, above hashlib's default limit: hash_password must pass maxmem."""
    stored = hash_password("pw-12345678")
    assert stored.split("$")[1:4] == ["32768", "8", "1"]
    assert verify_password("pw-12345678", stored)


def test_non_ascii_passwords():
    stored = hash_password("pässwörd ✓ 密码", n=N)
    assert verify_password("pässwörd ✓ 密码", stored) and not verify_password("passwort ✓ 密码", stored)


def _tamper(stored: str, index: int, value: str) -> str:
    parts = stored.split("$")
    parts[index] = value
    return "$".join(parts)


GOOD = hash_password("pw-12345678", n=N)
MALFORMED = [
    "", "scrypt", "not a hash", "$$$$$", GOOD + "$extra", GOOD.replace("scrypt", "bcrypt", 1),
    _tamper(GOOD, 1, "1000"),          # not a power of two
    _tamper(GOOD, 1, "1"),
    _tamper(GOOD, 1, str(2**30)),      # would allocate a terabyte
    _tamper(GOOD, 1, "-1024"),
    _tamper(GOOD, 2, "0"),
    _tamper(GOOD, 3, "x"),
    _tamper(GOOD, 4, "!!!not base64!!!"),
    _tamper(GOOD, 4, ""),
    _tamper(GOOD, 5, base64.b64encode(b"short").decode()),
    _tamper(GOOD, 5, "%%%"),
]


@pytest.mark.parametrize("stored", MALFORMED)
def test_a_malformed_stored_hash_verifies_nothing_and_never_raises(stored):
    assert verify_password("pw-12345678", stored) is False


def test_a_non_string_stored_hash_is_false_too():
    assert verify_password("pw-12345678", None) is False  # type: ignore[arg-type]


@pytest.mark.parametrize("n", [1000, 1, 0, 2**21])
def test_bad_parameters_are_a_programming_error(n):
    with pytest.raises(ValueError):
        hash_password("pw-12345678", n=n)


def test_a_decoy_hash_has_a_real_hashs_shape_and_matches_nothing():
    decoy = decoy_hash(n=N)
    real = hash_password("anything", n=N)
    scheme, n, r, p, salt, digest = decoy.split("$")
    # Shaped as a real hash with the same parameters, so verifying against it passes every
    # format check and runs scrypt just as a real one does...
    assert (scheme, n, r, p) == tuple(real.split("$")[:4])
    assert len(base64.b64decode(salt, validate=True)) == 16 and len(base64.b64decode(digest, validate=True)) == 32
    # ...but its digest is random: no password, not even the empty one, matches it.
    assert not verify_password("anything", decoy) and not verify_password("", decoy)
    assert decoy != decoy_hash(n=N)
    with pytest.raises(ValueError):
        decoy_hash(n=1000)
