"""`farebox`: run the gateway, the simulator and the demo; manage organizations, keys,
credits, the ledger and governance (workspaces, projects, members, BYOK...) of a running
server."""

from __future__ import annotations

import inspect
import os
import re
import sys
from pathlib import Path
from typing import Any

import typer

# The long-running commands (cli/run.py). When one of them is invoked, the management
# commands are not registered: their modules pull in rich and urllib's client, which a
# server never uses, and `farebox serve` must be ready fast (issue 7: footprint).
RUN_COMMANDS = ("serve", "sim", "demo")


def build(command: str | None = None) -> typer.Typer:
    """The CLI. With `command` one of RUN_COMMANDS, only those commands are registered (the
    same help and options for them); otherwise every command is."""
    from farebox.cli import run

    app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
    app.command("serve", help="Run the gateway.")(run.serve)
    app.command("sim", help="Run the simulated upstream (OpenAI dialect).")(run.sim)
    app.command("demo", help="Run the simulator and the gateway with a funded demo organization.")(run.demo)
    if command in RUN_COMMANDS:
        return app
    from farebox.cli import credits, governance, manage, people

    app.add_typer(manage.orgs, name="orgs", help="Organizations.")
    app.add_typer(manage.keys, name="keys", help="API keys.")
    # One `credits` group: grant and show from manage, the purchase commands from cli/credits.py.
    app.add_typer(credits.credits, name="credits", help="Credits.")
    app.add_typer(manage.ledger, name="ledger", help="The ledger.")
    # Governance (issue 6); `keys update` is registered on manage.keys by cli/governance.py.
    app.add_typer(governance.workspaces, name="workspaces", help="Workspaces, their pools and budgets.")
    app.add_typer(governance.projects, name="projects", help="Projects and their budgets.")
    app.add_typer(governance.transfers, name="transfers",
                  help="Credit transfers between the organization and workspaces.")
    app.add_typer(governance.privacy, name="privacy", help="Privacy and prompt-logging settings.")
    app.add_typer(people.members, name="members", help="Members (people) and their roles.")
    app.add_typer(people.byok, name="byok", help="Provider keys the organization brings (BYOK).")
    app.command("activity", help="Usage by day and model, provider, key, workspace, member or project.")(
        people.activity)
    return app


# -- `farebox serve` without typer's runtime ----------------------------------------------------
# Typer converts option values with pydantic adapters: running any command imports pydantic
# and builds one adapter per option, ~0.1 s of CPU and ~10 MB before the server starts. The
# three options of `serve` need no such machinery, so plain `--name value` / `--name=value`
# arguments are read here and serve is called directly. Anything else (--help, an unknown or
# repeated option, a value that is not plainly valid) goes through typer, for its checks and
# messages; so does a `serve` whose options are no longer the plain ones below.

_SERVE_OPTIONS = {"host": "str", "port": "int", "config": "Path"}   # parameter -> annotation
_PORT = re.compile(r"0|[1-9][0-9]{0,4}")


def _plain_serve(run: Any) -> bool:
    """serve still has exactly the options this reader knows, each a plain typer.Option(None)."""
    from typer.models import OptionInfo

    parameters = inspect.signature(run.serve).parameters
    if {name: p.annotation for name, p in parameters.items()} != _SERVE_OPTIONS:
        return False
    for p in parameters.values():
        info = p.default
        if not (isinstance(info, OptionInfo) and info.default is None and not info.param_decls
                and info.envvar is None and info.callback is None and info.parser is None
                and info.expose_value and not info.prompt):
            return False
    return True


def _serve_arguments(args: list[str]) -> dict[str, Any] | None:
    """serve's keyword arguments from its command line, or None when typer must read it."""
    values: dict[str, Any] = dict.fromkeys(_SERVE_OPTIONS)
    seen: set[str] = set()
    i = 0
    while i < len(args):
        flag, eq, value = args[i].partition("=")
        name = flag[2:] if flag.startswith("--") else ""
        if name not in _SERVE_OPTIONS or name in seen:
            return None
        if not eq:
            if i + 1 >= len(args):
                return None
            i += 1
            value = args[i]
        seen.add(name)
        if name == "port":
            if not _PORT.fullmatch(value):
                return None
            values[name] = int(value)
        elif name == "config":
            if not value or value.startswith("-"):
                return None
            values[name] = Path(value)
        else:
            if value.startswith("-"):
                return None
            values[name] = value
        i += 1
    return values


def _serve_directly(args: list[str]) -> bool:
    """Run `farebox serve args` without typer's runtime; False if typer must run it."""
    if any(k.endswith("_COMPLETE") for k in os.environ):   # a shell-completion request
        return False
    values = _serve_arguments(args)
    if values is None:
        return False
    from farebox.cli import run

    if not _plain_serve(run):
        return False
    try:
        run.serve(**values)
    except typer.Exit as e:   # what typer's standalone mode does with it
        sys.exit(e.exit_code)
    return True


def main() -> None:
    # The root group has no options of its own, so the first argument names the command
    # (or is --help, which lists every command).
    command = sys.argv[1] if len(sys.argv) > 1 else None
    try:
        if command == "serve" and _serve_directly(sys.argv[2:]):
            return
        build(command)()
    except KeyboardInterrupt:
        sys.exit(130)
