"""Alembic environment: runs on the connection that ``fleet_server.db.migrate`` passes in."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from fleet_server.tables import Base

target_metadata = Base.metadata
connection = context.config.attributes.get("connection")
if connection is None:  # command line use: alembic -x url=...
    url = context.get_x_argument(as_dictionary=True).get("url", "sqlite:///fleet.db")
    connection = create_engine(url).connect()
context.configure(
    connection=connection,
    target_metadata=target_metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
