"""The stored generation record (issue 7, the ledger writer): a record of the gateway's shape
keeps in its `data` BLOB only what is not a column, as a short JSON array, and reads back
exactly as the whole record did; any other record is stored whole, as before. New databases
use 16 KiB pages; an existing one keeps its own."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from farebox.api.wire import generation_wire
from farebox.ledger.entries import GRANTS, REVENUE, Entry, wallet
from farebox.ledger.verify import verify_store
from farebox.store import sqlite as ops
from farebox.store.sqlite import Store
from farebox.store.writer import GroupWriter
from tests.e2e.procs import Gateway, http, start_sim

W = wallet(1)


def full_record(gid: str, **changes: Any) -> dict[str, Any]:
    """A record with every key `generation.generation_record` writes, in its order, with
    values of every kind (None, bools, nested objects, non-ASCII text, amounts beyond 64 bits)."""
    record = {
        "id": gid, "org_id": 1, "workspace_id": 3, "key_hash": "ab" * 32, "project_id": None,
        "settled_at_ms": 1_700_000_000_123, "created_at_ms": 1_700_000_000_001, "model": "acme/model",
        "provider_name": "Acme", "endpoint_id": "acme/model-v2", "upstream_id": "chatcmpl-1", "streamed": True,
        "cancelled": False, "latency_ms": 812, "generation_time_ms": 640, "finish_reason": "stop",
        "native_finish_reason": "end_turn", "tokens_prompt": 1200, "tokens_completion": 300,
        "native_tokens_reasoning": 120, "native_tokens_cached": 1000, "native_tokens_cache_write": 0,
        "usage_estimated": False, "num_media_prompt": 2, "total_cost_nanos": 9_000_000,
        "charged_nanos": 9_000_000, "overrun_nanos": 0, "hold_nanos": 50_000_000,
        # Strings, as generation_record writes them: the completion here, $25, is beyond 2**64 attos.
        "cost_items_attos": {"prompt": "1800000000000", "cache_read": "250000000000", "cache_write": "0",
                             "completion": str(25 * 10**18), "reasoning": "7", "request": "0", "image": "0"},
        "cache_discount_attos": "-1250000000000",
        "provider_responses": [{"id": "e1", "endpoint_id": "acme/model-v1", "model_permaslug": "acme/model",
                                "provider_name": "Acme", "status": 502, "latency": 30, "is_byok": False,
                                "routed_service_tier": None},
                               {"id": "chatcmpl-1", "endpoint_id": "acme/model-v2", "model_permaslug": "acme/model",
                                "provider_name": "Acme", "status": 200, "latency": 800, "is_byok": True,
                                "routed_service_tier": "flex"}],
        "http_referer": "https://app.example/ü", "app_title": "Café ☕", "user_agent": "curl/8",
        "external_user": "end-user-7", "session_id": "s-1", "requested_model": "acme/model",
        "api_type": "completions", "is_byok": True, "byok_cost_nanos": 9_500_000, "logged": True,
    }
    record.update(changes)
    return record


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path / "farebox.db")
    writer = GroupWriter(store.writer_conn)
    writer.run_sync(lambda conn: (conn.execute("INSERT INTO organizations (id, name, created_at) VALUES (1, 'o', 0)"),
                                  ops.ensure_account(conn, W, 1, "wallet"),
                                  ops.post_entries(conn, [Entry("grant", GRANTS, W, 10**15, "grant:a", 1, 1)])))
    yield store
    store.close()


def settle(store: Store, records: list[dict[str, Any]]) -> None:
    """The records with their charges, as the writer hands a batch of settlements over."""
    settlements = [ops.SettleOp([Entry("charge", W, REVENUE, g["charged_nanos"], f"charge:{g['id']}", 2, 1,
                                       g["key_hash"], g["id"])], g) for g in records]
    GroupWriter(store.writer_conn).run_sync(lambda conn: ops.SettleOp.run_many(conn, settlements))


def stored(store: Store, gid: str) -> tuple[bytes, dict[str, Any]]:
    """(the data BLOB, the record read back)."""
    row = store.reader_conn.execute(f"{ops.SELECT_GENERATION} WHERE id = ?", (gid,)).fetchone()
    return row[-1], ops.generation_from_row(row)


def as_stored_before(record: dict[str, Any]) -> dict[str, Any]:
    """What reading the record back gave when `data` held it whole."""
    return orjson.loads(orjson.dumps(record))  # type: ignore[no-any-return]


VARIANTS: dict[str, dict[str, Any]] = {
    "typical": {},
    "with a project, nothing optional": {
        "project_id": 9, "workspace_id": None, "endpoint_id": None, "settled_at_ms": None, "upstream_id": None,
        "generation_time_ms": None, "native_finish_reason": None, "finish_reason": None, "http_referer": None,
        "app_title": None, "user_agent": None, "external_user": None, "session_id": None,
        "provider_responses": [], "cost_items_attos": {}},
    "every flag flipped": {"streamed": False, "cancelled": True, "is_byok": False, "usage_estimated": True,
                           "logged": False, "native_tokens_reasoning": 0, "byok_cost_nanos": 0,
                           "api_type": "embeddings"},
}


@pytest.mark.parametrize("changes", VARIANTS.values(), ids=VARIANTS.keys())
def test_a_full_record_reads_back_exactly_as_stored_whole(store: Store, changes: dict[str, Any]) -> None:
    record = full_record("gen-1", **changes)
    assert list(record) == list(ops.RECORD_KEYS)
    settle(store, [record])
    data, back = stored(store, "gen-1")
    # Equal values of equal types, keys in the same order: the same JSON.
    assert back == as_stored_before(record)
    assert orjson.dumps(back) == orjson.dumps(record)
    # Stored short: the layout number and only the values that are not columns.
    short = orjson.loads(data)
    assert isinstance(short, list) and short[0] == 1 and len(short) == len(ops.RECORD_KEYS) - 20 + 1
    assert len(data) < len(orjson.dumps(record)) * 2 // 3
    assert record["id"] not in short and record["key_hash"] not in short


PARTIAL: dict[str, Any] = {
    "a key missing": lambda g: g.pop("settled_at_ms"),
    "an extra key": lambda g: g.update(extra={"x": 1}),
    "a key missing and an extra one": lambda g: (g.pop("app_title"), g.update(title="t")),
    "a flag stored as 0/1 that is not a bool": lambda g: g.update(streamed=1),
    "is_byok that is not a bool": lambda g: g.update(is_byok=0),
    "a reasoning count of None (stored as 0)": lambda g: g.update(native_tokens_reasoning=None),
}


@pytest.mark.parametrize("change", PARTIAL.values(), ids=PARTIAL.keys())
def test_a_record_of_another_shape_is_stored_whole(store: Store, change: Any) -> None:
    record = full_record("gen-2")
    change(record)
    settle(store, [record])
    data, back = stored(store, "gen-2")
    assert data == orjson.dumps(record)
    assert back == as_stored_before(record) and list(back) == list(record)


def test_short_and_whole_records_in_one_batch_each_read_back(store: Store) -> None:
    records = [full_record("g0"), full_record("g1", project_id=4), {**full_record("g2"), "extra": True},
               full_record("g3", streamed=False), full_record("g4", project_id=4, is_byok=False)]
    settle(store, records)
    for g in records:
        assert stored(store, g["id"])[1] == as_stored_before(g)
    assert [r[0] for r in store.reader_conn.execute("SELECT project_id FROM generations ORDER BY id")] == \
        [None, 4, None, None, 4]
    assert verify_store(store.reader_conn).ok


def test_a_row_stored_before_the_short_form_reads_back_as_stored(store: Store) -> None:
    # What the writer stored before this change: the whole record in data, next to its columns.
    record = full_record("gen-old")
    GroupWriter(store.writer_conn).run_sync(lambda conn: conn.execute(
        "INSERT INTO generations (id, org_id, workspace_id, key_hash, created_at, model, provider, total_cost,"
        " charged, tokens_prompt, tokens_completion, streamed, cancelled, finish_reason, data)"
        " VALUES (?, 1, 3, ?, 1, 'acme/model', 'Acme', 1, 1, 1, 1, 1, 0, 'stop', ?)",
        (record["id"], record["key_hash"], orjson.dumps(record))))
    assert stored(store, "gen-old")[1] == as_stored_before(record)


def test_an_unknown_layout_is_refused(store: Store) -> None:
    settle(store, [full_record("gen-3")])
    row = list(store.reader_conn.execute(f"{ops.SELECT_GENERATION} WHERE id = 'gen-3'").fetchone())
    short = orjson.loads(row[-1])
    for data in ([2, *short[1:]], short[:-1]):
        row[-1] = orjson.dumps(data)
        with pytest.raises(ValueError, match="unknown record layout"):
            ops.generation_from_row(tuple(row))


def test_a_served_request_stores_its_record_short_and_reads_it_back(tmp_path: Path) -> None:
    # The record `generation.generation_record` makes has exactly RECORD_KEYS: otherwise every
    # record would silently be stored whole again.
    sim, sim_url = start_sim()
    gw = Gateway(tmp_path / "gw", sim_url).start()
    try:
        gw.org("acme", "5.00")
        key, _ = gw.key("acme")
        status, body, _ = http("POST", f"{gw.api}/chat/completions",
                               {"model": "sim/small", "messages": [{"role": "user", "content": "hi"}], "user": "u-1"},
                               key, headers={"X-Title": "Example"})
        assert status == 200, body
        gen_id = body["id"]
        status, shown, _ = http("GET", f"{gw.api}/generation?id={gen_id}", key=key)
        assert status == 200, shown
        conn = sqlite3.connect(tmp_path / "gw" / "farebox.db")
        try:
            row = conn.execute(f"{ops.SELECT_GENERATION} WHERE id = ?", (gen_id,)).fetchone()
        finally:
            conn.close()
    finally:
        gw.stop()
        sim.stop()
    assert orjson.loads(row[-1])[0] == 1   # the short form
    record = ops.generation_from_row(row)
    assert list(record) == list(ops.RECORD_KEYS)
    data = shown["data"]
    assert (data["id"], data["model"], data["external_user"], data["streamed"], data["tokens_prompt"]) == \
        (gen_id, "sim/small", "u-1", False, body["usage"]["prompt_tokens"])
    assert (record["id"], record["model"], record["external_user"], record["app_title"], record["streamed"],
            record["tokens_prompt"], record["tokens_completion"]) == \
        (gen_id, "sim/small", "u-1", "Example", False, body["usage"]["prompt_tokens"],
         body["usage"]["completion_tokens"])
    assert data["total_cost"] == body["usage"]["cost"] and record["charged_nanos"] > 0
    # Its amounts in atto-dollars are strings (any size), and the wire shows them as USD.
    assert all(isinstance(v, str) for v in record["cost_items_attos"].values())
    assert isinstance(record["cache_discount_attos"], str)
    assert set(data["cost_details"]) >= {"prompt", "completion"}


def test_an_amount_beyond_64_bits_is_recorded_and_shown_exactly(store: Store) -> None:
    # $25 of completion is 25 * 10**18 attos, more than 2**64: as an integer, orjson could not
    # write the record and the charge could not commit.
    record = full_record("gen-big")
    settle(store, [record])
    back = stored(store, "gen-big")[1]
    assert back["cost_items_attos"]["completion"] == str(25 * 10**18)
    shown = generation_wire(back)
    assert wire(shown["cost_details"]["completion"]) == "25"
    assert wire(shown["cost_details"]["reasoning"]) == "0.000000001"   # 7 attos, rounded up to a nano
    assert wire(shown["cache_discount"]) == "-0.00000125"


def test_a_record_from_before_with_integer_amounts_still_shows() -> None:
    old = full_record("gen-old", cost_items_attos={"prompt": 1_800_000_000_000}, cache_discount_attos=-5)
    shown = generation_wire(old)
    assert wire(shown["cost_details"]) == '{"prompt":0.0000018}'
    assert wire(shown["cache_discount"]) == "-0.000000001"


def wire(value: Any) -> str:
    """A value as the JSON on the wire (amounts are exact number fragments)."""
    return orjson.dumps(value).decode()
