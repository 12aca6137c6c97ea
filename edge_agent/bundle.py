"""Importing an air-gapped bundle: TUF verification from files instead of MQTT.

The bundle (``fleet-server bundle``) carries the repository's metadata and one model
version's targets. ``DirFetcher`` serves ngclient from the unpacked bundle, so the metadata
dir, rollback and expiry checks, hashes and the update lifecycle are exactly those of an
MQTT deployment.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tuf.api.exceptions import DownloadHTTPError
from tuf.ngclient.fetcher import FetcherInterface

from edge_agent import protocol
from edge_agent.exceptions import ProtocolError, TrustError

MAX_BUNDLE_MEMBER = 2 * 1024**3


class DirFetcher(FetcherInterface):
    """Maps TUF URLs onto an unpacked bundle; a missing file is a 404."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def _fetch(self, url: str) -> Iterator[bytes]:
        for prefix, sub in (
            (protocol.TUF_METADATA_URL, "metadata"),
            (protocol.TUF_TARGETS_URL, "targets"),
        ):
            if url.startswith(prefix):
                path = (self.root / sub / url[len(prefix) :]).resolve()
                break
        else:
            raise DownloadHTTPError(f"not a bundle URL: {url}", 404)
        # Guards against a URL that climbs out of the bundle (ngclient also checks paths).
        if not path.is_relative_to(self.root) or not path.is_file():
            raise DownloadHTTPError(f"{url} is not in the bundle", 404)
        return iter([path.read_bytes()])


@dataclass(frozen=True)
class BundleInfo:
    name: str
    version: int
    package: str
    root: Path

    @property
    def deployment(self) -> str:
        return f"bundle-{self.name}-{self.version}"


def unpack_info(dest: Path) -> BundleInfo:
    """Read ``bundle.json`` of an unpacked bundle."""
    try:
        raw = json.loads((dest / "bundle.json").read_text())
        name = protocol.validate_model_name(str(raw["name"]))
        version = int(raw["version"])
        package = str(raw["package"])
    except (OSError, ValueError, KeyError, ProtocolError) as e:
        raise TrustError("untrusted_metadata", f"not a valid bundle: {e}") from e
    # The manifest is not signed: it only names what to look for; TUF checks the rest.
    if package != protocol.package_target_path(name, version):
        raise TrustError("untrusted_metadata", "bundle manifest names an unexpected target")
    return BundleInfo(name, version, package, dest)


def unpack(bundle: Path, dest: Path) -> BundleInfo:
    """Unpack safely (no links, no paths outside ``dest``) and read ``bundle.json``."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(bundle, "r:*") as tar:
            for member in tar.getmembers():
                target = (dest / member.name).resolve()
                # Guards against path traversal, links and devices inside the archive.
                if (
                    not target.is_relative_to(dest.resolve())
                    or not (member.isfile() or member.isdir())
                    or member.size > MAX_BUNDLE_MEMBER
                ):
                    raise TrustError("unsafe_model", f"bundle member {member.name!r} refused")
            for member in tar.getmembers():
                if member.isfile():
                    out = dest / member.name
                    out.parent.mkdir(parents=True, exist_ok=True)
                    src = tar.extractfile(member)
                    assert src is not None
                    out.write_bytes(src.read())
    except (tarfile.TarError, OSError, ValueError) as e:
        raise TrustError("untrusted_metadata", f"not a valid bundle: {e}") from e
    return unpack_info(dest)
