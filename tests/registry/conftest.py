"""A real fleet server per module, a published-ready model, and tokens for every role."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from fleet_server.auth import create_token
from fleet_server.db import Database
from fleet_server.tables import AuditRecord
from tests.support.fleet import RunningServer, breast_cancer_pipeline, running_server


@dataclass
class Fleet:
    running: RunningServer
    model: Path
    sample: Path
    tokens: dict[str, str]  # role -> token

    @property
    def url(self) -> str:
        return self.running.url

    def call(self, method: str, path: str, role: str = "admin", **kw: Any) -> httpx.Response:
        token = self.running.token if role == "admin" else self.tokens[role]
        return httpx.request(
            method,
            f"{self.url}/api/v1/models{path}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=120,
            **kw,
        )

    def publish(self, name: str, role: str = "admin", **form: str) -> httpx.Response:
        return self.call(
            "POST",
            f"/{name}/versions",
            role,
            files={
                "file": ("model.skops", self.model.read_bytes()),
                "sample": ("sample.csv", self.sample.read_bytes(), "text/csv"),
            },
            data=form,
        )

    def audit(self, action: str | None = None) -> list[AuditRecord]:
        db = Database(self.running.server.settings.database_url)
        try:
            with db.begin() as s:
                query = select(AuditRecord).order_by(AuditRecord.id)
                if action:
                    query = query.where(AuditRecord.action == action)
                rows = list(s.scalars(query))
                s.expunge_all()
                return rows
        finally:
            db.engine.dispose()


def make_fleet(running: RunningServer, tmp: Path) -> Fleet:
    model, sample, _, _ = breast_cancer_pipeline(tmp)
    db = Database(running.server.settings.database_url)
    tokens: dict[str, str] = {}
    with db.begin() as s:
        for role in ("viewer", "operator", "publisher"):
            tokens[role] = create_token(s, f"{role}-user", role)[1]
    db.engine.dispose()
    return Fleet(running, model, sample, tokens)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("registry")
    with pytest.MonkeyPatch.context() as mp:
        # Many small publishes in a minute here; the limit itself is tested elsewhere.
        mp.setenv("FLEET_SERVER_PUBLISH_RATE_PER_MINUTE", "1000")
        with running_server(tmp / "server") as running:
            yield make_fleet(running, tmp)
