"""The prediction log and feedback tables.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "predictions",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("input_sha256", sa.String(64), nullable=False),
        sa.Column("x", sa.Float),
        sa.Column("y", sa.Float),
        sa.Column("crop", sa.Float),
        sa.Column("labels", sa.JSON, nullable=False),
        sa.Column("scores", sa.JSON, nullable=False),
        sa.Column("top1", sa.String(200)),
        sa.Column("decode_ms", sa.Float, nullable=False),
        sa.Column("queue_ms", sa.Float, nullable=False),
        sa.Column("inference_ms", sa.Float, nullable=False),
        sa.Column("total_ms", sa.Float, nullable=False),
        sa.Column("batch_size", sa.Integer, nullable=False),
        sa.Column("client", sa.String(128)),
        sa.Column("request_id", sa.String(64)),
    )
    op.create_index("ix_predictions_model_created", "predictions", ["model", "created_at"])
    op.create_index("ix_predictions_created", "predictions", ["created_at"])
    op.create_table(
        "feedback",
        sa.Column("prediction_id", sa.String(32),
                  sa.ForeignKey("predictions.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("label", sa.String(200)),
        sa.Column("correct", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("client", sa.String(128)),
    )


def downgrade() -> None:
    op.drop_table("feedback")
    op.drop_index("ix_predictions_created", "predictions")
    op.drop_index("ix_predictions_model_created", "predictions")
    op.drop_table("predictions")
