"""Ledger entries and account names.

An entry moves `amount` nano-dollars from one account to another. Entries are never
updated or deleted, so every balance is the sum of its entries and all balances sum to
zero. System accounts are sources and sinks (they go negative or positive); wallet
accounts hold an organization's credit and must never go below zero.
"""

from __future__ import annotations

from dataclasses import dataclass

GRANTS = "system:grants"        # source of credits granted by an administrator
REVENUE = "system:revenue"      # sink of inference charges
OVERRUN = "system:overrun"      # source that pays what an upstream billed beyond the hold and the balance
EXPIRED = "system:expired"      # sink of credit lots that expired unused
PAYMENTS = "system:payments"    # source of purchased credit: what buyers paid (credits and fees)
FEES = "system:fees"            # sink of processing fees: never part of a wallet
BONUSES = "system:bonuses"      # source of purchase bonuses (and sink of bonuses forfeited by a refund)
REFUNDS = "system:refunds"      # sink of purchased credit paid back to the buyer
TAXES = "system:taxes"          # sink of tax charged on purchases: owed to the tax authority, never credit
SYSTEM_ACCOUNTS = (GRANTS, REVENUE, OVERRUN, EXPIRED, PAYMENTS, FEES, BONUSES, REFUNDS, TAXES)


def wallet(org_id: int) -> str:
    return f"org:{org_id}:wallet"


def workspace_wallet(org_id: int, workspace_id: int) -> str:
    """A workspace's own pool, funded by transfers from its organization's wallet."""
    return f"org:{org_id}:ws:{workspace_id}:wallet"


def org_of(account: str) -> int:
    """The organization a wallet belongs to."""
    return int(account.split(":")[1])


def is_wallet(account: str) -> bool:
    return account.endswith(":wallet")


def is_floored(account: str) -> bool:
    """Accounts that must never go below zero: everything that holds a customer's money."""
    return not account.startswith("system:")


@dataclass(slots=True)  # a value, never changed; not frozen: docs/architecture.md
class Entry:
    kind: str            # grant | charge | overrun
    from_account: str
    to_account: str
    amount: int          # nano-dollars, > 0
    reference: str       # idempotency key, unique across all entries
    created_at: int      # unix ms
    org_id: int | None = None
    key_hash: str | None = None
    generation_id: str | None = None
    memo: str | None = None
    id: int | None = None  # the stored row's id, where a caller needs it (a lot is keyed by its entry)

    def __post_init__(self) -> None:
        assert isinstance(self.amount, int) and self.amount > 0, self.amount
        assert self.from_account != self.to_account
