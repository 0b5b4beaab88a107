"""The agent inbox (issue 14): people and their login sessions, teams, notes, labels, canned
responses, business hours and the CSAT settings.

- ``users.password_hash`` (argon2id, argon2-cffi's encoded form), ``invite_token_hash`` /
  ``invite_expires_at`` (an invite shown once, redeemed with a password), ``max_open_sessions``
  (the per-agent limit of open conversations; NULL: the tenant's default), ``last_assigned_at``
  (round-robin order). An email signs in to one workspace: unique among users who can log in.
- ``login_sessions``: cookie sessions, stored as SHA-256 hashes of the cookie value, expiring.
- ``teams`` (``channel_ids``: the channels whose escalations the team takes; empty: all) and
  ``team_members``; ``sessions.team_id``: the team an escalation was routed to.
- ``session_labels``, ``session_notes`` (private: never on any channel, never in the messages
  table), ``canned_responses`` (``shortcut`` unique per tenant, typed as ``/shortcut``).
- ``inbox_settings``: per tenant, business hours (IANA timezone, weekly intervals, holidays),
  the offline auto-reply, the CSAT question and the default per-agent limit (``settings`` jsonb,
  validated by ``runtime.db.inbox_hours.InboxSettings``).
- ``timers.kind`` gains ``auto_close`` (an idle AI conversation is closed after
  ``CHAT_ENGINE_AUTO_CLOSE_HOURS``).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    ALTER TABLE users
        ADD COLUMN password_hash text,
        ADD COLUMN password_set_at timestamptz,
        ADD COLUMN invite_token_hash text UNIQUE,
        ADD COLUMN invite_expires_at timestamptz,
        ADD COLUMN max_open_sessions integer CHECK (max_open_sessions >= 0),
        ADD COLUMN last_assigned_at timestamptz;
    CREATE UNIQUE INDEX users_login_email_idx ON users (lower(email))
        WHERE email IS NOT NULL AND (password_hash IS NOT NULL OR invite_token_hash IS NOT NULL);

    CREATE TABLE login_sessions (
        id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        tenant_id     uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        user_id       uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        token_hash    text NOT NULL UNIQUE,
        created_at    timestamptz NOT NULL DEFAULT now(),
        last_seen_at  timestamptz NOT NULL DEFAULT now(),
        expires_at    timestamptz NOT NULL,
        user_agent    text,
        ip            text
    );
    CREATE INDEX login_sessions_user_idx ON login_sessions (user_id);
    CREATE INDEX login_sessions_expiry_idx ON login_sessions (expires_at);

    CREATE TABLE teams (
        id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        tenant_id    uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
        channel_ids  uuid[] NOT NULL DEFAULT '{}',
        created_at   timestamptz NOT NULL DEFAULT now(),
        UNIQUE (tenant_id, name)
    );
    CREATE TABLE team_members (
        tenant_id  uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        team_id    uuid NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
        user_id    uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        PRIMARY KEY (team_id, user_id)
    );
    CREATE INDEX team_members_user_idx ON team_members (user_id);
    ALTER TABLE sessions ADD COLUMN team_id uuid REFERENCES teams(id) ON DELETE SET NULL;
    -- Open conversations per agent (the per-agent limit) and the inbox's assignee filter.
    CREATE INDEX sessions_assignee_open_idx ON sessions (tenant_id, assignee_id)
        WHERE status IN ('human_escalated', 'human_assigned');

    CREATE TABLE session_labels (
        tenant_id   uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        session_id  uuid NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
        label       text NOT NULL CHECK (length(label) BETWEEN 1 AND 50),
        created_by  uuid REFERENCES users(id) ON DELETE SET NULL,
        created_at  timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (session_id, label)
    );
    CREATE INDEX session_labels_tenant_idx ON session_labels (tenant_id, label);

    CREATE TABLE session_notes (
        id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        tenant_id   uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        session_id  uuid NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
        author_id   uuid REFERENCES users(id) ON DELETE SET NULL,
        text        text NOT NULL CHECK (length(text) BETWEEN 1 AND 10000),
        created_at  timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX session_notes_session_idx ON session_notes (session_id, id);

    CREATE TABLE canned_responses (
        id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        tenant_id   uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        shortcut    text NOT NULL CHECK (shortcut ~ '^[a-z0-9][a-z0-9_-]{0,39}$'),
        title       text NOT NULL CHECK (length(title) BETWEEN 1 AND 200),
        text        text NOT NULL CHECK (length(text) BETWEEN 1 AND 10000),
        created_by  uuid REFERENCES users(id) ON DELETE SET NULL,
        created_at  timestamptz NOT NULL DEFAULT now(),
        updated_at  timestamptz NOT NULL DEFAULT now(),
        UNIQUE (tenant_id, shortcut)
    );

    CREATE TABLE inbox_settings (
        tenant_id   uuid PRIMARY KEY REFERENCES tenants(id) ON DELETE CASCADE,
        settings    jsonb NOT NULL DEFAULT '{}',
        updated_at  timestamptz NOT NULL DEFAULT now()
    );

    ALTER TABLE timers DROP CONSTRAINT IF EXISTS timers_kind_check;
    ALTER TABLE timers ADD CONSTRAINT timers_kind_check CHECK (kind IN ('sla', 'auto_close'));
    """)


def downgrade() -> None:
    op.execute("""
    DELETE FROM timers WHERE kind = 'auto_close';
    ALTER TABLE timers DROP CONSTRAINT IF EXISTS timers_kind_check;
    ALTER TABLE timers ADD CONSTRAINT timers_kind_check CHECK (kind IN ('sla'));
    DROP TABLE IF EXISTS inbox_settings, canned_responses, session_notes, session_labels;
    DROP INDEX IF EXISTS sessions_assignee_open_idx;
    ALTER TABLE sessions DROP COLUMN IF EXISTS team_id;
    DROP TABLE IF EXISTS team_members, teams, login_sessions;
    DROP INDEX IF EXISTS users_login_email_idx;
    ALTER TABLE users DROP COLUMN IF EXISTS password_hash, DROP COLUMN IF EXISTS password_set_at,
        DROP COLUMN IF EXISTS invite_token_hash, DROP COLUMN IF EXISTS invite_expires_at,
        DROP COLUMN IF EXISTS max_open_sessions, DROP COLUMN IF EXISTS last_assigned_at;
    """)
