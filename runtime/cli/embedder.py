"""Where a command's embeddings come from: the running service's ``Embedder`` deployment
(``serve``), or the model loaded in this process (``local``); ``auto`` tries the service when
CHAT_ENGINE_RAY_ADDRESS is set and falls back to the local model. Shared by ``ingest`` and
``report`` (the same model the bot answers with, so vectors are comparable)."""

from __future__ import annotations

import logging
from typing import Any

from runtime.config import Settings
from runtime.constants import APP_NAME, EMBEDDER_DEPLOYMENT, NAMESPACE
from runtime.errors import ConfigError

EMBEDDER_CHOICES = ("auto", "serve", "local")


def cli_embedder(settings: Settings, choice: str) -> tuple[Any, str]:
    """(embedder, where): the Serve ``Embedder`` handle ("serve") or a model loaded in this
    process ("local"). Raises ConfigError when ``choice`` is "serve" and no cluster answers."""
    if choice in ("serve", "auto") and settings.ray_address:
        try:
            import ray
            from ray import serve

            ray.init(address=settings.ray_address, namespace=NAMESPACE, logging_level=logging.ERROR,
                     log_to_driver=False)
            return serve.get_deployment_handle(EMBEDDER_DEPLOYMENT, app_name=APP_NAME), "serve"
        except Exception as exc:  # noqa: BLE001 - "auto" falls back to the local model
            if choice == "serve":
                raise ConfigError(
                    f"cannot reach the Embedder at CHAT_ENGINE_RAY_ADDRESS={settings.ray_address}"
                    f" ({exc})"
                ) from None
    elif choice == "serve":
        raise ConfigError("--embedder serve needs CHAT_ENGINE_RAY_ADDRESS (e.g. auto)")
    from ingestion.embed import LocalEmbedder

    return LocalEmbedder(settings), "local"
