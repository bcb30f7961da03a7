"""`farebox`: run the gateway, the simulator and the demo; manage organizations, keys,
credits, the ledger and governance (workspaces, projects, members, BYOK...) of a running
server."""

from __future__ import annotations

import sys

import typer

from farebox.cli import credits, governance, manage, people, run

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
app.command("serve", help="Run the gateway.")(run.serve)
app.command("sim", help="Run the simulated upstream (OpenAI dialect).")(run.sim)
app.command("demo", help="Run the simulator and the gateway with a funded demo organization.")(run.demo)
app.add_typer(manage.orgs, name="orgs", help="Organizations.")
app.add_typer(manage.keys, name="keys", help="API keys.")
# One `credits` group: grant and show from manage, the purchase commands from cli/credits.py.
app.add_typer(credits.credits, name="credits", help="Credits.")
app.add_typer(manage.ledger, name="ledger", help="The ledger.")
# Governance (issue 6); `keys update` is registered on manage.keys by cli/governance.py.
app.add_typer(governance.workspaces, name="workspaces", help="Workspaces, their pools and budgets.")
app.add_typer(governance.projects, name="projects", help="Projects and their budgets.")
app.add_typer(governance.transfers, name="transfers", help="Credit transfers between the organization and workspaces.")
app.add_typer(governance.privacy, name="privacy", help="Privacy and prompt-logging settings.")
app.add_typer(people.members, name="members", help="Members (people) and their roles.")
app.add_typer(people.byok, name="byok", help="Provider keys the organization brings (BYOK).")
app.command("activity", help="Usage by day and model, provider, key, workspace, member or project.")(people.activity)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
