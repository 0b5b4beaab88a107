"""The crawler's egress policy, page and job deadlines and owner limits (issue 16), without Ray or
Postgres.

Traffic goes only to 127.0.0.1: host names are answered by an injected resolver, and two guards
fail the test if anything tries to go elsewhere: ``LoopbackOnly`` (the httpcore backend under the
policy in most tests) and ``connect_guard`` (autouse: ``socket.connect``/``connect_ex`` and
``socket.getaddrinfo`` refuse, and record, any target but 127.0.0.1, for the tests that use the
crawler's default wiring). A refused address is refused before any connect, so the guards must
stay silent even when the policy is handed 10.0.0.1 or 169.254.169.254.

Seams used (see ingestion.egress): ``EgressPolicy(resolver=...)`` for DNS answers,
``allow_hosts`` to let a fake public name (``public.test`` -> 127.0.0.1) through while 127.0.0.1
itself stays refused, and ``allow_networks`` for the same with a network.
"""

from __future__ import annotations

import errno
import ipaddress
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from uuid import uuid4

import httpcore
import httpx
import pytest

from ingestion.crawl import Crawler, CrawlFailure, FetchedPage
from ingestion.egress import (
    EgressPolicy,
    EgressRefused,
    EgressTransport,
    classify,
    policy_from_settings,
)
from ingestion.jobs import IngestSpec, crawl_limits
from ingestion.jobs import JobRunner as _Runner
from runtime.config import Settings, load_settings
from runtime.errors import ConfigError

LOOPBACK = "127.0.0.1"
POLICY_NAME = "CHAT_ENGINE_CRAWL_ALLOW_PRIVATE"


# ---------------------------------------------------------------- guards
@dataclass
class Guard:
    allowed: list[Any] = field(default_factory=list)
    violations: list[Any] = field(default_factory=list)


