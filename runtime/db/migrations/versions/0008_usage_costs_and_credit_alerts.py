"""Usage costs and credit alerts (issue 15, seed 002 AIUsage).

- ``usage.model`` / ``usage.cost_micros``: the model that served a generation and its cost in
  millionths of a US dollar, from the price table (``CHAT_ENGINE_MODEL_PRICES``); 0 for a
  self-run model, whose cost is the node and not the token.
- ``bot_configs.credit_granted``: the balance last set by the platform admin (the 100% that the
  80% alert is measured against); ``bot_configs.credit_alert_level``: the highest alert already
  raised for that grant (0, 80 or 100), so each is raised once.
- ``messages_tenant_answers_idx``: the bot's answers per tenant and day (credits spent).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    ALTER TABLE usage ADD COLUMN model text,
        ADD COLUMN cost_micros bigint NOT NULL DEFAULT 0 CHECK (cost_micros >= 0);
    ALTER TABLE bot_configs ADD COLUMN credit_granted bigint CHECK (credit_granted >= 0),
        ADD COLUMN credit_alert_level smallint NOT NULL DEFAULT 0
            CHECK (credit_alert_level IN (0, 80, 100));
    CREATE INDEX messages_tenant_answers_idx ON messages (tenant_id, created_at)
        WHERE sender = 'ai' AND intent = 'answer';
    """)


def downgrade() -> None:
    op.execute("""
    DROP INDEX IF EXISTS messages_tenant_answers_idx;
    ALTER TABLE bot_configs DROP COLUMN IF EXISTS credit_alert_level,
        DROP COLUMN IF EXISTS credit_granted;
    ALTER TABLE usage DROP COLUMN IF EXISTS cost_micros, DROP COLUMN IF EXISTS model;
    """)
