"""Knowledge base: ingestion-job heartbeats, so a job whose worker died is failed, not stuck.

A job's runner touches ``heartbeat_at`` while it works (``settings.kb_job_heartbeat_s``); the
Timekeeper fails ``pending``/``running`` jobs whose heartbeat is older than
``settings.kb_job_stale_s`` (a restart of the cluster or a killed Ray worker), with a message that
says to re-submit. The partial index keeps that sweep to the few active jobs.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    ALTER TABLE kb_jobs ADD COLUMN heartbeat_at timestamptz NOT NULL DEFAULT now();
    CREATE INDEX kb_jobs_active_idx ON kb_jobs (heartbeat_at)
        WHERE status IN ('pending', 'running');
    """)


def downgrade() -> None:
    op.execute("""
    DROP INDEX IF EXISTS kb_jobs_active_idx;
    ALTER TABLE kb_jobs DROP COLUMN IF EXISTS heartbeat_at;
    """)