@pytest.fixture(autouse=True)
def connect_guard(monkeypatch: pytest.MonkeyPatch) -> Iterator[Guard]:
    """Any socket connect or name lookup for something other than 127.0.0.1 fails (and fails
    the test at teardown) instead of leaving the machine."""
    guard = Guard()
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def check(address: Any) -> bool:
        ok = isinstance(address, tuple) and address[0] == LOOPBACK
        (guard.allowed if ok else guard.violations).append(address)
        return ok

    def connect(self: socket.socket, address: Any) -> None:
        if not check(address):
            raise OSError(errno.EACCES, f"test guard: connect to {address!r} refused")
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        if not check(address):
            return errno.EACCES
        return real_connect_ex(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in (None, LOOPBACK, LOOPBACK.encode()):
            guard.violations.append(("getaddrinfo", host))
            raise socket.gaierror(socket.EAI_NONAME, f"test guard: no lookups of {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield guard
    assert guard.violations == [], f"something tried to leave loopback: {guard.violations}"


class LoopbackOnly(httpcore.AsyncNetworkBackend):
    """The backend under the policy: records every connect it is asked for and opens it only
    for 127.0.0.1 (anything else is a test failure, reported by ``assert_clean``)."""

    def __init__(self) -> None:
        self.inner = httpcore.AnyIOBackend()
        self.connects: list[tuple[str, int]] = []
        self.violations: list[tuple[str, int]] = []

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None, socket_options: Any = None,
                          ) -> httpcore.AsyncNetworkStream:
        if host != LOOPBACK:
            self.violations.append((host, port))
            raise httpcore.ConnectError(f"test guard: connect to {host}:{port} refused")
        self.connects.append((host, port))
        return await self.inner.connect_tcp(host, port, timeout=timeout,
                                            local_address=local_address,
                                            socket_options=socket_options)

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        raise AssertionError("no unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)

    def assert_clean(self) -> None:
        assert self.violations == [], f"asked to connect beyond loopback: {self.violations}"


def fake_dns(answers: dict[str, Sequence[str]], calls: list[str] | None = None
             ) -> Callable[[str, int], Any]:
    async def resolve(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append(host)
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, f"{host} not in the test DNS")
        return list(answers[host])
    return resolve


def guarded_client(policy: EgressPolicy, backend: LoopbackOnly, **kw: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=EgressTransport(policy, inner=backend), timeout=10, **kw)


# ---------------------------------------------------------------- test servers on 127.0.0.1
Route = tuple[int, dict[str, str], bytes] | Callable[[BaseHTTPRequestHandler], None]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.server.requests.append(self.path)
        route = self.server.routes.get(self.path)
        if callable(route):
            route(self)
            return
        status, headers, body = route or (404, {"Content-Type": "text/plain"}, b"not found")
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, routes: dict[str, Route]) -> None:
        super().__init__((LOOPBACK, 0), _Handler)
        self.routes = routes
        self.requests: list[str] = []

    @property
    def port(self) -> int:
        return int(self.server_address[1])


@pytest.fixture
def serve() -> Iterator[Callable[..., _Server]]:
    servers: list[_Server] = []

    def start(routes: dict[str, Route], tls: Any = None) -> _Server:
        server = _Server(routes)
        if tls is not None:
            server.socket = tls.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def html(body: str) -> tuple[int, dict[str, str], bytes]:
    return 200, {"Content-Type": "text/html; charset=utf-8"}, (
        f"<html><head><title>t</title></head><body>{body}</body></html>".encode())


ROBOTS_OK = (200, {"Content-Type": "text/plain"}, b"User-agent: *\nAllow: /\n")


def site_routes() -> dict[str, Route]:
    return {
        "/robots.txt": ROBOTS_OK,
        "/index.html": html('<h1>Help</h1><p>Start here.</p><a href="/a.html">a</a>'),
        "/a.html": html("<h1>A</h1><p>Returns take 30 days.</p>"),
    }


def drip(handler: BaseHTTPRequestHandler) -> None:
    """Headers at once, then one byte per second: every read is quick, the page never ends."""
    handler.send_response(200)
    handler.send_header("Content-Type", "text/html")
    handler.end_headers()
    try:
        handler.wfile.write(b"<html><body>")
        for _ in range(60):
            handler.wfile.flush()
            time.sleep(1.0)
            handler.wfile.write(b"x")
    except OSError:  # the crawler gave up and closed the connection
        return


async def crawl_all(crawler: Crawler) -> tuple[list[FetchedPage], list[CrawlFailure]]:
    pages: list[FetchedPage] = []
    failures: list[CrawlFailure] = []
    async for item in crawler.run():
        if isinstance(item, FetchedPage):
            pages.append(item)
        else:
            failures.append(item)
    return pages, failures


# ---------------------------------------------------------------- classification (no connects)
@pytest.mark.parametrize("address, kind", [
    ("10.0.0.1", "private"), ("172.16.0.1", "private"), ("192.168.1.1", "private"),
    ("169.254.169.254", "a cloud metadata endpoint"), ("169.254.1.1", "link-local"),
    ("::1", "loopback"), ("fc00::1", "private"), ("fe80::1", "link-local"),
    ("127.0.0.1", "loopback"), ("::ffff:10.0.0.1", "private"), ("::ffff:127.0.0.1", "loopback"),
    ("100.64.0.1", "shared (100.64.0.0/10)"), ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("224.0.0.1", "multicast"), ("ff02::1", "multicast"), ("240.0.0.1", "reserved"),
    ("64:ff9b::a00:1", "private"), ("2002:a00:1::", "private"),
])
def test_classification_refuses(address: str, kind: str) -> None:
    assert classify(address) == kind
    assert EgressPolicy().refusal(ipaddress.ip_address(address)) == kind


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:4700::1", "8.8.8.8",
                                     "::ffff:93.184.216.34"])
def test_classification_accepts_public(address: str) -> None:
    assert classify(address) is None


def test_allow_private_still_refuses_metadata() -> None:
    policy = EgressPolicy(allow_private=True)
    for a in ("10.0.0.1", "127.0.0.1", "::1", "fc00::1", "169.254.1.1"):
        assert policy.refusal(ipaddress.ip_address(a)) is None, a
    for a in ("169.254.169.254", "fd00:ec2::254", "0.0.0.0", "224.0.0.1"):
        assert policy.refusal(ipaddress.ip_address(a)) is not None, a
    with pytest.raises(EgressRefused, match="metadata"):
        policy.check_name("metadata.google.internal.")


# ---------------------------------------------------------------- DNS answers, before any connect
@pytest.mark.parametrize("name, answer, kind", [
    ("intranet.test", ["10.0.0.1"], "private"),
    ("meta.test", ["169.254.169.254"], "cloud metadata"),
    ("v6.test", ["::1"], "loopback"),
    ("ula.test", ["fc00::1"], "private"),
    ("mixed.test", ["93.184.216.34", "192.168.1.1"], "private"),  # one bad answer refuses all
])
async def test_dns_answer_refused_before_connect(name: str, answer: list[str], kind: str) -> None:
    backend = LoopbackOnly()
    policy = EgressPolicy(resolver=fake_dns({name: answer}))
    async with guarded_client(policy, backend) as client:
        with pytest.raises(EgressRefused) as info:
            await client.get(f"http://{name}/robots.txt")
    msg = str(info.value)
    assert msg.startswith(f"host {name} resolves to ") and kind in msg and POLICY_NAME in msg
    assert not any(a in msg for a in answer)  # the inside DNS is not told to the owner
    assert backend.connects == [] and backend.violations == []


