"""``chat-engine`` command line: ``up``, ``tenant create``, ``migrate``, ``ingest``, ``report``.

One module per command group; this package only assembles them into :data:`app`. The command
modules import nothing from here (their shared console is :mod:`runtime.cli.console`), so the
package has no import circle.
"""

from __future__ import annotations

import typer

from runtime.cli import ingest, migrate, report, tenant, up

app = typer.Typer(help="Omnichannel AI customer-support runtime.", no_args_is_help=True)
app.command()(up.up)
app.command()(migrate.migrate)
app.command()(ingest.ingest)
app.command()(report.report)
app.add_typer(tenant.app, name="tenant")


def main() -> None:
    """Console-script entry point (``chat-engine = "runtime.cli:main"``)."""
    app()
