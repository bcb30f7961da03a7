"""Settings: defaults <- optional TOML file <- FAREBOX_* environment. Frozen once loaded.

Every field carries a one-line doc (`docs/settings.md` repeats it; a test keeps the two
in step). Unknown keys and bad values raise ConfigError naming where they came from:
`farebox.toml: port: ...` or `FAREBOX_PORT: ...`.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from farebox.errors import ConfigError
from farebox.money import MoneyFormatError, parse_usd, percent_bps

ENV_PREFIX = "FAREBOX_"
# Environment variables that configure the command-line client, not the server.
CLIENT_ENV = {"FAREBOX_URL", "FAREBOX_MANAGEMENT_KEY", "FAREBOX_CONFIG", "FAREBOX_HOME"}


def _s(default: Any, doc: str, *, choices: tuple[str, ...] = (), minimum: float | None = None) -> Any:
    return field(default=default, metadata={"doc": doc, "choices": choices, "minimum": minimum})


@dataclass(frozen=True)
class Settings:
    home: str = _s("~/.farebox", "Directory for the SQLite database, the management key and other generated secrets (FAREBOX_HOME).")
    host: str = _s("127.0.0.1", "Address `farebox serve` listens on.")
    port: int = _s(8080, "Port `farebox serve` listens on.", minimum=0)
    database_path: str = _s("", "SQLite database file; empty means `<home>/farebox.db`.")
    sqlite_synchronous: str = _s("NORMAL", "SQLite `synchronous` pragma: NORMAL survives a process crash, FULL also a power loss.", choices=("NORMAL", "FULL"))
    sqlite_checkpoint_interval_s: float = _s(0.1, "Seconds between WAL checkpoints, run off the commit path so no response waits for their fsyncs; short, so each has little to sync (see store/checkpoint.py).", minimum=0.01)
    sqlite_wal_restart_mb: int = _s(256, "WAL size (MiB) at which the ledger writer finishes a checkpoint itself so the WAL starts over, pausing commits for two small fsyncs; under steady load the WAL never starts over otherwise.", minimum=1)
    writer_batch_max: int = _s(2048, "Most ledger entries and generation records committed in one group-commit transaction.", minimum=1)
    writer_inline: bool = _s(True, "Commit a lone request's charge on the event loop's thread when the writer is idle, skipping two thread wake-ups (~22 µs of CPU a request at one connection). Used when settle_journal is off. Only with sqlite_synchronous NORMAL: under FULL each commit waits for an fsync, which would stall every connection.")
    settle_journal: bool = _s(True, "Make a lone request's charge durable with one append to the settlement journal (`<database_file>-settlements`) and answer while the writer commits it to SQLite; the next start applies whatever a crash left in the journal. Takes ~0.1 ms off the latency at one connection. Only with sqlite_synchronous NORMAL: the journal is not fsynced, as a NORMAL commit is not. A journal left by an earlier run is applied at start whatever this says.")
    http_keepalive_s: float = _s(30.0, "Seconds a client's idle keep-alive connection stays open.", minimum=0.01)
    shutdown_grace_s: float = _s(30.0, "Seconds a stopping server (SIGTERM, Ctrl+C) lets requests in flight finish before cancelling them.", minimum=0)
    body_bytes_max: int = _s(16 * 1024 * 1024, "Largest accepted request body in bytes; larger bodies get 413.", minimum=1024)
    hold_timeout_s: float = _s(900.0, "Seconds after which an unsettled hold expires and its amount becomes available again.", minimum=1)
    hold_sweep_interval_s: float = _s(5.0, "Seconds between sweeps that expire old holds.", minimum=0.01)
    hold_request_tokens: int = _s(64, "Prompt tokens a hold adds once per request, on top of the text, for the provider's framing.", minimum=3)
    hold_message_tokens: int = _s(16, "Prompt tokens a hold adds per message for role and separator tokens.", minimum=4)
    hold_image_tokens: int = _s(6000, "Prompt tokens a hold counts per input image (the largest any provider bills for one image).", minimum=85)
    upstream_connect_timeout_s: float = _s(10.0, "Seconds to open a connection to an upstream before failing over.", minimum=0.01)
    upstream_first_byte_timeout_s: float = _s(120.0, "Seconds a streaming attempt may wait for its first event before failing over.", minimum=0.01)
    upstream_idle_timeout_s: float = _s(120.0, "Seconds a stream may stay silent between events before it is ended as a timeout.", minimum=0.01)
    upstream_timeout_s: float = _s(600.0, "Seconds one attempt may take in total, streaming or not.", minimum=0.01)
    upstream_connections_max: int = _s(0, "Most open connections per provider pool; 0 means unlimited. For a provider reached over HTTP/2 (`http2 = true` in the catalog) it bounds connections, each carrying many streams.", minimum=0)
    upstream_keepalive_s: float = _s(15.0, "Seconds an idle upstream connection is kept for reuse; older ones are closed rather than risk a server closing them mid-request.", minimum=0)
    attempts_max: int = _s(3, "Most upstream attempts (endpoints tried) for one request.", minimum=1)
    attempts_timeout_s: float = _s(300.0, "Seconds after a request arrives when no new attempt starts; each attempt's wait for its first byte (a whole answer when not streaming) is cut to what remains.", minimum=0.01)
    health_outage_window_s: float = _s(30.0, "Seconds of history that decide whether an endpoint is in outage (skipped by routing).", minimum=1)
    health_outage_failures: int = _s(3, "Errors within the outage window (and at least half of its answers) that put an endpoint in outage.", minimum=1)
    health_cooldown_s: float = _s(30.0, "Seconds an endpoint in outage is skipped before one request probes it again.", minimum=0.01)
    sticky_idle_s: float = _s(600.0, "Seconds a conversation stays routed to the endpoint that holds its prompt cache after its last request.", minimum=1)
    sticky_entries_max: int = _s(100_000, "Most conversations remembered for sticky routing; the least recently used are forgotten first.", minimum=1)
    session_ttl_hours: float = _s(168.0, "Hours a member's login session lasts before they must log in again.", minimum=0.01)
    password_scrypt_n: int = _s(32768, "scrypt cost (N, a power of two up to 1048576) of new member password hashes; memory is 1 KiB times N.", minimum=1024)
    free_requests_per_minute: int = _s(20, "Requests a minute an organization may make to `:free` models.", minimum=1)
    free_requests_per_day: int = _s(50, "Requests a day (00:00 to 00:00 UTC) an organization may make to `:free` models until it has bought free_purchase_threshold_usd of credits.", minimum=1)
    free_requests_per_day_purchased: int = _s(1000, "Requests a day to `:free` models once the organization has bought at least free_purchase_threshold_usd of credits in total.", minimum=1)
    free_purchase_threshold_usd: str = _s("10", "All-time credit purchases (USD, exact decimal) that raise the daily `:free` limit to free_requests_per_day_purchased.")
    purchase_fee_card_percent: str = _s("5.5", "Processing fee on card purchases, percent of the credits bought.")
    purchase_fee_card_minimum_usd: str = _s("0.80", "Smallest processing fee on a card purchase, USD.")
    purchase_fee_crypto_percent: str = _s("5", "Processing fee on crypto purchases, percent.")
    purchase_fee_bank_percent: str = _s("0", "Processing fee on bank transfers recorded by an administrator, percent.")
    purchase_packages: str = _s("10:0,25:0,50:10,100:15,250:20,500:25", "Credit packages as AMOUNT:BONUS_PERCENT, ascending: a purchase of at least AMOUNT (USD) earns that bonus on top, never charged.")
    purchase_minimum_usd: str = _s("5", "Smallest purchase of credits, USD.")
    purchase_maximum_usd: str = _s("25000", "Largest purchase of credits, USD.")
    purchase_expiry_days: int = _s(365, "Days until purchased credit (and its bonus) expires; 0 means never.", minimum=0)
    grant_expiry_days: int = _s(0, "Days until credit granted by an administrator expires; 0 means never.", minimum=0)
    trial_credit_usd: str = _s("0", "Credit (USD, exact decimal) every new organization receives as a promotional trial lot.")
    trial_expiry_days: int = _s(30, "Days until trial credit expires; 0 means never.", minimum=0)
    refund_window_hours: float = _s(24.0, "Hours after a card purchase during which its unused credits can be refunded.", minimum=0)
    byok_fee_percent: str = _s("5", "Fee on a BYOK request, percent of its list-price cost, charged from credits once the monthly allowance is used.")
    byok_monthly_allowance_usd: str = _s("25000", "List-price BYOK spend (USD) per organization and UTC calendar month that carries no BYOK fee.")
    byok_encryption_key: str = _s("", "Base64 of the 32-byte key that encrypts stored BYOK provider keys; empty means `<home>/byok_key`, generated on first start.")
    stripe_secret_key: str = _s("", "Stripe secret key (sk_live_... or sk_test_...); empty disables card purchases and auto top-up.")
    stripe_webhook_secret: str = _s("", "Signing secret (whsec_...) of the Stripe webhook endpoint pointed at /api/v1/stripe/webhook.")
    stripe_api_base: str = _s("https://api.stripe.com", "Stripe API origin; tests and the demo point it at the fake Stripe.")
    stripe_timeout_s: float = _s(30.0, "Seconds one Stripe API call may take.", minimum=0.1)
    public_url: str = _s("http://127.0.0.1:8080", "The gateway's address as customers reach it: Checkout returns them to it.")
    checkout_success_path: str = _s("/credits/success", "Where Stripe Checkout sends the buyer after paying, relative to public_url unless absolute.")
    checkout_cancel_path: str = _s("/credits/cancelled", "Where Stripe Checkout sends a buyer who cancels, relative to public_url unless absolute.")
    auto_topup_attempts: int = _s(4, "Charge attempts of one auto top-up before auto top-up is disabled and the organization alerted.", minimum=1)
    auto_topup_retry_s: float = _s(60.0, "Seconds before the first retry of a failed auto top-up charge; each later retry waits twice as long.", minimum=0.01)
    smtp_host: str = _s("", "SMTP server for alert emails; empty disables email (webhooks still go out).")
    smtp_port: int = _s(25, "SMTP server port.", minimum=1)
    smtp_sender: str = _s("farebox@localhost", "From address of alert emails.")
    smtp_username: str = _s("", "SMTP AUTH user; empty means no AUTH.")
    smtp_password: str = _s("", "SMTP AUTH password.")
    smtp_starttls: bool = _s(False, "Require STARTTLS before sending (never falls back to cleartext).")
    alert_webhook_secret: str = _s("", "Secret that signs alert webhooks (Farebox-Signature); empty means one generated in FAREBOX_HOME.")
    alert_retries: int = _s(3, "Retries of an alert email or webhook that failed for a reason worth retrying.", minimum=0)
    alert_retry_s: float = _s(1.0, "Seconds before the first retry of an alert delivery; each later retry waits twice as long.", minimum=0)
    invoice_number_prefix: str = _s("FB-", "Text before every invoice number (FB-000001).")
    invoice_seller_name: str = _s("Farebox", "Seller name printed on invoices.")
    invoice_seller_address: str = _s("", "Seller address on invoices, lines separated by `;`.")
    invoice_seller_email: str = _s("", "Seller contact email on invoices.")
    invoice_seller_tax_id: str = _s("", "Seller tax identifier on invoices (e.g. a VAT number).")
    invoice_tax_id_label: str = _s("VAT ID", "What the seller's tax identifier is called on invoices.")
    invoice_tax_rate_percent: str = _s("", "Tax charged on purchases (credits + fee), percent; empty means none. Rounded up to the cent.")
    invoice_tax_label: str = _s("VAT", "Name of the tax line on invoices.")
    invoice_notes: str = _s("", "Free text printed at the foot of every invoice.")
    logging_discount_percent: str = _s("1", "Discount on usage, percent, for organizations that opt in to prompt logging (a line item of each charge).")
    sse_keepalive_s: float = _s(1.0, "Seconds between `: OPENROUTER PROCESSING` comments while a stream waits for its first token (one may come up to an eighth of this early: one timer serves every waiting stream).", minimum=0.01)
    catalog_path: str = _s("", "Extra catalog TOML file whose providers and models add to or replace the built-in ones.")
    catalog_builtin: bool = _s(True, "Load the catalog that ships with Farebox (real providers and list prices).")
    log_level: str = _s("info", "Log level of the server.", choices=("debug", "info", "warning", "error"))
    access_log: bool = _s(False, "Log one line per HTTP request (costs throughput).")

    # -- derived paths -------------------------------------------------------------
    @property
    def home_path(self) -> Path:
        return Path(self.home).expanduser()

    @property
    def database_file(self) -> Path:
        return Path(self.database_path).expanduser() if self.database_path else self.home_path / "farebox.db"

    @property
    def management_key_file(self) -> Path:
        return self.home_path / "management_key"

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def _coerce(name: str, raw: Any, where: str, from_env: bool) -> Any:
    f = FIELDS[name]
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    label = f"{where}: {name}"
    try:
        if kind == "bool":
            if isinstance(raw, bool):
                value: Any = raw
            elif from_env and isinstance(raw, str) and raw.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                value = raw.lower() in ("1", "true", "yes", "on")
            else:
                raise ValueError("expected true or false")
        elif kind == "int":
            if isinstance(raw, bool) or not isinstance(raw, int | str) or (isinstance(raw, str) and not from_env):
                raise ValueError("expected an integer")
            try:
                value = int(raw)
            except ValueError:
                raise ValueError("expected an integer") from None
        elif kind == "float":
            if isinstance(raw, bool) or not isinstance(raw, int | float | str) or (isinstance(raw, str) and not from_env):
                raise ValueError("expected a number")
            try:
                value = float(raw)
            except ValueError:
                raise ValueError("expected a number") from None
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError("expected a finite number")
        elif kind == "str":
            if not isinstance(raw, str):
                raise ValueError("expected a string")
            value = raw
        else:  # pragma: no cover - a new field type needs a branch here
            raise AssertionError(kind)
    except ValueError as e:
        raise ConfigError(f"{label}: {e}, got {raw!r}") from None
    choices = f.metadata["choices"]
    if choices and value not in choices:
        raise ConfigError(f"{label}: must be one of {', '.join(choices)}, got {value!r}")
    minimum = f.metadata["minimum"]
    if minimum is not None and value < minimum:
        raise ConfigError(f"{label}: must be at least {minimum}, got {value!r}")
    return value


def load_settings(
    config_file: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Build settings from defaults, then the TOML file, then the environment, then
    explicit overrides (command-line flags)."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}

    home = env.get("FAREBOX_HOME")
    if home:
        values["home"] = home
    path = config_file or env.get("FAREBOX_CONFIG")
    if path is None:
        candidate = Path(values.get("home", Settings.home)).expanduser() / "farebox.toml"
        path = candidate if candidate.exists() else None
    if path is not None:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: file not found") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: {e}") from None
        for key, raw in data.items():
            if key not in FIELDS:
                raise ConfigError(f"{path}: {key}: unknown setting")
            values[key] = _coerce(key, raw, str(path), from_env=False)

    for var, raw in env.items():
        if not var.startswith(ENV_PREFIX) or var in CLIENT_ENV:
            continue
        key = var[len(ENV_PREFIX):].lower()
        if key not in FIELDS:
            raise ConfigError(f"{var}: unknown setting")
        values[key] = _coerce(key, raw, var, from_env=True)
    if home:
        values["home"] = home

    for key, raw in overrides.items():
        if raw is None:
            continue
        if key not in FIELDS:
            raise ConfigError(f"--{key}: unknown setting")
        values[key] = raw

    settings = Settings(**values)
    try:
        percent_bps(settings.logging_discount_percent)
    except MoneyFormatError as e:
        raise ConfigError(f"logging_discount_percent: {e}") from None
    try:
        parse_usd(settings.trial_credit_usd)
    except MoneyFormatError as e:
        raise ConfigError(f"trial_credit_usd: {e}") from None
    try:
        parse_usd(settings.free_purchase_threshold_usd)
    except MoneyFormatError as e:
        raise ConfigError(f"free_purchase_threshold_usd: {e}") from None
    try:
        parse_usd(settings.byok_monthly_allowance_usd)
    except MoneyFormatError as e:
        raise ConfigError(f"byok_monthly_allowance_usd: {e}") from None
    try:  # an exact decimal read like an amount: negatives, non-numbers and over 9 decimals fail
        fee_percent = parse_usd(settings.byok_fee_percent)
    except MoneyFormatError:
        fee_percent = -1
    if not 0 <= fee_percent <= parse_usd("100"):
        raise ConfigError("byok_fee_percent: must be a percentage from 0 to 100 with at most 9 decimals,"
                          f" got {settings.byok_fee_percent!r}")
    if settings.password_scrypt_n & (settings.password_scrypt_n - 1) or settings.password_scrypt_n > 2**20:
        raise ConfigError(f"password_scrypt_n: must be a power of two of at most 1048576 (1 GiB per hash),"
                          f" got {settings.password_scrypt_n}")
    if settings.hold_timeout_s <= settings.upstream_timeout_s:
        raise ConfigError(
            "hold_timeout_s: must exceed upstream_timeout_s, or a hold could expire while its request still runs"
        )
    return settings
