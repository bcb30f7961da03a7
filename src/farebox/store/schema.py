"""The schema, as an ordered list of migrations. A database records the migrations it
has applied in `schema_migrations`; start-up applies the rest, each in its own
transaction. Never edit a released migration: append a new one.

Every money table carries the organization id so accounts can later shard by it.
"""

MIGRATIONS: list[tuple[int, str]] = [
    (1, """
CREATE TABLE organizations (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);
CREATE TABLE workspaces (
    id INTEGER PRIMARY KEY,
    org_id INTEGER NOT NULL REFERENCES organizations(id),
    name TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (org_id, name)
);
CREATE TABLE keys (
    hash TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('api', 'management')),
    org_id INTEGER REFERENCES organizations(id),
    workspace_id INTEGER REFERENCES workspaces(id),
    name TEXT NOT NULL,
    label TEXT NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0,
    deleted INTEGER NOT NULL DEFAULT 0,
    limit_nanos INTEGER CHECK (limit_nanos IS NULL OR limit_nanos >= 0),
    limit_reset TEXT CHECK (limit_reset IS NULL OR limit_reset IN ('daily', 'weekly', 'monthly')),
    include_byok_in_limit INTEGER NOT NULL DEFAULT 0,
    expires_at INTEGER,
    creator_user_id TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER
);
CREATE TABLE accounts (
    id TEXT PRIMARY KEY,
    org_id INTEGER REFERENCES organizations(id),
    kind TEXT NOT NULL,
    floored INTEGER NOT NULL,
    balance INTEGER NOT NULL DEFAULT 0
);
-- Defence in depth: the book never lets a customer's balance go negative; the
-- database refuses it too.
CREATE TRIGGER accounts_floor BEFORE UPDATE ON accounts
WHEN NEW.floored = 1 AND NEW.balance < 0
BEGIN SELECT RAISE(ABORT, 'balance below zero'); END;
CREATE TRIGGER accounts_floor_insert BEFORE INSERT ON accounts
WHEN NEW.floored = 1 AND NEW.balance < 0
BEGIN SELECT RAISE(ABORT, 'balance below zero'); END;
CREATE TRIGGER accounts_floored_fixed BEFORE UPDATE OF floored ON accounts
WHEN NEW.floored != OLD.floored
BEGIN SELECT RAISE(ABORT, 'an account''s floor cannot change'); END;
CREATE TABLE entries (
    id INTEGER PRIMARY KEY,
    created_at INTEGER NOT NULL,
    kind TEXT NOT NULL,
    from_account TEXT NOT NULL REFERENCES accounts(id),
    to_account TEXT NOT NULL REFERENCES accounts(id),
    amount INTEGER NOT NULL CHECK (amount > 0),
    reference TEXT NOT NULL UNIQUE,
    org_id INTEGER,
    key_hash TEXT,
    generation_id TEXT,
    memo TEXT
);
CREATE TRIGGER entries_append_only_update BEFORE UPDATE ON entries
BEGIN SELECT RAISE(ABORT, 'entries are append-only'); END;
CREATE TRIGGER entries_append_only_delete BEFORE DELETE ON entries
BEGIN SELECT RAISE(ABORT, 'entries are append-only'); END;
CREATE INDEX entries_generation ON entries (generation_id) WHERE generation_id IS NOT NULL;
CREATE INDEX entries_key ON entries (key_hash, created_at) WHERE key_hash IS NOT NULL;
CREATE TABLE generations (
    id TEXT PRIMARY KEY,
    org_id INTEGER NOT NULL,
    workspace_id INTEGER,
    key_hash TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    model TEXT NOT NULL,
    provider TEXT,
    total_cost INTEGER NOT NULL,
    charged INTEGER NOT NULL,
    tokens_prompt INTEGER NOT NULL,
    tokens_completion INTEGER NOT NULL,
    streamed INTEGER NOT NULL,
    cancelled INTEGER NOT NULL,
    finish_reason TEXT,
    data BLOB NOT NULL
);
CREATE INDEX generations_org ON generations (org_id, created_at);
INSERT INTO accounts (id, org_id, kind, floored) VALUES
    ('system:grants', NULL, 'grants', 0),
    ('system:revenue', NULL, 'revenue', 0),
    ('system:overrun', NULL, 'overrun', 0);
"""),
    (2, """
-- Credit lots (issue 5): every credit into a wallet is a lot with a kind and an expiry,
-- keyed by the entry that brought it in. What a lot has left is derived by replaying the
-- wallet's entries (ledger/lots.py), never stored.
CREATE TABLE lots (
    entry_id INTEGER PRIMARY KEY REFERENCES entries(id),
    org_id INTEGER NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('purchase', 'bonus', 'grant', 'trial')),
    expires_at INTEGER,
    purchase_id TEXT
);
CREATE TRIGGER lots_append_only_update BEFORE UPDATE ON lots
BEGIN SELECT RAISE(ABORT, 'lots are append-only'); END;
CREATE TRIGGER lots_append_only_delete BEFORE DELETE ON lots
BEGIN SELECT RAISE(ABORT, 'lots are append-only'); END;
INSERT INTO accounts (id, org_id, kind, floored) VALUES ('system:expired', NULL, 'expired', 0);
"""),
    (3, """
-- Purchases of credit (issue 5). A paid purchase posts: payments -> wallet (the credits, a
-- purchase lot), payments -> fees (the fee, never through the wallet) and bonuses ->
-- wallet (the bonus, a promotional lot).
CREATE TABLE purchases (
    id TEXT PRIMARY KEY,
    org_id INTEGER NOT NULL REFERENCES organizations(id),
    method TEXT NOT NULL CHECK (method IN ('card', 'crypto', 'bank')),
    credits INTEGER NOT NULL CHECK (credits > 0),
    fee INTEGER NOT NULL CHECK (fee >= 0),
    bonus INTEGER NOT NULL CHECK (bonus >= 0),
    status TEXT NOT NULL CHECK (status IN ('paid')),
    external_reference TEXT,
    created_at INTEGER NOT NULL
);
INSERT INTO accounts (id, org_id, kind, floored) VALUES
    ('system:payments', NULL, 'payments', 0),
    ('system:fees', NULL, 'fees', 0),
    ('system:bonuses', NULL, 'bonuses', 0);
"""),
    (4, """
-- The payment rail and what it leaves behind (issue 5).
-- An organization's billing profile: its Stripe customer and saved card (for auto top-up),
-- auto top-up terms, and low-balance alert thresholds (JSON) with their armed state.
CREATE TABLE billing_profiles (
    org_id INTEGER PRIMARY KEY REFERENCES organizations(id),
    email TEXT,
    stripe_customer TEXT,
    payment_method TEXT,
    card_label TEXT,
    topup_enabled INTEGER NOT NULL DEFAULT 0,
    topup_threshold INTEGER CHECK (topup_threshold IS NULL OR topup_threshold >= 0),
    topup_amount INTEGER CHECK (topup_amount IS NULL OR topup_amount > 0),
    topup_disabled_reason TEXT,
    alerts TEXT NOT NULL DEFAULT '[]',
    alerts_disarmed TEXT NOT NULL DEFAULT '{}',
    updated_at INTEGER NOT NULL
);
-- This database's random identity. It goes into Stripe metadata and idempotency keys: two
-- Farebox databases sharing one Stripe account (staging and production, a restored copy)
-- must neither act on each other's events nor collide on each other's keys.
CREATE TABLE installation (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    token TEXT NOT NULL
);
-- Every Stripe event acted on, so a replayed delivery is recognised and ignored.
CREATE TABLE stripe_events (
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    received_at INTEGER NOT NULL
);
-- Auto top-ups: one row per top-up started. `key_seq` numbers the Stripe idempotency key of
-- the current charge attempt: a retry after an unknown outcome reuses it, one after a
-- decline takes the next.
CREATE TABLE topups (
    id INTEGER PRIMARY KEY,
    org_id INTEGER NOT NULL REFERENCES organizations(id),
    credits INTEGER NOT NULL CHECK (credits > 0),
    fee INTEGER NOT NULL CHECK (fee >= 0),
    bonus INTEGER NOT NULL CHECK (bonus >= 0),
    tax INTEGER NOT NULL DEFAULT 0 CHECK (tax >= 0),
    status TEXT NOT NULL CHECK (status IN ('pending', 'paid', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    key_seq INTEGER NOT NULL DEFAULT 0,
    payment_intent TEXT,
    error TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX topups_org ON topups (org_id, id);
-- Refunds of card purchases: the entries move first (wallet -> refunds, the bonus back to
-- bonuses), then Stripe is asked; `status` follows Stripe's answer.
CREATE TABLE refunds (
    purchase_id TEXT PRIMARY KEY REFERENCES purchases(id),
    org_id INTEGER NOT NULL,
    amount INTEGER NOT NULL CHECK (amount > 0),
    forfeited INTEGER NOT NULL CHECK (forfeited >= 0),
    status TEXT NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    stripe_refund TEXT,
    error TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
-- Invoices, numbered without gaps: a purchase and its invoice commit in one transaction.
-- `data` is the finished document (seller, buyer, lines, tax) as issued: settings changed
-- later do not rewrite an issued invoice.
CREATE TABLE invoices (
    number INTEGER PRIMARY KEY,
    org_id INTEGER NOT NULL REFERENCES organizations(id),
    purchase_id TEXT NOT NULL UNIQUE REFERENCES purchases(id),
    issued_at INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX invoices_org ON invoices (org_id, number);
CREATE TRIGGER invoices_append_only_update BEFORE UPDATE ON invoices
BEGIN SELECT RAISE(ABORT, 'invoices are append-only'); END;
CREATE TRIGGER invoices_append_only_delete BEFORE DELETE ON invoices
BEGIN SELECT RAISE(ABORT, 'invoices are append-only'); END;
INSERT INTO accounts (id, org_id, kind, floored) VALUES
    ('system:refunds', NULL, 'refunds', 0),
    ('system:taxes', NULL, 'taxes', 0);
"""),
    (5, """
-- Governance (issue 6).
-- A workspace spends from its own pool (`pooled`: the account org:<o>:ws:<w>:wallet, funded
-- by transfers) or from its organization's wallet. Budgets are JSON {period: nano-dollars}
-- with period in daily, weekly, monthly, lifetime; settings are JSON (privacy).
ALTER TABLE workspaces ADD COLUMN pooled INTEGER NOT NULL DEFAULT 0;
ALTER TABLE workspaces ADD COLUMN budgets TEXT NOT NULL DEFAULT '{}';
ALTER TABLE workspaces ADD COLUMN include_byok_in_budgets INTEGER NOT NULL DEFAULT 0;
ALTER TABLE workspaces ADD COLUMN settings TEXT NOT NULL DEFAULT '{}';
ALTER TABLE workspaces ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;
ALTER TABLE workspaces ADD COLUMN updated_at INTEGER;
-- Organization settings (JSON): privacy (deny_training, deny_retention, zdr_only) and the
-- prompt-logging opt-in.
ALTER TABLE organizations ADD COLUMN settings TEXT NOT NULL DEFAULT '{}';
-- Per-key rate limits (requests and tokens per minute); NULL: none.
ALTER TABLE keys ADD COLUMN rate_limit_rpm INTEGER CHECK (rate_limit_rpm IS NULL OR rate_limit_rpm > 0);
ALTER TABLE keys ADD COLUMN rate_limit_tpm INTEGER CHECK (rate_limit_tpm IS NULL OR rate_limit_tpm > 0);
-- Projects: named inside a workspace, with budgets like a workspace's; requests name them.
CREATE TABLE projects (
    id INTEGER PRIMARY KEY,
    org_id INTEGER NOT NULL REFERENCES organizations(id),
    workspace_id INTEGER NOT NULL REFERENCES workspaces(id),
    name TEXT NOT NULL,
    budgets TEXT NOT NULL DEFAULT '{}',
    deleted INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    updated_at INTEGER
);
CREATE UNIQUE INDEX projects_name ON projects (workspace_id, name) WHERE deleted = 0;
-- Transfers between an organization's wallet and its workspaces' pools: the entries carry
-- the money (one per credit lot moved, so expiry and kind travel with it); this row makes
-- a transfer idempotent on its reference and says who asked.
CREATE TABLE transfers (
    reference TEXT PRIMARY KEY,
    org_id INTEGER NOT NULL REFERENCES organizations(id),
    from_account TEXT NOT NULL REFERENCES accounts(id),
    to_account TEXT NOT NULL REFERENCES accounts(id),
    amount INTEGER NOT NULL CHECK (amount > 0),
    memo TEXT,
    created_by TEXT,
    created_at INTEGER NOT NULL
);
CREATE INDEX transfers_org ON transfers (org_id, created_at);
-- People. `workspaces` is a JSON list of workspace ids the member is limited to (NULL: all).
CREATE TABLE members (
    id TEXT PRIMARY KEY,
    org_id INTEGER NOT NULL REFERENCES organizations(id),
    email TEXT NOT NULL,
    name TEXT,
    role TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    password_hash TEXT NOT NULL,
    workspaces TEXT,
    disabled INTEGER NOT NULL DEFAULT 0,
    deleted INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    updated_at INTEGER
);
CREATE UNIQUE INDEX members_email ON members (org_id, email) WHERE deleted = 0;
-- Login sessions of members: only the token's SHA-256 is kept.
CREATE TABLE sessions (
    token_hash TEXT PRIMARY KEY,
    member_id TEXT NOT NULL REFERENCES members(id),
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
-- A workspace's own provider keys, encrypted (AES-GCM) with key material that is never in
-- the database; `key_id` names which key material sealed `secret`.
CREATE TABLE byok_credentials (
    id TEXT PRIMARY KEY,
    org_id INTEGER NOT NULL REFERENCES organizations(id),
    workspace_id INTEGER NOT NULL REFERENCES workspaces(id),
    provider TEXT NOT NULL,
    name TEXT NOT NULL,
    label TEXT NOT NULL,
    secret BLOB NOT NULL,
    key_id TEXT NOT NULL,
    always_use INTEGER NOT NULL DEFAULT 0,
    disabled INTEGER NOT NULL DEFAULT 0,
    deleted INTEGER NOT NULL DEFAULT 0,
    created_by TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER
);
-- Prompts and completions, kept only for organizations that opted in to logging.
CREATE TABLE generation_content (
    id TEXT PRIMARY KEY,
    org_id INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    data BLOB NOT NULL
);
-- What activity reports group by, as columns.
ALTER TABLE generations ADD COLUMN project_id INTEGER;
ALTER TABLE generations ADD COLUMN endpoint_id TEXT;
ALTER TABLE generations ADD COLUMN reasoning_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE generations ADD COLUMN is_byok INTEGER NOT NULL DEFAULT 0;
ALTER TABLE generations ADD COLUMN byok_cost INTEGER NOT NULL DEFAULT 0;
ALTER TABLE generations ADD COLUMN settled_at INTEGER;
"""),
    (6, """
-- When a lot became spendable (issue 5 follow-up). A grant's, purchase's or failed refund's
-- lot joins the in-memory book only once its entry has committed, so a charge settled in
-- the meantime has a higher entry id yet could not draw from it. `visible_after` is the
-- highest entry id at the moment the lot joined the book (set by a later write from the
-- same FIFO writer); replaying the entries (ledger/lots.py) lets only entries above it draw
-- from the lot. NULL (older rows, or a crash before the marker was written): the lot is
-- spendable from its own entry on.
ALTER TABLE lots ADD COLUMN visible_after INTEGER;
-- Lots stay append-only. The single update allowed is setting visible_after once, from NULL
-- to an entry id at or above the lot's own, with every other column unchanged; any other
-- update (and any delete, lots_append_only_delete) is refused.
DROP TRIGGER lots_append_only_update;
CREATE TRIGGER lots_append_only_update BEFORE UPDATE ON lots
WHEN OLD.visible_after IS NOT NULL OR NEW.visible_after IS NULL OR NEW.visible_after < OLD.entry_id
    OR NEW.entry_id IS NOT OLD.entry_id OR NEW.org_id IS NOT OLD.org_id OR NEW.kind IS NOT OLD.kind
    OR NEW.expires_at IS NOT OLD.expires_at OR NEW.purchase_id IS NOT OLD.purchase_id
BEGIN SELECT RAISE(ABORT, 'lots are append-only'); END;
"""),
    (7, """
-- The ledger writer (issue 7): every settled charge inserts an entry, and each index on
-- entries is one more B-tree the insert updates inside the commit a response waits for.
-- These two had no reader: nothing looks entries up by key (key usage and limits are
-- rebuilt from generations), and nothing looks them up by generation (`ledger verify`
-- groups all charges by generation in one scan; the statement joins entries to
-- generations through the generations' primary key). entries_generation was keyed by the
-- random generation id, so each charge dirtied a page of it at a random place.
DROP INDEX entries_key;
DROP INDEX entries_generation;
"""),
]
