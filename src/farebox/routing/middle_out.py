"""OpenRouter's "middle-out" context compression: when a prompt is too long for an
endpoint, drop messages (and, failing that, text) from the middle of the conversation,
where they matter least. Pure: no I/O.

Sizes are `measure_prompt(...).estimate()` (about four bytes a token), the same estimate
the caller checks an endpoint's context against, so "fits" means the same thing to both.
"""

from __future__ import annotations

from typing import Any

from farebox.errors import BadRequest
from farebox.ledger.pricing import PromptSize, measure_prompt

DEFAULT_CONTEXT_MAX = 8192      # endpoints with a context this small compress unless told not to
ENGINE = "middle-out"
PLUGIN_ID = "context-compression"
# What replaces the middle of a truncated text: visible to the model, so it can tell that
# something was cut, and short (5 UTF-8 bytes).
MARKER = "\n…\n"
_MARKER_BYTES = len(MARKER.encode())
_SYSTEM_ROLES = ("system", "developer")


def wants_middle_out(body: dict[str, Any], context_length: int) -> bool:
    """Whether the request asks for compression on an endpoint of `context_length` tokens.

    The current form (`plugins: [{"id": "context-compression", "engine": "middle-out"}]`,
    `"enabled": false` to opt out) wins over the legacy one (`transforms: ["middle-out"]`,
    `[]` to opt out); with neither, small endpoints compress (OpenRouter's default)."""
    for i, plugin in enumerate(body.get("plugins") or ()):
        if not isinstance(plugin, dict) or plugin.get("id") != PLUGIN_ID:
            continue
        if plugin.get("enabled") is False:
            return False
        engine = plugin.get("engine")
        if engine not in (None, ENGINE):
            raise BadRequest(f"plugins[{i}].engine: only \"{ENGINE}\" context compression is supported, "
                             f"got {engine!r}", field=f"plugins[{i}].engine")
        return True
    transforms = body.get("transforms")
    if isinstance(transforms, list):
        return ENGINE in transforms
    return context_length <= DEFAULT_CONTEXT_MAX


def compress(messages: list[dict[str, Any]], budget_tokens: int, *,
             max_messages: int | None = None) -> list[dict[str, Any]]:
    """`messages` cut down, from the middle, until their estimate is at most `budget_tokens`
    and (when given) there are at most `max_messages` of them.

    Messages travel in units that go or stay together: a message and the tool messages
    right after it (an assistant's tool calls and their results). Always kept: the leading
    system/developer messages, the first user message and the last message (with their
    units). The others are dropped middle first: what remains is the protected units plus
    a run of units from the start and one from the end, of equal length (the start's one
    longer when odd), so too many messages become half from the start, half from the end.

    When the kept minimum is still too long, text is truncated: largest text first, each
    keeping its head and tail around MARKER, until the estimate fits. If nothing fits, the
    result is the smallest that can be built (every text cut to MARKER), which the caller
    sees does not fit. Returns `messages` itself when it already fits; never mutates it.
    """
    def fits(size: PromptSize) -> bool:
        return size.estimate() <= budget_tokens and (max_messages is None or size.messages <= max_messages)

    sizes = [measure_prompt({"messages": [m]}) for m in messages]
    total = _sum(sizes)
    if fits(total):
        return messages
    units = _units(messages)
    protected = _protected(messages, units)
    dropped: set[int] = set()
    for unit in _middle_first(len(units)):
        if unit in protected:
            continue
        dropped.add(unit)
        total = _minus(total, [sizes[i] for i in units[unit]])
        if fits(total):
            break
    kept = [messages[i] for u, indices in enumerate(units) if u not in dropped for i in indices]
    if total.estimate() <= budget_tokens:
        return kept
    return _truncate(kept, total, budget_tokens)


def _units(messages: list[dict[str, Any]]) -> list[list[int]]:
    """Message indices grouped so that a tool message stays with the message before it."""
    units: list[list[int]] = []
    for i, message in enumerate(messages):
        if message.get("role") == "tool" and units:
            units[-1].append(i)
        else:
            units.append([i])
    return units


