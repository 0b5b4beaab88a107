"""The stack the benchmarks run on, started in-process like tests/conftest.py does: embedded
Postgres + Redis in a temp dir, Ray (8 logical CPUs), Serve with the Embedder and the llama.cpp
Generator. Not a benchmark itself (``make bench-quick`` skips ``_*.py``)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import statistics
import tempfile
import uuid
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (0-1) of ``values`` by nearest rank, rounded to 0.01; NaN if empty."""
    if not values:
        return float("nan")
    values = sorted(values)
    idx = min(len(values) - 1, max(0, round(q * (len(values) - 1))))
    return round(values[idx], 2)


def summary(values: list[float]) -> dict[str, float]:
    """n, p50, p99 and mean of ``values`` (milliseconds in these benchmarks)."""
    return {"n": len(values), "p50": pct(values, 0.5), "p99": pct(values, 0.99),
            "mean": round(statistics.fmean(values), 2) if values else float("nan")}


class Stack:
    """The app on embedded services, started in this process (like tests/conftest.py)."""

    def __init__(self) -> None:
        self.data_dir = Path(tempfile.mkdtemp(prefix="chat-engine-bench-"))
        self.admin = "bench-admin-" + uuid.uuid4().hex
        self.pg: Any = None
        self.redis: Any = None

    def start(self, max_tokens: int, extra_env: dict[str, str] | None = None,
              models: bool = True) -> str:
        """Start everything; ``extra_env``: more CHAT_ENGINE_* settings (e.g. the provider
        stand-ins' API bases); ``models``: False serves the ingress without the Embedder and
        Generator (no answers). Returns the app's base URL."""
        import base64

        from runtime.config import get_settings
        from runtime.db.migrate import upgrade
        from runtime.services import EmbeddedPostgres, EmbeddedRedis

        self.pg = EmbeddedPostgres(self.data_dir / "postgres")
        self.redis = EmbeddedRedis(self.data_dir / "redis")
        db_url, redis_url = self.pg.start(), self.redis.start()
        upgrade(db_url)
        env = {
            "CHAT_ENGINE_DATA_DIR": str(self.data_dir), "CHAT_ENGINE_DATABASE_URL": db_url,
            "CHAT_ENGINE_REDIS_URL": redis_url, "CHAT_ENGINE_ADMIN_TOKEN": self.admin,
            "CHAT_ENGINE_SESSION_TOKEN_SECRET": uuid.uuid4().hex,
            "CHAT_ENGINE_LLM_MAX_TOKENS": str(max_tokens),
            "CHAT_ENGINE_EMBEDDING_NUM_CPUS": "0.5", "CHAT_ENGINE_GENERATOR_NUM_CPUS": "0.5",
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "CHAT_ENGINE_SECRETS_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
            "CHAT_ENGINE_CRAWL_ALLOW_PRIVATE": "true",  # the fixture site is on 127.0.0.1
            **(extra_env or {}),
        }
        os.environ.update(env)
        get_settings.cache_clear()
        import ray
        from ray import serve

        from serve_app import build_app

        port = free_port()
        ray.init(num_cpus=8, namespace="chat", include_dashboard=False,
                 runtime_env={"env_vars": env}, logging_level="ERROR", log_to_driver=False)
        quiet = {"log_level": "WARNING", "enable_access_log": False}
        serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config=quiet)
        serve.run(build_app({"models": models}), name="chat", route_prefix="/", logging_config=quiet)
        return f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        import ray
        from ray import serve

        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()
        if self.redis:
            self.redis.stop()
        if self.pg:
            self.pg.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)




async def wait_healthy(client: Any, attempts: int = 240, every_s: float = 0.5) -> None:
    """Poll ``GET /healthz`` (an httpx.AsyncClient on the app) until it answers 200, for up to
    ``attempts`` x ``every_s`` seconds; connection errors while Serve starts count as not yet."""
    import httpx

    for _ in range(attempts):
        try:
            if (await client.get("/healthz")).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(every_s)