async def test_crawler_reports_refusal_per_source() -> None:
    backend = LoopbackOnly()
    policy = EgressPolicy(resolver=fake_dns({"intranet.test": ["10.0.0.1"]}))
    async with guarded_client(policy, backend) as client:
        crawler = Crawler("http://intranet.test/docs/", client=client, egress=policy)
        pages, failures = await crawl_all(crawler)
    assert pages == [] and len(failures) == 1
    assert failures[0].error.startswith("not crawled: refused by the egress policy: host "
                                        "intranet.test resolves to a private address")
    assert backend.connects == []
    # A literal private address is named (the owner typed it).
    async with guarded_client(EgressPolicy(), backend) as client:
        crawler = Crawler("http://10.0.0.1:8080/", client=client)
        _, failures = await crawl_all(crawler)
    assert "address 10.0.0.1 is private: the crawler refuses private, loopback, link-local and " \
        f"metadata addresses ({POLICY_NAME})" in failures[0].error
    assert backend.connects == []
    backend.assert_clean()


async def test_metadata_names_refused_without_lookup() -> None:
    calls: list[str] = []
    backend = LoopbackOnly()
    policy = EgressPolicy(allow_private=True, resolver=fake_dns({}, calls))
    async with guarded_client(policy, backend) as client:
        for url in ("http://metadata.google.internal/computeMetadata/v1/",
                    "http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/"):
            with pytest.raises(EgressRefused, match="metadata"):
                await client.get(url)
        with pytest.raises(EgressRefused, match="local name"):
            await EgressPolicy().resolve("localhost", 80)
    assert calls == [] and backend.connects == []


async def test_connects_to_the_checked_address_with_the_host_name_kept(
    serve: Callable[..., _Server],
) -> None:
    """The socket goes to the address that was checked (no second lookup, so no rebinding);
    the Host header still names the host."""
    seen: list[str] = []

    def echo_host(h: BaseHTTPRequestHandler) -> None:
        seen.append(h.headers.get("Host", ""))
        status, headers, body = html("ok")
        h.send_response(status)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    server = serve({"/": echo_host})
    calls: list[str] = []
    backend = LoopbackOnly()
    policy = EgressPolicy(resolver=fake_dns({"public.test": [LOOPBACK]}, calls),
                          allow_hosts=["public.test"])
    async with guarded_client(policy, backend) as client:
        r = await client.get(f"http://public.test:{server.port}/")
    assert r.status_code == 200
    assert backend.connects == [(LOOPBACK, server.port)] and calls == ["public.test"]
    assert seen == [f"public.test:{server.port}"]


def _self_signed(tmp: Any, name: str) -> tuple[str, str]:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


async def test_tls_keeps_the_host_name_for_sni_and_the_certificate(
    serve: Callable[..., _Server], tmp_path: Any,
) -> None:
    """Connected to 127.0.0.1, the TLS handshake still names public.test (SNI) and the
    certificate is verified against public.test, not against the address."""
    import ssl

    cert, key = _self_signed(tmp_path, "public.test")
    sni: list[str | None] = []
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    server_ctx.sni_callback = lambda sock, name, ctx: sni.append(name)  # type: ignore[assignment,func-returns-value]
    server = serve({"/": html("secure")}, tls=server_ctx)
    client_ctx = ssl.create_default_context(cafile=cert)
    backend = LoopbackOnly()
    policy = EgressPolicy(resolver=fake_dns({"public.test": [LOOPBACK]}),
                          allow_hosts=["public.test"])
    async with httpx.AsyncClient(transport=EgressTransport(policy, inner=backend, verify=client_ctx),
                                 timeout=10) as client:
        r = await client.get(f"https://public.test:{server.port}/")
        assert r.status_code == 200 and b"secure" in r.content
        with pytest.raises(EgressRefused):  # the address itself is still refused
            await client.get(f"https://{LOOPBACK}:{server.port}/")
    assert sni == ["public.test"] and backend.connects == [(LOOPBACK, server.port)]


