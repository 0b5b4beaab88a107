"""Model-serving benchmark: the Serve deployments against the libraries called directly.

Prints one JSON object:

- ``generation``: tokens/s and time to first token (ms) through the ``Generator`` deployment
  (llama.cpp backend, measured at the caller through a Serve handle) vs llama-cpp-python's
  ``create_completion(stream=True)`` in this process on the same chat-template-rendered prompt,
  with the same GGUF, threads, context, greedy decoding (one fresh system prompt per round, so
  both prefill cold), in the same run, rounds alternating. Direct "tokens" counts streamed
  pieces (one per token, give or take a multi-byte character). ``ratio_tokens_per_s`` =
  deployment / direct decode rate, tokens after the first per second (target >= 0.9); the
  end-to-end rate (including time to first token) is ``ratio_end_to_end_tokens_per_s``; greedy
  outputs may differ in length (prefill batching changes float rounding), which skews only it.
- ``embedding``: embeddings/s through the ``Embedder`` under 32 concurrent single-text ``embed``
  calls vs ``SentenceTransformer.encode`` of the same 32 texts in one batch, same thread count.
  ``ratio`` = deployment / direct (target >= 0.7).
- ``prefix_cache``: time to first token of a request with a new 250-token system prompt vs the
  next request with the same system prompt (another prompt in between), and the cached tokens.
- ``cancel``: after cancelling a stream through the handle: tokens the model produced after the
  stop flag, ms from the stop flag to the slot being free, and the next request's time to first
  token.

``--quick`` (CI) runs 2 rounds of 32 tokens and 2 embedding rounds, well under 2 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

THREADS = 2
N_CTX = 2048

QUESTIONS = [
    "How do I reset my password if I no longer have access to my email?",
    "Can I change the delivery address after my order has shipped?",
    "What is your refund policy for items bought on sale?",
    "Do you offer discounts for non-profit organisations?",
    "How long does international shipping to Canada usually take?",
    "My invoice shows a charge twice, what should I do?",
    "Is there a way to export all my data as a CSV file?",
    "Which payment methods do you accept for annual plans?",
]

EMBED_TEXTS = [
    f"{q} I have been a customer for {i + 2} years and this is the first time I need help "
    "with my account, so please explain the steps in detail."
    for i, q in enumerate(QUESTIONS * 4)
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def system_prompt(tag: str, repeat: int = 3) -> str:
    return f"[{tag}] " + (
        "You are the support assistant of Example Shop. Answer briefly and politely, only from "
        "the knowledge base, never invent prices, and offer a human agent when unsure. "
    ) * repeat


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


# ---------------------------------------------------------------------------------------------
def chat_prompt(llama: Any, messages: list[dict[str, str]]) -> str:
    """The GGUF's own chat template rendered, as the Generator's llama.cpp backend renders it."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    eos, bos = llama.token_eos(), llama.token_bos()
    fmt = Jinja2ChatFormatter(
        llama.metadata["tokenizer.chat_template"],
        llama._model.token_get_text(eos) if eos != -1 else "",
        llama._model.token_get_text(bos) if bos != -1 else "",
        add_generation_prompt=True,
    )
    return fmt(messages=messages).prompt


def direct_generation(llama: Any, messages: list[dict[str, str]], max_tokens: int) -> dict:
    prompt = chat_prompt(llama, messages)
    t0 = time.perf_counter()
    first: float | None = None
    pieces = 0
    for chunk in llama.create_completion(
        prompt, stream=True, max_tokens=max_tokens, temperature=0.0,
        top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.0,
    ):
        text = chunk["choices"][0]["text"]
        if text:
            pieces += 1
            if first is None:
                first = time.perf_counter()
    total = time.perf_counter() - t0
    ttft = (first - t0) if first is not None else total
    return {"ttft_ms": ttft * 1000, "total_ms": total * 1000, "tokens": pieces}


