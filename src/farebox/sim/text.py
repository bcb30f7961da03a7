"""Deterministic output text and plausible token counts for the simulator.

Everything here is a pure function of the request, so the same (model, messages)
always yields the same words: tests can compare two runs, and a gateway's
retries/fallbacks against two simulated providers produce identical content.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:  # controls.py imports this module at runtime
    from farebox.sim.controls import Controls

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


def seed_for(model: str, messages: list[Any]) -> int:
    """A stable 64-bit seed from the model and the messages (order-insensitive keys)."""
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


def count_prompt_tokens(messages: list[Any]) -> int:
    """3 + sum(4 + ceil(utf8_bytes/4) + 85 per image) over the messages.

    Invariant relied on by the gateway's pre-authorisation:
    result <= utf8_bytes(all text) + 16*len(messages) + 64 + 6000*images.
    """
    total = 3
    for message in messages:
        text, images = message_text(message)
        nbytes = len(text.encode("utf-8"))
        total += 4 + (nbytes + 3) // 4 + 85 * images
    return total


@dataclass(slots=True)
class Generation:
    """What the simulated model produces for one request, decided up front."""

    reasoning: list[str]
    content: list[str]
    finish_reason: str
    usage: dict[str, Any] | None  # None when the `usage=false` control is set


def generate(model: str, messages: list[Any], cap: int | None, ctl: Controls) -> Generation:
    """Apply output_tokens/reasoning_tokens and the max-tokens cap; count usage."""
    seed = seed_for(model, messages)
    want_out = default_length(seed) if ctl.output_tokens is None else ctl.output_tokens
    want_reason = ctl.reasoning_tokens
    n_reason, n_out = want_reason, want_out
    if cap is not None:
        # Like OpenAI's reasoning models, the cap covers reasoning + visible output.
        n_reason = min(want_reason, cap)
        n_out = min(want_out, cap - n_reason)
    finish = "length" if n_reason + n_out < want_reason + want_out else "stop"
    usage = None
    if ctl.usage:
        prompt = count_prompt_tokens(messages) if ctl.prompt_tokens is None else ctl.prompt_tokens
        completion = n_reason + n_out
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": min(ctl.cached_tokens, prompt), "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": n_reason,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }
    return Generation(
        reasoning=words(seed, n_reason, reasoning=True),
        content=words(seed, n_out),
        finish_reason=finish,
        usage=usage,
    )
