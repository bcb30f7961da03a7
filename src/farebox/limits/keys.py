"""Optional per-key rate limits: requests per minute and tokens per minute (the keys table's
rate_limit_rpm and rate_limit_tpm; None means no limit).

Requests are counted when checked. Tokens are only known once a request has finished, so
they are added afterwards (`used`) and a request is refused while the tokens already used
in the current minute have reached the limit: the last request of a minute may overshoot it,
as with any after-the-fact count. Tokens count in the minute the request finished.
"""

from __future__ import annotations

from farebox.limits.base import Limiter
from farebox.limits.refusal import rate_limited

LIMIT_SOURCE = "key"


class KeyRates:
    def __init__(self, limiter: Limiter) -> None:
        self._limiter = limiter

    def check(self, key_hash: str, rpm: int | None, tpm: int | None, now_ms: int) -> None:
        """Count one request of the key, or raise RateLimited without counting it."""
        if tpm is not None:
            tokens = self._limiter.peek(self._tokens(key_hash), tpm, "minute", now_ms)
            if not tokens.allowed:
                raise rate_limited(f"Rate limit exceeded: key tokens per minute ({tpm})", tokens,
                                   LIMIT_SOURCE, now_ms)
        if rpm is not None:
            requests = self._limiter.hit(self._requests(key_hash), rpm, "minute", now_ms)
            if not requests.allowed:
                raise rate_limited(f"Rate limit exceeded: key requests per minute ({rpm})", requests,
                                   LIMIT_SOURCE, now_ms)

    def used(self, key_hash: str, tokens: int, now_ms: int) -> None:
        """Add the tokens a finished request used (prompt plus completion)."""
        if tokens > 0:
            self._limiter.add(self._tokens(key_hash), "minute", now_ms, tokens)

    @staticmethod
    def _requests(key_hash: str) -> str:
        return f"key-requests:{key_hash}"

    @staticmethod
    def _tokens(key_hash: str) -> str:
        return f"key-tokens:{key_hash}"
