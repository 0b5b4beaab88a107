"""Session runtime: timers (SLA and others) that the Timekeeper polls.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE timers (
        tenant_id   uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        session_id  uuid NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
        kind        text NOT NULL CHECK (kind IN ('sla')),
        due_at      timestamptz NOT NULL,
        created_at  timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (session_id, kind)
    );
    -- The Timekeeper's poll: due timers across all tenants, earliest first.
    CREATE INDEX timers_due_idx ON timers (due_at);
    """)


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS timers")