async def served_generation(handle: Any, messages: list[dict[str, str]], max_tokens: int,
                            request_id: str | None = None) -> dict:
    from runtime.models.types import Final, GenerationRequest

    req = GenerationRequest.model_validate(
        {"messages": messages, "max_tokens": max_tokens, "temperature": 0.0,
         **({"request_id": request_id} if request_id else {})}
    )
    t0 = time.perf_counter()
    first: float | None = None
    final: Any = None
    async for item in handle.options(stream=True).generate.remote(req):
        if isinstance(item, Final):
            final = item
        elif first is None:
            first = time.perf_counter()
    total = time.perf_counter() - t0
    ttft = (first - t0) if first is not None else total
    return {"ttft_ms": ttft * 1000, "total_ms": total * 1000,
            "tokens": final.usage.completion_tokens, "usage": final.usage.model_dump()}


def rates(runs: list[dict]) -> dict:
    tps = [r["tokens"] / (r["total_ms"] / 1000) for r in runs]
    decode = [
        (r["tokens"] - 1) / ((r["total_ms"] - r["ttft_ms"]) / 1000)
        for r in runs if r["tokens"] > 1 and r["total_ms"] > r["ttft_ms"]
    ]
    return {
        "tokens_per_s": round(median(decode), 2),
        "end_to_end_tokens_per_s": round(median(tps), 2),
        "ttft_ms": round(median([r["ttft_ms"] for r in runs]), 1),
        "tokens": [r["tokens"] for r in runs],
    }


