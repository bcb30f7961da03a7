"""Composition root: builds every part from settings and wires them together. The only
module that imports every layer."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from farebox.api.router import Api
from farebox.billing.notify import Notifier, SmtpSettings
from farebox.billing.payments import Payments
from farebox.billing.profiles import Profiles
from farebox.billing.purchases import pricing_from
from farebox.billing.stripe import Stripe
from farebox.billing.topup import AutoTopUp
from farebox.billing.watch import BalanceWatch
from farebox.catalog.load import load_catalog
from farebox.catalog.model import Catalog
from farebox.clock import Clock
from farebox.ids import MANAGEMENT_KEY_PREFIX, Ids
from farebox.ledger.book import Book
from farebox.ledger.byok import ByokMeter
from farebox.ledger.ledger import Ledger
from farebox.ledger.usage import period_start
from farebox.limits.admission import Admission
from farebox.limits.free import FreeTier
from farebox.limits.keys import KeyRates
from farebox.limits.memory import MemoryLimiter
from farebox.money import parse_usd
from farebox.providers.anthropic import AnthropicDialect
from farebox.providers.gemini import GeminiDialect
from farebox.providers.http import Upstreams
from farebox.providers.openai import OpenAIDialect
from farebox.relay import Relay
from farebox.settings import Settings
from farebox.store.checkpoint import Checkpointer
from farebox.store.journal import Journal, journal_path
from farebox.store.journal import replay as replay_journal
from farebox.store.sqlite import Store
from farebox.store.writer import GroupWriter
from farebox.tenancy.byok import Credentials
from farebox.tenancy.directory import Directory
from farebox.tenancy.members import Members
from farebox.tenancy.vault import load_vault
from farebox.tenancy.workspaces import Workspaces

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger("farebox")


def read_or_create_secret(path: Path, make: callable) -> str:  # type: ignore[valid-type]
    """A generated secret kept in FAREBOX_HOME, readable only by its owner."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = make()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return secret


