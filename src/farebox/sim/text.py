"""Deterministic output text and plausible token counts for the simulator.

Everything here is a pure function of the request, so the same request always
yields the same words: tests can compare two runs, and a gateway's
retries/fallbacks against two simulated providers produce identical content.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable
from typing import Any

import orjson

# A fixed vocabulary; one word == one output token. Plain ASCII keeps "token"
# boundaries obvious in tests and makes byte counts equal character counts.
_WORDS = """
the gateway routes a request to an upstream model which answers with tokens that are
billed against prepaid credits and every stream ends cleanly when client reads it fast
slow provider fails over retries budget ledger entry settles price per million input
output latency first byte arrives after queue drains simulated quietly honest counts
match usage reported by server while reasoning thinks briefly then writes
"""
VOCAB: tuple[str, ...] = tuple(_WORDS.split())

# Salt so the reasoning words are a different sequence from the answer words.
_REASONING_SALT = 0x5EED_7EA5


def seed_for(model: str, messages: Any) -> int:
    """A stable 64-bit seed from the model and the conversation (any JSON value;
    order-insensitive keys)."""
    blob = orjson.dumps([model, messages], option=orjson.OPT_SORT_KEYS)
    return int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "big")


def default_length(seed: int) -> int:
    """Default answer length: deterministic, 16..64 tokens inclusive."""
    return 16 + seed % 49


def words(seed: int, n: int, *, reasoning: bool = False) -> list[str]:
    """n token texts; the first has no leading space, the rest have one.

    Same seed gives a prefix-stable sequence, so capping with max_tokens yields
    a prefix of the uncapped answer.
    """
    rng = random.Random(seed ^ _REASONING_SALT if reasoning else seed)
    out = [rng.choice(VOCAB) for _ in range(n)]
    for i in range(1, n):
        out[i] = " " + out[i]
    return out


def message_text(message: Any) -> tuple[str, int]:
    """(concatenated text, number of image parts) of one message.

    Only string content and `text` parts count, which is what the gateway can
    measure too; anything else (tool call arguments, audio, files) is ignored so
    the prompt-token upper bound the gateway computes always holds.
    """
    if not isinstance(message, dict):
        return "", 0
    content = message.get("content")
    if isinstance(content, str):
        return content, 0
    texts: list[str] = []
    images = 0
    if isinstance(content, list):
        for part in content:
            if not isinstance(part, dict):
                continue
            kind = part.get("type")
            if kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif kind == "image_url":
                images += 1
    return "".join(texts), images


def count_units(units: Iterable[tuple[str, int]]) -> int:
    """3 + sum(4 + ceil(utf8_bytes/4) + 85 per image) over (text, images) units, one unit per
    message (and one for a separate system prompt): the prompt count of every chat dialect.

    Invariant relied on by the gateway's pre-authorisation:
    result <= utf8_bytes(all text) + 16*units + 64 + 6000*images.
    """
    total = 3
    for text, images in units:
        nbytes = len(text.encode("utf-8"))
        total += 4 + (nbytes + 3) // 4 + 85 * images
    return total


def count_prompt_tokens(messages: list[Any]) -> int:
    """The prompt count of OpenAI chat `messages` (see count_units)."""
    return count_units(message_text(m) for m in messages)


def count_raw_tokens(prompt: str | list[int]) -> int:
    """Tokens of a bare prompt (legacy completions, embeddings): ceil(utf8_bytes/4) for text,
    the length for an already tokenized prompt; no per-message overhead."""
    if isinstance(prompt, str):
        return (len(prompt.encode("utf-8")) + 3) // 4
    return len(prompt)
