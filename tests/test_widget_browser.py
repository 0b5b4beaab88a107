"""The website widget in a real browser (issue 6): Debian's chromium driven by pip's Playwright.

Each test serves a host page from its own small HTTP server (another port, so another origin than
the app) with the owner's one-line snippet on it. The snippet points at the app through a
``LoopbackProxy`` (script src = API base = proxy URL), so a test can cut every connection of the
widget mid-reply. A failing test saves a screenshot under ``test-artifacts/``.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Error as PlaywrightError

from tests.conftest import REPO, LoopbackProxy, TenantInfo, free_port

pytestmark = pytest.mark.browser

ARTIFACTS = REPO / "test-artifacts"
ANSWER_TIMEOUT_MS = 120_000
XSS = "<img src=x onerror=alert(1)>"


# ---------------------------------------------------------------- host pages on other origins
class HostSite:
    """A tiny HTTP server on its own port serving one HTML page at ``/`` (a customer's site)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.html = "<!doctype html><title>empty</title>"
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                body = site.html.encode()
                self.send_response(200 if self.path.split("?")[0] == "/" else 404)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def serve(self, snippet: str) -> str:
        """Put ``snippet`` on the page; returns the page URL."""
        self.html = (
            "<!doctype html><html lang=en><head><meta charset=utf-8><title>Bike shop</title></head>"
            "<body><h1>A customer's website</h1><p>Some content.</p>" + snippet + "</body></html>"
        )
        return self.origin + "/"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def host() -> Iterator[HostSite]:
    """The host page on an allowed origin."""
    site = HostSite()
    yield site
    site.close()


@pytest.fixture
def other_host() -> Iterator[HostSite]:
    """A host page on an origin that is NOT in the channel's allowed origins."""
    site = HostSite()
    yield site
    site.close()


@pytest.fixture
async def proxy(app_url: str) -> AsyncIterator[LoopbackProxy]:
    """A killable TCP proxy in front of the app: the widget reaches the app only through it."""
    p = LoopbackProxy(int(app_url.rsplit(":", 1)[1]))
    await p.start()
    yield p
    await p.stop()


@dataclass
class Widget:
    """A widget channel of the test's tenant, embedded through the proxy."""

    token: str
    channel_id: str
    base: str
    tenant: TenantInfo
    client: httpx.AsyncClient

    @property
    def snippet(self) -> str:
        return f'<script src="{self.base}/widget.js" data-widget-token="{self.token}" async></script>'

    async def add_qa(self, question: str, answer: str) -> None:
        r = await self.client.post("/v1/kb/qa", json={"question": question, "answer": answer},
                                   headers=self.tenant.headers)
        assert r.status_code == 201, r.text

    async def agent(self, name: str) -> dict[str, str]:
        """Create an agent; returns its Authorization header."""
        r = await self.client.post("/v1/users", json={"name": name, "role": "agent"},
                                   headers=self.tenant.headers)
        assert r.status_code == 201, r.text
        return {"Authorization": f"Bearer {r.json()['api_key']}"}

    async def sessions(self) -> list[dict[str, Any]]:
        r = await self.client.get("/v1/sessions", headers=self.tenant.headers)
        assert r.status_code == 200, r.text
        return list(r.json())

    async def messages(self, session_id: str) -> list[dict[str, Any]]:
        r = await self.client.get(f"/v1/sessions/{session_id}/messages", headers=self.tenant.headers)
        assert r.status_code == 200, r.text
        return list(r.json()["messages"])


@pytest.fixture
async def widget(client: httpx.AsyncClient, tenant: TenantInfo, host: HostSite,
                 proxy: LoopbackProxy) -> Widget:
    """A widget channel allowing only ``host``'s origin; its snippet loads through ``proxy``."""
    r = await client.post("/v1/channels", headers=tenant.headers, json={
        "type": "widget", "name": "site", "allowed_origins": [host.origin],
    })
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["snippet"].startswith("<script src=") and body["widget_token"] in body["snippet"]
    return Widget(body["widget_token"], body["id"], f"http://127.0.0.1:{proxy.port}", tenant, client)


# ---------------------------------------------------------------- browser
@dataclass
class Page:
    """A page plus what it observed: JS dialogs and the widget's requests to the app."""

    page: Any
    dialogs: list[str] = field(default_factory=list)
    requests: list[tuple[float, str, dict[str, str]]] = field(default_factory=list)

    async def frame(self) -> Any:
        """The chat window's frame (once the widget opened it)."""
        handle = await self.page.locator("iframe[data-ce=frame]").element_handle(timeout=30_000)
        frame = await handle.content_frame()
        assert frame is not None
        await frame.wait_for_load_state("domcontentloaded")
        return frame

    async def open_chat(self) -> Any:
        """Click the launcher (unless the chat is already open) and wait for the history."""
        host = self.page.locator("[data-chat-engine]")
        await host.wait_for(state="attached")
        await self.page.wait_for_function(
            "() => document.querySelector('[data-chat-engine]').dataset.state !== 'opening'")
        if await host.get_attribute("data-state") != "open":
            await self.page.locator("[data-ce=launcher]").click()
        frame = await self.frame()
        await frame.wait_for_selector("#input:not([disabled])", timeout=30_000)
        return frame

    async def session_id(self) -> str:
        raw = await self.page.evaluate(
            "() => JSON.parse(Object.entries(localStorage).find(([k]) => "
            "k.startsWith('chat-engine:'))[1]).session_id"
        )
        return str(raw)


@pytest.fixture
async def page(browser: Any, request: pytest.FixtureRequest) -> AsyncIterator[Page]:
    """A fresh browser context and page; a screenshot is saved if the test fails."""
    context = await browser.new_context(viewport={"width": 1200, "height": 900})
    context.set_default_timeout(60_000)
    pg = await context.new_page()
    out = Page(pg)

    async def on_dialog(dialog: Any) -> None:
        out.dialogs.append(f"{dialog.type}: {dialog.message}")
        await dialog.dismiss()

    async def on_request(req: Any) -> None:
        if "/v1/widget/" in req.url:
            at = time.monotonic()
            try:
                headers = await req.all_headers()
            except PlaywrightError:
                # The page closed (the test ended) before the headers came back: the listener's
                # error would otherwise surface in the next test's context setup.
                return
            out.requests.append((at, req.url, headers))

    pg.on("dialog", on_dialog)
    pg.on("request", on_request)
    failed_before = request.session.testsfailed
    try:
        yield out
    finally:
        # The call phase is reported before fixtures are torn down: a new failure is this test's.
        if request.session.testsfailed > failed_before:
            ARTIFACTS.mkdir(exist_ok=True)
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
            try:
                await pg.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
            except Exception as exc:  # noqa: BLE001 - the test's own failure matters more
                print(f"screenshot failed: {exc}")
        await context.close()


async def ask(frame: Any, text: str) -> None:
    await frame.fill("#input", text)
    await frame.press("#input", "Enter")


async def final_ai(frame: Any) -> Any:
    loc = frame.locator(".msg.ai[data-state=final]")
    await loc.first.wait_for(timeout=ANSWER_TIMEOUT_MS)
    return loc


# Every change the widget makes to the answer's bubble, as it makes it (a MutationObserver, not
# animation frames: a busy CI machine renders few frames, and several tokens can land in one).
RECORD_GROWTH = """() => {
  window.__growth = [];
  const record = () => {
    const b = document.querySelector('.msg.ai'), t = b && b.querySelector('.text');
    if (t) window.__growth.push([t.textContent.length, b.dataset.state]);
  };
  new MutationObserver(record).observe(document.body,
    {subtree: true, childList: true, characterData: true, attributes: true,
     attributeFilter: ['data-state']});
}"""


async def ingest_pdf(widget: Widget, pdf: Path) -> None:
    r = await widget.client.post(
        "/v1/kb/ingest", headers=widget.tenant.headers,
        files=[("file", (pdf.name, pdf.read_bytes(), "application/pdf"))],
    )
    assert r.status_code == 202, r.text
    job = r.json()
    deadline = time.monotonic() + 300
    while job["status"] in ("pending", "running"):
        assert time.monotonic() < deadline, f"ingestion did not finish: {job}"
        await asyncio.sleep(1)
        job = (await widget.client.get(f"/v1/kb/jobs/{job['id']}", headers=widget.tenant.headers)).json()
    assert job["status"] == "completed" and job["chunks"] > 0, job


# ---------------------------------------------------------------- tests
async def test_stream_answer_then_talk_to_a_human(
    page: Page, widget: Widget, host: HostSite, fixtures_dir: Path
) -> None:
    """Greeting bubble, a fixture-KB question streamed token by token, then the hand-off and an
    agent's reply shown with the agent's name."""
    await ingest_pdf(widget, fixtures_dir / "kb-pdf" / "billing-guide.pdf")
    await page.page.goto(host.serve(widget.snippet))
    greeting = page.page.locator("[data-ce=greeting]")
    await greeting.wait_for(state="visible")
    assert (await greeting.text_content()) == "Hi! Got questions? I'm Sarah"

    frame = await page.open_chat()
    assert await frame.locator("footer").text_content() == "Powered by chat-engine"
    await frame.evaluate(RECORD_GROWTH)
    await ask(frame, "What happens if I exceed my pageview limit?")
    assert await frame.locator("#typing").is_visible(), "typing indicator until the first token"

    answers = await final_ai(frame)
    growth = await frame.evaluate("window.__growth")
    streamed = [n for n, state in growth if state == "streaming"]
    # The pieces of an answer leave the actor 30 ms apart or more; a busy ingress or browser
    # can still read several in one go (CI once saw the whole quote arrive at once), so steps
    # are not asserted. What must hold: the bubble streams before it is final, and only grows.
    assert streamed, f"the bubble should stream before it is final: {growth[:50]}"
    assert streamed == sorted(streamed), "streamed text only grows"
    assert [state for _, state in growth][-1] == "final", growth[-5:]
    assert not await frame.locator("#typing").is_visible()
    assert await answers.count() == 1, "the answer renders once (POST stream and event stream)"
    session_id = await page.session_id()
    stored = [m for m in await widget.messages(session_id) if m["sender"] == "ai"]
    assert len(stored) == 1
    shown = await answers.first.locator(".text").text_content()
    assert shown == stored[0]["text"] and len(shown) >= max(streamed[-1], 1)

    # Talk to a human: the hand-off state, then an agent's reply with the agent's name.
    await frame.click("#human")
    status = frame.locator("#status")
    await status.wait_for(state="visible")
    assert "Connecting you to our team" in (await status.text_content() or "")
    assert await frame.locator("#human").is_disabled()
    escalated = [s for s in await widget.sessions() if s["id"] == session_id]
    assert escalated and escalated[0]["status"] == "human_escalated"

    agent = await widget.agent("Priya Patel")
    r = await widget.client.post(f"/v1/sessions/{session_id}/reply", headers=agent,
                                 json={"text": "Hi, Priya here. See https://example.com/help for more."})
    assert r.status_code == 200, r.text
    reply = frame.locator(".msg.agent")
    await reply.wait_for()
    assert await reply.locator(".name").text_content() == "Priya Patel"
    link = reply.locator("a")
    assert await link.get_attribute("href") == "https://example.com/help"
    assert await link.get_attribute("rel") == "noopener noreferrer"
    assert "Priya" in (await status.text_content() or "")
    assert page.dialogs == []


async def test_stream_cut_mid_reply_still_completes(
    page: Page, widget: Widget, host: HostSite, proxy: LoopbackProxy
) -> None:
    """Every connection of the widget is cut right after the first token: the event stream
    reconnects with Last-Event-ID and the complete reply appears, once."""
    await widget.add_qa(
        "What are your opening hours on Saturday?",
        "On Saturdays the workshop is open from 9:00 to 16:00. On Sundays we open from 10:00 to "
        "14:00 for quick repairs only, and on Mondays we are closed.",
    )
    cut: dict[str, Any] = {}

    def first_token(_source: Any, length: int) -> None:
        if not cut:
            cut.update(at=time.monotonic(), length=length)
            proxy.kill_connections()

    await page.page.expose_binding("__ceFirstToken", first_token)
    await page.page.goto(host.serve(widget.snippet))
    frame = await page.open_chat()
    await frame.evaluate("""() => new MutationObserver((_, obs) => {
        const b = document.querySelector('.msg.ai[data-state=streaming] .text');
        if (b && b.textContent.length) { obs.disconnect(); window.__ceFirstToken(b.textContent.length); }
    }).observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true})""")
    await ask(frame, "What are your opening hours on Saturday?")

    answers = await final_ai(frame)
    assert cut, "the stream was never cut"
    session_id = await page.session_id()
    stored = [m for m in await widget.messages(session_id) if m["sender"] == "ai"]
    assert len(stored) == 1
    shown = await answers.first.locator(".text").text_content()
    assert shown == stored[0]["text"]
    assert cut["length"] < len(shown), "the cut happened mid-reply"
    assert await frame.locator(".msg.ai").count() == 1, "no broken or duplicated bubble"
    assert await frame.locator(".msg.customer").count() == 1

    # The event stream came back by itself, resuming after the last event it had seen.
    deadline = time.monotonic() + 15
    resumed: list[str] = []
    while not resumed and time.monotonic() < deadline:
        resumed = [url for t, url, headers in page.requests if t > cut["at"] and "/events" in url
                   and (headers.get("last-event-id") or "last_event_id=" in url)]
        await asyncio.sleep(0.25)
    assert resumed, [u for _, u, _h in page.requests]


async def test_reload_restores_the_conversation(page: Page, widget: Widget, host: HostSite) -> None:
    """The session token stays in the host page's storage; after a reload the same session and
    its history come back in the chat window."""
    await widget.add_qa("Do you repair e-bikes?",
                        "Yes, we service Bosch, Shimano and Brose e-bike motor systems.")
    await page.page.goto(host.serve(widget.snippet))
    frame = await page.open_chat()
    await ask(frame, "Do you repair e-bikes?")
    answer = (await final_ai(frame)).first
    text_before = await answer.locator(".text").text_content()
    session_before = await page.session_id()

    await page.page.reload()
    frame = await page.open_chat()
    await frame.locator(".msg.ai[data-state=final]").first.wait_for()
    assert await page.session_id() == session_before
    assert await frame.locator(".msg.customer .text").all_text_contents() == ["Do you repair e-bikes?"]
    assert await frame.locator(".msg.ai .text").all_text_contents() == [text_before]
    assert len(await widget.sessions()) == 1, "restored, not a new session"


async def test_disallowed_origin_gets_no_session(
    page: Page, widget: Widget, host: HostSite, other_host: HostSite, app_url: str
) -> None:
    """A page on an origin the channel does not allow gets no session (and no chat window), while
    the allowed origin does; the chat page may be framed only by the allowed origins."""
    await page.page.goto(other_host.serve(widget.snippet))
    await page.page.locator("[data-ce=launcher]").click()
    notice = page.page.locator("[data-ce=notice]")
    await notice.wait_for(state="visible")
    assert "not available" in (await notice.text_content() or "")
    assert await page.page.locator("iframe[data-ce=frame]").count() == 0
    assert await widget.sessions() == []

    await page.page.goto(host.serve(widget.snippet))
    await page.open_chat()
    sessions = await widget.sessions()
    assert len(sessions) == 1 and sessions[0]["channel_id"] == widget.channel_id

    async with httpx.AsyncClient(base_url=app_url) as c:
        r = await c.get("/widget/frame", params={"wt": widget.token})
        assert r.status_code == 200
        assert f"frame-ancestors {host.origin}" in r.headers["content-security-policy"]
        assert other_host.origin not in r.headers["content-security-policy"]
        assert (await c.get("/widget/frame", params={"wt": "wt_unknown"})).status_code == 404


async def test_agent_html_is_shown_as_text(page: Page, widget: Widget, host: HostSite) -> None:
    """An agent reply containing HTML shows as text and runs nothing.

    AI answers and agent replies share ONE rendering path in the chat window (frame.js
    ``renderMessage`` -> ``renderText``, text nodes and DOM-built links only; streamed AI tokens go
    through ``renderText`` too), so this covers model output as well.
    """
    await page.page.goto(host.serve(widget.snippet))
    frame = await page.open_chat()
    session_id = await page.session_id()
    agent = await widget.agent("Sam")
    r = await widget.client.post(f"/v1/sessions/{session_id}/reply", headers=agent, json={"text": XSS})
    assert r.status_code == 200, r.text

    reply = frame.locator(".msg.agent")
    await reply.wait_for()
    assert await reply.locator(".text").text_content() == XSS
    assert await reply.locator(".name").text_content() == "Sam"
    assert await frame.locator(".log img").count() == 0
    await page.page.wait_for_timeout(1000)
    assert page.dialogs == []

    # The history path (after a reload) renders through the same function.
    await page.page.reload()
    frame = await page.open_chat()
    await frame.locator(".msg.agent").wait_for()
    assert await frame.locator(".msg.agent .text").text_content() == XSS
    assert await frame.locator(".log img").count() == 0
    await page.page.wait_for_timeout(500)
    assert page.dialogs == []


async def test_demo_tenant_and_page(page: Page, app_url: str, services: Any) -> None:
    """``chat-engine up``'s demo: the tenant, widget channel and sample knowledge base are created
    once (a second start reuses them), and ``/demo`` serves a page where the widget chats."""
    from runtime.config import get_settings
    from runtime.demo import ensure_demo

    settings = get_settings()
    assert settings.data_dir == services.data_dir
    first = await ensure_demo(settings, services.database_url, app_url, None, None)
    assert first is not None and first["snippet"].startswith(f'<script src="{app_url}/widget.js"')
    again = await ensure_demo(settings, services.database_url, app_url, None, None)
    assert again == first, "a later start reuses the demo tenant"
    # The inbox login printed by `chat-engine up` works, and only with its own password.
    async with httpx.AsyncClient(base_url=app_url, timeout=30) as c:
        login = {"email": first["inbox_email"], "password": first["inbox_password"]}
        ok = await c.post("/v1/auth/login", json=login)
        assert ok.status_code == 200 and ok.json()["role"] == "owner", ok.text
        bad = await c.post("/v1/auth/login", json={**login, "password": login["password"] + "x"})
        assert bad.status_code == 401, bad.text

    await page.page.goto(app_url + "/demo")
    assert "Spoke &amp; Sprocket" in await page.page.content()
    frame = await page.open_chat()
    await ask(frame, "How much is a basic tune-up?")
    reply = frame.locator(".msg.ai[data-state=final], .msg.system")
    await reply.first.wait_for(timeout=ANSWER_TIMEOUT_MS)
    assert await frame.locator(".msg.ai[data-state=final]").count() == 1, await frame.locator(
        "#log").inner_text()
