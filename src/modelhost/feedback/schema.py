"""The tables. Migrations (``migrations/versions``) create exactly these; a test checks it."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    false,
)

metadata = MetaData()

LABEL_MAX = 200  # characters in a label users may send

predictions = Table(
    "predictions",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("model", String(128), nullable=False),
    Column("version", String(64), nullable=False),
    Column("input_sha256", String(64), nullable=False),
    Column("x", Float),
    Column("y", Float),
    Column("crop", Float),
    Column("labels", JSON, nullable=False),  # top-k labels, best first
    Column("scores", JSON, nullable=False),  # their scores
    Column("top1", String(LABEL_MAX)),
    Column("decode_ms", Float, nullable=False),
    Column("queue_ms", Float, nullable=False),
    Column("inference_ms", Float, nullable=False),
    Column("total_ms", Float, nullable=False),
    Column("batch_size", Integer, nullable=False),
    Column("client", String(128)),  # the API key's name, never the secret
    Column("request_id", String(64)),
    # load-test traffic (X-Modelhost-Bench): kept, left out of accuracy and feedback figures
    Column("bench", Boolean, nullable=False, server_default=false()),
    # a shadow version's prediction ([versions] shadow): the answered prediction's id; never
    # returned, left out of every figure but the shadow agreement
    Column("shadow_of", String(32)),
    Index("ix_predictions_model_created", "model", "created_at"),
    Index("ix_predictions_shadow_of", "shadow_of"),
    Index("ix_predictions_created", "created_at"),
)

feedback = Table(
    "feedback",
    metadata,
    Column("prediction_id", String(32),
           ForeignKey("predictions.id", ondelete="CASCADE"), primary_key=True),
    Column("label", String(LABEL_MAX)),  # what the user chose; None when only `correct` is known
    Column("correct", Boolean, nullable=False),  # label == the prediction's top-1
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("client", String(128)),
)

routing_changes = Table(
    "routing_changes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("model", String(128), nullable=False),
    Column("action", String(16), nullable=False),  # set | promote | rollback
    Column("routing", JSON, nullable=False),  # the routing from then on
    Column("previous", JSON, nullable=False),  # the routing it replaced
    Column("client", String(128)),  # the API key's name, never the secret
    Index("ix_routing_changes_model_created", "model", "created_at"),
)
