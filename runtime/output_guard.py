"""The output filter every answer passes through before a token reaches any channel.

Holds back text that could be the start of the tenant's canary secret or of the model's handoff
marker; on a complete match it trips, and the caller stops generating, delivers nothing more and
escalates (DESIGN.md, the turn). Shared by the session actor and its tests.
"""

from __future__ import annotations

from runtime.policy.injection import CanaryFilter
from runtime.prompting import HANDOFF_MARKER


class OutputGuard:
    """Chain of the canary filter and the handoff-marker filter.

    ``feed(delta) -> str``: text safe to deliver now; ``flush() -> str`` at the end of the
    stream; ``hit`` is ``"canary"`` or ``"handoff_marker"`` once tripped (then everything
    returns ``""``).
    """

    def __init__(self, canary: str) -> None:
        self._canary = CanaryFilter(canary)
        self._marker = CanaryFilter(HANDOFF_MARKER)
        self.hit: str | None = None

    def feed(self, delta: str) -> str:
        """Add generated text; return what may be delivered now."""
        if self.hit:
            return ""
        safe = self._canary.feed(delta)
        if self._canary.tripped:
            self.hit = "canary"
            return ""
        safe = self._marker.feed(safe)
        if self._marker.tripped:
            self.hit = "handoff_marker"
            return ""
        return safe

    def flush(self) -> str:
        """End of stream: release held text that completed neither secret nor marker."""
        if self.hit:
            return ""
        tail = self._marker.feed(self._canary.flush())
        if self._marker.tripped:
            self.hit = "handoff_marker"
            return ""
        return tail + self._marker.flush()
