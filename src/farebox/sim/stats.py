"""Upstream-side counters of the simulator, read by tests through GET /_sim/stats."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass


@dataclass(slots=True)
class Stats:
    """Counters over every API request (chat, messages, generateContent, completions, embeddings)."""

    requests: int = 0
    streams_started: int = 0
    streams_completed: int = 0
    streams_disconnected: int = 0
    streams_cut: int = 0
    streams_failed: int = 0
    active_streams: int = 0
    requests_disconnected: int = 0
    active_requests: int = 0

    def begin(self, streaming: bool) -> None:
        self.active_requests += 1
        if streaming:
            self.streams_started += 1
            self.active_streams += 1

    def end(self, streaming: bool, outcome: str) -> None:
        """outcome: "completed", "cut" (cut_after dropped it), "failed" (fail_after ended it with
        an in-stream error) or "disconnected" (the client left)."""
        assert outcome in ("completed", "cut", "failed", "disconnected"), outcome
        self.active_requests -= 1
        if outcome == "disconnected":
            self.requests_disconnected += 1
        if streaming:
            self.active_streams -= 1
            if outcome == "completed":
                self.streams_completed += 1
            elif outcome == "cut":
                self.streams_cut += 1
            elif outcome == "failed":
                self.streams_failed += 1
            else:
                self.streams_disconnected += 1

    def reset(self) -> None:
        # Gauges describe live connections; zeroing them would drive them negative
        # when those connections end, so only the cumulative counters reset.
        for name in asdict(self):
            if not name.startswith("active_"):
                setattr(self, name, 0)


INVALID_KEY_PREFIX = "sk-sim-invalid"  # a key the simulated provider rejects as not valid


def key_fingerprint(key: str) -> str:
    """How GET /_sim/keys names a key: the first 16 hex digits of its SHA-256, so a test can
    tell which key reached the upstream without the simulator echoing any key."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class KeyCounts:
    """Requests per API key (by fingerprint), read by tests through GET /_sim/keys. Every
    request that carries a key counts, also one refused because its key is invalid."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def count(self, key: str) -> None:
        fingerprint = key_fingerprint(key)
        self.counts[fingerprint] = self.counts.get(fingerprint, 0) + 1

    def reset(self) -> None:
        self.counts.clear()
