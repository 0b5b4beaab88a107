"""Model serving: embedding and generation.

Light to import: only the wire types are imported here. The Serve deployments live in
``runtime.models.deployments`` (``Embedder``, ``Generator``, ``build_model_apps``); the backends in
``runtime.models.backends``. Callers (actors, API) use Serve handles and these types only.
"""

from runtime.models.types import ChatMessage, Final, GenerationRequest, TokenDelta, Usage

__all__ = ["ChatMessage", "Final", "GenerationRequest", "TokenDelta", "Usage"]