def _protected(messages: list[dict[str, Any]], units: list[list[int]]) -> set[int]:
    """The units never dropped: leading system/developer ones, the first user one, the last."""
    keep: set[int] = set()
    for u, indices in enumerate(units):
        if messages[indices[0]].get("role") not in _SYSTEM_ROLES:
            break
        keep.add(u)
    first_user = next((u for u, indices in enumerate(units)
                       if any(messages[i].get("role") == "user" for i in indices)), None)
    if first_user is not None:
        keep.add(first_user)
    if units:
        keep.add(len(units) - 1)
    return keep


def _middle_first(n: int) -> list[int]:
    """Positions 0..n-1 in the order to drop them so that the kept ones are always a head
    and a tail of equal size (the head one larger when odd): for 4, [2, 1, 3, 0]."""
    head, tail = (n + 1) // 2, n // 2
    order = []
    while head or tail:
        if head > tail:
            head -= 1
            order.append(head)
        else:
            tail -= 1
            order.append(n - 1 - tail)
    return order


def _sum(sizes: list[PromptSize]) -> PromptSize:
    return PromptSize(text_bytes=sum(s.text_bytes for s in sizes), messages=sum(s.messages for s in sizes),
                      images=sum(s.images for s in sizes))


def _minus(total: PromptSize, sizes: list[PromptSize]) -> PromptSize:
    part = _sum(sizes)
    return PromptSize(text_bytes=total.text_bytes - part.text_bytes, messages=total.messages - part.messages,
                      images=total.images - part.images)


def _truncate(messages: list[dict[str, Any]], total: PromptSize, budget_tokens: int) -> list[dict[str, Any]]:
    """Cut the middle out of texts, largest first, until the estimate fits `budget_tokens`
    (or every text is down to MARKER). Copies what it changes."""
    # estimate = 3 + ceil(bytes / 4) + 4 * messages + 85 * images: solve for the bytes allowed.
    allowed_bytes = 4 * (budget_tokens - PromptSize(0, total.messages, total.images).estimate())
    excess = total.text_bytes - allowed_bytes
    assert excess > 0, (total, budget_tokens)
    slots = sorted(_text_slots(messages), key=lambda slot: -slot[2])
    out = list(messages)
    for position, part, length in slots:
        if excess <= 0:
            break
        spare = length - _MARKER_BYTES  # the most this text can give: all but the marker's size
        if spare <= 0:
            continue
        cut = min(spare, excess)
        out[position] = _with_text(out[position], part, spare - cut)
        excess -= cut
    return out


def _text_slots(messages: list[dict[str, Any]]) -> list[tuple[int, int | None, int]]:
    """(message position, content part index or None for string content, UTF-8 bytes) of
    every text that can be cut. Tool call arguments and names are not: they must stay valid."""
    slots: list[tuple[int, int | None, int]] = []
    for position, message in enumerate(messages):
        content = message.get("content")
        if isinstance(content, str):
            slots.append((position, None, len(content.encode())))
        elif isinstance(content, list):
            for j, part in enumerate(content):
                if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                    slots.append((position, j, len(part["text"].encode())))
    return slots


def _with_text(message: dict[str, Any], part: int | None, keep_bytes: int) -> dict[str, Any]:
    copy = dict(message)
    if part is None:
        copy["content"] = _cut(message["content"], keep_bytes)
    else:
        parts = list(message["content"])
        parts[part] = {**parts[part], "text": _cut(parts[part]["text"], keep_bytes)}
        copy["content"] = parts
    return copy


def _cut(text: str, keep_bytes: int) -> str:
    """The first and last `keep_bytes` / 2 bytes of `text` around MARKER, at character
    boundaries (a character split by the cut is dropped, so the result is never longer)."""
    data = text.encode()
    assert 0 <= keep_bytes < len(data), (keep_bytes, len(data))
    head_bytes = (keep_bytes + 1) // 2
    tail_bytes = keep_bytes - head_bytes
    head = data[:head_bytes].decode(errors="ignore")
    tail = data[len(data) - tail_bytes:].decode(errors="ignore") if tail_bytes else ""
    return head + MARKER + tail
