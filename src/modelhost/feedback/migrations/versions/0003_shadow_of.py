"""Mark shadow predictions (``[versions] shadow``): the id of the answered prediction whose
input a shadow version also ran on; never returned to a client, left out of every figure but
the shadow agreement.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.add_column(sa.Column("shadow_of", sa.String(32), nullable=True))
        batch.create_index("ix_predictions_shadow_of", ["shadow_of"])


def downgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.drop_index("ix_predictions_shadow_of")
        batch.drop_column("shadow_of")
