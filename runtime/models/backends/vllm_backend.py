"""vLLM backend: ``AsyncLLMEngine`` on the replica's GPU (the ``gpu`` extra), prefix caching on.

Used only when the replica sees a CUDA device, ``vllm`` is importable and
``settings.vllm_model`` names a Hugging Face model directory (no weights are downloaded at run
time). Cancelling the stream aborts the request in the engine, which drops it at its next step,
so at most one more token is computed. ``Usage.cached_prompt_tokens`` is vLLM's
``num_cached_tokens`` (automatic prefix caching).
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from runtime.config import Settings
from runtime.errors import ConfigError
from runtime.models.backends import Backend
from runtime.models.types import Final, GenerationRequest, StreamItem, TokenDelta, Usage

logger = logging.getLogger(__name__)


def vllm_unavailable_reason(settings: Settings) -> str | None:
    """``None`` when the vLLM backend can start in this process, else why not."""
    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed (install the `gpu` extra)"
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU visible to this replica (give the Generator num_gpus)"
    if not settings.vllm_model:
        return "CHAT_ENGINE_VLLM_MODEL is unset"
    return None


def _sampling_params(request: GenerationRequest, max_tokens: int, temperature: float) -> Any:
    from vllm import SamplingParams

    kwargs: dict[str, Any] = {
        "max_tokens": max_tokens,
        "temperature": temperature,
        "stop": list(request.stop) or None,
    }
    if request.repetition_penalty:
        kwargs["repetition_penalty"] = request.repetition_penalty
    if request.grammar:
        try:  # vLLM >= 0.10.2
            from vllm.sampling_params import StructuredOutputsParams

            kwargs["structured_outputs"] = StructuredOutputsParams(grammar=request.grammar)
        except ImportError:  # older vLLM
            from vllm.sampling_params import GuidedDecodingParams

            kwargs["guided_decoding"] = GuidedDecodingParams(grammar=request.grammar)
    return SamplingParams(**kwargs)


class VLLMBackend(Backend):
    """vLLM ``AsyncLLMEngine`` (settings: vllm_model, vllm_gpu_memory_utilization,
    vllm_max_num_seqs, llm_n_ctx as max_model_len, llm_max_tokens, llm_temperature).

    Raises ConfigError when vLLM cannot run here (see :func:`vllm_unavailable_reason`).
    """

    name = "vllm"

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        reason = vllm_unavailable_reason(settings)
        if reason:
            raise ConfigError(f"vLLM backend unavailable: {reason}")
        from vllm import AsyncEngineArgs, AsyncLLMEngine

        self._settings = settings
        args = AsyncEngineArgs(
            model=str(settings.vllm_model),
            max_model_len=settings.llm_n_ctx,
            gpu_memory_utilization=settings.vllm_gpu_memory_utilization,
            max_num_seqs=settings.vllm_max_num_seqs,
            enable_prefix_caching=True,
            disable_log_stats=True,
        )
        self._engine = AsyncLLMEngine.from_engine_args(args)
        self._tokenizer: Any = None
        self._inflight = 0

    async def _get_tokenizer(self) -> Any:
        if self._tokenizer is None:
            tok = self._engine.get_tokenizer()
            if inspect.isawaitable(tok):
                tok = await tok
            self._tokenizer = tok
        return self._tokenizer

    def context_window(self) -> int:
        return self._settings.llm_n_ctx

    async def count_tokens(self, text: str) -> int:
        tok = await self._get_tokenizer()
        return len(tok.encode(text, add_special_tokens=False))

    def queued(self) -> int:
        return max(0, self._inflight - self._settings.vllm_max_num_seqs)

    def active(self) -> int:
        return min(self._inflight, self._settings.vllm_max_num_seqs)

    def capacity(self) -> int:
        return self._settings.vllm_max_num_seqs

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamItem]:
        t0 = time.perf_counter()
        s = self._settings
        tok = await self._get_tokenizer()
        prompt = tok.apply_chat_template(
            [m.model_dump() for m in request.messages], tokenize=False, add_generation_prompt=True
        )
        params = _sampling_params(
            request,
            max_tokens=request.max_tokens or s.llm_max_tokens,
            temperature=s.llm_temperature if request.temperature is None
            else request.temperature,
        )
        engine_id = f"{request.request_id}-{uuid.uuid4().hex[:8]}"
        self._inflight += 1
        finished = False
        previous = ""
        deltas = 0
        t_first: float | None = None
        out: Any = None
        try:
            async for out in self._engine.generate(prompt, params, engine_id):
                completion = out.outputs[0]
                text = completion.text
                piece, previous = text[len(previous):], text
                if piece:
                    if t_first is None:
                        t_first = time.perf_counter()
                    deltas += 1  # before the yield: a close there still counts it
                    yield TokenDelta(text=piece, index=deltas - 1)
                if out.finished:
                    finished = True
        finally:
            self._inflight -= 1
            if not finished:
                try:
                    await self._engine.abort(engine_id)
                except Exception:  # already gone
                    logger.debug("vLLM abort of %s failed", engine_id, exc_info=True)
            self._record(request.request_id, completion_tokens=deltas, cancelled=not finished)
        if out is None:
            raise RuntimeError("vLLM returned no output")
        completion = out.outputs[0]
        t_end = time.perf_counter()
        total_ms = (t_end - t0) * 1000.0
        yield Final(
            usage=Usage(
                prompt_tokens=len(out.prompt_token_ids or []),
                completion_tokens=len(completion.token_ids),
                cached_prompt_tokens=int(getattr(out, "num_cached_tokens", 0) or 0),
                ttft_ms=(t_first - t0) * 1000.0 if t_first is not None else total_ms,
                total_ms=total_ms,
            ),
            backend=self.name,
            finish_reason=completion.finish_reason or "stop",
        )

    async def aclose(self) -> None:
        shutdown = getattr(self._engine, "shutdown", None)
        if callable(shutdown):
            result = shutdown()
            if inspect.isawaitable(result):
                await result
