"""Shared fixtures: a real Mosquitto, a real PostgreSQL database when one answers."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.mosquitto import Mosquitto, start_mosquitto

PG_ADMIN_URL = os.environ.get("EDGEFLEET_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = start_mosquitto(tmp_path / "mosquitto")
    yield broker
    broker.stop()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database on the local server, dropped afterwards."""
    try:
        import psycopg
    except ImportError:
        pytest.skip("psycopg is not installed (pip install 'edgefleet[postgres]')")
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as e:
        pytest.skip(f"no PostgreSQL server answers at {PG_ADMIN_URL}: {e}")
    name = "edgefleet_test_" + secrets.token_hex(4)
    admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    admin.close()
