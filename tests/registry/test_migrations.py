"""Migration 0002 on SQLite and PostgreSQL: old rows survive and get defaults, the
migrated schema equals the tables, one production version per name is enforced by the
database, and downgrade works."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import IntegrityError

from fleet_server.db import MIGRATIONS, make_engine
from fleet_server.tables import Base


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'fleet.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    eng = make_engine(url)
    yield eng
    eng.dispose()


def _to(engine: Engine, revision: str, down: bool = False) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(cfg, revision)


_OLD_ROW = text(
    "INSERT INTO model_versions (name, version, sha256, size, opset, ort_min, framework, "
    "inputs, outputs, parity, profile, lineage, tags, package_target, created_at, "
    "published_by, deprecated) VALUES (:name, :version, :sha, 10, 15, '1.14', '{}', '[]', "
    "'[]', '{}', '{}', '{}', '[\"old\"]', 'models/x/1/package.json', :ts, 'admin', :dep)"
)


def _insert_old(engine: Engine, name: str, version: int) -> None:
    with engine.begin() as conn:
        conn.execute(
            _OLD_ROW,
            {
                "name": name,
                "version": version,
                "sha": "a" * 64,
                "ts": datetime.now(timezone.utc),
                "dep": False,
            },
        )


def test_upgrade_keeps_old_versions_and_gives_them_defaults(engine: Engine) -> None:
    _to(engine, "0001")
    _insert_old(engine, "legacy", 1)
    _to(engine, "head")
    with engine.connect() as conn:
        row = (
            conn.execute(
                text(
                    "SELECT stage, variant, base_version, opsets, latency, deprecated_reason, "
                    "deprecated_at, tags FROM model_versions WHERE name = 'legacy'"
                )
            )
            .mappings()
            .one()
        )
    import json

    def load(v: object) -> object:
        return json.loads(v) if isinstance(v, str) else v

    assert (row["stage"], row["variant"], row["base_version"]) == ("none", "base", None)
    assert load(row["opsets"]) == {"": 15}  # backfilled from the ai.onnx opset
    assert load(row["latency"]) == {}
    assert (row["deprecated_reason"], row["deprecated_at"]) == ("", None)
    assert load(row["tags"]) == ["old"]


def test_migrated_schema_matches_the_tables(engine: Engine) -> None:
    _to(engine, "head")
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_database_allows_one_production_version_per_name(engine: Engine) -> None:
    _to(engine, "head")
    for v in (1, 2):
        _insert_old(engine, "prod", v)
    _insert_old(engine, "other", 1)
    promote = text(
        "UPDATE model_versions SET stage = 'production' WHERE name = :n AND version = :v"
    )
    with engine.begin() as conn:
        conn.execute(promote, {"n": "prod", "v": 1})
        conn.execute(promote, {"n": "other", "v": 1})  # another name: fine
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(promote, {"n": "prod", "v": 2})
    archive = text("UPDATE model_versions SET stage = 'archived' WHERE name = 'prod'")
    with engine.begin() as conn:  # archive first, then promote: allowed
        conn.execute(archive)
        conn.execute(promote, {"n": "prod", "v": 2})


def test_downgrade_to_0001_and_upgrade_again(engine: Engine) -> None:
    _to(engine, "head")
    _insert_old(engine, "roundtrip", 1)
    _to(engine, "0001", down=True)
    columns = {c["name"] for c in inspect(engine).get_columns("model_versions")}
    assert "stage" not in columns and "latency" not in columns
    _to(engine, "head")
    columns = {c["name"] for c in inspect(engine).get_columns("model_versions")}
    assert {"stage", "variant", "base_version", "opsets", "latency"} <= columns
    with engine.connect() as conn:
        count = conn.execute(text("SELECT count(*) FROM model_versions")).scalar()
    assert count == 1
