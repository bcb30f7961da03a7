"""Sticky routing for prompt caching: once a conversation was served by an endpoint whose
cache reads are cheaper than its prompt price, its next requests go there first, so the
provider's cache is hit. OpenRouter's rules (section 4): keyed per organization, model
and conversation; 10 minutes idle; set on success only; ignored with `provider.order`.

Bounded: at most `entries_max` conversations, the least recently used forgotten first.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

import orjson

from farebox.catalog.model import Endpoint
from farebox.clock import Clock

Key = tuple[int, str, str]  # (organization id, model id, conversation key)


def conversation_key(body: dict[str, Any]) -> str | None:
    """`session_id` (the x-session-id header is copied into it), `prompt_cache_key`, or a hash
    of the first system/developer message and the first other message."""
    for name in ("session_id", "prompt_cache_key"):
        value = body.get(name)
        if isinstance(value, str) and value:
            return f"{name}:{value}"
    messages = body.get("messages")
    if not isinstance(messages, list):
        return None
    system = next((m for m in messages if isinstance(m, dict) and m.get("role") in ("system", "developer")), None)
    first = next((m for m in messages if isinstance(m, dict) and m.get("role") not in ("system", "developer")), None)
    if system is None and first is None:
        return None
    digest = hashlib.blake2b(orjson.dumps([system, first], option=orjson.OPT_SORT_KEYS), digest_size=16)
    return "hash:" + digest.hexdigest()


def caches(endpoint: Endpoint) -> bool:
    """Stickiness pays only where a cache read costs less than a fresh prompt token."""
    pricing = endpoint.pricing
    return pricing.input_cache_read is not None and pricing.input_cache_read < pricing.prompt


class Sticky:
    def __init__(self, clock: Clock, *, idle_s: float = 600.0, entries_max: int = 100_000) -> None:
        assert idle_s > 0 and entries_max > 0
        self.clock, self.idle_s, self.entries_max = clock, idle_s, entries_max
        self._entries: OrderedDict[Key, tuple[str, float]] = OrderedDict()

    def get(self, key: Key) -> str | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        endpoint_id, last = entry
        if self.clock.monotonic() - last > self.idle_s:
            del self._entries[key]
            return None
        return endpoint_id

    def served(self, key: Key, endpoint: Endpoint, cache_hit: bool) -> None:
        """A request of this conversation succeeded on `endpoint`: stick to it (or refresh).
        A conversation named by the client (`session_id`, `prompt_cache_key`) sticks from its
        first success; one recognised only by its first messages sticks once the provider
        reported a cache read, as OpenRouter does, so identical one-off prompts from
        unrelated callers are not all pinned to one endpoint."""
        if not caches(endpoint):
            return
        if key[2].startswith("hash:") and not cache_hit and key not in self._entries:
            return
        self._entries[key] = (endpoint.id, self.clock.monotonic())
        self._entries.move_to_end(key)
        while len(self._entries) > self.entries_max:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
