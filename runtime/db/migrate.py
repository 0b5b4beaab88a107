"""Schema migrations with Alembic (plain SQL revisions in ``runtime/db/migrations/versions``).

Applied at start-up by the launcher and the test fixtures, never by workers.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

_HERE = Path(__file__).resolve().parent


def _sqlalchemy_url(dsn: str) -> str:
    # Alembic runs synchronously on psycopg 3. SQLAlchemy does not percent-decode a unix-socket
    # host in the netloc (the embedded server's form), so move it to the `host` query parameter.
    url = make_url(dsn).set(drivername="postgresql+psycopg")
    if url.host and url.host.startswith("%2F"):
        url = url.set(host=None).update_query_dict({"host": unquote(url.host)})
    return url.render_as_string(hide_password=False)


def alembic_config(dsn: str) -> Config:
    """An Alembic ``Config`` pointing at this package's migrations and ``dsn``."""
    cfg = Config()
    cfg.set_main_option("script_location", str(_HERE / "migrations"))
    # ConfigParser interpolation: a literal % in a percent-encoded socket path must be doubled.
    cfg.set_main_option("sqlalchemy.url", _sqlalchemy_url(dsn).replace("%", "%%"))
    return cfg


def upgrade(dsn: str, revision: str = "head") -> None:
    """Apply migrations up to ``revision`` (default: all). Idempotent."""
    command.upgrade(alembic_config(dsn), revision)


def downgrade(dsn: str, revision: str) -> None:
    """Revert migrations down to ``revision`` (``base`` for an empty schema)."""
    command.downgrade(alembic_config(dsn), revision)


def current_revision(dsn: str) -> str | None:
    """The revision the database is at, or None for an empty database."""
    engine = create_engine(_sqlalchemy_url(dsn))
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
