"""The agent refuses what it cannot run before downloading it, and never writes outside."""

from __future__ import annotations

import os

import pytest

from edge_agent import protocol
from edge_agent.exceptions import IncompatibleModelError, TrustError
from edge_agent.trust import RuntimeInfo, check_compatible, local_name
from fleet_server import tuf_repo
from fleet_server.tuf_repo import UnsafeTargetPathError
from tests.trust.conftest import Env


@pytest.mark.parametrize(
    "custom",
    [{"ort_min": "99.0"}, {"arch": "riscv64"}, {"opset": 999}, {"opset": {"ai.onnx.ml": 99}}],
)
def test_model_the_device_cannot_run_is_refused_before_download(
    env: Env, custom: dict[str, object]
) -> None:
    pkg = env.publish_model("m", 1, os.urandom(2 * protocol.CHUNK_SIZE), custom=custom)
    cycle = env.cycle()
    package = cycle.package(protocol.package_target_path("m", 1))
    read_before = env.fetchers[-1].chunk_topics_read
    with pytest.raises(IncompatibleModelError) as e:
        cycle.model_file(package)
    assert e.value.reason == "incompatible"
    assert env.fetchers[-1].chunk_topics_read == read_before  # zero chunk topics read
    assert package == pkg


def test_compatibility_check_is_pure_and_accepts_what_the_runtime_has() -> None:
    rt = RuntimeInfo("1.17.3", "x86_64", {"": 20, "ai.onnx.ml": 4})
    check_compatible({"ort_min": "1.17", "arch": ["amd64"], "opset": {"ai.onnx": 20}}, None, rt)
    with pytest.raises(IncompatibleModelError):
        check_compatible({"ort_min": "1.18.0"}, None, rt)
    assert RuntimeInfo.local().max_opset[""] >= 17


@pytest.mark.parametrize(
    "path", ["../x.json", "models/../../x", "/etc/passwd", "a//b", "a/./b", "a\\..\\b", "a/#"]
)
def test_server_refuses_unsafe_target_paths(env: Env, path: str) -> None:
    with pytest.raises(UnsafeTargetPathError):
        env.repo.add_targets({path: b"x"})


@pytest.mark.parametrize("path", ["+/x", "$SYS/x", "a/+/b"])
def test_server_refuses_topic_injection_in_target_paths(env: Env, path: str) -> None:
    with pytest.raises(UnsafeTargetPathError):
        env.repo.add_targets({path: b"x"})


def test_signed_unsafe_target_names_never_write_outside(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A compromised or buggy server signs hostile paths; the agent still refuses them.
    monkeypatch.setattr(tuf_repo, "check_target_path", lambda p: p)
    evil = "models/../../../../escape.json"
    env.repo.add_targets({evil: b"{}"})
    assert env.repo.target_info(evil) is not None  # really signed
    cycle = env.cycle()
    for path in (evil, "/tmp/escape.json", "../escape.json"):
        with pytest.raises(TrustError) as e:
            cycle.package(path)
        assert e.value.reason == "unsafe_model"
    pkg = env.publish_model("m", 1, b"model")
    hostile = protocol.ModelPackage(**{**pkg.__dict__, "model_target": "../../../model.onnx"})
    with pytest.raises(TrustError) as e:
        cycle.model_file(hostile)
    assert e.value.reason == "unsafe_model"
    assert env.files_outside_targets() == []
    assert not list(env.tmp.rglob("escape.json"))


def test_local_names_are_flat_and_bounded() -> None:
    sha = "ab" * 32
    name = local_name("models/" + "x" * 300 + "/model.onnx", sha)
    assert "/" not in name and len(name) <= 64 + 1 + 150 and name.startswith(sha)
    with pytest.raises(TrustError):
        local_name("a", "../../etc")


def test_pinned_root_must_be_self_signed(env: Env) -> None:
    from tuf.api.metadata import Metadata

    from edge_agent.trust import TrustClient

    md = Metadata.from_bytes(env.repo.root_bytes())
    md.signatures.clear()
    with pytest.raises(TrustError) as e:
        TrustClient.install_root(env.tmp / "other" / "metadata", md.to_bytes())
    assert e.value.reason == "untrusted_metadata"
    with pytest.raises(TrustError):
        TrustClient.install_root(env.tmp / "other" / "metadata", b"not json")


def test_agent_without_a_pinned_root_refuses_to_update(env: Env) -> None:
    from edge_agent.mqtt_fetcher import MqttFetcher
    from edge_agent.trust import TrustClient

    client = TrustClient(
        env.tmp / "empty" / "md", env.tmp / "empty" / "t", lambda: MqttFetcher(env.link, "d")
    )
    with pytest.raises(TrustError) as e:
        client.cycle().refresh()
    assert e.value.reason == "untrusted_metadata"
