"""`farebox serve` starts without typer's runtime (which imports pydantic) and without the
management commands' modules: its arguments must still mean exactly what typer makes of
them, anything unusual must still go through typer, and the running server must not
carry the heavy libraries it does not use (issue 7: footprint)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from farebox.cli import main as cli
from farebox.cli import run


def typer_reads(args: list[str]) -> dict[str, object]:
    """serve's parameters as typer itself parses `farebox serve args`."""
    group = typer.main.get_command(cli.build("serve"))
    command = group.commands["serve"]  # type: ignore[attr-defined]
    return command.make_context("serve", list(args)).params


@pytest.mark.parametrize("args", [
    [], ["--port", "8080"], ["--port=0"], ["--host", "0.0.0.0", "--port", "1"], ["--host=::1"],
    ["--config", "a/../b.toml"], ["--config=~/farebox.toml"], ["--config", "./x.toml", "--host", ""],
    ["--port", "65535", "--config", "/etc/farebox.toml", "--host", "127.0.0.1"],
])
def test_plain_arguments_mean_what_typer_makes_of_them(args: list[str]) -> None:
    assert cli._serve_arguments(args) == typer_reads(args)


@pytest.mark.parametrize("args", [
    ["--help"], ["--port", "x"], ["--port", "08"], ["--port", "-1"], ["--port"], ["--bogus", "1"], ["extra"],
    ["--port", "1", "--port", "2"], ["--config", ""], ["--host", "-x"], ["-h"], ["--"],
])
def test_anything_else_is_left_to_typer(args: list[str]) -> None:
    assert cli._serve_arguments(args) is None


def test_serve_still_has_the_plain_options_the_reader_knows() -> None:
    # If cli/run.py changes serve's options, the fast path turns itself off (and this fails,
    # so that the reader is updated rather than silently bypassed).
    assert cli._plain_serve(run)


def farebox(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FAREBOX_HOME": str(home), "COLUMNS": "100"}
    return subprocess.run([sys.executable, "-m", "farebox", *args], env=env, capture_output=True, text=True,
                          timeout=60)


def test_serve_help_and_errors_come_from_typer(tmp_path: Path) -> None:
    shown = farebox("serve", "--help", home=tmp_path)
    assert shown.returncode == 0
    assert "--port" in shown.stdout and "Run the gateway." in shown.stdout
    bad = farebox("serve", "--port", "abc", home=tmp_path)
    assert bad.returncode == 2
    assert "Invalid value for '--port'" in bad.stderr


def test_other_commands_are_all_still_registered(tmp_path: Path) -> None:
    listed = farebox("--help", home=tmp_path)
    assert listed.returncode == 0
    for command in ("serve", "sim", "demo", "orgs", "keys", "credits", "ledger", "workspaces", "members", "byok",
                    "activity"):
        assert re.search(rf"\b{command}\b", listed.stdout), command


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
def test_a_running_server_has_not_loaded_pydantic_cryptography_or_aiohttp(tmp_path: Path) -> None:
    env = {**os.environ, "FAREBOX_HOME": str(tmp_path), "FAREBOX_PORT": "0", "FAREBOX_LOG_LEVEL": "warning"}
    proc = subprocess.Popen([sys.executable, "-m", "farebox", "serve", "--host", "127.0.0.1"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        output = []
        for line in proc.stdout:
            output.append(line)
            if "farebox serving on" in line:
                break
        else:
            pytest.fail("farebox serve did not start:\n" + "".join(output))
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        assert "_pydantic_core" not in maps          # typer's runtime: bypassed for serve
        assert "cryptography" not in maps            # the BYOK vault: loaded on first use
        assert "aiohttp" not in maps                 # alert webhooks and Stripe: loaded on first use
        assert "uvloop" in maps                      # the check can see an extension module
    finally:
        proc.terminate()
        proc.wait(15)
