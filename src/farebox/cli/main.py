"""`farebox`: run the gateway, the simulator and the demo; manage organizations, keys,
credits and the ledger of a running server."""

from __future__ import annotations

import sys

import typer

from farebox.cli import credits, manage, run

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
app.command("serve", help="Run the gateway.")(run.serve)
app.command("sim", help="Run the simulated upstream (OpenAI dialect).")(run.sim)
app.command("demo", help="Run the simulator and the gateway with a funded demo organization.")(run.demo)
app.add_typer(manage.orgs, name="orgs", help="Organizations.")
app.add_typer(manage.keys, name="keys", help="API keys.")
# One `credits` group: grant and show from manage, the purchase commands from cli/credits.py.
app.add_typer(credits.credits, name="credits", help="Credits.")
app.add_typer(manage.ledger, name="ledger", help="The ledger.")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
