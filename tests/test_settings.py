from __future__ import annotations

import re
from pathlib import Path

import pytest

from farebox.errors import ConfigError
from farebox.settings import CLIENT_ENV, FIELDS, Settings, load_settings

DOCS = Path(__file__).resolve().parents[1] / "docs" / "settings.md"


def test_every_setting_is_documented_with_its_default():
    text = DOCS.read_text()
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `(\w+)` \| `FAREBOX_\w+` \|.*$", text, re.M)}
    missing = sorted(set(FIELDS) - set(rows))
    assert not missing, f"settings missing from docs/settings.md: {missing}"
    stale = sorted(set(rows) - set(FIELDS))
    assert not stale, f"docs/settings.md documents settings that do not exist: {stale}"
    for name, field in FIELDS.items():
        default = field.default
        shown = str(default).lower() if isinstance(default, bool) else (
            f'"{default}"' if isinstance(default, str) else str(default))
        assert f"`{shown}`" in rows[name], f"{name}: default {shown} not in its docs row"
        assert field.metadata["doc"], f"{name} has no one-line doc in settings.py"
    for var in CLIENT_ENV:
        assert f"`{var}`" in text


def test_defaults():
    s = load_settings(env={})
    assert s == Settings()
    assert s.database_file == Path("~/.farebox").expanduser() / "farebox.db"


def test_layers_file_then_environment_then_flags(tmp_path):
    config = tmp_path / "farebox.toml"
    config.write_text('port = 9000\nhost = "0.0.0.0"\nattempts_max = 5\n')
    s = load_settings(config, env={"FAREBOX_PORT": "9100"}, host="127.0.0.2")
    assert (s.port, s.host, s.attempts_max) == (9100, "127.0.0.2", 5)


def test_home_and_its_config_file(tmp_path):
    (tmp_path / "farebox.toml").write_text("sse_keepalive_s = 2.5\n")
    s = load_settings(env={"FAREBOX_HOME": str(tmp_path)})
    assert s.home_path == tmp_path and s.sse_keepalive_s == 2.5
    assert s.database_file == tmp_path / "farebox.db" and s.management_key_file == tmp_path / "management_key"


def test_environment_types():
    s = load_settings(env={"FAREBOX_CATALOG_BUILTIN": "no", "FAREBOX_HOLD_TIMEOUT_S": "1000",
                           "FAREBOX_LOG_LEVEL": "debug", "FAREBOX_URL": "http://x", "OTHER": "1"})
    assert s.catalog_builtin is False and s.hold_timeout_s == 1000.0 and s.log_level == "debug"


@pytest.mark.parametrize(("env", "message"), [
    ({"FAREBOX_PORTT": "1"}, r"FAREBOX_PORTT: unknown setting"),
    ({"FAREBOX_PORT": "eighty"}, r"FAREBOX_PORT: port: expected an integer, got .eighty."),
    ({"FAREBOX_PORT": "-1"}, r"FAREBOX_PORT: port: must be at least 0"),
    ({"FAREBOX_ACCESS_LOG": "maybe"}, r"FAREBOX_ACCESS_LOG: access_log: expected true or false"),
    ({"FAREBOX_SQLITE_SYNCHRONOUS": "OFF"}, r"sqlite_synchronous: must be one of NORMAL, FULL"),
    ({"FAREBOX_SSE_KEEPALIVE_S": "nan"}, r"sse_keepalive_s: expected a finite number"),
    ({"FAREBOX_HOLD_TIMEOUT_S": "10"}, r"hold_timeout_s: must exceed upstream_timeout_s"),
])
def test_bad_environment_names_its_variable(env, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(env=env)


@pytest.mark.parametrize(("text", "message"), [
    ("prot = 1\n", r"farebox.toml: prot: unknown setting"),
    ('port = "8080"\n', r"farebox.toml: port: expected an integer, got .8080."),
    ("access_log = 1\n", r"access_log: expected true or false"),
    ("[server]\nport = 1\n", r"server: unknown setting"),
    ("port = \n", r"farebox.toml: "),
])
def test_bad_file_names_its_path(tmp_path, text, message):
    config = tmp_path / "farebox.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings(config, env={})


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_settings(tmp_path / "nope.toml", env={})


def test_trial_credit_must_be_an_exact_amount():
    with pytest.raises(ConfigError, match="trial_credit_usd"):
        load_settings(env={"FAREBOX_TRIAL_CREDIT_USD": "1.5e-12"})
