"""Analytics (issue 14): the weekly report's marker.

- ``weekly_reports``: one row per tenant and reported week (``period_start``, a Monday in UTC),
  written in the same transaction as the report's outbox row, so the Timekeeper sends each week's
  report once, across restarts and with several Timekeepers racing (the primary key decides).
  ``outbox_id`` is the email it sent (NULL once that row is gone); ``recipient`` the owner's
  address it went to.

The figures themselves are computed from the system of record (sessions, messages, escalations,
leads, contacts) at read time; 0009's ``sessions_tenant_created_idx`` serves the range scans.
The funnel looks leads up by session through 0011's ``leads_session_idx`` (session, created_at).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE weekly_reports (
        tenant_id     uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        period_start  date NOT NULL CHECK (extract(isodow FROM period_start) = 1),
        period_end    date NOT NULL CHECK (period_end = period_start + 6),
        channel_id    uuid REFERENCES channels(id) ON DELETE SET NULL,
        recipient     text NOT NULL,
        outbox_id     bigint REFERENCES outbox(id) ON DELETE SET NULL,
        created_at    timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (tenant_id, period_start)
    );
    """)


def downgrade() -> None:
    op.execute("""
    DROP TABLE IF EXISTS weekly_reports;
    """)
