"""Runtime metrics for operators, through ``ray.util.metrics``.

Ray's per-node metrics agent exports them in Prometheus format (``ray start
--metrics-export-port``, or ``ray.init(_metrics_export_port=...)``) with the ``ray_`` prefix, and
the Ray dashboard's Metrics view and Grafana read them from there. Tags stay low-cardinality
(no tenant or session ids). Recorded where the event happens:

======================================  =========  ==============================================
name (without ``ray_``)                 kind       recorded by
======================================  =========  ==============================================
``chat_turns_total{outcome}``           counter    the session actor, per customer message
                                                   (answer, reply, escalation, inbox, aborted,
                                                   failed)
``chat_turn_duration_ms{outcome}``      histogram  the same, the whole turn
``chat_turn_overhead_ms``               histogram  the same, the runtime's own time before the
                                                   answer starts (load, retrieval, intent)
``chat_model_ttft_ms{backend}``         histogram  the session actor, per generation
``chat_activations_total``              counter    a conversation loaded into a new actor
``chat_activation_ms``                  histogram  the same, the load's duration
``chat_escalations_total{signal}``      counter    every handoff to a human
``chat_generator_fallbacks_total``      counter    the Generator, per move to the next backend
``{reason}``
``chat_rate_limited_total{scope}``      counter    the ingress, per 429 of a rate limit
``chat_active_sessions``                gauge      the Timekeeper: live session actors (leases)
``chat_outbox_pending``,                gauge      the Timekeeper: outbox rows waiting / dead
``chat_outbox_dead``
======================================  =========  ==============================================

Outside a Ray worker (plain-object tests, scripts) every call is a no-op.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

log = logging.getLogger(__name__)

_MS_BOUNDARIES = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1e3, 2e3, 5e3, 1e4, 3e4, 6e4]


class RuntimeMetrics:
    """The runtime's metric objects (one set per process). Methods never raise: a metric that
    cannot be recorded is logged at debug level."""

    def __init__(self, enabled: bool = True) -> None:
        Counter: Any = _NullFactory  # noqa: N806 - the metric classes, or stand-ins outside Ray
        Gauge: Any = _NullFactory  # noqa: N806
        Histogram: Any = _NullFactory  # noqa: N806
        if enabled:
            from ray.util import metrics as ray_metrics

            Counter, Gauge, Histogram = ray_metrics.Counter, ray_metrics.Gauge, ray_metrics.Histogram

        def hist(name: str, desc: str, tags: tuple[str, ...] = ()) -> Any:
            return Histogram(name, description=desc, boundaries=_MS_BOUNDARIES, tag_keys=tags)

        self._turns = Counter("chat_turns_total", description="customer messages handled, by outcome",
                              tag_keys=("outcome",))
        self._turn_ms = hist("chat_turn_duration_ms", "a turn, start to end (ms)", ("outcome",))
        self._overhead_ms = hist("chat_turn_overhead_ms",
                                 "the runtime's own time before an answer starts (ms)")
        self._ttft_ms = hist("chat_model_ttft_ms", "the model's time to first token (ms)", ("backend",))
        self._activations = Counter("chat_activations_total",
                                    description="conversations loaded into a new session actor")
        self._activation_ms = hist("chat_activation_ms", "loading a conversation into its actor (ms)")
        self._escalations = Counter("chat_escalations_total", description="handoffs to a human",
                                    tag_keys=("signal",))
        self._fallbacks = Counter("chat_generator_fallbacks_total",
                                  description="moves to the next generation backend", tag_keys=("reason",))
        self._rate_limited = Counter("chat_rate_limited_total", description="requests refused by a "
                                     "rate limit (429)", tag_keys=("scope",))
        self._active = Gauge("chat_active_sessions", description="live session actors (Redis leases)")
        self._outbox_pending = Gauge("chat_outbox_pending", description="outbox rows waiting to be sent")
        self._outbox_dead = Gauge("chat_outbox_dead", description="outbox rows in the dead-letter state")

    def turn(self, outcome: str, duration_ms: float, overhead_ms: float | None = None) -> None:
        """A finished turn: outcome (answer, reply, escalation, inbox, aborted, failed), its
        duration and the runtime's own part before the answer starts (milliseconds)."""
        self._safe(self._turns.inc, 1.0, {"outcome": outcome})
        self._safe(self._turn_ms.observe, duration_ms, {"outcome": outcome})
        if overhead_ms is not None:
            self._safe(self._overhead_ms.observe, overhead_ms)

    def model_ttft(self, backend: str, ttft_ms: float) -> None:
        """A generation's time to first token on ``backend`` (milliseconds)."""
        self._safe(self._ttft_ms.observe, ttft_ms, {"backend": backend})

    def activation(self, duration_ms: float) -> None:
        """A conversation loaded into a new actor, taking ``duration_ms``."""
        self._safe(self._activations.inc, 1.0)
        self._safe(self._activation_ms.observe, duration_ms)

    def escalation(self, signal: str | None) -> None:
        """A handoff to a human (signal: what triggered it, e.g. ``handoff_button``)."""
        self._safe(self._escalations.inc, 1.0, {"signal": signal or "other"})

    def fallback(self, reason: str) -> None:
        """The Generator moved to its next backend (reason: timeout, error, saturated, ...)."""
        self._safe(self._fallbacks.inc, 1.0, {"reason": reason})

    def rate_limited(self, scope: str) -> None:
        """A request refused by the rate limit ``scope`` (ip, widget_token, failures, session)."""
        self._safe(self._rate_limited.inc, 1.0, {"scope": scope})

    def gauges(self, *, active_sessions: int, outbox_pending: int, outbox_dead: int) -> None:
        """The cluster-wide levels (the Timekeeper's periodic report)."""
        self._safe(self._active.set, float(active_sessions))
        self._safe(self._outbox_pending.set, float(outbox_pending))
        self._safe(self._outbox_dead.set, float(outbox_dead))

    @staticmethod
    def _safe(record: Any, value: float, tags: dict[str, str] | None = None) -> None:
        try:
            record(value, tags=tags) if tags else record(value)
        except Exception as exc:  # noqa: BLE001 - a metric must never break a turn
            log.debug("metric not recorded: %s", exc)


def _NullFactory(*args: Any, **kwargs: Any) -> Any:  # noqa: N802 - stands for the metric classes
    return _Null()


class _Null:
    """A metric that records nothing (outside Ray)."""

    def inc(self, *args: Any, **kwargs: Any) -> None:
        return None

    observe = set = inc


@functools.lru_cache(maxsize=2)
def _metrics(enabled: bool) -> RuntimeMetrics:
    return RuntimeMetrics(enabled)


def metrics() -> RuntimeMetrics:
    """This process's metrics: the real ones inside a Ray worker or driver, a no-op outside."""
    try:
        import ray

        return _metrics(ray.is_initialized())
    except Exception as exc:  # noqa: BLE001 - metrics are optional
        log.debug("metrics unavailable: %s", exc)
        return _metrics(False)
