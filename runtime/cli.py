"""``chat-engine`` command line: ``up``, ``tenant create``, ``migrate``, ``ingest``."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import threading
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from runtime.config import Settings, load_settings
from runtime.errors import ChatEngineError

console = Console()
app = typer.Typer(help="Omnichannel AI customer-support runtime.", no_args_is_help=True)
tenant_app = typer.Typer(help="Tenants.", no_args_is_help=True)
app.add_typer(tenant_app, name="tenant")

APP_NAME = "chat"
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _secret_file(data_dir: Path, name: str) -> str:
    """Read a generated development secret from the data dir, creating it on first use."""
    path = data_dir / name
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    path.write_text(value)
    path.chmod(0o600)
    return value


def prepare_settings(**overrides: Any) -> tuple[Settings, bool]:
    """Settings with development secrets filled in from the data dir.

    Returns (settings, admin_token_was_generated). Raises ConfigError naming the variable.
    """
    settings = load_settings(**overrides)
    generated = False
    filled: dict[str, Any] = {}
    if settings.admin_token is None:
        token_file = settings.data_dir / "admin_token"
        generated = not token_file.exists()
        filled["admin_token"] = _secret_file(settings.data_dir, "admin_token")
    if settings.session_token_secret is None:
        filled["session_token_secret"] = _secret_file(settings.data_dir, "session_token_secret")
    if filled:
        settings = load_settings(**{**overrides, **filled})
    return settings, generated


def worker_env(settings: Settings, database_url: str, redis_url: str) -> dict[str, str]:
    """Env vars every Ray worker gets: resolved URLs, secrets and all CHAT_ENGINE_* settings."""
    env = {k: v for k, v in os.environ.items() if k.startswith("CHAT_ENGINE_")}
    env.update(OFFLINE_ENV)
    env["CHAT_ENGINE_DATABASE_URL"] = database_url
    env["CHAT_ENGINE_REDIS_URL"] = redis_url
    env["CHAT_ENGINE_DATA_DIR"] = str(settings.data_dir)
    assert settings.admin_token is not None and settings.session_token_secret is not None
    env["CHAT_ENGINE_ADMIN_TOKEN"] = settings.admin_token.get_secret_value()
    env["CHAT_ENGINE_SESSION_TOKEN_SECRET"] = settings.session_token_secret.get_secret_value()
    return env


def start_ray(settings: Settings, env: dict[str, str]) -> None:
    """Connect to CHAT_ENGINE_RAY_ADDRESS, or start a local Ray with an explicit CPU count."""
    import ray

    os.environ.update(env)  # the driver process itself (build_app reads settings)
    runtime_env = {"env_vars": env}
    if settings.ray_address:
        ray.init(address=settings.ray_address, namespace=APP_NAME, runtime_env=runtime_env)
    else:
        ray.init(
            num_cpus=settings.ray_num_cpus, namespace=APP_NAME, runtime_env=runtime_env,
            include_dashboard=True, dashboard_host="127.0.0.1",
        )


def deploy(settings: Settings, port: int, models: bool = True) -> None:
    """Start Serve's HTTP proxy on ``settings.host:port`` and deploy the app at ``/``."""
    from ray import serve

    from serve_app import build_app

    serve.start(http_options={"host": settings.host, "port": port})
    serve.run(build_app({"models": models}), name=APP_NAME, route_prefix="/", blocking=False)


@app.command()
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
        console.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(2) from None
    port = port or settings.port

    from runtime.db.migrate import upgrade
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
        if demo and models:
            try:
                from runtime.demo import ensure_demo

                info = asyncio.run(ensure_demo(settings, services.database_url, base, site, pdf))
                if info:
                    console.print(f"  demo page: {base}/demo")
                    console.print(f"  widget snippet: {info['snippet']}")
            except ModuleNotFoundError:
                pass
        console.print("Press Ctrl-C to stop.")
        stop.wait()
    finally:
        console.print("stopping...")
        try:
            import ray
            from ray import serve

            if ray.is_initialized():
                serve.shutdown()
                ray.shutdown()
        finally:
            services.stop()


@app.command()
def migrate() -> None:
    """Apply database migrations (embedded Postgres is started if no URL is configured)."""
    from runtime.db.migrate import upgrade
    from runtime.services import running_services

    settings = load_settings()
    with running_services(settings, redis=False) as services:
        upgrade(services.database_url)
    console.print("migrations applied")


@tenant_app.command("create")
def tenant_create(
    name: str,
    owner_name: Annotated[str, typer.Option()] = "Owner",
    owner_email: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Create a tenant and its owner; prints the ids and the owner's API key (shown once)."""
    from runtime.bot_config import BotConfig
    from runtime.db.migrate import upgrade
    from runtime.db.pool import create_pool
    from runtime.db.tenants import create_tenant
    from runtime.services import running_services

    settings = load_settings()

    async def _create(dsn: str) -> tuple[Any, Any, str]:
        pool = await create_pool(dsn, min_size=1, max_size=1)
        try:
            async with pool.acquire() as conn:
                return await create_tenant(
                    conn, name, owner_name, owner_email, BotConfig().model_dump(mode="json")
                )
        finally:
            await pool.close()

    with running_services(settings, redis=False) as services:
        upgrade(services.database_url)
        tenant, owner, key = asyncio.run(_create(services.database_url))
    console.print(f"tenant_id     : {tenant['id']}")
    console.print(f"owner_user_id : {owner['id']}")
    console.print(f"owner_api_key : {key}   (shown once)")


def main() -> None:
    """Console-script entry point."""
    import importlib

    try:  # registers `ingest` (knowledge-base area) when present
        importlib.import_module("runtime.cli_ingest")
    except ModuleNotFoundError as exc:
        if exc.name != "runtime.cli_ingest":
            raise
    app()


if __name__ == "__main__":
    main()
