"""SQLite persistence: one writer connection (used only by the group-commit thread) and
one reader connection (used through `read`, off the event loop).

WAL mode lets the reader see every committed batch while the writer works. With
`synchronous=NORMAL` a commit survives a process crash (kill -9); FULL also survives
power loss at the cost of an fsync per batch.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import os
import sqlite3
import threading
from collections import defaultdict
from collections.abc import Callable
from itertools import groupby
from operator import itemgetter
from pathlib import Path
from typing import Any, TypeVar

import orjson

from farebox.ledger.entries import Entry, is_floored
from farebox.store.schema import MIGRATIONS
from farebox.store.writer import GroupWriter

T = TypeVar("T")


def connect(path: Path, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    # Checkpoints run in their own thread (store/checkpoint.py), never inside a commit a
    # response is waiting for: an automatic checkpoint's fsyncs took up to 55 ms.
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


def migrate(conn: sqlite3.Connection, through: int | None = None) -> int:
    """Apply the migrations not yet applied, up to `through` (default: all of them; an
    earlier version builds a database as an older release left it, for upgrade tests)."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER)")
    for version, sql in MIGRATIONS:
        if through is not None and version > through:
            return through
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Checked inside the write transaction, so two processes starting on the same
            # file cannot both apply a migration.
            if conn.execute("SELECT 1 FROM schema_migrations WHERE version = ?", (version,)).fetchone():
                conn.execute("COMMIT")
                continue
            for statement in _statements(sql):
                conn.execute(statement)
            conn.execute("INSERT INTO schema_migrations VALUES (?, strftime('%s','now'))", (version,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return max(v for v, _ in MIGRATIONS)


def _statements(sql: str) -> list[str]:
    """Split a migration into statements; trigger bodies contain ';' so use sqlite3's own
    completeness check."""
    out, buf = [], ""
    for line in sql.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                out.append(buf.strip())
            buf = ""
    assert not buf.strip(), buf
    return out


# The writer's page cache. Generation ids now sort by time (farebox.ids), so a batch touches
# the ends of its indexes; with the random ids before, a batch of 50,000 charges a second
# spread over several MiB of the id and reference indexes, more than SQLite's default 2 MiB
# cache, spilled dirty pages before its commit and read evicted ones back (7 KB read per
# charge, bench/writer.py). 16 MiB keeps a large batch, and any older database's random
# ids, in memory. SQLite fills the cache only as pages are used: an idle server pays nothing.
WRITER_CACHE_KIB = 16 * 1024


class DatabaseInUse(RuntimeError):
    pass


class Store:
    def __init__(self, path: Path, synchronous: str = "NORMAL") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # One process owns a database: its in-memory book is the authority on balances
        # and holds, so a second server on the same file could spend the same credit
        # twice. The lock goes with the process, however it ends.
        self._lock_fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise DatabaseInUse(f"{path} is in use by another Farebox process") from None
        self.writer_conn = connect(path, synchronous)
        self.writer_conn.execute(f"PRAGMA cache_size=-{WRITER_CACHE_KIB}")
        migrate(self.writer_conn)
        self.reader_conn = connect(path, synchronous)
        self._read_lock = threading.Lock()
        self._writer: GroupWriter | None = None

    def read_after(self, writer: GroupWriter) -> None:
        """Make every read wait until `writer` has committed what was posted to it before
        the read: charges answered from the journal are then in what a reader sees."""
        self._writer = writer

    def close(self) -> None:
        self.writer_conn.close()
        self.reader_conn.close()
        os.close(self._lock_fd)

    # -- reads -------------------------------------------------------------------
    def read_sync(self, fn: Callable[..., T], *args: Any) -> T:
        with self._read_lock:
            return fn(self.reader_conn, *args)

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        if self._writer is not None:
            await self._writer.caught_up()
        return await asyncio.to_thread(self.read_sync, fn, *args)


# -- write operations: each runs inside the writer's transaction --------------------

# Binding None costs Python's sqlite3 module an adapter lookup that fails slowly (about
# 0.6 µs per value, more than binding the rest of a row's values), and so does binding
# `bytes`; `bytearray` and the base types bind directly (CPython's `need_adapt`). The hot
# inserts below therefore leave out the columns that are usually NULL when they are, and
# hand over the record as a bytearray (stored as the same BLOB). All of it runs on the
# writer thread holding the GIL the event loop needs (bench/writer.py: 2 µs per charge).
_ENTRY_COLUMNS = "created_at, kind, from_account, to_account, amount, reference, org_id, key_hash, generation_id"
_INSERT_ENTRY = f"INSERT INTO entries ({_ENTRY_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)"
_INSERT_ENTRY_MEMO = f"INSERT INTO entries ({_ENTRY_COLUMNS}, memo) VALUES (?,?,?,?,?,?,?,?,?,?)"


def _has_memo(entry: Entry) -> bool:
    return entry.memo is not None


def post_entries(conn: sqlite3.Connection, entries: list[Entry]) -> None:
    if not entries:
        return
    # Charges have no memo. Consecutive runs with and without one go to their own statement,
    # in order: an entry's id is its place in the ledger (the lots replay by it).
    for has_memo, run in groupby(entries, _has_memo):
        if has_memo:
            conn.executemany(_INSERT_ENTRY_MEMO, [(e.created_at, e.kind, e.from_account, e.to_account, e.amount,
                                                   e.reference, e.org_id, e.key_hash, e.generation_id, e.memo)
                                                  for e in run])
        else:
            conn.executemany(_INSERT_ENTRY, [(e.created_at, e.kind, e.from_account, e.to_account, e.amount,
                                              e.reference, e.org_id, e.key_hash, e.generation_id) for e in run])
    deltas: dict[str, int] = defaultdict(int)
    for e in entries:
        deltas[e.from_account] -= e.amount
        deltas[e.to_account] += e.amount
    conn.executemany("UPDATE accounts SET balance = balance + ? WHERE id = ?",
                     [(d, a) for a, d in deltas.items() if d])


_GENERATION_COLUMNS = ("id, org_id, workspace_id, key_hash, created_at, model, provider, total_cost, charged,"
                       " tokens_prompt, tokens_completion, streamed, cancelled, finish_reason, data, endpoint_id,"
                       " reasoning_tokens, is_byok, byok_cost, settled_at")
_INSERT_GENERATION = f"INSERT INTO generations ({_GENERATION_COLUMNS}) VALUES ({', '.join('?' * 20)})"
_INSERT_GENERATION_PROJECT = (f"INSERT INTO generations ({_GENERATION_COLUMNS}, project_id)"
                              f" VALUES ({', '.join('?' * 21)})")


# -- the stored generation record ----------------------------------------------------
# A record (generation.generation_record) has the keys of RECORD_KEYS, in that order. Twenty
# are also columns (_COLUMN_KEYS); the `data` BLOB of a record of exactly that shape holds
# only the other values, as a JSON array in _DATA_KEYS' order after a layout number:
# 0.45 KB instead of the whole record's 1.3 KB, which the writer serialized, copied into its
# pages and wrote to the WAL for every charge, with the key names and the column values
# again. `generation_from_row` reads either back. A record of any other shape (the tests'
# partial records, a future key) is stored whole as a JSON object, as every record was
# before, and reads back as stored. The values are picked with itemgetter (in C): the
# writer thread holds the GIL the event loop needs, and a dict comprehension over the keys
# cost more than the serializing it saved.
RECORD_KEYS = (
    "id", "org_id", "workspace_id", "key_hash", "project_id", "settled_at_ms", "created_at_ms", "model",
    "provider_name", "endpoint_id", "upstream_id", "streamed", "cancelled", "latency_ms", "generation_time_ms",
    "finish_reason", "native_finish_reason", "tokens_prompt", "tokens_completion", "native_tokens_reasoning",
    "native_tokens_cached", "native_tokens_cache_write", "usage_estimated", "num_media_prompt", "total_cost_nanos",
    "charged_nanos", "overrun_nanos", "hold_nanos", "cost_items_attos", "cache_discount_attos", "provider_responses",
    "http_referer", "app_title", "user_agent", "external_user", "session_id", "requested_model", "api_type", "is_byok",
    "byok_cost_nanos", "logged",
)
# In _INSERT_GENERATION's column order (project_id last: _INSERT_GENERATION_PROJECT).
_COLUMN_KEYS = ("id", "org_id", "workspace_id", "key_hash", "created_at_ms", "model", "provider_name",
                "total_cost_nanos", "charged_nanos", "tokens_prompt", "tokens_completion", "streamed", "cancelled",
                "finish_reason", "endpoint_id", "native_tokens_reasoning", "is_byok", "byok_cost_nanos",
                "settled_at_ms", "project_id")
# Layout 1 of the short form. Changing it needs a new layout number: stored rows keep theirs.
_DATA_LAYOUT = 1
_DATA_KEYS = tuple(k for k in RECORD_KEYS if k not in _COLUMN_KEYS)
_columns_of = itemgetter(*_COLUMN_KEYS)
_data_of = itemgetter(*_DATA_KEYS)
# The columns, then data, in the order generation_from_row unpacks them.
SELECT_GENERATION = ("SELECT id, org_id, workspace_id, key_hash, created_at, model, provider, total_cost, charged,"
                     " tokens_prompt, tokens_completion, streamed, cancelled, finish_reason, endpoint_id,"
                     " reasoning_tokens, is_byok, byok_cost, settled_at, project_id, data FROM generations")


def _generation_row(g: dict[str, Any]) -> tuple[Any, ...]:
    """The columns of _INSERT_GENERATION; with a project, _INSERT_GENERATION_PROJECT takes
    its id after them."""
    if len(g) == len(RECORD_KEYS):
        try:
            # Both pick without a KeyError and there are no other keys: the record has
            # exactly RECORD_KEYS.
            (gid, org_id, workspace_id, key_hash, created_at, model, provider, total_cost, charged, tokens_prompt,
             tokens_completion, streamed, cancelled, finish_reason, endpoint_id, reasoning, is_byok, byok_cost,
             settled_at, _) = _columns_of(g)
            data = _data_of(g)
        except KeyError:
            pass
        else:
            # The columns must give back exactly these values: the flags are stored as 0/1
            # and read back as bools, and the reasoning count is stored as 0 when None.
            if type(streamed) is bool and type(cancelled) is bool and type(is_byok) is bool and type(reasoning) is int:
                return (gid, org_id, workspace_id, key_hash, created_at, model, provider, total_cost, charged,
                        tokens_prompt, tokens_completion, int(streamed), int(cancelled), finish_reason,
                        bytearray(orjson.dumps((_DATA_LAYOUT, *data))), endpoint_id, reasoning, int(is_byok),
                        byok_cost, settled_at)
    return (g["id"], g["org_id"], g["workspace_id"], g["key_hash"], g["created_at_ms"], g["model"],
            g["provider_name"], g["total_cost_nanos"], g["charged_nanos"], g["tokens_prompt"],
            g["tokens_completion"], int(g["streamed"]), int(g["cancelled"]), g["finish_reason"],
            bytearray(orjson.dumps(g)), g.get("endpoint_id"), g.get("native_tokens_reasoning") or 0,
            int(g.get("is_byok", False)), g.get("byok_cost_nanos", 0), g.get("settled_at_ms"))


def generation_from_row(row: tuple[Any, ...]) -> dict[str, Any]:
    """A record read with SELECT_GENERATION as it was stored: what orjson.loads(orjson.dumps(
    record)) gives, its keys in the same order."""
    data = orjson.loads(row[20])
    if isinstance(data, dict):   # stored whole
        return data
    if data[0] != _DATA_LAYOUT or len(data) != len(_DATA_KEYS) + 1:
        raise ValueError(f"generation {row[0]}: unknown record layout {data[0]!r}")
    values = dict(zip(_DATA_KEYS, data[1:], strict=True))
    values.update(zip(_COLUMN_KEYS, row[:20], strict=True))
    for flag in ("streamed", "cancelled", "is_byok"):
        values[flag] = bool(values[flag])
    return {k: values[k] for k in RECORD_KEYS}


def _has_project(g: dict[str, Any]) -> bool:
    return g.get("project_id") is not None


def insert_generations(conn: sqlite3.Connection, generations: list[dict[str, Any]]) -> None:
    """Generation records; most name no project, and leave its column out."""
    for has_project, run in groupby(generations, _has_project):
        if has_project:
            conn.executemany(_INSERT_GENERATION_PROJECT, [(*_generation_row(g), g["project_id"]) for g in run])
        else:
            conn.executemany(_INSERT_GENERATION, [_generation_row(g) for g in run])


def insert_generation(conn: sqlite3.Connection, g: dict[str, Any]) -> None:
    insert_generations(conn, [g])


def settle(conn: sqlite3.Connection, entries: list[Entry], generation: dict[str, Any]) -> None:
    """A request's charge and its generation record, in the same transaction."""
    post_entries(conn, entries)
    insert_generation(conn, generation)


_INSERT_CONTENT = "INSERT INTO generation_content (id, org_id, created_at, data) VALUES (?, ?, ?, ?)"


def _content_row(g: dict[str, Any], content: dict[str, Any]) -> tuple[Any, ...]:
    return (g["id"], g["org_id"], g["created_at_ms"], orjson.dumps(content))


class SettleOp:
    """A settlement for the group-commit writer. Consecutive settlements in a batch are
    written together (`run_many`): one insert of all their entries, one of all their
    generation records (a few, where some name a memo or a project and others not), and
    one balance update per account touched, instead of one of each per request. `content` (prompt and completion) is written only for organizations
    that opted in to prompt logging."""

    __slots__ = ("content", "entries", "generation")

    def __init__(self, entries: list[Entry], generation: dict[str, Any], content: dict[str, Any] | None = None) -> None:
        self.entries, self.generation, self.content = entries, generation, content

    def __call__(self, conn: sqlite3.Connection) -> None:
        settle(conn, self.entries, self.generation)
        if self.content is not None:
            conn.execute(_INSERT_CONTENT, _content_row(self.generation, self.content))

    @staticmethod
    def run_many(conn: sqlite3.Connection, ops: list[SettleOp]) -> list[None]:
        post_entries(conn, [e for op in ops for e in op.entries])
        insert_generations(conn, [op.generation for op in ops])
        contents = [_content_row(op.generation, op.content) for op in ops if op.content is not None]
        if contents:
            conn.executemany(_INSERT_CONTENT, contents)
        return [None] * len(ops)


def grant(conn: sqlite3.Connection, entry: Entry, expires_at_ms: int | None = None) -> tuple[bool, Entry]:
    """Post a grant (and its credit lot) unless its reference was seen before; return (new,
    the stored entry with its id, which is also the lot's id)."""
    row = conn.execute(
        "SELECT kind, from_account, to_account, amount, reference, created_at, org_id, memo, id"
        " FROM entries WHERE reference = ?", (entry.reference,)).fetchone()
    if row is not None:
        kind, src, dst, amount, ref, created, org_id, memo, entry_id = row
        return False, Entry(kind, src, dst, amount, ref, created, org_id, memo=memo, id=entry_id)
    post_entries(conn, [entry])
    entry_id = conn.execute("SELECT id FROM entries WHERE reference = ?", (entry.reference,)).fetchone()[0]
    conn.execute("INSERT INTO lots (entry_id, org_id, kind, expires_at) VALUES (?, ?, ?, ?)",
                 (entry_id, entry.org_id, entry.kind, expires_at_ms))
    return True, dataclasses.replace(entry, id=entry_id)


def purchase(conn: sqlite3.Connection, purchase_id: str, org_id: int, method: str, credits: Entry, fee: Entry | None,
             bonus: Entry | None, expires_at_ms: int | None, external_reference: str | None,
             invoice: dict[str, Any] | None = None, tax: Entry | None = None) -> tuple[bool, list[Entry]]:
    """Record a paid purchase and post its entries and lots, and issue its invoice (the next
    number), unless `purchase_id` was seen before; return (new, the stored credit entries
    with their ids: credits, then bonus)."""
    row = conn.execute("SELECT credits, fee, bonus, method FROM purchases WHERE id = ?", (purchase_id,)).fetchone()
    if row is not None:
        stored = [Entry(k, s, d, a, r, c, o, memo=m, id=i) for k, s, d, a, r, c, o, m, i in conn.execute(
            "SELECT kind, from_account, to_account, amount, reference, created_at, org_id, memo, id FROM entries"
            " WHERE reference IN (?, ?) ORDER BY id", (credits.reference, f"{credits.reference}:bonus"))]
        return False, stored
    entries = [e for e in (credits, fee, bonus, tax) if e is not None]
    post_entries(conn, entries)
    conn.execute("INSERT INTO purchases (id, org_id, method, credits, fee, bonus, status, external_reference,"
                 " created_at) VALUES (?, ?, ?, ?, ?, ?, 'paid', ?, ?)",
                 (purchase_id, org_id, method, credits.amount, fee.amount if fee else 0, bonus.amount if bonus else 0,
                  external_reference, credits.created_at))
    stored = []
    for entry in (credits, bonus):
        if entry is None:
            continue
        entry_id = conn.execute("SELECT id FROM entries WHERE reference = ?", (entry.reference,)).fetchone()[0]
        conn.execute("INSERT INTO lots (entry_id, org_id, kind, expires_at, purchase_id) VALUES (?, ?, ?, ?, ?)",
                     (entry_id, org_id, entry.kind, expires_at_ms, purchase_id))
        stored.append(dataclasses.replace(entry, id=entry_id))
    if invoice is not None:
        conn.execute("INSERT INTO invoices (number, org_id, purchase_id, issued_at, data)"
                     " SELECT COALESCE(MAX(number), 0) + 1, ?, ?, ?, ? FROM invoices",
                     (org_id, purchase_id, credits.created_at, orjson.dumps(invoice)))
    return True, stored


def _stored_id(conn: sqlite3.Connection, reference: str) -> int:
    return conn.execute("SELECT id FROM entries WHERE reference = ?", (reference,)).fetchone()[0]


def restore_refund(conn: sqlite3.Connection, entries: list[Entry], kinds: list[str], expires_at_ms: int | None,
                   purchase_id: str, record: Callable[[sqlite3.Connection], None]) -> list[Entry]:
    """Credit a failed refund back as lots of its purchase; returns the stored entries."""
    post_entries(conn, entries)
    stored = []
    for entry, kind in zip(entries, kinds, strict=True):
        entry_id = _stored_id(conn, entry.reference)
        conn.execute("INSERT INTO lots (entry_id, org_id, kind, expires_at, purchase_id) VALUES (?, ?, ?, ?, ?)",
                     (entry_id, entry.org_id, kind, expires_at_ms, purchase_id))
        stored.append(dataclasses.replace(entry, id=entry_id))
    record(conn)
    return stored


def transfer(conn: sqlite3.Connection, entries: list[Entry], lots: list[tuple[str, int | None, str | None]],
             reference: str, created_by: str | None) -> list[int]:
    """A transfer between two wallets of one organization: its entries, the lot each one
    makes in the receiving wallet (kind, expiry, purchase), and its row. Returns the entries' ids."""
    post_entries(conn, entries)
    ids = []
    for entry, (kind, expires, purchase) in zip(entries, lots, strict=True):
        entry_id = _stored_id(conn, entry.reference)
        conn.execute("INSERT INTO lots (entry_id, org_id, kind, expires_at, purchase_id) VALUES (?, ?, ?, ?, ?)",
                     (entry_id, entry.org_id, kind, expires, purchase))
        ids.append(entry_id)
    first = entries[0]
    conn.execute("INSERT INTO transfers (reference, org_id, from_account, to_account, amount, memo, created_by,"
                 " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                 (reference, first.org_id, first.from_account, first.to_account, sum(e.amount for e in entries),
                  first.memo, created_by, first.created_at))
    return ids


def mark_visible(conn: sqlite3.Connection, lot_ids: list[int]) -> int:
    """Record that the lots `lot_ids` joined the in-memory book just now: their
    `visible_after` becomes the highest entry id stored so far. The writer runs operations in
    submission order, so every entry applied in memory before the lots appeared (submitted
    before this) has an id at or below it, and every entry applied after has a higher one.
    A lot already marked keeps its mark. Returns the id recorded."""
    (top,) = conn.execute("SELECT MAX(id) FROM entries").fetchone()
    conn.executemany("UPDATE lots SET visible_after = ? WHERE entry_id = ? AND visible_after IS NULL",
                     [(top, lot_id) for lot_id in lot_ids])
    return int(top)


def wallet_history(conn: sqlite3.Connection) -> tuple[Any, dict[int, tuple[str, int | None, str | None]],
                                                      dict[int, int]]:
    """Every entry into or out of a wallet in id order, the stored lots (kind, expiry,
    purchase) and, for the lots marked with it, the entry id after which each became
    spendable: what `ledger.lots.replay` rebuilds the lots from."""
    entries = conn.execute(
        "SELECT id, from_account, to_account, amount, created_at, reference FROM entries"
        " WHERE to_account LIKE '%:wallet' OR from_account LIKE '%:wallet' ORDER BY id")
    stored: dict[int, tuple[str, int | None, str | None]] = {}
    visible: dict[int, int] = {}
    for eid, kind, expires, purchase, after in conn.execute(
            "SELECT entry_id, kind, expires_at, purchase_id, visible_after FROM lots"):
        stored[eid] = (kind, expires, purchase)
        if after is not None:
            visible[eid] = after
    return entries, stored, visible


def ensure_account(conn: sqlite3.Connection, account: str, org_id: int | None, kind: str) -> None:
    conn.execute("INSERT OR IGNORE INTO accounts (id, org_id, kind, floored) VALUES (?,?,?,?)",
                 (account, org_id, kind, int(is_floored(account))))
