"""Tickets, leads on handoff and help-desk destinations (issue 15).

- ``helpdesks``: a tenant's help-desk destinations: a signed generic ``webhook``, ``zendesk``
  (Tickets API) or ``slack`` (chat.postMessage); ``config`` in the clear, credentials sealed in
  ``secrets`` like a channel's (``{"enc": <Fernet token>, "keys": [...]}``).
- ``tickets``: one per escalation, written in the escalation's transaction: subject, an
  extractive summary, the transcript and inbox links, priority (low | normal | high | critical,
  from the trigger), category (from the signal), and the lead it carries, if any.
- ``leads.source`` (``lead_capture`` | ``escalation``), ``leads.buying_signal`` (what showed
  the intent: pricing, quote, demo, buy, or the tenant's lead topic) and ``leads.forwarded_at``
  (when it was enqueued to the destinations: a lead is forwarded once).
- ``outbox.helpdesk_id``: an outbox row goes either to a channel (``channel_id``, as before) or
  to a help-desk destination (``helpdesk_id``); exactly one of the two. Deleting a destination
  drops its rows.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE helpdesks (
        id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        tenant_id   uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        kind        text NOT NULL CHECK (kind IN ('webhook', 'zendesk', 'slack')),
        name        text NOT NULL,
        config      jsonb NOT NULL DEFAULT '{}',
        secrets     jsonb NOT NULL DEFAULT '{}',
        status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
        created_at  timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX helpdesks_tenant_idx ON helpdesks (tenant_id, created_at);

    ALTER TABLE leads
        ADD COLUMN source text NOT NULL DEFAULT 'lead_capture'
            CHECK (source IN ('lead_capture', 'escalation')),
        ADD COLUMN buying_signal text,
        ADD COLUMN forwarded_at timestamptz;
    CREATE INDEX leads_session_idx ON leads (session_id, created_at DESC);

    CREATE TABLE tickets (
        id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        tenant_id       uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        session_id      uuid NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
        escalation_id   uuid REFERENCES escalations(id) ON DELETE SET NULL,
        contact_id      uuid REFERENCES contacts(id) ON DELETE SET NULL,
        lead_id         uuid REFERENCES leads(id) ON DELETE SET NULL,
        subject         text NOT NULL,
        summary         text NOT NULL,
        transcript_url  text NOT NULL,
        inbox_url       text NOT NULL,
        priority        text NOT NULL CHECK (priority IN ('low', 'normal', 'high', 'critical')),
        category        text NOT NULL,
        signal          text,
        reason          text NOT NULL,
        status          text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
        created_at      timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX tickets_tenant_idx ON tickets (tenant_id, created_at DESC);
    CREATE INDEX tickets_session_idx ON tickets (session_id);

    ALTER TABLE outbox ALTER COLUMN channel_id DROP NOT NULL;
    ALTER TABLE outbox ADD COLUMN helpdesk_id uuid REFERENCES helpdesks(id) ON DELETE CASCADE;
    ALTER TABLE outbox ADD CONSTRAINT outbox_one_destination
        CHECK (num_nonnulls(channel_id, helpdesk_id) = 1);
    -- A destination's rows in order (its senders' per-session order, its re-drive).
    CREATE INDEX outbox_helpdesk_idx ON outbox (helpdesk_id, id) WHERE helpdesk_id IS NOT NULL;
    """)


def downgrade() -> None:
    op.execute("""
    DELETE FROM outbox WHERE helpdesk_id IS NOT NULL;
    ALTER TABLE outbox DROP CONSTRAINT IF EXISTS outbox_one_destination;
    ALTER TABLE outbox DROP COLUMN IF EXISTS helpdesk_id;
    ALTER TABLE outbox ALTER COLUMN channel_id SET NOT NULL;
    DROP TABLE IF EXISTS tickets;
    DROP INDEX IF EXISTS leads_session_idx;
    ALTER TABLE leads DROP COLUMN IF EXISTS source, DROP COLUMN IF EXISTS buying_signal,
        DROP COLUMN IF EXISTS forwarded_at;
    DROP TABLE IF EXISTS helpdesks;
    """)
