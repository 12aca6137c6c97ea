"""registry: stages, optimized variants, every opset, latency at publish, deprecation note

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 09:00:00

Existing versions get stage "none", variant "base", and ``opsets`` backfilled from their
ai.onnx ``opset`` (the other domains were not recorded before this revision).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("stage", sa.String(length=20), nullable=False, server_default="none")
        )
        batch_op.add_column(
            sa.Column("variant", sa.String(length=20), nullable=False, server_default="base")
        )
        batch_op.add_column(sa.Column("base_version", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("opsets", sa.JSON(), nullable=False, server_default="{}"))
        batch_op.add_column(sa.Column("latency", sa.JSON(), nullable=False, server_default="{}"))
        batch_op.add_column(
            sa.Column("deprecated_reason", sa.String(length=500), nullable=False, server_default="")
        )
        batch_op.add_column(sa.Column("deprecated_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f("ix_model_versions_stage"), ["stage"], unique=False)
        # At most one production version per model name, even across server replicas.
        batch_op.create_index(
            "uq_model_versions_production",
            ["name"],
            unique=True,
            sqlite_where=sa.text("stage = 'production'"),
            postgresql_where=sa.text("stage = 'production'"),
        )

    versions = sa.table(
        "model_versions",
        sa.column("id", sa.Integer()),
        sa.column("opset", sa.Integer()),
        sa.column("opsets", sa.JSON()),
    )
    bind = op.get_bind()
    for row_id, opset in bind.execute(sa.select(versions.c.id, versions.c.opset)).all():
        bind.execute(
            versions.update().where(versions.c.id == row_id).values(opsets={"": int(opset)})
        )


def downgrade() -> None:
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_index("uq_model_versions_production")
        batch_op.drop_index(batch_op.f("ix_model_versions_stage"))
        batch_op.drop_column("deprecated_at")
        batch_op.drop_column("deprecated_reason")
        batch_op.drop_column("latency")
        batch_op.drop_column("opsets")
        batch_op.drop_column("base_version")
        batch_op.drop_column("variant")
        batch_op.drop_column("stage")
