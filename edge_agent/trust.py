"""Everything the agent verifies with TUF, in one place (python-tuf ngclient).

``TrustClient`` owns the persistent metadata dir (seeded with the pinned root at enrollment)
and the verified targets dir. Each update cycle uses a new ``Updater`` (``refresh`` works
once per instance) through ``TrustClient.cycle()``. Every tuf exception becomes a
``TrustError`` with a reason code from ``edge_agent.protocol.REASON_CODES``.

Checks of our own, on top of TUF:

* target paths that would write outside the targets dir are refused even when signed
  (files are stored under our own names: ``<sha256>.<flattened path>``);
* the assignment must name this device, and its serial may never go back;
* a model that needs a newer onnxruntime, another CPU architecture or an opset the local
  onnxruntime lacks is refused *before* its download, from the signed custom metadata.
"""

from __future__ import annotations

import contextlib
import functools
import json
import platform
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuf.api.exceptions import (
    DownloadError,
    DownloadLengthMismatchError,
    ExpiredMetadataError,
    LengthOrHashMismatchError,
    RepositoryError,
)
from tuf.ngclient.config import UpdaterConfig
from tuf.ngclient.fetcher import FetcherInterface
from tuf.ngclient.updater import Updater

from edge_agent import protocol
from edge_agent.exceptions import IncompatibleModelError, ProtocolError, TrustError
from edge_agent.fsutil import atomic_write

SERIAL_FILE = "assignment-serial.state"  # not "<role>.json": cannot clash with ngclient files
MAX_NAME = 150
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_ARCH_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64", "armv8": "aarch64"}


class ContentMismatchError(DownloadError):
    """A fetcher's early check found bytes that do not match their digest or length."""


# -- pure checks (no I/O) --------------------------------------------------------------------
def tuf_error_to_trust(e: Exception, what: str) -> TrustError:
    """Map a python-tuf exception to a ``TrustError`` with a reason code."""
    if isinstance(e, ExpiredMetadataError):
        reason = "expired_metadata"
    elif isinstance(
        e, (LengthOrHashMismatchError, DownloadLengthMismatchError, ContentMismatchError)
    ):
        reason = "hash_mismatch"
    elif isinstance(e, RepositoryError):  # bad signature, threshold, version, mix-and-match
        reason = "untrusted_metadata"
    elif isinstance(e, DownloadError):  # not found, timeout, slow retrieval, broker gone
        reason = "download_failed"
    else:
        reason = "internal"
    return TrustError(reason, f"{what}: {type(e).__name__}: {e}")


def check_target_path(path: str) -> str:
    """Return ``path`` if it is a plain relative target path; else refuse it."""
    parts = path.split("/")
    # Guards against signed-but-hostile paths: traversal (..), absolute paths, empty or
    # dot segments, backslashes and control characters.
    if (
        not path
        or len(path) > 200
        or path.startswith("/")
        or any(c in path for c in "\\\0+#")
        or any(ord(c) < 0x20 for c in path)
        or any(p in ("", ".", "..") for p in parts)
    ):
        raise TrustError("unsafe_model", f"unsafe target path {path!r}")
    return path


def local_name(path: str, sha256: str) -> str:
    """The file name the agent stores a verified target under (never a path)."""
    # Guards against a target hash that is not a plain digest reaching the file system.
    if not _SHA256_RE.fullmatch(sha256):
        raise TrustError("untrusted_metadata", f"{path}: no usable sha256 in the signed info")
    flat = re.sub(r"[^A-Za-z0-9._-]", "_", path.replace("/", "_"))[-MAX_NAME:]
    return f"{sha256}.{flat.lstrip('.')}"


def _version_tuple(v: str) -> tuple[int, ...]:
    out = []
    for part in v.split(".")[:3]:
        m = re.match(r"\d+", part)
        out.append(int(m.group()) if m else 0)
    return tuple(out)


@dataclass(frozen=True)
class RuntimeInfo:
    """What this device can run: onnxruntime version, CPU arch, highest opset per domain."""

    ort_version: str
    arch: str
    max_opset: Mapping[str, int]

    @staticmethod
    @functools.lru_cache(maxsize=1)
    def local() -> RuntimeInfo:
        import onnxruntime as ort
        from onnxruntime.capi import _pybind_state as pybind

        opsets: dict[str, int] = {}
        # The highest ``since_version`` per domain is a lower bound of the opset onnxruntime
        # implements: conservative, it may refuse a model it could run, never the reverse.
        for schema in pybind.get_all_operator_schema():
            dom = "" if schema.domain == "ai.onnx" else schema.domain
            opsets[dom] = max(opsets.get(dom, 0), int(schema.since_version))
        return RuntimeInfo(ort.__version__, platform.machine(), opsets)


