"""The wire contract refuses malformed and hostile messages."""

from __future__ import annotations

import pytest

from edge_agent import protocol
from edge_agent.exceptions import ProtocolError


@pytest.mark.parametrize("bad", ["", "A", "dev/1", "dev+1", "dev#", "$sys", "../x", "x" * 64])
def test_device_ids_that_could_inject_topics_or_paths_are_refused(bad: str) -> None:
    with pytest.raises(ProtocolError):
        protocol.validate_device_id(bad)


def test_envelope_round_trips_and_rejects_unknown_kinds() -> None:
    env = protocol.Envelope("dev-1", 7, "heartbeat", 1.5, {"models": {"m": 1}})
    assert protocol.Envelope.from_bytes(env.to_bytes()) == env
    with pytest.raises(ProtocolError):
        protocol.Envelope.from_bytes(env.to_bytes().replace(b"heartbeat", b"shell"))


def test_envelope_seq_must_be_an_integer_not_a_bool() -> None:
    with pytest.raises(ProtocolError):
        protocol.Envelope.from_bytes(
            b'{"device":"d","seq":true,"kind":"heartbeat","ts":1,"body":{}}'
        )


def test_chunk_manifest_lengths_must_add_up() -> None:
    m = protocol.ChunkManifest(3, (protocol.ChunkRef("a" * 64, 3),))
    assert protocol.ChunkManifest.from_bytes(m.to_bytes()) == m
    with pytest.raises(ProtocolError):
        protocol.ChunkManifest.from_bytes(m.to_bytes().replace(b'"length":3', b'"length":4'))


def test_chunk_digest_must_be_hex_so_it_cannot_name_another_topic() -> None:
    with pytest.raises(ProtocolError):
        protocol.chunk_topic("#")


def test_assignment_and_package_round_trip() -> None:
    a = protocol.Assignment(
        "dev-1", 3, (protocol.AssignedModel("m", 2, "models/m/2/package.json", "dep-1"),)
    )
    assert protocol.Assignment.from_bytes(a.to_bytes()) == a
    p = protocol.ModelPackage(
        "m",
        2,
        "models/m/2/model.onnx",
        "0" * 64,
        (protocol.TensorSpec("input", "FP32", (-1, 4)),),
        (),
        17,
        "1.17",
    )
    assert protocol.ModelPackage.from_bytes(p.to_bytes()) == p


def test_not_json_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        protocol.Ack.from_bytes(b"\xff\xfe")


def test_compressed_envelope_round_trips_and_a_zip_bomb_is_refused() -> None:
    import zlib

    env = protocol.Envelope("dev-1", 8, "summary", 2.0, {"features": [[1, 2, 3]] * 50})
    packed = env.to_bytes(compress=True)
    assert len(packed) < len(env.to_bytes())
    assert protocol.Envelope.from_bytes(packed) == env
    bomb = zlib.compress(b"{" + b" " * (protocol.MAX_ENVELOPE_BYTES * 4) + b"}")
    with pytest.raises(ProtocolError):
        protocol.Envelope.from_bytes(bomb)
