"""Models and assignments reach the agent over MQTT, verified by TUF, fast and resumable."""

from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest

from edge_agent import protocol
from edge_agent.exceptions import TrustError
from tests.trust.conftest import DEVICE, Env, wait_until


def test_happy_path_assignment_package_and_model_are_verified(env: Env) -> None:
    data = os.urandom(50_000)
    pkg = env.publish_model("iris", 1, data)
    env.assign(1, pkg)

    cycle = env.cycle()
    assignment = cycle.assignment(DEVICE)
    assert assignment is not None and assignment.serial == 1 and not cycle.replayed
    package = cycle.package(assignment.models[0].package)
    assert package == pkg
    path = cycle.model_file(package)
    assert path.read_bytes() == data
    assert path.parent == env.agent_dir / "tuf" / "targets"


def test_second_cycle_downloads_nothing_new(env: Env) -> None:
    pkg = env.publish_model("iris", 1, os.urandom(300_000))
    env.assign(1, pkg)
    first = env.cycle()
    a = first.assignment(DEVICE)
    assert a is not None
    first.model_file(first.package(a.models[0].package))

    second = env.cycle()
    a2 = second.assignment(DEVICE)
    assert a2 == a and second.replayed  # the same serial: a no-op for the caller
    second.model_file(second.package(a2.models[0].package))
    fetcher = env.fetchers[-1]
    # Only the root probe (404) and the timestamp: everything else is cached and verified.
    assert fetcher.topics_read == [env.md_topic("2.root.json"), env.md_topic("timestamp.json")]
    assert fetcher.chunk_topics_read == 0


def test_not_found_is_answered_by_the_barrier_not_a_timeout(env: Env) -> None:
    env.timeout = 10.0
    cycle = env.cycle()
    cycle.refresh()  # includes the 404 for 2.root.json
    start = time.monotonic()
    assert cycle.assignment(DEVICE) is None  # no such target in the signed metadata
    with pytest.raises(TrustError) as e:
        cycle.target_file("models/none/1/model.onnx")
    assert e.value.reason == "target_missing"
    # A missing topic: the fetcher answers 404 after one round trip.
    from tuf.api.exceptions import DownloadHTTPError

    from edge_agent.mqtt_fetcher import MqttFetcher

    f = MqttFetcher(env.link, DEVICE, timeout=10.0)
    t0 = time.monotonic()
    with pytest.raises(DownloadHTTPError) as http:
        f.fetch(protocol.TUF_METADATA_URL + "99.root.json")
    assert http.value.status_code == 404
    assert time.monotonic() - t0 < 1.0
    assert time.monotonic() - start < 2.0


def test_three_megabyte_model_travels_in_chunks(env: Env) -> None:
    data = os.urandom(3 * 1024 * 1024)
    pkg = env.publish_model("big", 1, data)
    cycle = env.cycle()
    package = cycle.package(protocol.package_target_path("big", 1))
    before = env.fetchers[-1].chunk_topics_read
    t0 = time.monotonic()
    path = cycle.model_file(package)
    took = time.monotonic() - t0
    assert path.read_bytes() == data and package == pkg
    assert env.fetchers[-1].chunk_topics_read - before == 12  # 3 MiB / 256 KiB
    print(f"3 MiB target over MQTT: {took * 1000:.0f} ms")


def test_chunk_that_never_arrives_fails_as_download_failed_within_the_timeout(env: Env) -> None:
    data = os.urandom(4 * protocol.CHUNK_SIZE)
    pkg = env.publish_model("slow", 1, data)
    missing = protocol.ChunkRef(
        __import__("hashlib")
        .sha256(data[protocol.CHUNK_SIZE : 2 * protocol.CHUNK_SIZE])
        .hexdigest(),
        protocol.CHUNK_SIZE,
    )
    env.pub.unpublish(protocol.chunk_topic(missing.sha256))
    env.timeout = 1.0
    cycle = env.cycle()
    t0 = time.monotonic()
    with pytest.raises(TrustError) as e:
        cycle.model_file(pkg)
    assert e.value.reason == "download_failed"
    assert 0.9 < time.monotonic() - t0 < 3.0


