"""Air-gapped delivery: one file with the TUF metadata and a model version's targets.

The device imports it through the same TUF verification and update lifecycle as an MQTT
deployment (``edge-agent import``): a tampered bundle fails its hashes, a stale one its
timestamp expiry.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from edge_agent import protocol
from fleet_server.exceptions import NotFoundError
from fleet_server.tuf_repo import content_url

BUNDLE_FORMAT = 1


def write_bundle(tuf_root: Path, name: str, version: int, out: Path) -> Path:
    """Write ``out`` (a tar file) for model ``name:version`` from the repository files."""
    from tuf.api._payload import Targets
    from tuf.api.metadata import Metadata

    metadata = tuf_root / "metadata"
    package = protocol.package_target_path(name, version)
    model = protocol.model_target_path(name, version)
    top = _latest(metadata, "targets")
    signed = Metadata[Targets].from_bytes(top.read_bytes()).signed
    files = []
    for path in (package, model):
        info = signed.targets.get(path)
        if info is None:
            raise NotFoundError(f"{path} is not a signed target")
        url = content_url(path, info.hashes["sha256"])
        files.append((f"targets/{url}", tuf_root / "targets" / url))
    out.parent.mkdir(parents=True, exist_ok=True)
    manifest = {"format": BUNDLE_FORMAT, "name": name, "version": version, "package": package}
    with tarfile.open(out, "w:gz") as tar:
        _add_bytes(tar, "bundle.json", json.dumps(manifest).encode())
        for f in sorted(metadata.iterdir()):
            if f.is_file():
                tar.add(f, arcname=f"metadata/{f.name}")
        for arcname, src in files:
            tar.add(src, arcname=arcname)
    return out


def _latest(metadata: Path, role: str) -> Path:
    versions = sorted(
        int(p.name.split(".", 1)[0])
        for p in metadata.glob(f"*.{role}.json")
        if p.name.split(".", 1)[0].isdigit()
    )
    if not versions:
        raise NotFoundError(f"no {role} metadata in {metadata}")
    return metadata / f"{versions[-1]}.{role}.json"


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))