# ---------------------------------------------------------------- a real server on 127.0.0.1
async def test_local_server_refused_and_never_contacted(
    serve: Callable[..., _Server], connect_guard: Guard,
) -> None:
    server = serve(site_routes())
    # The crawler's own client (default wiring), policy on.
    crawler = Crawler(f"http://{LOOPBACK}:{server.port}/index.html",
                      egress=EgressPolicy(allow_private=False))
    pages, failures = await crawl_all(crawler)
    assert pages == [] and len(failures) == 1
    error = failures[0].error
    assert "refused by the egress policy" in error and "address 127.0.0.1 is loopback" in error
    assert POLICY_NAME in error
    assert server.requests == []  # the access log is empty
    assert connect_guard.allowed == []  # not even a connect was attempted

    # A closed port on the same address reads exactly the same: no port-scan oracle.
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        closed = s.getsockname()[1]
    _, failures2 = await crawl_all(Crawler(f"http://{LOOPBACK}:{closed}/index.html"))
    assert failures2[0].error == error


async def test_redirect_to_loopback_refused(
    serve: Callable[..., _Server],
) -> None:
    target = serve(site_routes())
    to_target = f"http://{LOOPBACK}:{target.port}"
    public = serve({
        "/robots.txt": (302, {"Location": f"{to_target}/robots.txt"}, b""),
        "/go": (302, {"Location": f"{to_target}/a.html"}, b""),
    })
    backend = LoopbackOnly()
    # public.test is "public" (allowed by name, the seam); 127.0.0.1 itself stays refused.
    policy = EgressPolicy(resolver=fake_dns({"public.test": [LOOPBACK]}),
                          allow_hosts=["public.test"])
    async with guarded_client(policy, backend) as client:
        crawler = Crawler(f"http://public.test:{public.port}/index.html", client=client,
                          egress=policy)
        pages, failures = await crawl_all(crawler)
        assert pages == [] and len(failures) == 1
        assert failures[0].error.startswith(
            "not crawled: robots.txt redirected to a host refused by the egress policy: "
            "address 127.0.0.1 is loopback")
        # Any redirect the client follows is checked at connect time too.
        with pytest.raises(EgressRefused, match="loopback"):
            await client.get(f"http://public.test:{public.port}/go", follow_redirects=True)
    assert public.requests == ["/robots.txt", "/go"]
    assert target.requests == []
    assert set(backend.connects) == {(LOOPBACK, public.port)}
    backend.assert_clean()


async def test_redirect_to_metadata_refused(serve: Callable[..., _Server]) -> None:
    public = serve({"/robots.txt": (
        302, {"Location": "http://169.254.169.254/latest/meta-data/iam/"}, b"")})
    backend = LoopbackOnly()
    policy = EgressPolicy(resolver=fake_dns({"public.test": [LOOPBACK]}),
                          allow_networks=[f"{LOOPBACK}/32"])
    async with guarded_client(policy, backend) as client:
        crawler = Crawler(f"http://public.test:{public.port}/", client=client, egress=policy)
        _, failures = await crawl_all(crawler)
    assert "address 169.254.169.254 is a cloud metadata endpoint" in failures[0].error
    assert public.requests == ["/robots.txt"]
    backend.assert_clean()


async def test_allow_private_fetches_the_local_server(
    serve: Callable[..., _Server], connect_guard: Guard,
) -> None:
    server = serve(site_routes())
    settings = load_settings(crawl_allow_private=True)
    crawler = Crawler(f"http://{LOOPBACK}:{server.port}/index.html",
                      egress=policy_from_settings(settings))
    pages, failures = await crawl_all(crawler)
    assert failures == []
    assert sorted(p.url.rsplit("/", 1)[1] for p in pages) == ["a.html", "index.html"]
    assert server.requests == ["/robots.txt", "/index.html", "/a.html"]
    # The default wiring went through the guarded socket layer, to 127.0.0.1 only.
    assert connect_guard.allowed and all(a[0] == LOOPBACK for a in connect_guard.allowed)


def test_production_refuses_allow_private() -> None:
    prod = Settings.model_construct(environment="production", crawl_allow_private=True)
    with pytest.raises(ConfigError, match=POLICY_NAME):
        policy_from_settings(prod)
    assert policy_from_settings(
        Settings.model_construct(environment="production", crawl_allow_private=False)
    ).allow_private is False
    assert load_settings(crawl_allow_private=False).crawl_allow_private is False


