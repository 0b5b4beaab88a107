"""Development secrets: the admin token and the session-token key, generated into the data dir.

Production sets ``CHAT_ENGINE_ADMIN_TOKEN`` and ``CHAT_ENGINE_SESSION_TOKEN_SECRET``; a
development start that leaves them unset gets random ones kept (mode 0600) in the data dir, so a
restart keeps existing admin scripts and widget sessions working.
"""

from __future__ import annotations

import base64
import secrets
from pathlib import Path
from typing import Any

from runtime.config import Settings, load_settings

ADMIN_TOKEN_FILE = "admin_token"
SESSION_SECRET_FILE = "session_token_secret"
SECRETS_KEY_FILE = "secrets_key"


def _secret_file(data_dir: Path, name: str, padded: bool = False) -> str:
    """Read a generated secret from ``data_dir/name``, creating it (32 random bytes, url-safe
    base64, padded for a Fernet key, mode 0600) on first use."""
    path = data_dir / name
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    raw = secrets.token_bytes(32)
    value = base64.urlsafe_b64encode(raw).decode() if padded else secrets.token_urlsafe(32)
    path.write_text(value)
    path.chmod(0o600)
    return value


def prepare_settings(**overrides: Any) -> tuple[Settings, bool]:
    """Settings (``load_settings(**overrides)``) with unset development secrets filled in from
    the data dir.

    Returns (settings, admin_token_was_generated_now). Raises ConfigError naming the variable.
    """
    settings = load_settings(**overrides)
    generated = False
    filled: dict[str, Any] = {}
    if settings.admin_token is None:
        generated = not (settings.data_dir / ADMIN_TOKEN_FILE).exists()
        filled["admin_token"] = _secret_file(settings.data_dir, ADMIN_TOKEN_FILE)
    if settings.session_token_secret is None:
        filled["session_token_secret"] = _secret_file(settings.data_dir, SESSION_SECRET_FILE)
    if settings.secrets_key is None:
        filled["secrets_key"] = _secret_file(settings.data_dir, SECRETS_KEY_FILE, padded=True)
    if filled:
        settings = load_settings(**{**overrides, **filled})
    return settings, generated
