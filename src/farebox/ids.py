"""The only source of randomness: generation ids, API keys, hold ids.

Keys must be unguessable, so the default source is the OS's CSPRNG; tests that need
repeatable ids pass a seeded `random.Random`.
"""

from __future__ import annotations

import hashlib
import random
import secrets
import string

_ALNUM = string.ascii_letters + string.digits
# byte -> alphanumeric, so 20 random bytes become 20 characters in one translate. (The
# slight skew towards the first 8 characters does not matter for ids.)
_BYTE_TO_ALNUM = bytes((_ALNUM * 5)[:256], "ascii")
API_KEY_PREFIX = "sk-fb-v1-"
MANAGEMENT_KEY_PREFIX = "sk-fb-mgmt-v1-"


class Ids:
    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng: random.Random = rng if rng is not None else secrets.SystemRandom()

    def generation_id(self, unix_seconds: int) -> str:
        """`gen-<unix>-<20 alphanumerics>`, OpenRouter's shape."""
        tail = self._rng.randbytes(20).translate(_BYTE_TO_ALNUM).decode()
        return f"gen-{unix_seconds}-{tail}"

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