def _norm_arch(a: str) -> str:
    a = a.lower()
    return _ARCH_ALIASES.get(a, a)


def check_compatible(
    custom: Mapping[str, Any], package: protocol.ModelPackage | None, runtime: RuntimeInfo
) -> None:
    """Refuse a model this device cannot run (``IncompatibleModelError('incompatible')``)."""
    ort_min = str(custom.get("ort_min") or (package.ort_min if package else "") or "")
    if ort_min and _version_tuple(runtime.ort_version) < _version_tuple(ort_min):
        raise IncompatibleModelError(
            "incompatible", f"needs onnxruntime >= {ort_min}, have {runtime.ort_version}"
        )
    arch = custom.get("arch")
    if arch:
        allowed = {_norm_arch(a) for a in ([arch] if isinstance(arch, str) else arch)}
        if _norm_arch(runtime.arch) not in allowed:
            raise IncompatibleModelError(
                "incompatible", f"built for {sorted(allowed)}, this device is {runtime.arch}"
            )
    opset = custom.get("opset", package.opset if package else None)
    wanted: dict[str, int] = {}
    if isinstance(opset, int) and not isinstance(opset, bool):
        wanted[""] = opset
    elif isinstance(opset, dict):
        wanted = {str(k): int(v) for k, v in opset.items()}
    for dom, ver in wanted.items():
        have = runtime.max_opset.get("" if dom == "ai.onnx" else dom, 0)
        if ver > have:
            raise IncompatibleModelError(
                "incompatible", f"needs opset {dom or 'ai.onnx'} {ver}, onnxruntime has {have}"
            )


# -- the client ------------------------------------------------------------------------------
class TrustClient:
    """Long-lived: the trusted metadata and verified targets of one device.

    ``fetcher_factory`` makes a fresh ``FetcherInterface`` for every cycle. When the fetcher
    has a ``partial_dir`` attribute set to ``None``, it is pointed at ``partial_dir`` (by
    default ``<metadata_dir>/../partial``) so interrupted downloads resume.
    """

    def __init__(
        self,
        metadata_dir: Path,
        targets_dir: Path,
        fetcher_factory: Callable[[], FetcherInterface],
        *,
        metadata_url: str = protocol.TUF_METADATA_URL,
        targets_url: str = protocol.TUF_TARGETS_URL,
        runtime: RuntimeInfo | None = None,
        config: UpdaterConfig | None = None,
        partial_dir: Path | None = None,
    ) -> None:
        self.metadata_dir = Path(metadata_dir)
        self.targets_dir = Path(targets_dir)
        self.fetcher_factory = fetcher_factory
        self.metadata_url = metadata_url
        self.targets_url = targets_url
        self.runtime = runtime
        self.config = config
        self.partial_dir = partial_dir or self.metadata_dir.parent / "partial"

    @staticmethod
    def install_root(metadata_dir: Path, root_bytes: bytes) -> None:
        """Pin ``root_bytes`` as the trust anchor (at enrollment). Refuses a root that is not
        self-signed or older than the one already trusted."""
        from tuf.api.metadata import Metadata

        try:
            md = Metadata.from_bytes(root_bytes)
            root = md.signed
            if md.signed.type != "root":
                raise TrustError("untrusted_metadata", "the pinned root is not root metadata")
            # Guards against a damaged or forged root: it must meet its own threshold.
            root.verify_delegate("root", md.signed_bytes, md.signatures)
        except TrustError:
            raise
        except Exception as e:
            raise TrustError("untrusted_metadata", f"invalid root metadata: {e}") from e
        metadata_dir = Path(metadata_dir)
        current = metadata_dir / "root.json"
        if current.exists():
            old = Metadata.from_bytes(current.read_bytes()).signed
            # Guards against a rollback of the trust anchor by a second enrollment.
            if old.version > root.version:
                raise TrustError("untrusted_metadata", "refusing an older root than trusted")
        history = metadata_dir / "root_history"
        history.mkdir(parents=True, exist_ok=True)
        atomic_write(history / f"{root.version}.root.json", root_bytes)
        atomic_write(current, root_bytes)

    @property
    def highest_serial(self) -> int:
        """Highest assignment serial verified so far (-1: none yet)."""
        try:
            return int(json.loads((self.metadata_dir / SERIAL_FILE).read_text())["serial"])
        except (OSError, ValueError, KeyError, TypeError):
            return -1

    def _remember_serial(self, serial: int) -> None:
        atomic_write(self.metadata_dir / SERIAL_FILE, json.dumps({"serial": serial}).encode())

    def cycle(self) -> TrustCycle:
        """A new update cycle (no network until first used)."""
        return TrustCycle(self)


