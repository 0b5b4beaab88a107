"""The contract the inbox and the analytics share (issue 14): how a conversation ended, its CSAT,
and the four roles of seed 003's RBAC.

- ``sessions.resolution``: set when a session closes. ``resolved_by_ai`` (the bot answered and no
  human took part), ``resolved_by_human`` (an agent replied), ``abandoned`` (the customer left
  with a question unanswered, or the session was closed idle). NULL while open.
- ``sessions.first_human_reply_at``: the first agent message after the escalation (the humans'
  first-response time is measured from ``escalated_at`` to it).
- ``sessions.csat_score`` (1-5) and ``csat_at``: the customer's answer to the CSAT question sent
  at close; ``csat_asked_at``: when it was asked (a later reply "4" is read as the score).
- ``users.role``: owner, admin, agent, viewer (viewers read only).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    ALTER TABLE sessions
        ADD COLUMN resolution text
            CHECK (resolution IN ('resolved_by_ai', 'resolved_by_human', 'abandoned')),
        ADD COLUMN first_human_reply_at timestamptz,
        ADD COLUMN csat_asked_at timestamptz,
        ADD COLUMN csat_score smallint CHECK (csat_score BETWEEN 1 AND 5),
        ADD COLUMN csat_at timestamptz;
    CREATE INDEX sessions_tenant_created_idx ON sessions (tenant_id, created_at);
    ALTER TABLE users DROP CONSTRAINT IF EXISTS users_role_check;
    ALTER TABLE users ADD CONSTRAINT users_role_check
        CHECK (role IN ('owner', 'admin', 'agent', 'viewer'));
    """)


def downgrade() -> None:
    op.execute("""
    ALTER TABLE users DROP CONSTRAINT IF EXISTS users_role_check;
    UPDATE users SET role = 'agent' WHERE role IN ('admin', 'viewer');
    ALTER TABLE users ADD CONSTRAINT users_role_check CHECK (role IN ('owner', 'agent'));
    DROP INDEX IF EXISTS sessions_tenant_created_idx;
    ALTER TABLE sessions DROP COLUMN IF EXISTS resolution,
        DROP COLUMN IF EXISTS first_human_reply_at, DROP COLUMN IF EXISTS csat_asked_at,
        DROP COLUMN IF EXISTS csat_score, DROP COLUMN IF EXISTS csat_at;
    """)
