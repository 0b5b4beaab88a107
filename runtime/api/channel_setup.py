"""``POST /v1/channels`` bodies, one model per channel type (a discriminated union on ``type``).

Each type's required config and secrets are in the schema, with the same patterns the server
checks, so ``/openapi.json`` says exactly what a setup needs; the adapters'
``validate_setup`` then only normalises (E.164, lower-case domains and addresses).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from runtime.api.contract import Text
from runtime.api.widget import ORIGIN_MAX_CHARS, ORIGIN_PATTERN

Secret = Annotated[str, Field(min_length=1, max_length=4096, pattern=r"^[\x21-\x7e]+$",
                              description="printable ASCII without spaces; stored encrypted")]
Origin = Annotated[str, Field(max_length=ORIGIN_MAX_CHARS, pattern=ORIGIN_PATTERN,
                              examples=["https://shop.example"])]


def _address(value: str) -> str:
    from runtime.channels.email import normalize_address
    from runtime.errors import InvalidInput

    try:
        return normalize_address(value)
    except InvalidInput as exc:
        raise ValueError(exc.message) from None


Address = Annotated[str, Field(max_length=254, json_schema_extra={"format": "email"}),
                    AfterValidator(_address)]
Name = Annotated[Text, Field(max_length=120, description="shown in the inbox; defaults to the type")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NoConfig(_Strict):
    """These channel types have no settings beyond their credentials: ``{}``."""


class WidgetChannelCreate(_Strict):
    """A website widget: the origins of the sites that embed it (at least one)."""

    type: Literal["widget"]
    name: Name = ""
    config: NoConfig = Field(default_factory=NoConfig)
    allowed_origins: list[Origin] = Field(min_length=1, max_length=50)


class WhatsAppConfig(_Strict):
    phone_number_id: str = Field(pattern=r"^[0-9]{1,32}$",
                                 description="WhatsApp Manager's Phone number ID (not the number)")


class WhatsAppSecrets(_Strict):
    access_token: Secret = Field(description="system-user token with whatsapp_business_messaging")
    app_secret: Secret = Field(description="the Meta app's App Secret (signs webhooks)")
    verify_token: Secret = Field(description="any string; the same one goes in the webhook setup")


class WhatsAppChannelCreate(_Strict):
    """WhatsApp Cloud API."""

    type: Literal["whatsapp"]
    name: Name = ""
    config: WhatsAppConfig
    secrets: WhatsAppSecrets


class TelegramSecrets(_Strict):
    bot_token: str = Field(max_length=200, pattern=r"^[0-9]+:[A-Za-z0-9_-]+$",
                           description="the token @BotFather gave, like 123456789:AAH...")
    webhook_secret: str = Field(pattern=r"^[A-Za-z0-9_-]{1,256}$",
                                description="the secret_token passed to setWebhook")


class TelegramChannelCreate(_Strict):
    """Telegram Bot API."""

    type: Literal["telegram"]
    name: Name = ""
    config: NoConfig = Field(default_factory=NoConfig)
    secrets: TelegramSecrets


class SmsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"anyOf": [
        {"required": ["from_number"], "properties": {"from_number": {"type": "string"}}},
        {"required": ["messaging_service_sid"],
         "properties": {"messaging_service_sid": {"type": "string"}}},
    ]})

    account_sid: str = Field(pattern=r"^AC[0-9a-fA-F]{32}$", description="AC + 32 hex digits")
    from_number: str | None = Field(default=None, pattern=r"^\+[1-9][0-9]{6,14}$",
                                    description="the Twilio number, E.164, e.g. +14155552671")
    messaging_service_sid: str | None = Field(default=None, pattern=r"^MG[0-9a-fA-F]{32}$")

    @model_validator(mode="after")
    def _sender(self) -> SmsConfig:
        if not self.from_number and not self.messaging_service_sid:
            raise ValueError("from_number (E.164) or messaging_service_sid is required")
        return self


class SmsSecrets(_Strict):
    auth_token: Secret = Field(description="the account's Auth Token (signs webhooks)")


class SmsChannelCreate(_Strict):
    """SMS through Twilio."""

    type: Literal["sms"]
    name: Name = ""
    config: SmsConfig
    secrets: SmsSecrets


class EmailConfig(_Strict):
    domain: str = Field(max_length=253, description="the Mailgun sending domain, e.g. mg.shop.example",
                        pattern=r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)+[a-zA-Z]{2,63}$")
    from_address: Address = Field(description="the address replies come from")
    from_name: str | None = Field(default=None, max_length=200, pattern=r"^[^\r\n\u0000]*$")


class EmailSecrets(_Strict):
    api_key: Secret = Field(description="a Mailgun sending API key")
    webhook_signing_key: Secret = Field(description="the HTTP webhook signing key")


class EmailChannelCreate(_Strict):
    """Email through Mailgun."""

    type: Literal["email"]
    name: Name = ""
    config: EmailConfig
    secrets: EmailSecrets


class SlackConfig(_Strict):
    bot_user_id: str | None = Field(default=None, max_length=40, pattern=r"^[A-Za-z0-9]*$",
                                    description="the bot's user id; its own messages are ignored")
    team_id: str | None = Field(default=None, max_length=40, pattern=r"^[A-Za-z0-9]*$")


class SlackSecrets(_Strict):
    bot_token: str = Field(max_length=4096, pattern=r"^xoxb-[\x21-\x7e]*$",
                           description="the Bot User OAuth Token, xoxb-...")
    signing_secret: Secret = Field(description="Basic Information > App Credentials")


class SlackChannelCreate(_Strict):
    """Slack Events API."""

    type: Literal["slack"]
    name: Name = ""
    config: SlackConfig = Field(default_factory=SlackConfig)
    secrets: SlackSecrets


ChannelCreate = Annotated[
    WidgetChannelCreate | WhatsAppChannelCreate | TelegramChannelCreate | SmsChannelCreate
    | EmailChannelCreate | SlackChannelCreate,
    Field(discriminator="type"),
]
"""The body of ``POST /v1/channels``: its ``type`` picks the model."""


def setup_parts(body: BaseModel) -> tuple[dict[str, Any], dict[str, str]]:
    """``(config, secrets)`` of a channel body as plain dicts, unset optional fields left out."""
    config = getattr(body, "config", {})
    secrets = getattr(body, "secrets", None)
    config_d = config.model_dump(exclude_none=True) if isinstance(config, BaseModel) else dict(config)
    secrets_d = secrets.model_dump(exclude_none=True) if isinstance(secrets, BaseModel) else {}
    return config_d, secrets_d
