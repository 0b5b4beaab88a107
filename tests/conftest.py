"""Test fixtures: the testing contract of DESIGN.md.

Once per test session: an embedded Postgres (+pgvector) and Redis in a temp data dir, migrated;
Ray with an explicit ``num_cpus``; Serve's HTTP proxy on a free port with the whole app deployed
at ``/``. Each test gets its own tenant (``tenant`` fixture), so tests never see each other's rows.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from runtime.constants import RAY_ENV_DEFAULTS

REPO = Path(__file__).resolve().parent.parent
FIXTURES = (REPO.parent / "shared" / "fixtures").resolve()
ADMIN_TOKEN = "test-admin-token-" + os.urandom(8).hex()
SESSION_SECRET = "test-session-secret-" + os.urandom(16).hex()
SECRETS_KEY = base64.urlsafe_b64encode(os.urandom(32)).decode()

os.environ.update(
    {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_DEDUP_LOGS": "0",
    }
)
for _key, _value in RAY_ENV_DEFAULTS.items():  # what `chat-engine up` gives a local Ray
    os.environ.setdefault(_key, _value)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


METRICS_PORT = free_port()  # Ray's metrics export of this test session


def wait_http(url: str, timeout_s: float = 15.0) -> None:
    """Block until ``url`` answers any HTTP response (a server started in a subprocess is
    listening). Raises RuntimeError after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer in {timeout_s} s")


@dataclass
class Services:
    """What the session-scoped ``services`` fixture started."""

    data_dir: Path
    database_url: str
    redis_url: str
    env: dict[str, str]
    standins: Any = None
    redis_server: Any = None  # the EmbeddedRedis (tests/test_faults.py stops and starts it)


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    """Embedded Postgres + Redis in a temp data dir, migrated; the provider stand-ins (local HTTP
    servers for WhatsApp, Telegram, Twilio, Mailgun and Slack, which this machine cannot reach);
    CHAT_ENGINE_* set for workers."""
    from runtime.config import get_settings
    from runtime.db.migrate import upgrade
    from runtime.services import EmbeddedPostgres, EmbeddedRedis
    from tests.provider_standins import ProviderStandIns

    data_dir = Path(tempfile.mkdtemp(prefix="chat-engine-test-"))
    pg = EmbeddedPostgres(data_dir / "postgres")
    rd = EmbeddedRedis(data_dir / "redis")
    standins = ProviderStandIns()
    try:
        db_url = pg.start()
        redis_url = rd.start()
        upgrade(db_url)
        standins.start()
        env = {
            **standins.env(),
            "CHAT_ENGINE_SECRETS_KEY": SECRETS_KEY,
            # The fixture sites are served on 127.0.0.1, which the egress policy refuses by default.
            "CHAT_ENGINE_CRAWL_ALLOW_PRIVATE": "true",
            # Retries in tenths of a second and leases of seconds, so outbox tests stay short.
            "CHAT_ENGINE_OUTBOX_BACKOFF_INITIAL_S": "0.05",
            "CHAT_ENGINE_OUTBOX_BACKOFF_MAX_S": "0.5",
            "CHAT_ENGINE_OUTBOX_MAX_ATTEMPTS": "4",
            "CHAT_ENGINE_OUTBOX_LEASE_S": "3",
            "CHAT_ENGINE_OUTBOX_POLL_S": "0.2",
            "CHAT_ENGINE_DATA_DIR": str(data_dir),
            "CHAT_ENGINE_DATABASE_URL": db_url,
            "CHAT_ENGINE_REDIS_URL": redis_url,
            "CHAT_ENGINE_ADMIN_TOKEN": ADMIN_TOKEN,
            "CHAT_ENGINE_SESSION_TOKEN_SECRET": SESSION_SECRET,
            # Seconds-scale timers and a small Ray footprint for 2 cores.
            "CHAT_ENGINE_TIMEKEEPER_POLL_S": "0.5",
            # The weekly report check each second (only tenants older than last week get one:
            # tests/test_analytics.py backdates its tenant).
            "CHAT_ENGINE_WEEKLY_REPORT_CHECK_S": "1",
            "CHAT_ENGINE_KB_JOB_HEARTBEAT_S": "1",
            # Caps small enough to reach in a test (tests/test_caps.py); no other test queues
            # more than 2 messages in one session or opens more than 2 streams of one.
            "CHAT_ENGINE_MAX_TURN_QUEUE": "4",
            "CHAT_ENGINE_MAX_STREAMS_PER_SESSION": "3",
            "CHAT_ENGINE_LLM_MAX_TOKENS": os.environ.get("CHAT_ENGINE_LLM_MAX_TOKENS", "48"),
            "CHAT_ENGINE_EMBEDDING_NUM_CPUS": "0.5",
            "CHAT_ENGINE_GENERATOR_NUM_CPUS": "0.5",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
        os.environ.update(env)
        get_settings.cache_clear()
        yield Services(data_dir, db_url, redis_url, env, standins, redis_server=rd)
    finally:
        standins.stop()
        rd.stop()
        pg.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_cluster(services: Services) -> Iterator[int]:
    """Ray (num_cpus=8 logical, namespace ``chat``) and Serve's proxy on a free port.

    Yields the HTTP port. Started once per test session.
    """
    import ray
    from ray import serve

    port = free_port()
    ray.init(
        num_cpus=8,
        namespace="chat",
        include_dashboard=False,
        _metrics_export_port=METRICS_PORT,  # Ray's metrics agent (Prometheus), read by test_metrics
        runtime_env={"env_vars": services.env},
        logging_level="WARNING",
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port},
                logging_config={"log_level": "WARNING", "enable_access_log": False})
    try:
        yield port
    finally:
        serve.shutdown()
        ray.shutdown()


