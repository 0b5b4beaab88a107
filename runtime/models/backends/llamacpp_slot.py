"""What runs in a llama.cpp slot's own thread: prefill (with the prefix KV cache) and decoding.

A slot is one ``llama_cpp.Llama`` instance with its own KV cache and its own single worker thread
(:class:`Slot`); a request is a :class:`Job`. :func:`prefill` brings the slot's KV cache to the
prompt less its last token, reusing what it can: the state left by the previous request up to the
longest common token prefix, or a saved KV state of the request's cacheable prefix (a tenant's
fixed system prompt; an LRU per slot). :func:`decode` samples until EOS, a stop string, the token
limit or cancellation, and hands text to ``emit`` as it goes. Both check the job's stop flag
between steps (every ``PREFILL_CHUNK`` prompt tokens, every sampled token), so a cancelled request
frees its slot within one step. :class:`~runtime.models.backends.llamacpp.LlamaCppBackend` owns
the slots and the asyncio side.
"""

from __future__ import annotations

import codecs
import ctypes
import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import llama_cpp
import numpy as np
from llama_cpp import Llama, LlamaGrammar

from runtime.models.backends import StopMatcher
from runtime.models.types import StreamItem, TokenDelta

#: prefixes shorter than this are not worth a saved KV state
MIN_PREFIX_TOKENS = 16
#: prompt tokens evaluated per llama_decode call during prefill (the stop flag is checked between)
PREFILL_CHUNK = 256


def common_prefix_len(a: Sequence[int] | np.ndarray, b: Sequence[int] | np.ndarray) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    x = np.asarray(a[:n], dtype=np.int64)
    y = np.asarray(b[:n], dtype=np.int64)
    diff = np.flatnonzero(x != y)
    return int(diff[0]) if diff.size else n


class Stopped(Exception):
    """Raised inside a slot thread when the request was cancelled during prefill."""


@dataclass
class PrefixState:
    """A saved KV state: the tokens it covers and llama.cpp's sequence-state bytes (used cells
    only)."""

    tokens: list[int]
    data: bytes


@dataclass
class Slot:
    """One model instance, its one-thread executor and its LRU of saved prefix states (keyed by a
    hash of the prefix tokens)."""

    index: int
    llama: Llama
    executor: ThreadPoolExecutor
    prefixes: OrderedDict[str, PrefixState] = field(default_factory=OrderedDict)


@dataclass
class Job:
    """One generation request as the slot thread sees it (token ids, limits, the stop flag).

    ``t_accept`` and ``t_stop`` are ``time.perf_counter()`` seconds: when the request arrived and
    when it was cancelled.
    """

    request_id: str
    prompt: list[int]
    prefix_len: int
    max_tokens: int
    temperature: float
    grammar: LlamaGrammar | None
    stops: list[str]
    t_accept: float
    repeat_penalty: float = 1.0
    stop: threading.Event = field(default_factory=threading.Event)
    t_stop: float | None = None

    def cancel(self) -> None:
        """Set the stop flag (once; the first call records ``t_stop``). Thread-safe."""
        if not self.stop.is_set():
            self.t_stop = time.perf_counter()
            self.stop.set()


@dataclass
class Failure:
    """An exception raised in the slot thread, carried to the consumer of the stream."""

    exc: BaseException


Emit = Callable[[StreamItem | Failure], None]


def eval_chunks(llama: Llama, tokens: Sequence[int], job: Job) -> None:
    """Evaluate ``tokens`` into the KV cache, ``PREFILL_CHUNK`` at a time. Raises Stopped."""
    for i in range(0, len(tokens), PREFILL_CHUNK):
        if job.stop.is_set():
            raise Stopped()
        llama.eval(tokens[i : i + PREFILL_CHUNK])


def truncate(llama: Llama, keep: int) -> int:
    """Drop KV cells past ``keep`` tokens; returns the tokens kept (0 when the cache could not
    be cut and was cleared instead)."""
    if keep < llama.n_tokens:
        if keep == 0 or not llama._ctx.kv_cache_seq_rm(-1, keep, -1):
            llama.reset()
            llama._ctx.kv_cache_seq_rm(-1, 0, -1)
            return 0
        llama.n_tokens = keep
    return keep


