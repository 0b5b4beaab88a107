"""A local stand-in for a hosted OpenAI-compatible API (the Generator's ``hosted`` backend), for the
load benchmark and light multi-node tests: it streams one fixed answer with a set time to first
token and a set token rate, and spends almost no CPU doing it, so that what a benchmark measures on
top of it is the runtime's own cost, not a model's.

It is a stand-in for a third party (OpenAI, or any hosted endpoint the operator configures), which
this machine cannot reach; it speaks the part of the chat-completions protocol the ``openai``
client uses: ``POST /v1/chat/completions`` with ``stream: true`` (server-sent ``data:`` chunks of
``chat.completion.chunk`` objects, a final chunk with ``usage`` when ``stream_options.include_usage``
is set, then ``data: [DONE]``) or ``stream: false`` (one ``chat.completion``), and ``GET /v1/models``.
``GET /stats`` answers ``{"requests", "streams_open", "completed", "cancelled"}``.

Plain asyncio (HTTP/1.1, keep-alive, chunked transfer encoding): no framework, so a streamed token
costs a few microseconds. The answer is split into tokens at spaces (a space stays with the word
after it); the first token is sent ``--ttft-ms`` after the request arrived, then one token every
``1 / --tokens-per-s`` seconds. A client that goes away mid-answer stops its stream (``cancelled``).

Run: ``python benchmarks/_hosted_standin.py --port 0 --ttft-ms 300 --tokens-per-s 50`` prints
``READY <port>`` on its first line once it listens (``--port 0``: a free port).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
import uuid
from typing import Any

DEFAULT_ANSWER = ("Standard shipping takes 3 to 5 business days. "
                  "Express shipping arrives the next business day.")


def tokens_of(text: str) -> list[str]:
    """``text`` cut before each space: ``"".join(tokens_of(t)) == t``."""
    out: list[str] = []
    for i, word in enumerate(text.split(" ")):
        out.append(word if i == 0 else " " + word)
    return [t for t in out if t]


class StandIn:
    """The server: ``answer`` streamed as ``tokens_of(answer)``, first after ``ttft_s``, then
    one every ``1 / tokens_per_s`` seconds."""

    def __init__(self, answer: str, ttft_s: float, tokens_per_s: float) -> None:
        self.tokens = tokens_of(answer)
        self.ttft_s = ttft_s
        self.interval_s = 1.0 / tokens_per_s if tokens_per_s > 0 else 0.0
        self.stats = {"requests": 0, "streams_open": 0, "completed": 0, "cancelled": 0}

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve requests on one connection until the client closes it."""
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, _, v in
                           (line.partition(":") for line in lines[1:] if line)}
                body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
                arrived = time.perf_counter()
                if method == "POST" and path.endswith("/chat/completions"):
                    req = json.loads(body or b"{}")
                    if req.get("stream"):
                        await self._stream(writer, req, arrived)
                    else:
                        await self._complete(writer, req, arrived)
                elif method == "GET" and path.endswith("/models"):
                    await self._json(writer, {"object": "list", "data": [
                        {"id": "standin", "object": "model", "owned_by": "benchmark"}]})
                elif method == "GET" and path == "/stats":
                    await self._json(writer, self.stats)
                else:
                    await self._json(writer, {"error": {"message": f"no route {method} {path}"}}, 404)
                if headers.get("connection", "").lower() == "close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _json(self, writer: asyncio.StreamWriter, obj: Any, status: int = 200) -> None:
        data = json.dumps(obj).encode()
        writer.write(f"HTTP/1.1 {status} OK\r\ncontent-type: application/json\r\n"
                     f"content-length: {len(data)}\r\n\r\n".encode() + data)
        await writer.drain()

    def _usage(self, req: dict[str, Any]) -> dict[str, int]:
        prompt = sum(len(str(m.get("content", ""))) for m in req.get("messages", [])) // 4
        return {"prompt_tokens": prompt, "completion_tokens": len(self._budget(req)),
                "total_tokens": prompt + len(self._budget(req))}

    def _budget(self, req: dict[str, Any]) -> list[str]:
        return self.tokens[: int(req.get("max_tokens") or len(self.tokens))]

    async def _complete(self, writer: asyncio.StreamWriter, req: dict[str, Any], arrived: float) -> None:
        self.stats["requests"] += 1
        await asyncio.sleep(max(0.0, self.ttft_s + self.interval_s * (len(self._budget(req)) - 1)
                                - (time.perf_counter() - arrived)))
        await self._json(writer, {
            "id": "chatcmpl-" + uuid.uuid4().hex, "object": "chat.completion", "created": int(time.time()),
            "model": req.get("model", "standin"),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "".join(self._budget(req))}}],
            "usage": self._usage(req)})
        self.stats["completed"] += 1

    async def _stream(self, writer: asyncio.StreamWriter, req: dict[str, Any], arrived: float) -> None:
        self.stats["requests"] += 1
        self.stats["streams_open"] += 1
        cid, model, created = "chatcmpl-" + uuid.uuid4().hex, req.get("model", "standin"), int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None, usage: Any = None) -> bytes:
            obj: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created,
                                   "model": model, "choices": [] if usage else [
                                       {"index": 0, "delta": delta, "finish_reason": finish}]}
            if usage:
                obj["usage"] = usage
            data = b"data: " + json.dumps(obj).encode() + b"\n\n"
            return f"{len(data):x}\r\n".encode() + data + b"\r\n"

        try:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                         b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n")
            writer.write(chunk({"role": "assistant", "content": ""}))
            await writer.drain()
            for i, token in enumerate(self._budget(req)):
                due = arrived + self.ttft_s + i * self.interval_s
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                writer.write(chunk({"content": token}))
                await writer.drain()
            writer.write(chunk({}, "stop"))
            if (req.get("stream_options") or {}).get("include_usage"):
                writer.write(chunk({}, usage=self._usage(req)))
            done = b"data: [DONE]\n\n"
            writer.write(f"{len(done):x}\r\n".encode() + done + b"\r\n0\r\n\r\n")
            await writer.drain()
            self.stats["completed"] += 1
        except ConnectionError:
            self.stats["cancelled"] += 1
            raise
        finally:
            self.stats["streams_open"] -= 1


async def serve(port: int, answer: str, ttft_ms: float, tokens_per_s: float) -> None:
    """Listen on 127.0.0.1:``port`` (0: a free one), print ``READY <port>``, serve forever."""
    standin = StandIn(answer, ttft_ms / 1000.0, tokens_per_s)
    server = await asyncio.start_server(standin.handle, "127.0.0.1", port, backlog=1024)
    print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    """Entry point (see the module doc)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ttft-ms", type=float, default=300.0, help="time to the first token")
    parser.add_argument("--tokens-per-s", type=float, default=50.0, help="tokens after the first")
    parser.add_argument("--answer", default=DEFAULT_ANSWER, help="the text every request gets")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, args.answer, args.ttft_ms, args.tokens_per_s))


if __name__ == "__main__":
    main()
