"""The only source of randomness: generation ids, API keys, hold ids.

Keys must be unguessable, so the default source is the OS's CSPRNG; tests that need
repeatable ids pass a seeded `random.Random`.
"""

from __future__ import annotations

import hashlib
import os
import random
import secrets
import string

_ALNUM = string.ascii_letters + string.digits
# byte -> alphanumeric, so 20 random bytes become 20 characters in one translate. (The
# slight skew towards the first 8 characters does not matter for ids.)
_BYTE_TO_ALNUM = bytes((_ALNUM * 5)[:256], "ascii")
# The same 62 characters in byte order, so that a number written with them sorts as it counts.
_SORTED_ALNUM = string.digits + string.ascii_uppercase + string.ascii_lowercase
API_KEY_PREFIX = "sk-fb-v1-"
MANAGEMENT_KEY_PREFIX = "sk-fb-mgmt-v1-"
POOL_BYTES = 4096


class Ids:
    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng: random.Random = rng if rng is not None else secrets.SystemRandom()
        # Generation ids take their random bytes from the OS in blocks: one getrandom()
        # call per request was 2% of the gateway's CPU. A given rng (tests) is used as is.
        self._pool = b""
        self._used = 0
        self._pooled = rng is None

    def _random_bytes(self, n: int) -> bytes:
        if not self._pooled:
            return self._rng.randbytes(n)
        assert 0 < n <= POOL_BYTES
        if self._used + n > len(self._pool):
            self._pool, self._used = os.urandom(POOL_BYTES), 0
        self._used += n
        return self._pool[self._used - n:self._used]

    def generation_id(self, now_ms: int) -> str:
        """`gen-<unix>-<20 alphanumerics>`, OpenRouter's shape. The first two of the 20 are
        the millisecond within the second, written so that they sort in time order; the
        other 18 are random (107 bits). Ids made close in time are then close in every index
        keyed by them (the generations' primary key, the entries' reference): a commit
        touches a few pages at the end of each index rather than a random page per charge,
        which cost the ledger writer a third of its time (bench/writer.py). The time is
        already in the id, so the prefix tells nothing new."""
        seconds, ms = divmod(now_ms, 1000)
        tail = self._random_bytes(18).translate(_BYTE_TO_ALNUM).decode()
        return f"gen-{seconds}-{_SORTED_ALNUM[ms // 62]}{_SORTED_ALNUM[ms % 62]}{tail}"

    def hex(self, nbytes: int) -> str:
        return self._rng.getrandbits(nbytes * 8).to_bytes(nbytes, "big").hex()

    def api_key(self) -> str:
        return API_KEY_PREFIX + self.hex(32)

    def management_key(self) -> str:
        return MANAGEMENT_KEY_PREFIX + self.hex(32)

    def random(self) -> float:
        return self._rng.random()


def key_hash(key: str) -> str:
    """A key's id: the SHA-256 hex of the whole key. Only this is ever stored."""
    return hashlib.sha256(key.encode()).hexdigest()


def key_label(key: str) -> str:
    """The masked form shown in listings: `sk-fb-v1-0e6...1c96`."""
    prefix = MANAGEMENT_KEY_PREFIX if key.startswith(MANAGEMENT_KEY_PREFIX) else API_KEY_PREFIX
    body = key[len(prefix):]
    return f"{prefix}{body[:3]}...{body[-4:]}"