def test_broken_download_resumes_from_verified_chunks_on_disk(env: Env) -> None:
    import hashlib

    data = os.urandom(12 * protocol.CHUNK_SIZE)
    pkg = env.publish_model("resume", 1, data)
    pieces = [data[i : i + protocol.CHUNK_SIZE] for i in range(0, len(data), protocol.CHUNK_SIZE)]
    topics = [protocol.chunk_topic(hashlib.sha256(p).hexdigest()) for p in pieces]
    for t in topics[6:]:  # the connection "breaks" after half the chunks
        env.pub.unpublish(t)
    env.timeout = 1.0
    with pytest.raises(TrustError) as e:
        env.cycle().model_file(pkg)
    assert e.value.reason == "download_failed"
    partial = env.agent_dir / "tuf" / "partial"
    assert len(list(partial.iterdir())) == 6

    for t, p in zip(topics[6:], pieces[6:], strict=True):
        env.pub.publish(t, p)
    cycle = env.cycle()
    path = cycle.model_file(pkg)
    assert path.read_bytes() == data
    fetcher = env.fetchers[-1]
    assert fetcher.chunks_from_cache == 6 and fetcher.chunk_topics_read == 6
    assert list(partial.iterdir()) == []  # complete: the cache is dropped


def test_assignments_live_in_hash_bins_so_a_device_reads_one_small_bin(env: Env) -> None:
    pkg = env.publish_model("iris", 1, b"model")
    a = protocol.Assignment(DEVICE, 1, ())
    files = {protocol.assignment_target_path(DEVICE): a.to_bytes()}
    for i in range(300):
        other = protocol.Assignment(f"other-{i}", 1, ())
        files[protocol.assignment_target_path(f"other-{i}")] = other.to_bytes()
    env.repo.add_targets(files)
    cycle = env.cycle()
    assert cycle.assignment(DEVICE) == a
    read = [t.rsplit("/", 1)[1] for t in env.fetchers[-1].topics_read]
    bins = [t for t in read if ".bins-" in t]
    assert len(bins) == 1, read  # 1 of 16 bins, not the whole fleet's assignments
    bin_file = env.repo.metadata_dir / bins[0]
    top = env.repo.metadata_dir / next(t for t in read if t.endswith(".targets.json"))
    assert bin_file.stat().st_size < 12_000 and top.stat().st_size < 5_000
    assert pkg.name == "iris"


def test_link_resubscribes_after_a_broker_restart_and_republish_restores_the_repository(
    env: Env,
) -> None:
    pkg = env.publish_model("iris", 1, os.urandom(1000))
    env.assign(1, pkg)
    hints: list[bytes] = []
    env.link.subscribe(protocol.device_topic(DEVICE, "notify"), lambda t, p: hints.append(p))

    env.pub.close()
    env.broker.process.terminate()
    env.broker.process.wait(5)
    assert wait_until(lambda: not env.link.connected.is_set())
    cfg = env.broker.log.parent / "mosquitto.conf"
    env.broker.process = subprocess.Popen(
        ["/usr/sbin/mosquitto", "-c", str(cfg)],
        stdout=env.broker.log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    assert wait_until(env.link.connected.is_set, 15)
    from tests.trust.conftest import PahoPublisher

    env.pub = PahoPublisher(env.broker.url)
    env.repo.publisher = env.pub
    env.repo.republish_all()  # persistence is off: the broker forgot every retained file
    env.pub.publish(protocol.device_topic(DEVICE, "notify"), b"hint", retain=False)
    assert wait_until(lambda: hints == [b"hint"])
    cycle = env.cycle()
    a = cycle.assignment(DEVICE)
    assert a is not None and cycle.model_file(cycle.package(a.models[0].package)).exists()
    assert threading.active_count() < 50
