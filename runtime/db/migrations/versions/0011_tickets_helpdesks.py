"""Tickets, leads on handoff and help-desk destinations (issue 15).

Reserved for its issue's work (filled in by the change that needs it).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
