"""Messaging channels: contact identities, per-session address and thread, opt-outs, delivery
reports and split sends on the outbox, replay guard for signed webhooks.

- ``contact_identities``: a phone number (E.164), a Telegram chat, an email address or a Slack
  user resolves to one contact per tenant, whatever channel it comes from; lead capture adds the
  email to the contact it was given on (a WhatsApp contact), so a later email finds the same one.
- ``sessions.address`` / ``sessions.thread``: where this session's replies go on its channel, and
  what they need to land in the same thread (email subject and Message-Ids, Slack thread_ts).
- ``opt_outs``: SMS STOP per (channel, address); nothing is sent to an opted-out number.
- ``outbox.parts_sent`` / ``provider_message_ids``: a long answer split at the channel's limit is
  sent piece by piece, and a retry resumes after the pieces already accepted.
- ``outbox.delivery_status`` / ``delivery_status_at`` / ``delivery_error``: the provider's reports
  (WhatsApp ``statuses[]``: sent, delivered, read, failed).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE contact_identities (
        tenant_id   uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        kind        text NOT NULL CHECK (kind IN ('phone', 'telegram', 'email', 'slack', 'widget')),
        value       text NOT NULL,
        contact_id  uuid NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
        created_at  timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (tenant_id, kind, value)
    );
    CREATE INDEX contact_identities_contact_idx ON contact_identities (contact_id);

    ALTER TABLE sessions ADD COLUMN address text;
    ALTER TABLE sessions ADD COLUMN thread jsonb NOT NULL DEFAULT '{}';
    -- One open session per (channel, contact): the webhook's lookup.
    CREATE INDEX sessions_channel_contact_idx ON sessions (channel_id, contact_id, last_activity_at DESC)
        WHERE status <> 'closed';

    CREATE TABLE opt_outs (
        tenant_id   uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        channel_id  uuid NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
        address     text NOT NULL,
        created_at  timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (channel_id, address)
    );

    ALTER TABLE outbox ADD COLUMN parts_sent integer NOT NULL DEFAULT 0;
    ALTER TABLE outbox ADD COLUMN provider_message_ids text[] NOT NULL DEFAULT '{}';
    ALTER TABLE outbox ADD COLUMN delivery_status text;
    ALTER TABLE outbox ADD COLUMN delivery_status_at timestamptz;
    ALTER TABLE outbox ADD COLUMN delivery_error text;
    CREATE INDEX outbox_provider_ids_idx ON outbox USING gin (provider_message_ids);

    -- Channel lookups by a provider's own id (WhatsApp routes by phone_number_id).
    CREATE INDEX channels_phone_number_idx ON channels ((config->>'phone_number_id'))
        WHERE type = 'whatsapp';
    """)


def downgrade() -> None:
    op.execute("""
    DROP INDEX IF EXISTS channels_phone_number_idx;
    DROP INDEX IF EXISTS outbox_provider_ids_idx;
    ALTER TABLE outbox DROP COLUMN IF EXISTS parts_sent, DROP COLUMN IF EXISTS provider_message_ids,
        DROP COLUMN IF EXISTS delivery_status, DROP COLUMN IF EXISTS delivery_status_at,
        DROP COLUMN IF EXISTS delivery_error;
    DROP TABLE IF EXISTS opt_outs;
    DROP INDEX IF EXISTS sessions_channel_contact_idx;
    ALTER TABLE sessions DROP COLUMN IF EXISTS address, DROP COLUMN IF EXISTS thread;
    DROP TABLE IF EXISTS contact_identities;
    """)