class Gateway:
    def __init__(self, settings: Settings, *, clock: Clock | None = None, ids: Ids | None = None,
                 catalog: Catalog | None = None, env: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.trial_credit = parse_usd(settings.trial_credit_usd)  # nano-dollars for each new organization
        self.purchase_pricing = pricing_from(settings)             # fees, packages, limits (checked here)
        self.clock = clock or Clock()
        self.ids = ids or Ids()
        self.catalog = catalog or load_catalog(builtin=settings.catalog_builtin, extra_path=settings.catalog_path,
                                               env=env)
        self.store = Store(settings.database_file, settings.sqlite_synchronous)
        self.writer = GroupWriter(self.store.writer_conn, settings.writer_batch_max,
                                  inline=settings.writer_inline and settings.sqlite_synchronous == "NORMAL")
        self.checkpointer = Checkpointer(settings.database_file, settings.sqlite_checkpoint_interval_s,
                                         finish=self.writer.finish_checkpoint,
                                         finish_at_bytes=settings.sqlite_wal_restart_mb * 2**20)
        self.store.read_after(self.writer)
        # Charges a crashed process answered but had not committed, before anything reads
        # balances; whatever `settle_journal` says now, an earlier run may have used it.
        replay_journal(journal_path(settings.database_file), self.writer)
        self.journal = (Journal(journal_path(settings.database_file), self.writer, self.clock)
                        if settings.settle_journal and settings.sqlite_synchronous == "NORMAL" else None)
        self.book = Book(self.clock, settings.hold_timeout_s)
        self.ledger = Ledger(self.book, self.writer, self.clock, settings.hold_sweep_interval_s, self.journal)
        self.directory = Directory(self.writer, self.book, self.clock, self.ids)
        self.ledger.load(self.store.writer_conn)
        self.directory.load(self.store.writer_conn)
        self.workspaces = Workspaces(self.writer, self.book, self.clock, self.directory)
        self.members = Members(self.writer, self.clock, self.ids, settings.password_scrypt_n,
                               session_ttl_s=settings.session_ttl_hours * 3600)
        self.members.load(self.store.writer_conn)
        self.vault = load_vault(settings)
        self.credentials = Credentials(self.writer, self.clock, self.ids, self.vault)
        self.credentials.load(self.store.writer_conn)
        self.byok_meter = ByokMeter(settings.byok_fee_percent, parse_usd(settings.byok_monthly_allowance_usd))
        self._billing(settings)
        secret = read_or_create_secret(settings.management_key_file, self.ids.management_key)
        if not secret.startswith(MANAGEMENT_KEY_PREFIX):
            raise ValueError(f"{settings.management_key_file} does not hold a management key")
        self.directory.ensure_management_key(secret)
        self.upstreams = Upstreams(
            connect_timeout_s=settings.upstream_connect_timeout_s, idle_timeout_s=settings.upstream_idle_timeout_s,
            total_timeout_s=settings.upstream_timeout_s, connections_max=settings.upstream_connections_max,
            keepalive_s=settings.upstream_keepalive_s)
        dialects = {"openai": OpenAIDialect(self.upstreams), "anthropic": AnthropicDialect(self.upstreams, self.clock),
                    "gemini": GeminiDialect(self.upstreams, self.clock)}
        self._seed_byok_meter(self.store.writer_conn)
        limiter = MemoryLimiter()
        self.admission = Admission(FreeTier.from_settings(limiter, settings), KeyRates(limiter), self.clock,
                                   lambda org_id: self.ledger.purchased.get(org_id, 0))
        self.relay = Relay(catalog=self.catalog, dialects=dialects, ledger=self.ledger, settings=settings,
                           clock=self.clock, admission=self.admission, credentials=self.credentials,
                           byok_meter=self.byok_meter)
        self._started = False
        self._http: aiohttp.ClientSession | None = None
        self._resuming: asyncio.Task[None] | None = None

    def _seed_byok_meter(self, conn: sqlite3.Connection) -> None:
        """Each organization's list-price BYOK spend this UTC month, which the allowance is measured against."""
        now = self.clock.now()
        since = period_start(now, "monthly") * 1000
        for org_id, total in conn.execute(
                "SELECT org_id, SUM(byok_cost) FROM generations WHERE is_byok = 1 AND COALESCE(settled_at, created_at) >= ?"
                " GROUP BY org_id", (since,)):
            self.byok_meter.seed(org_id, total, now)

    def _billing(self, settings: Settings) -> None:
        """The payment rail, auto top-up and the balance watch (issue 5)."""
        conn = self.store.writer_conn
        self.profiles = Profiles(self.writer, self.clock)
        self.profiles.load(conn)
        self.stripe = (Stripe(settings.stripe_api_base, settings.stripe_secret_key, timeout_s=settings.stripe_timeout_s)
                       if settings.stripe_secret_key else None)

        def org_name(org_id: int) -> str:
            return self.directory.orgs[org_id].name

        self.payments = Payments(settings=settings, pricing=self.purchase_pricing, ledger=self.ledger,
                                 profiles=self.profiles, store=self.store, writer=self.writer, clock=self.clock,
                                 org_name=org_name, new_id=lambda: self.ids.hex(12), stripe=self.stripe,
                                 install=self._installation(conn))
        self.topup = AutoTopUp(settings=settings, pricing=self.purchase_pricing, payments=self.payments,
                               profiles=self.profiles, writer=self.writer, clock=self.clock,
                               notify=lambda *event: self.watch.notify(*event))
        self.payments.topup = self.topup
        self.topup.load(conn)
        def active_members(org_id: int, emails: tuple[str, ...]) -> tuple[str, ...]:
            return tuple(e for e in emails if (m := self.members.by_email(org_id, e)) is not None and m.active)

        self.watch = BalanceWatch(profiles=self.profiles, topup=self.topup, clock=self.clock, org_name=org_name,
                                  recipients=active_members)
        self.watch.load(conn, self.clock.now_ms())
        self.book.watch = self.watch
        self.alert_secret = (settings.alert_webhook_secret or read_or_create_secret(
            settings.home_path / "alert_webhook_secret", lambda: "whsec_" + self.ids.hex(24)))

    def _installation(self, conn: sqlite3.Connection) -> str:
        """This database's random identity, made on first start (before the writer runs)."""
        conn.execute("INSERT OR IGNORE INTO installation (id, token) VALUES (1, ?)", (self.ids.hex(8),))
        return conn.execute("SELECT token FROM installation WHERE id = 1").fetchone()[0]

    def _session(self) -> aiohttp.ClientSession:
        """The HTTP session alert webhooks are posted with, made on first use: aiohttp is
        imported only by a server that sends one (issue 7: start-up)."""
        if self._http is None:
            import aiohttp

            self._http = aiohttp.ClientSession()
        return self._http

    def _notifier(self) -> Notifier:
        s = self.settings
        smtp = (SmtpSettings(s.smtp_host, s.smtp_port, s.smtp_sender, s.smtp_username, s.smtp_password,
                             s.smtp_starttls) if s.smtp_host else None)
        return Notifier(smtp, self.alert_secret.encode(), self._session, self.clock, retries=s.alert_retries,
                        backoff_s=s.alert_retry_s)

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self.writer.start()
        self.checkpointer.start()
        self.ledger.start()
        self.watch.notifier = self._notifier()
        self.topup.resume()   # before serving: see AutoTopUp.resume
        # Refunds a restart left pending, in the background: serving starts now.
        self._resuming = asyncio.get_running_loop().create_task(self._resume_refunds())

    async def _resume_refunds(self) -> None:
        try:
            await self.payments.resume()
        except Exception:
            log.exception("resuming pending refunds failed")

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        if self._resuming is not None:
            self._resuming.cancel()
        await self.topup.stop()
        try:
            await asyncio.wait_for(self.watch.drain(), 5)
        except TimeoutError:
            log.warning("alerts still being delivered at shutdown were dropped")
        if self.stripe is not None:
            await self.stripe.close()
        if self._http is not None:
            await self._http.close()
            self._http = None
        await self.ledger.stop()
        await self.upstreams.close()
        self.writer.stop()
        if self.journal is not None:
            self.journal.close()
        self.checkpointer.stop()
        self.store.close()


def create_app(settings: Settings, **kw: object) -> Api:
    return Api(Gateway(settings, **kw))  # type: ignore[arg-type]
