"""The channel adapters by channel type: ``whatsapp``, ``telegram``, ``sms`` (Twilio), ``email``
(Mailgun), ``slack``. The widget has no adapter (it is served by its own routes)."""

from __future__ import annotations

from runtime.channels import email, slack, sms, telegram, whatsapp
from runtime.channels.base import ChannelAdapter
from runtime.errors import NotFound

ADAPTERS: dict[str, ChannelAdapter] = {
    "whatsapp": whatsapp.ADAPTER,
    "telegram": telegram.ADAPTER,
    "sms": sms.ADAPTER,
    "email": email.ADAPTER,
    "slack": slack.ADAPTER,
}


def adapter_for(channel_type: str) -> ChannelAdapter:
    """The adapter of ``channel_type``. Raises NotFound for the widget or an unknown type."""
    try:
        return ADAPTERS[channel_type]
    except KeyError:
        what = "the widget has no webhook adapter" if channel_type == "widget" else "unknown channel type"
        raise NotFound(f"{what} {channel_type!r}: messaging channel types are "
                       f"{', '.join(sorted(ADAPTERS))}", channel_type=channel_type) from None
