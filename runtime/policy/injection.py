"""Prompt-injection defences, re-exported from the modules that hold them.

- :mod:`runtime.policy.detection`: the rules (``injection_rules.toml``) and
  :func:`detect_injection` / :func:`is_injection`.
- :mod:`runtime.policy.fencing`: :func:`fence_untrusted`, :func:`neutralise_markers`,
  :data:`UNTRUSTED_NOTICE`.
- :mod:`runtime.policy.canary`: :func:`make_canary`, :class:`CanaryFilter`.

New code imports from those modules (or from :mod:`runtime.policy`); this one keeps older imports
working.
"""

from runtime.policy.canary import CanaryFilter, make_canary
from runtime.policy.detection import InjectionHit, InjectionRule, detect_injection, is_injection
from runtime.policy.fencing import (
    FENCE_CLOSE,
    FENCE_OPEN,
    UNTRUSTED_NOTICE,
    fence_nonce,
    fence_untrusted,
    neutralise_markers,
)

__all__ = [
    "FENCE_CLOSE",
    "FENCE_OPEN",
    "UNTRUSTED_NOTICE",
    "CanaryFilter",
    "InjectionHit",
    "InjectionRule",
    "detect_injection",
    "fence_nonce",
    "fence_untrusted",
    "is_injection",
    "make_canary",
    "neutralise_markers",
]
