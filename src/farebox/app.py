"""Composition root: builds every part from settings and wires them together. The only
module that imports every layer."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from farebox.api.router import Api
from farebox.billing.purchases import pricing_from
from farebox.catalog.load import load_catalog
from farebox.catalog.model import Catalog
from farebox.clock import Clock
from farebox.ids import MANAGEMENT_KEY_PREFIX, Ids
from farebox.ledger.book import Book
from farebox.ledger.ledger import Ledger
from farebox.money import parse_usd
from farebox.providers.anthropic import AnthropicDialect
from farebox.providers.gemini import GeminiDialect
from farebox.providers.http import Upstreams
from farebox.providers.openai import OpenAIDialect
from farebox.relay import Relay
from farebox.settings import Settings
from farebox.store.checkpoint import Checkpointer
from farebox.store.sqlite import Store
from farebox.store.writer import GroupWriter
from farebox.tenancy.directory import Directory

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
        self.writer = GroupWriter(self.store.writer_conn, settings.writer_batch_max)
        self.checkpointer = Checkpointer(settings.database_file, settings.sqlite_checkpoint_interval_s)
        self.book = Book(self.clock, settings.hold_timeout_s)
        self.ledger = Ledger(self.book, self.writer, self.clock, settings.hold_sweep_interval_s)
        self.directory = Directory(self.writer, self.book, self.clock, self.ids)
        self.ledger.load(self.store.writer_conn)
        self.directory.load(self.store.writer_conn)
        secret = read_or_create_secret(settings.management_key_file, self.ids.management_key)
        if not secret.startswith(MANAGEMENT_KEY_PREFIX):
            raise ValueError(f"{settings.management_key_file} does not hold a management key")
        self.directory.ensure_management_key(secret)
        self.upstreams = Upstreams(
            connect_timeout_s=settings.upstream_connect_timeout_s, idle_timeout_s=settings.upstream_idle_timeout_s,
            total_timeout_s=settings.upstream_timeout_s, connections_max=settings.upstream_connections_max)
        dialects = {"openai": OpenAIDialect(self.upstreams), "anthropic": AnthropicDialect(self.upstreams, self.clock),
                    "gemini": GeminiDialect(self.upstreams, self.clock)}
        self.relay = Relay(catalog=self.catalog, dialects=dialects, ledger=self.ledger, settings=settings,
                           clock=self.clock)
        self._started = False

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self.writer.start()
        self.checkpointer.start()
        self.ledger.start()

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        await self.ledger.stop()
        await self.upstreams.close()
        self.writer.stop()
        self.checkpointer.stop()
        self.store.close()


def create_app(settings: Settings, **kw: object) -> Api:
    return Api(Gateway(settings, **kw))  # type: ignore[arg-type]