def save_state(llama: Llama) -> PrefixState:
    """The KV state of sequence 0 as it is now."""
    ctx = llama._ctx.ctx
    size = llama_cpp.llama_state_seq_get_size(ctx, 0)
    buf = (ctypes.c_uint8 * size)()
    n = llama_cpp.llama_state_seq_get_data(ctx, buf, size, 0)
    return PrefixState(tokens=llama.input_ids[: llama.n_tokens].tolist(), data=bytes(buf)[:n])


def restore_state(llama: Llama, state: PrefixState) -> None:
    """Replace the KV cache with ``state``. Raises RuntimeError (cache reset) on failure."""
    llama._ctx.kv_cache_seq_rm(-1, 0, -1)
    buf = (ctypes.c_uint8 * len(state.data)).from_buffer_copy(state.data)
    if not llama_cpp.llama_state_seq_set_data(llama._ctx.ctx, buf, len(state.data), 0):
        llama.reset()
        raise RuntimeError("llama_state_seq_set_data failed to restore a prefix")
    n = len(state.tokens)
    llama.input_ids[:n] = state.tokens
    llama.n_tokens = n
    llama._requires_eval = True


def prefill(slot: Slot, job: Job, cache_entries: int) -> int:
    """Bring the slot's KV cache to ``prompt[:-1]``; returns the prompt tokens reused.

    cache_entries: the size of the slot's prefix-state LRU (0: no prefix cache). Raises Stopped.
    """
    llama, prompt = slot.llama, job.prompt
    lcp = common_prefix_len(llama.input_ids[: llama.n_tokens], prompt)
    use_prefix = cache_entries > 0 and job.prefix_len >= MIN_PREFIX_TOKENS
    key = ""
    if use_prefix:
        key = hashlib.blake2b(
            np.asarray(prompt[: job.prefix_len], dtype=np.int32).tobytes(), digest_size=16
        ).hexdigest()
        if lcp < job.prefix_len and key in slot.prefixes:
            restore_state(llama, slot.prefixes[key])
            slot.prefixes.move_to_end(key)
            lcp = job.prefix_len
    cached = truncate(llama, min(lcp, len(prompt) - 1))
    if use_prefix and key not in slot.prefixes and cached < job.prefix_len:
        eval_chunks(llama, prompt[cached : job.prefix_len], job)
        slot.prefixes[key] = save_state(llama)
        while len(slot.prefixes) > cache_entries:
            slot.prefixes.popitem(last=False)
    eval_chunks(llama, prompt[llama.n_tokens : len(prompt) - 1], job)
    return cached


def decode(
    slot: Slot, job: Job, vocab: llama_cpp.llama_vocab_p, n_ctx: int, emit: Emit
) -> tuple[int, int, int, str, float | None]:
    """Sample until EOS/stop/max_tokens/cancel, emitting ``TokenDelta`` items; returns (tokens,
    tokens after cancel, deltas, finish_reason, ``perf_counter`` time of the first emitted text).
    Raises Stopped when the job was cancelled before the first token."""
    llama = slot.llama
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    matcher = StopMatcher(job.stops)
    produced = after_cancel = deltas = 0
    finish = "length"
    t_first: float | None = None

    def send(text: str) -> None:
        nonlocal deltas, t_first
        if text and not job.stop.is_set():
            if t_first is None:
                t_first = time.perf_counter()
            emit(TokenDelta(text=text, index=deltas))
            deltas += 1

    if job.stop.is_set():
        raise Stopped()
    gen = llama.generate(
        job.prompt,
        temp=job.temperature,
        top_k=40,
        top_p=0.95,
        min_p=0.05,
        repeat_penalty=job.repeat_penalty,
        reset=True,
        grammar=job.grammar,
    )
    stopped_by_string = False
    try:
        for tok in gen:
            if job.stop.is_set():
                after_cancel += 1  # the token in flight when the stop flag was set
                finish = "cancelled"
                break
            if llama_cpp.llama_vocab_is_eog(vocab, tok):
                finish = "stop"
                break
            produced += 1
            text, stopped_by_string = matcher.feed(decoder.decode(llama.detokenize([tok])))
            send(text)
            if stopped_by_string:
                finish = "stop"
                break
            if produced >= job.max_tokens or llama.n_tokens + 1 >= n_ctx:
                finish = "length"
                break
    finally:
        gen.close()
    if not stopped_by_string and finish != "cancelled":
        tail, stopped_by_string = matcher.feed(decoder.decode(b"", final=True))
        send(tail)
        if not stopped_by_string:
            send(matcher.flush())
    return produced, after_cancel, deltas, finish, t_first
