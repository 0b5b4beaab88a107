"""The terminal every ``chat-engine`` command writes to, and the one way a command fails."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console

console = Console()
"""Rich console on stdout; tests read the commands' output from it."""


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``message`` in red and exit with ``code`` (2: bad usage or configuration)."""
    console.print(f"[red]{message}[/red]")
    raise typer.Exit(code)
