"""`farebox ledger verify`: prove the books balance on a live database.

Checks, each reported with its violations:
  zero_sum          all account balances sum to zero
  balances          every stored balance equals the sum of its entries
  floors            no customer account's running balance ever went below zero
  generations       every generation has exactly its charge: its entries sum to its
                    total cost, at most one wallet charge, none when it cost nothing
  orphans           every charge entry belongs to a stored generation
  lots              replaying each wallet's entries through its credit lots never spends
                    more than they hold, and leaves exactly the wallet's balance
  holds             (live server only) no open hold older than its timeout
  memory            (live server only) the in-memory balances equal the stored ones
Overruns (an upstream billing beyond the hold) are reported as warnings, not violations.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Any

from farebox.ledger.lots import replay
from farebox.store.sqlite import wallet_history

LIMIT = 20  # violations listed per check


@dataclass
class Report:
    checks: dict[str, int] = field(default_factory=dict)       # check -> violations
    violations: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not any(self.checks.values())

    def add(self, check: str, rows: list[dict[str, Any]]) -> None:
        self.checks[check] = self.checks.get(check, 0) + len(rows)
        self.violations.extend({"check": check, **r} for r in rows[:LIMIT])

    def wire(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": self.checks, "violations": self.violations,
                "warnings": self.warnings, "counts": self.counts}


def verify_store(conn: sqlite3.Connection) -> Report:
    report = Report()
    conn.execute("BEGIN")  # one consistent snapshot for every check
    try:
        _verify(conn, report)
    finally:
        conn.execute("COMMIT")
    return report


def _verify(conn: sqlite3.Connection, report: Report) -> None:
    q = conn.execute
    report.counts = {
        "accounts": q("SELECT COUNT(*) FROM accounts").fetchone()[0],
        "entries": q("SELECT COUNT(*) FROM entries").fetchone()[0],
        "generations": q("SELECT COUNT(*) FROM generations").fetchone()[0],
    }
    total = q("SELECT COALESCE(SUM(balance), 0) FROM accounts").fetchone()[0]
    report.add("zero_sum", [] if total == 0 else [{"sum": total}])

    rows = q("""
        SELECT a.id, a.balance, COALESCE(i.s, 0) - COALESCE(o.s, 0) AS computed FROM accounts a
        LEFT JOIN (SELECT to_account, SUM(amount) s FROM entries GROUP BY to_account) i ON i.to_account = a.id
        LEFT JOIN (SELECT from_account, SUM(amount) s FROM entries GROUP BY from_account) o ON o.from_account = a.id
        WHERE a.balance != computed""").fetchall()
    report.add("balances", [{"account": a, "stored": b, "entries": c} for a, b, c in rows])
    dangling = q("""SELECT COUNT(*) FROM entries WHERE from_account NOT IN (SELECT id FROM accounts)
                    OR to_account NOT IN (SELECT id FROM accounts)""").fetchone()[0]
    report.add("balances", [] if not dangling else [{"entries_without_account": dangling}])

    rows = q("""
        WITH moves AS (
            SELECT id, to_account AS account, amount AS delta FROM entries
            UNION ALL SELECT id, from_account, -amount FROM entries),
        running AS (
            SELECT m.account, m.id, SUM(m.delta) OVER (PARTITION BY m.account ORDER BY m.id) AS balance
            FROM moves m JOIN accounts a ON a.id = m.account WHERE a.floored = 1)
        SELECT account, MIN(balance), MIN(id) FROM running WHERE balance < 0 GROUP BY account""").fetchall()
    report.add("floors", [{"account": a, "lowest": b, "first_entry": i} for a, b, i in rows])

    rows = q("""
        SELECT g.id, g.total_cost, g.charged, COALESCE(e.total, 0), COALESCE(e.charges, 0), COALESCE(e.charged, 0)
        FROM generations g LEFT JOIN (
            SELECT generation_id, SUM(amount) total, SUM(kind = 'charge') charges,
                   SUM(CASE WHEN kind = 'charge' THEN amount ELSE 0 END) charged
            FROM entries WHERE generation_id IS NOT NULL GROUP BY generation_id) e ON e.generation_id = g.id
        WHERE g.total_cost != COALESCE(e.total, 0) OR COALESCE(e.charges, 0) > 1
           OR g.charged != COALESCE(e.charged, 0)""").fetchall()
    report.add("generations", [{"generation": g, "total_cost": t, "charged": c, "entries": s,
                                "charge_entries": n, "entries_charged": ec} for g, t, c, s, n, ec in rows])

    rows = q("""SELECT e.id, e.generation_id FROM entries e LEFT JOIN generations g ON g.id = e.generation_id
                WHERE e.kind IN ('charge', 'overrun') AND g.id IS NULL""").fetchall()
    report.add("orphans", [{"entry": i, "generation": g} for i, g in rows])

    _verify_lots(conn, report)

    for gid, amount in q("SELECT generation_id, amount FROM entries WHERE kind = 'overrun' LIMIT ?", (LIMIT,)):
        report.warnings.append({"overrun": gid, "amount_nanos": amount})


def _verify_lots(conn: sqlite3.Connection, report: Report) -> None:
    """Replaying every wallet's entries through its credit lots never spends more than the
    lots hold, and leaves exactly the wallet's balance in them."""
    try:
        wallets = replay(*wallet_history(conn))
    except AssertionError as e:
        report.add("lots", [{"replay": str(e) or "a wallet spent more than its lots held"}])
        return
    stored = dict(conn.execute("SELECT id, balance FROM accounts WHERE id LIKE '%:wallet'"))
    rows = [{"account": a, "balance": stored.get(a, 0), "lots": lots.total()}
            for a, lots in sorted(wallets.items()) if lots.total() != stored.get(a, 0)]
    rows += [{"account": a, "balance": b, "lots": 0} for a, b in sorted(stored.items()) if b and a not in wallets]
    report.add("lots", rows)


def verify_memory(report: Report, *, stored: dict[str, int], memory: dict[str, int],
                  oldest_hold_age_s: float, hold_limit_s: float, open_holds: int) -> None:
    """Checks only a running server can make: its book against the database, its holds
    against their timeout. Call with the writer idle so both views are of the same moment."""
    report.counts["open_holds"] = open_holds
    report.add("holds", [] if oldest_hold_age_s <= hold_limit_s else
               [{"oldest_hold_age_ms": int(oldest_hold_age_s * 1000), "limit_s": hold_limit_s}])
    accounts = set(stored) | {a for a, v in memory.items() if v}
    report.add("memory", [{"account": a, "stored": stored.get(a, 0), "memory": memory.get(a, 0)}
                          for a in sorted(accounts) if stored.get(a, 0) != memory.get(a, 0)])