async def bench_generation(handle: Any, rounds: int, max_tokens: int) -> dict:
    from llama_cpp import Llama

    from runtime.models.backends.llamacpp import default_gguf_path

    llama = Llama(model_path=str(default_gguf_path()), n_ctx=N_CTX, n_threads=THREADS,
                  n_threads_batch=THREADS, n_batch=512, verbose=False)
    warm = [{"role": "user", "content": "Hello"}]
    direct_generation(llama, warm, 4)
    await served_generation(handle, warm, 4)
    direct_runs, served_runs = [], []
    for i in range(rounds):
        messages = [
            {"role": "system", "content": system_prompt(f"round {i} {uuid.uuid4().hex[:8]}")},
            {"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]},
        ]
        # alternate which goes first so neither always runs on a warmer machine
        if i % 2 == 0:
            direct_runs.append(direct_generation(llama, messages, max_tokens))
            served_runs.append(await served_generation(handle, messages, max_tokens))
        else:
            served_runs.append(await served_generation(handle, messages, max_tokens))
            direct_runs.append(direct_generation(llama, messages, max_tokens))
    llama.close()
    d, s = rates(direct_runs), rates(served_runs)
    return {
        "rounds": rounds,
        "max_tokens": max_tokens,
        "prompt_tokens": served_runs[0]["usage"]["prompt_tokens"],
        "direct": d,
        "deployment": s,
        "ratio_tokens_per_s": round(s["tokens_per_s"] / d["tokens_per_s"], 3),
        "ratio_end_to_end_tokens_per_s": round(
            s["end_to_end_tokens_per_s"] / d["end_to_end_tokens_per_s"], 3
        ),
        "ttft_overhead_ms": round(s["ttft_ms"] - d["ttft_ms"], 1),
        "target_ratio": 0.9,
    }


async def bench_embedding(handle: Any, rounds: int) -> dict:
    import torch
    from sentence_transformers import SentenceTransformer

    from runtime.models.embedder import default_embedding_model_dir

    torch.set_num_threads(THREADS)
    model = SentenceTransformer(str(default_embedding_model_dir()), device="cpu",
                                local_files_only=True)
    texts = EMBED_TEXTS[:32]
    model.encode(texts, batch_size=32, normalize_embeddings=True)
    await asyncio.gather(*(handle.embed.remote(t) for t in texts))
    direct, served = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
        direct.append(len(texts) / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        await asyncio.gather(*(handle.embed.remote(t) for t in texts))
        served.append(len(texts) / (time.perf_counter() - t0))
    stats = await handle.stats.remote()
    d, s = median(direct), median(served)
    return {
        "rounds": rounds,
        "concurrent_requests": len(texts),
        "direct_embeddings_per_s": round(d, 1),
        "deployment_embeddings_per_s": round(s, 1),
        "ratio": round(s / d, 3),
        "max_batch_seen": stats["max_batch"],
        "target_ratio": 0.7,
    }


async def bench_prefix_cache(handle: Any) -> dict:
    sys_msg = {"role": "system", "content": system_prompt(uuid.uuid4().hex, repeat=8)}
    other = {"role": "system", "content": system_prompt(uuid.uuid4().hex, repeat=2)}
    miss = await served_generation(handle, [sys_msg, {"role": "user", "content": QUESTIONS[0]}], 4)
    await served_generation(handle, [other, {"role": "user", "content": "Hi"}], 2)
    hit = await served_generation(handle, [sys_msg, {"role": "user", "content": QUESTIONS[1]}], 4)
    return {
        "prompt_tokens": hit["usage"]["prompt_tokens"],
        "miss_ttft_ms": round(miss["ttft_ms"], 1),
        "hit_ttft_ms": round(hit["ttft_ms"], 1),
        "miss_cached_tokens": miss["usage"]["cached_prompt_tokens"],
        "hit_cached_tokens": hit["usage"]["cached_prompt_tokens"],
    }


async def bench_cancel(handle: Any) -> dict:
    from runtime.models.types import ChatMessage, GenerationRequest, TokenDelta

    words = " ".join(f"word{i}" for i in range(150))
    req = GenerationRequest(messages=[ChatMessage(role="user", content="Recite.")],
                            grammar=f'root ::= "{words}"', max_tokens=500)
    gen = handle.options(stream=True).generate.remote(req)
    seen = 0
    async for item in gen:
        if isinstance(item, TokenDelta):
            seen += 1
        if seen == 5:
            break
    gen.cancel()
    nxt = await served_generation(handle, [{"role": "user", "content": "Hi"}], 4)
    info: dict[str, Any] | None = None
    for _ in range(50):
        info = await handle.request_info.remote(req.request_id)
        if info and "cancelled" in info:
            break
        await asyncio.sleep(0.1)
    info = info or {}
    return {
        "deltas_received_before_cancel": seen,
        "tokens_generated": info.get("completion_tokens"),
        "tokens_after_stop_flag": info.get("tokens_after_cancel"),
        "stop_to_slot_free_ms": round(float(info.get("stop_latency_ms", float("nan"))), 2),
        "next_request_ttft_ms": round(nxt["ttft_ms"], 1),
    }


async def main_async(args: argparse.Namespace) -> dict:
    import ray
    from ray import serve

    from runtime.config import load_settings
    from runtime.models.deployments import build_model_apps

    settings = load_settings(
        generator_backends=["llamacpp"], llm_n_ctx=N_CTX, llm_threads=THREADS,
        embedding_threads=THREADS, embedding_num_cpus=0.5, generator_num_cpus=0.5,
    )
    env = {k: os.environ[k] for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                                      "TOKENIZERS_PARALLELISM")}
    ray.init(num_cpus=8, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
             runtime_env={"env_vars": env}, namespace="bench")
    serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
    t0 = time.perf_counter()
    try:
        emb_app, gen_app = build_model_apps(settings)
        embedder = serve.run(emb_app, name="bench-embedder", route_prefix=None)
        generator = serve.run(gen_app, name="bench-generator", route_prefix=None)
        result: dict[str, Any] = {
            "quick": args.quick,
            "machine": {"cpus": os.cpu_count(), "threads": THREADS},
        }
        result["generation"] = await bench_generation(generator, args.rounds, args.max_tokens)
        result["embedding"] = await bench_embedding(embedder, args.embed_rounds)
        result["prefix_cache"] = await bench_prefix_cache(generator)
        result["cancel"] = await bench_cancel(generator)
        result["elapsed_s"] = round(time.perf_counter() - t0, 1)
        return result
    finally:
        serve.shutdown()
        ray.shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="CI mode: small and fast")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--embed-rounds", type=int, default=None)
    args = p.parse_args()
    args.rounds = args.rounds or (2 if args.quick else 6)
    args.max_tokens = args.max_tokens or (32 if args.quick else 128)
    args.embed_rounds = args.embed_rounds or (3 if args.quick else 10)
    # Ray prints worker/raylet notices on stdout: keep stdout for the JSON alone
    sys.stdout.flush()
    real_stdout = os.dup(1)
    os.dup2(2, 1)
    try:
        result = asyncio.run(main_async(args))
    finally:
        sys.stdout.flush()
        os.dup2(real_stdout, 1)
        os.close(real_stdout)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
