"""``chat-engine migrate``: apply the database migrations and exit."""

from __future__ import annotations

from runtime.cli.console import console
from runtime.config import load_settings


def migrate() -> None:
    """Apply database migrations (embedded Postgres is started if no URL is configured)."""
    from runtime.db.migrate import upgrade
    from runtime.services import running_services

    settings = load_settings()
    with running_services(settings, redis=False) as services:
        upgrade(services.database_url)
    console.print("migrations applied")
