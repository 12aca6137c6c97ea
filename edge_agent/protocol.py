"""The wire contract between the fleet server and its agents.

This is the one module of the agent that the server imports. It holds topic names, TUF
paths and the JSON message schemas, and nothing that does I/O.

Topics (MQTT 3.1.1 compatible; every ``<device>`` matches ``DEVICE_ID_RE``)::

    edgefleet/tuf/metadata/<role file>     retained  TUF metadata (1.root.json, timestamp.json, ...)
    edgefleet/tuf/targets/<target url>     retained  chunk manifest of a TUF target (JSON)
    edgefleet/chunks/<sha256>              retained  one content-addressed chunk of a target
    edgefleet/devices/<device>/notify      retained  "look for an update" hint (unsigned)
    edgefleet/devices/<device>/up          agent -> server  Envelope (heartbeat, report, ...)
    edgefleet/devices/<device>/ack         server -> agent  Ack of ingested sequence numbers
    edgefleet/devices/<device>/probe       agent -> itself  ordering barrier for "not found"

The hint on ``notify`` is not trusted: it only makes the agent run a TUF update cycle. What
a device must run is the signed TUF target ``assignments/<device>.json``.
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from edge_agent.exceptions import ProtocolError

PROTOCOL_VERSION = 1
TOPIC_ROOT = "edgefleet"
TUF_METADATA_PREFIX = f"{TOPIC_ROOT}/tuf/metadata/"
TUF_TARGETS_PREFIX = f"{TOPIC_ROOT}/tuf/targets/"
CHUNKS_PREFIX = f"{TOPIC_ROOT}/chunks/"
# TUF base URLs handed to ngclient; the fetcher maps ``mqtt:///<topic>`` to ``<topic>``.
MQTT_URL_SCHEME = "mqtt:///"
TUF_METADATA_URL = MQTT_URL_SCHEME + TUF_METADATA_PREFIX
TUF_TARGETS_URL = MQTT_URL_SCHEME + TUF_TARGETS_PREFIX
CHUNK_SIZE = 256 * 1024
MAX_ENVELOPE_BYTES = 1 << 20  # inflated size limit of one upstream message

DEVICE_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
MODEL_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")

# Reason codes an agent reports when it refuses or fails a deployment.
REASON_CODES = frozenset(
    {
        "untrusted_metadata",  # signature, threshold, rollback or mix-and-match refused by TUF
        "expired_metadata",  # freeze attack or a server that stopped refreshing
        "hash_mismatch",  # artifact bytes do not match the signed hash or length
        "download_failed",  # broker unreachable, timeout, slow retrieval
        "target_missing",  # the assignment names a target that is not signed
        "incompatible",  # needs a newer onnxruntime, opset or other hardware
        "unsafe_model",  # external data, custom op domain, unsafe path
        "load_failed",  # onnxruntime refused the file
        "selftest_failed",  # outputs differ from the signed expected outputs
        "latency_budget",  # the model is slower than the package allows
        "disk_full",  # not enough free space to stage the model
        "internal",  # anything else; the message says what
    }
)


def validate_device_id(device_id: str) -> str:
    """Return ``device_id`` if it is safe as a topic level and a file name."""
    # Guards against topic injection (+, #, /, $) and path traversal through device ids.
    if not DEVICE_ID_RE.fullmatch(device_id):
        raise ProtocolError(f"invalid device id {device_id!r}: use [a-z0-9_.-], at most 63")
    return device_id


def validate_model_name(name: str) -> str:
    """Return ``name`` if it is safe as a topic level, a file name and a TUF path part."""
    if not MODEL_NAME_RE.fullmatch(name):
        raise ProtocolError(f"invalid model name {name!r}: use [a-z0-9_.-], at most 63")
    return name


def device_topic(device_id: str, leaf: Literal["notify", "up", "ack", "probe"]) -> str:
    return f"{TOPIC_ROOT}/devices/{validate_device_id(device_id)}/{leaf}"


def device_from_topic(topic: str) -> str:
    """Return the device id of an ``edgefleet/devices/<device>/<leaf>`` topic."""
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != TOPIC_ROOT or parts[1] != "devices":
        raise ProtocolError(f"not a device topic: {topic!r}")
    return validate_device_id(parts[2])


def chunk_topic(sha256_hex: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{64}", sha256_hex):
        raise ProtocolError(f"invalid chunk digest {sha256_hex!r}")
    return CHUNKS_PREFIX + sha256_hex


def assignment_target_path(device_id: str) -> str:
    return f"assignments/{validate_device_id(device_id)}.json"


def model_target_path(name: str, version: int) -> str:
    return f"models/{validate_model_name(name)}/{int(version)}/model.onnx"


def package_target_path(name: str, version: int) -> str:
    return f"models/{validate_model_name(name)}/{int(version)}/package.json"


def _loads(payload: bytes | str, what: str) -> dict[str, Any]:
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as e:
        raise ProtocolError(f"{what}: not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ProtocolError(f"{what}: expected a JSON object")
    return data


def _dumps(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()


def _req(data: dict[str, Any], key: str, typ: type | tuple[type, ...], what: str) -> Any:
    value = data.get(key)
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise ProtocolError(f"{what}: field {key!r} missing or of the wrong type")
    return value


@dataclass(frozen=True)
class ChunkRef:
    sha256: str
    length: int


@dataclass(frozen=True)
class ChunkManifest:
    """What a target topic holds: the target's chunks, in order.

    The manifest itself is not signed; the fetcher checks each chunk against its digest and
    ngclient checks the whole target against the signed length and hashes.
    """

    length: int
    chunks: tuple[ChunkRef, ...]

    def to_bytes(self) -> bytes:
        return _dumps(
            {
                "v": PROTOCOL_VERSION,
                "length": self.length,
                "chunks": [[c.sha256, c.length] for c in self.chunks],
            }
        )

    @classmethod
    def from_bytes(cls, payload: bytes) -> ChunkManifest:
        data = _loads(payload, "chunk manifest")
        length = _req(data, "length", int, "chunk manifest")
        raw = _req(data, "chunks", list, "chunk manifest")
        chunks = []
        for item in raw:
            if (
                not isinstance(item, list)
                or len(item) != 2
                or not isinstance(item[0], str)
                or not isinstance(item[1], int)
            ):
                raise ProtocolError("chunk manifest: bad chunk entry")
            chunk_topic(item[0])  # validates the digest
            chunks.append(ChunkRef(item[0], item[1]))
        if sum(c.length for c in chunks) != length:
            raise ProtocolError("chunk manifest: chunk lengths do not add up")
        return cls(length, tuple(chunks))


@dataclass(frozen=True)
class AssignedModel:
    name: str
    version: int
    package: str  # TUF target path of the package.json
    deployment: str  # deployment id, reported back with the status


@dataclass(frozen=True)
class Assignment:
    """Signed (as a TUF target) list of the models a device must run."""

    device: str
    serial: int  # grows with every change; an older serial is a rollback
    models: tuple[AssignedModel, ...]

    def to_bytes(self) -> bytes:
        return _dumps(
            {
                "v": PROTOCOL_VERSION,
                "device": self.device,
                "serial": self.serial,
                "models": [asdict(m) for m in self.models],
            }
        )

    @classmethod
    def from_bytes(cls, payload: bytes) -> Assignment:
        data = _loads(payload, "assignment")
        device = validate_device_id(_req(data, "device", str, "assignment"))
        serial = _req(data, "serial", int, "assignment")
        models = []
        for m in _req(data, "models", list, "assignment"):
            if not isinstance(m, dict):
                raise ProtocolError("assignment: bad model entry")
            models.append(
                AssignedModel(
                    name=validate_model_name(_req(m, "name", str, "assignment model")),
                    version=_req(m, "version", int, "assignment model"),
                    package=_req(m, "package", str, "assignment model"),
                    deployment=_req(m, "deployment", str, "assignment model"),
                )
            )
        return cls(device, serial, tuple(models))


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str  # OIP datatype: FP32, FP64, INT64, BYTES, ...
    shape: tuple[int, ...]  # -1 for a free dimension


@dataclass(frozen=True)
class ModelPackage:
    """The signed description of one model version (TUF target ``package.json``).

    ``selftest`` holds a few sample rows with the outputs the original model gave for them;
    the agent runs them before switching and refuses the model beyond ``tolerance``.
    ``profile`` is the monitoring reference (bin edges, vocabularies) for data summaries.
    """

    name: str
    version: int
    model_target: str
    model_sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    opset: int
    ort_min: str
    selftest: dict[str, Any] = field(default_factory=dict)
    tolerance: float = 1e-4
    latency_budget_ms: float = 1000.0
    profile: dict[str, Any] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        data = asdict(self)
        data["v"] = PROTOCOL_VERSION
        return _dumps(data)

    @classmethod
    def from_bytes(cls, payload: bytes) -> ModelPackage:
        data = _loads(payload, "model package")
        what = "model package"

        def specs(key: str) -> tuple[TensorSpec, ...]:
            out = []
            for s in _req(data, key, list, what):
                if not isinstance(s, dict):
                    raise ProtocolError(f"{what}: bad tensor spec")
                out.append(
                    TensorSpec(
                        _req(s, "name", str, what),
                        _req(s, "datatype", str, what),
                        tuple(int(d) for d in _req(s, "shape", list, what)),
                    )
                )
            return tuple(out)

        return cls(
            name=validate_model_name(_req(data, "name", str, what)),
            version=_req(data, "version", int, what),
            model_target=_req(data, "model_target", str, what),
            model_sha256=_req(data, "model_sha256", str, what),
            inputs=specs("inputs"),
            outputs=specs("outputs"),
            opset=_req(data, "opset", int, what),
            ort_min=_req(data, "ort_min", str, what),
            selftest=data.get("selftest") or {},
            tolerance=float(data.get("tolerance", 1e-4)),
            latency_budget_ms=float(data.get("latency_budget_ms", 1000.0)),
            profile=data.get("profile") or {},
        )


EnvelopeKind = Literal["heartbeat", "deployment", "summary", "alert"]
ENVELOPE_KINDS: frozenset[str] = frozenset({"heartbeat", "deployment", "summary", "alert"})
DEPLOYMENT_STATUSES = frozenset({"downloading", "active", "failed", "rolled_back", "pending"})


@dataclass(frozen=True)
class Envelope:
    """Every upstream message: (device, seq) makes ingestion idempotent."""

    device: str
    seq: int
    kind: str
    ts: float
    body: dict[str, Any]

    def to_bytes(self, compress: bool = False) -> bytes:
        """Compact JSON; ``compress`` deflates it (zlib), which ``from_bytes`` detects."""
        data = _dumps(
            {
                "v": PROTOCOL_VERSION,
                "device": self.device,
                "seq": self.seq,
                "kind": self.kind,
                "ts": self.ts,
                "body": self.body,
            }
        )
        return zlib.compress(data, 6) if compress else data

    @classmethod
    def from_bytes(cls, payload: bytes) -> Envelope:
        if payload[:1] == b"\x78":  # a zlib header; JSON starts with "{"
            inflater = zlib.decompressobj()
            try:
                # Guards against a zip bomb: never inflate beyond MAX_ENVELOPE_BYTES.
                payload = inflater.decompress(payload, MAX_ENVELOPE_BYTES)
            except zlib.error as e:
                raise ProtocolError(f"envelope: bad compressed payload: {e}") from e
            if inflater.unconsumed_tail or not inflater.eof:
                raise ProtocolError("envelope: compressed payload too large or truncated")
        data = _loads(payload, "envelope")
        kind = _req(data, "kind", str, "envelope")
        if kind not in ENVELOPE_KINDS:
            raise ProtocolError(f"envelope: unknown kind {kind!r}")
        return cls(
            device=validate_device_id(_req(data, "device", str, "envelope")),
            seq=_req(data, "seq", int, "envelope"),
            kind=kind,
            ts=float(_req(data, "ts", (int, float), "envelope")),
            body=_req(data, "body", dict, "envelope"),
        )


@dataclass(frozen=True)
class Ack:
    """The server's application-level acknowledgement: these sequence numbers are stored."""

    seqs: tuple[int, ...]

    def to_bytes(self) -> bytes:
        return _dumps({"v": PROTOCOL_VERSION, "seqs": list(self.seqs)})

    @classmethod
    def from_bytes(cls, payload: bytes) -> Ack:
        data = _loads(payload, "ack")
        seqs = _req(data, "seqs", list, "ack")
        if not all(isinstance(s, int) for s in seqs):
            raise ProtocolError("ack: seqs must be integers")
        return cls(tuple(seqs))


@dataclass(frozen=True)
class Notify:
    """Unsigned hint that something changed; the agent then runs a TUF update cycle."""

    targets_version: int

    def to_bytes(self) -> bytes:
        return _dumps({"v": PROTOCOL_VERSION, "targets_version": self.targets_version})

    @classmethod
    def from_bytes(cls, payload: bytes) -> Notify:
        data = _loads(payload, "notify")
        return cls(_req(data, "targets_version", int, "notify"))