def _models_available() -> bool:
    # CHAT_ENGINE_TEST_MODELS=0 deploys the ingress alone (quick runs of admin-only tests).
    if os.environ.get("CHAT_ENGINE_TEST_MODELS") == "0":
        return False
    try:
        import runtime.models.deployments  # noqa: F401
    except ModuleNotFoundError:
        return False
    return True


@pytest.fixture(scope="session")
def app_url(ray_cluster: int) -> Iterator[str]:
    """The whole app (ingress + Embedder + Generator) deployed at ``/``; yields its base URL."""
    from ray import serve

    from serve_app import build_app

    serve.run(build_app({"models": _models_available()}), name="chat", route_prefix="/",
              logging_config={"log_level": "WARNING", "enable_access_log": False})
    base = f"http://127.0.0.1:{ray_cluster}"
    deadline = 120.0
    with httpx.Client(base_url=base, timeout=5) as client:
        waited = 0.0
        while True:
            try:
                if client.get("/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if waited > deadline:
                raise RuntimeError("the app did not become healthy in 120 s")
            threading.Event().wait(0.5)
            waited += 0.5
    yield base


@pytest.fixture
async def client(app_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on the deployed app."""
    async with httpx.AsyncClient(base_url=app_url, timeout=120) as c:
        yield c


@pytest.fixture
def admin_headers() -> dict[str, str]:
    """Authorization for the platform admin."""
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@dataclass
class TenantInfo:
    """A tenant created for one test."""

    id: str
    owner_key: str
    name: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.owner_key}"}


async def make_tenant(client: httpx.AsyncClient, name: str) -> TenantInfo:
    """Create a tenant through the admin API."""
    r = await client.post(
        "/v1/tenants", json={"name": name}, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert r.status_code == 201, r.text
    body = r.json()
    return TenantInfo(id=body["tenant_id"], owner_key=body["owner_api_key"], name=name)


@pytest.fixture
async def tenant(client: httpx.AsyncClient, request: pytest.FixtureRequest) -> TenantInfo:
    """A fresh tenant for this test."""
    return await make_tenant(client, f"t-{request.node.name[:60]}")


@pytest.fixture(scope="session")
async def db(services: Services) -> AsyncIterator[Any]:
    """An asyncpg pool on the test database (pgvector codecs registered)."""
    from runtime.db.pool import create_pool

    pool = await create_pool(services.database_url, min_size=1, max_size=4)
    yield pool
    await pool.close()


class LoopbackProxy:
    """A TCP proxy on 127.0.0.1 that a test can cut (``kill_connections``) mid-stream, or take
    down altogether (``block``: open connections aborted, new ones refused at once) and bring back
    (``unblock``). It runs on the test's event loop, so the test must be awaiting meanwhile."""

    def __init__(self, target_port: int | None = None, *, unix_path: str | None = None) -> None:
        assert (target_port is None) != (unix_path is None), "one upstream: a port or a socket"
        self.target_port = target_port
        self.unix_path = unix_path
        self.port = free_port()
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.blocked = False
        self.refused = 0

    def url(self, template: str) -> str:
        """``template`` (a DSN) pointed at the proxy: host 127.0.0.1, the proxy's port."""
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(template)
        user = parts.netloc.rsplit("@", 1)
        netloc = (user[0] + "@" if len(user) == 2 else "") + f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    @classmethod
    def for_url(cls, url: str) -> LoopbackProxy:
        """A proxy in front of the server of ``url``: a ``redis://host:port`` or a Postgres DSN
        (TCP, or the embedded server's percent-encoded unix socket directory)."""
        from urllib.parse import unquote, urlsplit

        parts = urlsplit(url)
        host = unquote(parts.netloc.rsplit("@", 1)[-1])
        if host.startswith("/"):
            sockets = [p for p in Path(host).glob(".s.PGSQL.*") if not p.name.endswith(".lock")]
            assert sockets, f"no Postgres socket in {host}"
            return cls(unix_path=str(sockets[0]))
        assert parts.port is not None, url
        return cls(parts.port)

    def block(self) -> None:
        """The service is "down": cut open connections, refuse new ones."""
        self.blocked = True
        self.kill_connections()

    def unblock(self) -> None:
        """The service is back."""
        self.blocked = False

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(Exception):
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.blocked:
            self.refused += 1
            writer.transport.abort()
            return
        if self.unix_path is not None:
            up_reader, up_writer = await asyncio.open_unix_connection(self.unix_path)
        else:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        if self.blocked:
            # ``block`` came while this connection was still reaching the upstream: it must not
            # survive the cut (a client's lazy connect raced the block on a fast machine).
            self.refused += 1
            up_writer.transport.abort()
            writer.transport.abort()
            return
        self._writers.update({writer, up_writer})
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    def kill_connections(self) -> None:
        """Abort every open connection (the listener stays up for reconnection)."""
        for w in list(self._writers):
            with contextlib.suppress(Exception):
                w.transport.abort()
        self._writers.clear()

    async def stop(self) -> None:
        self.kill_connections()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """``../shared/fixtures``."""
    assert FIXTURES.is_dir(), f"fixtures not found at {FIXTURES}"
    return FIXTURES


# ---------------------------------------------------------------- a real browser
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Any]:
    """Debian's chromium through pip's Playwright (never `playwright install`), one per test
    session; each test opens its own contexts or pages."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is missing: apt-get install -y chromium")
    from playwright.async_api import async_playwright

    pw = await async_playwright().start()
    b = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
    yield b
    await b.close()
    await pw.stop()
