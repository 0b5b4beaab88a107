"""Outbox for channel deliveries; in-flight answer ids, answer records and escalation priority.

- ``outbox``: one row per message to send on a non-widget channel, written in the same
  transaction as the message (DESIGN.md, Channels and delivery). Senders claim due rows with
  ``FOR UPDATE SKIP LOCKED`` and a lease, retry with full-jitter backoff, then ``dead``.
- ``messages.answer_id``: the id reserved for the answer being streamed to a customer message,
  so an actor restarted mid-stream can publish ``aborted`` for it before answering again.
- ``messages.strategy`` / ``supported_sentences`` / ``removed_sentences``: how an AI answer was
  made (generative or extractive) and what the grounding check kept and removed.
- ``escalations.priority``: low | normal | high | critical (billing disputes high, legal critical).
- channel types ``sms`` and ``slack``.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    ALTER TABLE channels DROP CONSTRAINT IF EXISTS channels_type_check;
    ALTER TABLE channels ADD CONSTRAINT channels_type_check
        CHECK (type IN ('widget', 'whatsapp', 'telegram', 'email', 'sms', 'slack'));

    ALTER TABLE messages ADD COLUMN answer_id bigint;
    ALTER TABLE messages ADD COLUMN strategy text
        CHECK (strategy IN ('generative', 'extractive'));
    ALTER TABLE messages ADD COLUMN supported_sentences integer;
    ALTER TABLE messages ADD COLUMN removed_sentences integer;

    ALTER TABLE escalations ADD COLUMN priority text NOT NULL DEFAULT 'normal'
        CHECK (priority IN ('low', 'normal', 'high', 'critical'));

    CREATE TABLE outbox (
        id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        tenant_id            uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        channel_id           uuid NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
        session_id           uuid REFERENCES sessions(id) ON DELETE CASCADE,
        message_id           bigint REFERENCES messages(id) ON DELETE CASCADE,
        recipient            text,          -- the contact's address on the channel
        body                 jsonb NOT NULL,
        status               text NOT NULL DEFAULT 'pending' CHECK (status IN
                                 ('pending', 'sending', 'sent', 'dead')),
        attempts             integer NOT NULL DEFAULT 0,
        next_attempt_at      timestamptz NOT NULL DEFAULT now(),
        lease_until          timestamptz,
        last_error           text,
        provider_message_id  text,
        created_at           timestamptz NOT NULL DEFAULT now(),
        updated_at           timestamptz NOT NULL DEFAULT now(),
        sent_at              timestamptz
    );
    -- Senders' poll: due rows of a channel type, oldest first.
    CREATE INDEX outbox_due_idx ON outbox (next_attempt_at) WHERE status IN ('pending', 'sending');
    -- Per-conversation order and the dead-letter listing.
    CREATE INDEX outbox_session_idx ON outbox (session_id, id);
    CREATE INDEX outbox_dead_idx ON outbox (tenant_id, channel_id, id) WHERE status = 'dead';
    """)


def downgrade() -> None:
    op.execute("""
    DROP TABLE IF EXISTS outbox;
    ALTER TABLE escalations DROP COLUMN IF EXISTS priority;
    ALTER TABLE messages DROP COLUMN IF EXISTS answer_id, DROP COLUMN IF EXISTS strategy,
        DROP COLUMN IF EXISTS supported_sentences, DROP COLUMN IF EXISTS removed_sentences;
    ALTER TABLE channels DROP CONSTRAINT IF EXISTS channels_type_check;
    ALTER TABLE channels ADD CONSTRAINT channels_type_check
        CHECK (type IN ('widget', 'whatsapp', 'telegram', 'email'));
    """)