# ---------------------------------------------------------------- deadlines
async def test_slow_drip_fails_at_the_page_deadline(
    serve: Callable[..., _Server],
) -> None:
    server = serve({"/slow.html": drip})
    crawler = Crawler(f"http://{LOOPBACK}:{server.port}/slow.html",
                      egress=EgressPolicy(allow_private=True), page_deadline_s=2.0, timeout_s=20)
    t0 = time.monotonic()
    pages, failures = await crawl_all(crawler)
    elapsed = time.monotonic() - t0
    assert pages == [] and len(failures) == 1
    assert failures[0].error.startswith("page deadline passed") and "2 s" in failures[0].error
    assert 1.9 <= elapsed < 6, elapsed
    assert server.requests == ["/robots.txt", "/slow.html"]


async def test_job_deadline_stops_the_crawl_and_keeps_pages(
    serve: Callable[..., _Server],
) -> None:
    server = serve({
        "/robots.txt": ROBOTS_OK,
        "/index.html": html('<p>Start.</p><a href="/slow.html">slow</a>'),
        "/slow.html": drip,
    })
    crawler = Crawler(f"http://{LOOPBACK}:{server.port}/index.html",
                      egress=EgressPolicy(allow_private=True), page_deadline_s=60,
                      job_deadline_s=1.5)
    t0 = time.monotonic()
    pages, failures = await crawl_all(crawler)
    assert time.monotonic() - t0 < 5
    assert [p.url.rsplit("/", 1)[1] for p in pages] == ["index.html"]
    assert len(failures) == 1 and "the job hit its deadline of 1.5 s" in failures[0].error


# ---------------------------------------------------------------- the job runner (no database)
class _NoPool:
    """Stands in for the asyncpg pool: _Runner.progress only writes through kb_db (patched)."""

    def acquire(self) -> Any:
        class _Conn:
            async def __aenter__(self) -> object:
                return object()

            async def __aexit__(self, *exc: object) -> None:
                return None
        return _Conn()


async def test_job_runner_uses_settings_deadline_and_completes(
    serve: Callable[..., _Server], monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ingestion.jobs as jobs

    async def no_write(*args: Any, **kwargs: Any) -> None:
        return None

    monkeypatch.setattr(jobs.kb_db, "update_job_progress", no_write)
    server = serve({
        "/robots.txt": ROBOTS_OK,
        "/index.html": html('<p>Start.</p><a href="/slow.html">slow</a>'),
        "/slow.html": drip,
    })
    settings = load_settings(crawl_allow_private=True, crawl_job_deadline_s=1.5,
                             crawl_page_deadline_s=60)
    spec = IngestSpec(url=f"http://{LOOPBACK}:{server.port}/index.html")
    runner = _Runner(_NoPool(), None, uuid4(), uuid4(), spec, settings, None)  # type: ignore[arg-type]
    stored: list[str] = []

    async def handle_page(page: FetchedPage) -> None:  # stands in for chunk+embed+store
        stored.append(page.final_url)
        runner.state.documents += 1

    monkeypatch.setattr(runner, "handle_page", handle_page)
    t0 = time.monotonic()
    state = await runner._run([])
    assert time.monotonic() - t0 < 5
    assert state.status == "completed" and stored == [spec.url]
    assert [e["source"] for e in state.errors] == [spec.url]
    assert "the job hit its deadline" in state.errors[0]["error"]

    # With the setting off, the same job refuses the local site, naming the policy.
    server.requests.clear()
    strict = load_settings(crawl_allow_private=False)
    runner = _Runner(_NoPool(), None, uuid4(), uuid4(), spec, strict, None)  # type: ignore[arg-type]
    state = await runner._run([])
    assert state.status == "failed" and len(state.errors) == 1
    assert re.search(r"refused by the egress policy: address 127\.0\.0\.1 is loopback",
                     state.errors[0]["error"])
    assert server.requests == []


async def test_job_in_production_with_allow_private_fails() -> None:
    prod = load_settings().model_copy(
        update={"environment": "production", "crawl_allow_private": True})
    spec = IngestSpec(url="http://shop.test/")
    runner = _Runner(_NoPool(), None, uuid4(), uuid4(), spec, prod, None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="refused in production"):
        await runner._run([])


# ---------------------------------------------------------------- owner limits
def test_owner_limits_are_capped_by_the_operators() -> None:
    s = load_settings(crawl_max_pages=500, crawl_max_depth=6)
    assert crawl_limits(IngestSpec(url="http://x.test", max_pages=100_000, max_depth=50), s) == (
        500, 6)
    assert crawl_limits(IngestSpec(url="http://x.test", max_pages=20, max_depth=2), s) == (20, 2)
    assert crawl_limits(IngestSpec(url="http://x.test"), s) == (500, 6)
    assert crawl_limits(IngestSpec(url="http://x.test", max_depth=0), s) == (500, 0)
