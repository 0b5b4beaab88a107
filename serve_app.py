"""Ray Serve application builder: ``build_app(args) -> Application`` (ingress + models).

A Serve config names it by import path::

    applications:
      - name: chat
        import_path: serve_app:build_app
        route_prefix: /
        args: {models: true}
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from actors.sender import ensure_senders
from actors.spare_workers import ensure_keeper
from actors.timekeeper import ensure_timekeeper
from runtime.api.app import create_app
from runtime.api.context import get_context
from runtime.config import get_settings

fastapi_app = create_app()


@serve.deployment(name="Ingress", ray_actor_options={"num_cpus": 0.5})
@serve.ingress(fastapi_app)
class Ingress:
    """HTTP ingress (FastAPI). Holds handles to the Embedder and Generator deployments."""

    def __init__(
        self, embedder: DeploymentHandle | None = None, generator: DeploymentHandle | None = None
    ) -> None:
        from runtime.api import context

        context.MODEL_HANDLES["embedder"] = embedder
        context.MODEL_HANDLES["generator"] = generator
        # At start, not at the first chat turn: it also fails ingestion jobs orphaned by a
        # restart, and SLA timers of passivated sessions must fire with no traffic at all.
        ensure_timekeeper()
        # Pending outbox rows (a restart, a re-drive) are sent with no new traffic too.
        ensure_senders()
        # Warmed processes waiting for new sessions' actors (actors.spare_workers).
        settings = get_settings()
        ensure_keeper(str(settings.redis_url) if settings.redis_url else None,
                      settings.spare_session_workers, settings.session_resource)

    async def check_health(self) -> None:
        """Serve health check: the process can reach Postgres."""
        ctx = await get_context()
        async with ctx.pool.acquire() as conn:
            await conn.fetchval("SELECT 1")


def build_app(args: dict[str, Any] | None = None) -> Application:
    """The whole application. ``args``: ``{"models": bool}`` (default True) to deploy the
    Embedder and Generator beside the ingress; False serves the admin API alone.
    """
    args = dict(args or {})
    settings = get_settings()
    ingress = Ingress.options(  # type: ignore[attr-defined]
        max_ongoing_requests=settings.ingress_max_ongoing_requests,
        num_replicas=settings.ingress_replicas,
        ray_actor_options={"num_cpus": settings.ingress_num_cpus},
    )
    if not args.get("models", True):
        return ingress.bind()
    from runtime.models.deployments import build_model_apps

    embedder, generator = build_model_apps(settings)
    return ingress.bind(embedder, generator)
