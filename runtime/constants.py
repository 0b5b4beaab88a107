"""Names shared by the launcher, the Serve app and the actors (one place, so they cannot drift)."""

APP_NAME = "chat"
"""The Serve application's name."""
NAMESPACE = "chat"
"""The Ray namespace of the session actors and the Timekeeper."""
INGRESS_DEPLOYMENT = "Ingress"
EMBEDDER_DEPLOYMENT = "Embedder"
GENERATOR_DEPLOYMENT = "Generator"
TIMEKEEPER_NAME = "timekeeper"
SESSION_ACTOR_PREFIX = "session"
"""Session actors are named ``session:<tenant_id>:<session_id>``."""
OUTBOX_SENDER_PREFIX = "outbox-sender"
"""Outbox senders are named ``outbox-sender:<channel_type>``."""

RAY_ENV_DEFAULTS = {"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "30"}
"""Ray settings a local Ray (``chat-engine up``, the tests) starts with unless the environment
sets them. Serve gives its HTTP proxy 5 s per readiness check and kills it after three misses; on
a small machine loading models at the same time the first checks can take longer, and the start
then fails for nothing."""
