"""Foundation schema: tenants, users, bot configs, channels, contacts, sessions, messages,
leads, escalations, events, usage.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE EXTENSION IF NOT EXISTS vector;

    CREATE TABLE tenants (
        id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
        created_at  timestamptz NOT NULL DEFAULT now()
    );

    CREATE TABLE users (
        id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        tenant_id       uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        name            text NOT NULL,
        email           text,
        role            text NOT NULL CHECK (role IN ('owner', 'agent')),
        api_key_hash    text NOT NULL UNIQUE,
        api_key_prefix  text NOT NULL,
        created_at      timestamptz NOT NULL DEFAULT now(),
        disabled_at     timestamptz
    );
    CREATE INDEX users_tenant_idx ON users (tenant_id, role);

    CREATE TABLE bot_configs (
        tenant_id       uuid PRIMARY KEY REFERENCES tenants(id) ON DELETE CASCADE,
        config          jsonb NOT NULL,
        status          text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'paused')),
        credit_balance  bigint,            -- NULL: unlimited; <= 0 pauses the bot
        updated_at      timestamptz NOT NULL DEFAULT now()
    );

    CREATE TABLE channels (
        id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        tenant_id        uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        type             text NOT NULL CHECK (type IN ('widget', 'whatsapp', 'telegram', 'email')),
        name             text NOT NULL,
        config           jsonb NOT NULL DEFAULT '{}',
        secrets          jsonb NOT NULL DEFAULT '{}',
        widget_token     text UNIQUE,
        allowed_origins  text[] NOT NULL DEFAULT '{}',
        status           text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
        created_at       timestamptz NOT NULL DEFAULT now(),
        CHECK (type <> 'widget' OR widget_token IS NOT NULL)
    );
    CREATE INDEX channels_tenant_idx ON channels (tenant_id, type);

    CREATE TABLE contacts (
        id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        tenant_id     uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        channel_id    uuid REFERENCES channels(id) ON DELETE SET NULL,
        external_ref  text,               -- phone number, chat id, email address, widget visitor id
        name          text,
        email         text,
        phone         text,
        attributes    jsonb NOT NULL DEFAULT '{}',
        created_at    timestamptz NOT NULL DEFAULT now(),
        UNIQUE (tenant_id, channel_id, external_ref)
    );

    CREATE TABLE sessions (
        id                   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        tenant_id            uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        channel_id           uuid NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
        contact_id           uuid REFERENCES contacts(id) ON DELETE SET NULL,
        status               text NOT NULL DEFAULT 'ai_handled' CHECK (status IN
                                 ('ai_handled', 'human_escalated', 'human_assigned', 'closed')),
        assignee_id          uuid REFERENCES users(id) ON DELETE SET NULL,
        escalation_reason    text,
        escalation_question  text,
        origin               text,
        state                jsonb NOT NULL DEFAULT '{}',   -- turn state (lead capture, streaks)
        created_at           timestamptz NOT NULL DEFAULT now(),
        updated_at           timestamptz NOT NULL DEFAULT now(),
        last_activity_at     timestamptz NOT NULL DEFAULT now(),
        escalated_at         timestamptz,
        assigned_at          timestamptz,
        closed_at            timestamptz
    );
    CREATE INDEX sessions_tenant_status_idx ON sessions (tenant_id, status, updated_at DESC);

    CREATE TABLE messages (
        id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        tenant_id          uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        session_id         uuid NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
        channel_id         uuid NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
        sender             text NOT NULL CHECK (sender IN ('customer', 'ai', 'agent', 'system')),
        text               text NOT NULL DEFAULT '',
        attachments        jsonb NOT NULL DEFAULT '[]',
        client_msg_id      text,
        external_id        text,
        reply_to           bigint REFERENCES messages(id) ON DELETE SET NULL,
        status             text NOT NULL DEFAULT 'sent' CHECK (status IN
                               ('received', 'answered', 'inbox', 'sent', 'aborted', 'failed')),
        agent_id           uuid REFERENCES users(id) ON DELETE SET NULL,
        intent             text,
        confidence         real,
        latency_ms         integer,
        prompt_tokens      integer,
        completion_tokens  integer,
        backend            text,
        source_chunk_ids   bigint[] NOT NULL DEFAULT '{}',
        created_at         timestamptz NOT NULL DEFAULT now(),
        UNIQUE (session_id, client_msg_id),
        UNIQUE (channel_id, external_id)
    );
    CREATE INDEX messages_session_idx ON messages (session_id, id);
    CREATE INDEX messages_unanswered_idx ON messages (session_id)
        WHERE sender = 'customer' AND status = 'received';

    CREATE TABLE leads (
        id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        tenant_id   uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        session_id  uuid REFERENCES sessions(id) ON DELETE SET NULL,
        contact_id  uuid REFERENCES contacts(id) ON DELETE SET NULL,
        email       text,
        name        text,
        phone       text,
        topic       text,
        question    text,
        created_at  timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX leads_tenant_idx ON leads (tenant_id, created_at DESC);

    CREATE TABLE escalations (
        id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        tenant_id      uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        session_id     uuid NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
        reason         text NOT NULL,
        signal         text,
        question       text,
        created_at     timestamptz NOT NULL DEFAULT now(),
        claimed_at     timestamptz,
        claimed_by     uuid REFERENCES users(id) ON DELETE SET NULL,
        sla_breached_at timestamptz,
        resolved_kb_entry boolean NOT NULL DEFAULT false
    );
    CREATE INDEX escalations_tenant_idx ON escalations (tenant_id, created_at DESC);

    CREATE TABLE events (
        id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        tenant_id   uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        session_id  uuid REFERENCES sessions(id) ON DELETE CASCADE,
        kind        text NOT NULL,
        data        jsonb NOT NULL DEFAULT '{}',
        created_at  timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX events_tenant_idx ON events (tenant_id, kind, created_at DESC);

    CREATE TABLE usage (
        id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        tenant_id          uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        session_id         uuid REFERENCES sessions(id) ON DELETE SET NULL,
        message_id         bigint REFERENCES messages(id) ON DELETE SET NULL,
        backend            text NOT NULL,
        prompt_tokens      integer NOT NULL DEFAULT 0,
        completion_tokens  integer NOT NULL DEFAULT 0,
        created_at         timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX usage_tenant_idx ON usage (tenant_id, created_at DESC);
    """)


def downgrade() -> None:
    op.execute("""
    DROP TABLE IF EXISTS usage, events, escalations, leads, messages, sessions, contacts,
        channels, bot_configs, users, tenants CASCADE;
    """)
