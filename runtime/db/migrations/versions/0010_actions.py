"""Actions: the tenant's order source, bookable services, opening slots and bookings (issue 15).

- ``action_configs``: one row per tenant and action (``order_status``): its settings (jsonb,
  never a credential) and ``secrets``, the credentials (a Postgres DSN, an Authorization header)
  sealed with Fernet under ``CHAT_ENGINE_SECRETS_KEY`` like channel credentials; never returned.
- ``booking_services``: what a service business lets customers book (name, duration, the time
  zone its times are shown in). ``booking_slots``: the opening slots of a service (an instant,
  its end and how many bookings it takes). ``bookings``: a customer's booking of a slot, with a
  short reference the customer quotes to cancel; ``status`` confirmed or cancelled.
  The capacity check locks the slot row (``SELECT ... FOR UPDATE``) and counts its confirmed
  bookings in the transaction that inserts, so two customers racing for the last place get one
  booking between them.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE action_configs (
        tenant_id   uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        action      text NOT NULL CHECK (action IN ('order_status')),
        config      jsonb NOT NULL DEFAULT '{}'::jsonb,
        secrets     text,
        created_at  timestamptz NOT NULL DEFAULT now(),
        updated_at  timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (tenant_id, action)
    );

    CREATE TABLE booking_services (
        id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        tenant_id         uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        name              text NOT NULL CHECK (length(name) BETWEEN 1 AND 120),
        description       text NOT NULL DEFAULT '',
        duration_minutes  integer NOT NULL CHECK (duration_minutes BETWEEN 5 AND 1440),
        timezone          text NOT NULL DEFAULT 'UTC',
        active            boolean NOT NULL DEFAULT true,
        created_at        timestamptz NOT NULL DEFAULT now()
    );
    CREATE UNIQUE INDEX booking_services_name_idx ON booking_services (tenant_id, lower(name))
        WHERE active;

    CREATE TABLE booking_slots (
        id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        tenant_id   uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        service_id  uuid NOT NULL REFERENCES booking_services(id) ON DELETE CASCADE,
        starts_at   timestamptz NOT NULL,
        ends_at     timestamptz NOT NULL,
        capacity    integer NOT NULL DEFAULT 1 CHECK (capacity BETWEEN 1 AND 1000),
        created_at  timestamptz NOT NULL DEFAULT now(),
        CHECK (ends_at > starts_at),
        UNIQUE (service_id, starts_at)
    );
    CREATE INDEX booking_slots_tenant_idx ON booking_slots (tenant_id, service_id, starts_at);

    CREATE TABLE bookings (
        id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        tenant_id      uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        service_id     uuid NOT NULL REFERENCES booking_services(id) ON DELETE CASCADE,
        slot_id        uuid NOT NULL REFERENCES booking_slots(id) ON DELETE CASCADE,
        reference      text NOT NULL,
        contact_id     uuid REFERENCES contacts(id) ON DELETE SET NULL,
        session_id     uuid REFERENCES sessions(id) ON DELETE SET NULL,
        customer_name  text NOT NULL DEFAULT '',
        email          text,
        phone          text,
        status         text NOT NULL DEFAULT 'confirmed' CHECK (status IN ('confirmed', 'cancelled')),
        created_at     timestamptz NOT NULL DEFAULT now(),
        cancelled_at   timestamptz,
        UNIQUE (tenant_id, reference)
    );
    CREATE INDEX bookings_slot_idx ON bookings (slot_id) WHERE status = 'confirmed';
    CREATE INDEX bookings_contact_idx ON bookings (tenant_id, contact_id) WHERE status = 'confirmed';
    CREATE INDEX bookings_tenant_idx ON bookings (tenant_id, created_at);
    """)


def downgrade() -> None:
    op.execute("""
    DROP TABLE IF EXISTS bookings;
    DROP TABLE IF EXISTS booking_slots;
    DROP TABLE IF EXISTS booking_services;
    DROP TABLE IF EXISTS action_configs;
    """)
