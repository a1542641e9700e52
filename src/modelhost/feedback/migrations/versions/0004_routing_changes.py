"""Routing changed at run time (``PUT /api/models/{m}/routing``, ``modelhost route``): when,
by whom (API key name), what was done, the routing before and after.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "routing_changes",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("routing", sa.JSON(), nullable=False),
        sa.Column("previous", sa.JSON(), nullable=False),
        sa.Column("client", sa.String(128)),
    )
    op.create_index("ix_routing_changes_model_created", "routing_changes",
                    ["model", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_routing_changes_model_created", "routing_changes")
    op.drop_table("routing_changes")