class TrustCycle:
    """One TUF refresh and the downloads that follow it; every method raises ``UpdateError``
    subclasses only (plus ``OSError`` for the local disk)."""

    def __init__(self, client: TrustClient) -> None:
        self.client = client
        self.fetcher = client.fetcher_factory()
        if getattr(self.fetcher, "partial_dir", False) is None:
            self.fetcher.partial_dir = client.partial_dir  # type: ignore[attr-defined]
        self.replayed = False  # the last assignment had the serial seen before: a no-op
        self._updater: Updater | None = None

    @contextlib.contextmanager
    def _tuf(self, what: str) -> Iterator[None]:
        try:
            yield
        except (RepositoryError, DownloadError) as e:
            raise tuf_error_to_trust(e, what) from e

    def refresh(self) -> Updater:
        """Load and verify the top-level metadata (done on first use)."""
        if self._updater is not None:
            return self._updater
        c = self.client
        if not (c.metadata_dir / "root.json").exists():
            raise TrustError("untrusted_metadata", "no pinned root: enroll first")
        c.targets_dir.mkdir(parents=True, exist_ok=True)
        with self._tuf("metadata refresh"):
            updater = Updater(
                str(c.metadata_dir),
                c.metadata_url,
                str(c.targets_dir),
                c.targets_url,
                fetcher=self.fetcher,
                config=c.config,
                bootstrap=None,  # the pinned root in the persistent metadata dir
            )
            updater.refresh()
        self._updater = updater
        return updater

    def _info(self, path: str) -> Any:
        check_target_path(path)
        updater = self.refresh()
        with self._tuf(path):
            return updater.get_targetinfo(path)

    def _file(self, path: str, info: Any) -> Path:
        updater = self.refresh()
        name = local_name(path, str(info.hashes.get("sha256", "")))
        dest = self.client.targets_dir / name
        # Guards (again) against writing outside the targets dir, whatever the name holds.
        if dest.parent.resolve() != self.client.targets_dir.resolve():
            raise TrustError("unsafe_model", f"unsafe local name for {path!r}")
        with self._tuf(path):
            if updater.find_cached_target(info, str(dest)) is None:
                updater.download_target(info, str(dest))
        self._prune_older(name)
        return dest

    def _prune_older(self, keep: str) -> None:
        """Remove earlier versions of the same target path (assignments change often)."""
        suffix = keep[65:]
        for p in self.client.targets_dir.iterdir():
            if p.name != keep and p.name[65:] == suffix and p.name[:64] != keep[:64]:
                p.unlink(missing_ok=True)

    def target_file(self, path: str) -> Path:
        """Download (or find cached) and verify any target; returns the local file."""
        info = self._info(path)
        if info is None:
            raise TrustError("target_missing", f"{path} is not a signed target")
        return self._file(path, info)

    def assignment(self, device_id: str) -> protocol.Assignment | None:
        """This device's signed assignment, or None when the repository has none."""
        path = protocol.assignment_target_path(device_id)
        info = self._info(path)
        if info is None:
            return None
        data = self._file(path, info).read_bytes()
        try:
            assignment = protocol.Assignment.from_bytes(data)
        except ProtocolError as e:
            raise TrustError("untrusted_metadata", f"signed assignment is malformed: {e}") from e
        # Guards against an assignment for another device served under our path.
        if assignment.device != device_id:
            raise TrustError("untrusted_metadata", "the assignment names another device")
        highest = self.client.highest_serial
        # Guards against an assignment rollback that TUF alone would allow (an older
        # assignment re-signed, or metadata reset on the device).
        if assignment.serial < highest:
            raise TrustError(
                "untrusted_metadata",
                f"assignment serial {assignment.serial} is older than {highest}",
            )
        self.replayed = assignment.serial == highest
        if assignment.serial > highest:
            self.client._remember_serial(assignment.serial)
        return assignment

    def package(self, path: str) -> protocol.ModelPackage:
        """The signed ``package.json`` at ``path``."""
        data = self.target_file(path).read_bytes()
        try:
            return protocol.ModelPackage.from_bytes(data)
        except ProtocolError as e:
            raise TrustError("untrusted_metadata", f"signed package is malformed: {e}") from e

    def model_file(self, package: protocol.ModelPackage) -> Path:
        """The verified model file of ``package``; refuses an incompatible one before
        downloading it."""
        path = package.model_target
        info = self._info(path)
        if info is None:
            raise TrustError("target_missing", f"{path} is not a signed target")
        # Guards against a package that names one model file and a target that is another.
        if info.hashes.get("sha256") != package.model_sha256:
            raise TrustError("hash_mismatch", f"{path}: digest differs from the package's")
        custom = info.custom if isinstance(info.custom, dict) else {}
        check_compatible(custom, package, self.client.runtime or RuntimeInfo.local())
        return self._file(path, info)
