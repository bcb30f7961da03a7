"""The settlement journal through a real server (issue 7): a lone request's charge that a
crash left only in the journal is billed at the next start; a journal that cannot be
applied stops the start with a message that names it; a clean stop empties it."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from decimal import Decimal

from farebox.store.journal import journal_path, records
from tests.e2e.conftest import client
from tests.e2e.procs import Gateway, http

MSG = [{"role": "user", "content": "Tell me something"}]


def database_files(home):
    db = home / "farebox.db"
    return [db, db.with_name("farebox.db-wal"), db.with_name("farebox.db-shm")]


def test_a_charge_only_in_the_journal_is_billed_at_the_next_start(sim_url, tmp_path):
    gw = Gateway(tmp_path / "gw", sim_url).start()
    gw.org("j", "10.00")
    key, _ = gw.key("j")
    gw.stop()
    # The database as it was before the request: restoring it after the crash below stands
    # for a writer that had not committed the charge yet.
    before = tmp_path / "before"
    before.mkdir()
    for f in database_files(gw.home):
        if f.exists():
            shutil.copy2(f, before / f.name)

    gw.start()
    done = client(gw, key).chat.completions.create(model="sim/small", messages=MSG)
    cost = Decimal(str(done.usage.model_extra["cost"]))
    assert cost > 0
    gw.kill()
    journal = journal_path(gw.home / "farebox.db")
    assert [op.generation["id"] for _, op in records(journal)] == [done.id]   # alone: journaled
    for f in database_files(gw.home):
        f.unlink(missing_ok=True)
    for f in before.iterdir():
        shutil.copy2(f, gw.home / f.name)
    with sqlite3.connect(gw.home / "farebox.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM generations").fetchone()[0] == 0

    offline = subprocess.run([sys.executable, "-m", "farebox", "ledger", "verify", "--json", "--database",
                              str(gw.home / "farebox.db")], capture_output=True, text=True, timeout=60)
    assert offline.returncode == 0, offline.stdout + offline.stderr
    report = json.loads(offline.stdout)
    assert report["ok"] and report["counts"]["journal_unapplied"] == 1
    assert [w["unapplied"] for w in report["warnings"] if "journal" in w] == [1]

    gw.start()
    try:
        assert "applied 1 charges" in gw.proc.output()
        assert gw.balance("j") == Decimal("10.00") - cost
        status, generation, _ = http("GET", f"{gw.api}/generation?id={done.id}", key=key)
        assert status == 200 and Decimal(str(generation["data"]["total_cost"])) == cost
        assert gw.verify()["ok"]
        assert journal.stat().st_size == 0                       # applied, then emptied
    finally:
        gw.stop()


def test_a_clean_stop_empties_the_journal(sim_url, tmp_path):
    gw = Gateway(tmp_path / "gw", sim_url).start()
    gw.org("j", "10.00")
    key, _ = gw.key("j")
    api = client(gw, key)
    ids = [api.chat.completions.create(model="sim/small", messages=MSG).id for _ in range(3)]
    journal = journal_path(gw.home / "farebox.db")
    assert journal.stat().st_size > 0
    gw.stop()
    assert journal.stat().st_size == 0
    with sqlite3.connect(gw.home / "farebox.db") as conn:
        stored = {gid for (gid,) in conn.execute("SELECT id FROM generations")}
    assert set(ids) <= stored


def test_a_journal_that_cannot_be_applied_stops_the_start(sim_url, tmp_path):
    gw = Gateway(tmp_path / "gw", sim_url).start()
    gw.stop()
    journal = journal_path(gw.home / "farebox.db")
    journal.write_bytes(b'{"not": "a settlement"}\n')
    env = dict(os.environ, FAREBOX_HOME=str(gw.home), FAREBOX_PORT="0",
               FAREBOX_CATALOG_PATH=str(gw.home / "catalog.toml"), FAREBOX_CATALOG_BUILTIN="false")
    second = subprocess.run([sys.executable, "-m", "farebox", "serve"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert second.returncode == 2, second.stderr
    assert f"{journal}, line 1: not a settlement record" in second.stderr
    assert journal.read_bytes() == b'{"not": "a settlement"}\n'   # left for the operator
