"""A fast reader for the plain TOML catalogs are written in, checked against tomllib.

tomllib reads a 1,000-model catalog (1.6 MB) in about 0.4 s, most of a server's start-up
(issue 7: ready within 1 s). Catalogs use a small part of TOML: `[table]` and `[[array]]`
headers with bare keys, and `key = value` lines whose values are strings, integers,
booleans or one-line arrays of strings. `loads` reads that subset line by line with one
regular expression, about eight times faster. Anything else it hands to tomllib: a value
outside the subset (a float, an inline table, a string with escapes...) alone, and the
whole document on any line or structure it does not know (dotted or quoted keys,
multi-line values, a table defined twice, a duplicate key...). So the result, and every
error, is exactly tomllib's; tests/catalog/test_toml_reader.py compares the two on generated
documents.
"""

from __future__ import annotations

import re
import tomllib
from typing import Any

_WS = r"[ \t]*"
_COMMENT = r"(?:#[^\x00-\x08\x0a-\x1f\x7f]*)?"      # TOML forbids control characters but tab in comments
_BARE = r"[A-Za-z0-9_-]+"
_PATH = rf"{_BARE}(?:\.{_BARE})*"
_CHARS = r'[^"\\\x00-\x08\x0a-\x1f\x7f]*'                  # of a basic string without escapes
_STRING = rf'"{_CHARS}"'
_STRINGS = rf"\[(?:{_WS}{_STRING}{_WS},)*{_WS}(?:{_STRING}{_WS})?\]"  # one line, trailing comma allowed
_LINE = re.compile(
    rf"{_WS}(?:"
    rf"(?P<key>{_BARE}){_WS}={_WS}(?:"
    rf'"(?P<str>{_CHARS})"|(?P<int>-?(?:0|[1-9][0-9]*))|(?P<bool>true|false)|(?P<strs>{_STRINGS})'
    rf"|(?P<other>[^#\s][^\n]*?)"                     # any other value: tomllib reads it alone
    rf")"
    rf"|\[\[{_WS}(?P<array>{_PATH}){_WS}\]\]"
    rf"|\[{_WS}(?P<table>{_PATH}){_WS}\]"
    rf")?{_WS}{_COMMENT}(?:\n|\Z)"                  # one line: nothing in it matches a newline
)
_ITEM = re.compile(f'"({_CHARS})"')
_HEADERS = frozenset({"table", "array"})


class _Outside(Exception):
    """The document is outside the subset: tomllib reads it instead."""


def loads(text: str) -> dict[str, Any]:
    """tomllib.loads(text), faster for catalog-shaped documents."""
    try:
        return _Reader().read(text)
    except _Outside:
        return tomllib.loads(text)


class _Reader:
    def __init__(self) -> None:
        self.root: dict[str, Any] = {}
        # Lists made by [[headers]], which later [[headers]] extend. Lists and tables made by
        # values cannot be extended by headers (TOML: arrays and inline tables are closed).
        self.arrays: set[int] = set()
        self.closed: set[int] = set()

    def read(self, text: str) -> dict[str, Any]:
        if "\r" in text:
            text = text.replace("\r\n", "\n")
            if "\r" in text:
                raise _Outside        # a lone CR: tomllib's error
        current = self.root
        match = _LINE.match
        # Line by line, matched in place (splitting first would copy the text line by line);
        # after a match, `pos` is past its newline.
        pos, end = 0, len(text)
        while pos < end:
            m = match(text, pos)
            if m is None:
                raise _Outside
            pos = m.end()
            # The last group that matched names the line's kind: the value's group on a
            # key = value line (`key` closes before it), a header's, or none (blank, comment).
            kind = m.lastgroup
            if kind is None:
                continue
            if kind not in _HEADERS:
                key, value = m.group("key", kind)
                if key in current:
                    raise _Outside    # a duplicate key: tomllib's error
                if kind == "str":
                    current[key] = value
                elif kind == "int":
                    current[key] = int(value)
                elif kind == "strs":
                    items = _ITEM.findall(value)
                    self.closed.add(id(items))
                    current[key] = items
                elif kind == "bool":
                    current[key] = value == "true"
                else:
                    current[key] = self._value(value)
            elif kind == "table":
                parent, last = self._parent(m["table"])
                if last in parent:
                    raise _Outside    # defined twice, or first made implicitly: tomllib decides
                current = parent[last] = {}
            else:
                parent, last = self._parent(m["array"])
                array = parent.get(last)
                if array is None:
                    array = parent[last] = []
                    self.arrays.add(id(array))
                elif id(array) not in self.arrays:
                    raise _Outside
                current = {}
                array.append(current)
        return self.root

    def _value(self, text: str) -> Any:
        """One value (with any trailing comment) read by tomllib, or _Outside if it does
        not end on this line."""
        try:
            value = tomllib.loads("v = " + text)["v"]
        except tomllib.TOMLDecodeError:
            raise _Outside from None
        self._close(value)
        return value

    def _close(self, value: Any) -> None:
        if isinstance(value, dict | list):
            self.closed.add(id(value))
            for item in value.values() if isinstance(value, dict) else value:
                self._close(item)

    def _parent(self, path: str) -> tuple[dict[str, Any], str]:
        """The table a header's last key goes into, making missing tables on the way; the
        last element of an array of tables stands for the array."""
        *walk, last = path.split(".")
        table = self.root
        for key in walk:
            child = table.get(key)
            if child is None:
                child = table[key] = {}
            elif isinstance(child, list) and id(child) in self.arrays:
                child = child[-1]
            if not isinstance(child, dict) or id(child) in self.closed:
                raise _Outside
            table = child
        return table, last
