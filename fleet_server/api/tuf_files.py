"""The TUF repository over HTTPS: an optional second transport for agents.

Read-only files, exactly those the broker carries; the agent verifies them with the same
TUF client (``EDGE_AGENT_FETCH_VIA=https``). Off unless ``serve_tuf_over_https`` is set:
model files are served without device authentication here (put the server behind TLS and
a network boundary when you turn it on).
"""

from __future__ import annotations

import re

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

from fleet_server.api.deps import ServicesDep
from fleet_server.exceptions import InvalidRequestError
from fleet_server.tuf_repo import check_target_path

router = APIRouter(prefix="/tuf", tags=["tuf"], include_in_schema=False)

METADATA_NAME = re.compile(r"^([0-9]+\.)?[a-z0-9_-]+\.json$")


def _enabled(services: ServicesDep) -> None:
    if not services.settings.serve_tuf_over_https:
        raise HTTPException(404, "the TUF repository is not served over HTTPS on this server")


@router.get("/metadata/{name}")
def metadata(name: str, services: ServicesDep) -> FileResponse:
    _enabled(services)
    # Guards against path traversal: only role file names, in the metadata dir itself.
    if not METADATA_NAME.fullmatch(name):
        raise HTTPException(404, "no such metadata")
    path = services.tuf.metadata_dir / name
    if not path.is_file():
        raise HTTPException(404, "no such metadata")
    return FileResponse(path, media_type="application/json")


@router.get("/targets/{target:path}")
def target(target: str, services: ServicesDep) -> FileResponse:
    _enabled(services)
    try:
        check_target_path(target)  # guards traversal, absolute paths, odd characters
    except InvalidRequestError as e:
        raise HTTPException(404, "no such target") from e
    path = services.tuf.targets_dir / target
    if not path.is_file():
        raise HTTPException(404, "no such target")
    return FileResponse(path, media_type="application/octet-stream")
