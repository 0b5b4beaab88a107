"""``chat-engine up``: start everything on this machine and keep it running until Ctrl-C.

Order: settings (development secrets filled in), Postgres and Redis (embedded ones unless URLs are
configured), migrations, Ray (local, or ``CHAT_ENGINE_RAY_ADDRESS``), the Serve app, then the
demo tenant. The launcher resolves the service URLs once and hands them to every Ray worker, so
no worker starts an embedded service of its own (DESIGN.md, Configuration).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from runtime.cli.console import console, fail
from runtime.cli.dev_secrets import prepare_settings
from runtime.config import Settings
from runtime.constants import APP_NAME, GENERATOR_DEPLOYMENT, NAMESPACE, RAY_ENV_DEFAULTS
from runtime.errors import ChatEngineError

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
"""Set for every worker: no weights are downloaded at run time (DESIGN.md, Models)."""


def worker_env(settings: Settings, database_url: str, redis_url: str) -> dict[str, str]:
    """Env vars every Ray worker gets: the resolved service URLs, the secrets, the offline
    switches and all ``CHAT_ENGINE_*`` variables of this process. ``settings`` must have its
    secrets set (:func:`~runtime.cli.dev_secrets.prepare_settings`)."""
    env = {k: v for k, v in os.environ.items() if k.startswith("CHAT_ENGINE_")}
    env.update(OFFLINE_ENV)
    env["CHAT_ENGINE_DATABASE_URL"] = database_url
    env["CHAT_ENGINE_REDIS_URL"] = redis_url
    env["CHAT_ENGINE_DATA_DIR"] = str(settings.data_dir)
    assert settings.admin_token is not None and settings.session_token_secret is not None
    env["CHAT_ENGINE_ADMIN_TOKEN"] = settings.admin_token.get_secret_value()
    env["CHAT_ENGINE_SESSION_TOKEN_SECRET"] = settings.session_token_secret.get_secret_value()
    if settings.secrets_key is not None:
        env["CHAT_ENGINE_SECRETS_KEY"] = settings.secrets_key.get_secret_value()
    return env


def start_ray(settings: Settings, env: dict[str, str]) -> None:
    """Connect to ``CHAT_ENGINE_RAY_ADDRESS``, or start a local Ray with an explicit CPU count
    (``settings.ray_num_cpus``: Serve's default of one CPU per replica would otherwise leave a
    deployment pending on a small machine)."""
    import ray

    os.environ.update(env)  # the driver process itself (build_app reads settings)
    for key, value in RAY_ENV_DEFAULTS.items():  # a local Ray's processes inherit this env
        os.environ.setdefault(key, value)
    runtime_env = {"env_vars": env}
    if settings.ray_address:
        ray.init(address=settings.ray_address, namespace=NAMESPACE, runtime_env=runtime_env)
    else:
        ray.init(
            num_cpus=settings.ray_num_cpus, namespace=NAMESPACE, runtime_env=runtime_env,
            include_dashboard=True, dashboard_host="127.0.0.1",
            _metrics_export_port=settings.metrics_export_port,
        )


def deploy(settings: Settings, port: int, models: bool = True) -> None:
    """Start Serve's HTTP proxy on ``settings.host:port`` and deploy the app at ``/`` (not
    waiting for it to be healthy). ``models=False`` deploys the ingress without the Embedder and
    Generator."""
    from ray import serve

    from serve_app import build_app

    serve.start(http_options={"host": settings.host, "port": port})
    serve.run(build_app({"models": models}), name=APP_NAME, route_prefix="/", blocking=False)


def _stop_ray() -> None:
    import ray
    from ray import serve

    if ray.is_initialized():
        serve.shutdown()
        ray.shutdown()


def answer_strategy_line(settings: Settings) -> str:
    """How ``auto`` resolves on the deployed Generator (asked through Serve), for the banner."""
    from ray import serve

    from runtime.bot_config import BotConfig
    from runtime.models.capability import describe

    handle = serve.get_deployment_handle(GENERATOR_DEPLOYMENT, app_name=APP_NAME)
    try:
        info = handle.info.remote().result(timeout_s=60)
    except Exception as exc:  # noqa: BLE001 - the banner must not stop the service
        return f"unknown (Generator.info failed: {exc})"
    return describe(BotConfig().answer_strategy, bool(info.get("capable")), info.get("primary"))


def up(
    port: Annotated[int | None, typer.Option(help="HTTP port (default CHAT_ENGINE_PORT)")] = None,
    models: Annotated[bool, typer.Option(help="deploy the Embedder and Generator")] = True,
    demo: Annotated[bool, typer.Option(help="create the demo tenant on first start")] = True,
    site: Annotated[str | None, typer.Option(help="website to ingest for the demo")] = None,
    pdf: Annotated[Path | None, typer.Option(help="PDF to ingest for the demo")] = None,
) -> None:
    """Start everything: embedded Postgres/Redis (unless configured), migrations, Ray, Serve."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings, generated = prepare_settings()
    except ChatEngineError as exc:
        fail(exc.message)
    port = port or settings.port

    from runtime.db.migrate import upgrade
    from runtime.demo import ensure_demo
    from runtime.services import resolve_services

    stop = threading.Event()
    services = resolve_services(settings)
    try:
        upgrade(services.database_url)
        env = worker_env(settings, services.database_url, services.redis_url)
        start_ray(settings, env)
        deploy(settings, port, models=models)
        # After ray.init, which installs handlers of its own: stop cleanly on Ctrl-C/SIGTERM.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        base = str(settings.public_base_url or f"http://{settings.host}:{port}").rstrip("/")
        console.print(f"[bold green]chat-engine is up[/bold green] at {base}  (OpenAPI: {base}/docs)")
        console.print(f"  postgres : {services.database_url}")
        console.print(f"  redis    : {services.redis_url}")
        console.print("  ray      : dashboard http://127.0.0.1:8265 (when started locally)")
        console.print(f"  data dir : {settings.data_dir}")
        assert settings.admin_token is not None
        note = " (generated now, kept in the data dir)" if generated else ""
        console.print(f"  admin token{note}: {settings.admin_token.get_secret_value()}")
        if models:
            console.print(f"  answers  : {answer_strategy_line(settings)}")
        if demo and models:
            info = asyncio.run(ensure_demo(settings, services.database_url, base, site, pdf))
            if info:
                console.print(f"  demo page: {base}/demo")
                console.print(f"  widget snippet: {info['snippet']}")
                if info.get("inbox_password"):
                    console.print(f"  inbox    : {info['inbox_url']}  (log in as {info['inbox_email']}, "
                                  f"password {info['inbox_password']}; kept in the data dir's demo.json)")
        console.print("Press Ctrl-C to stop.")
        stop.wait()
    finally:
        console.print("stopping...")
        try:
            _stop_ray()
        finally:
            services.stop()
