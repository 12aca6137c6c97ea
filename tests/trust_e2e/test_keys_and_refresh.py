"""Operator-side trust: timestamp refresh cadence and recovery from a compromised online key.

The repository publishes to a real Mosquitto and the agent side is the real ``TrustClient``
with the ``MqttFetcher`` (fixtures of ``tests/trust``).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from securesystemslib.signer._crypto_signer import CryptoSigner
from tuf.api.metadata import Metadata

from edge_agent.exceptions import TrustError
from fleet_server.tuf_repo import NullPublisher, TufRepository, _load_signer
from tests.trust.conftest import DEVICE, Env, env  # noqa: F401  (fixture)

# services._refresh_loop: every timestamp_refresh_s (default 3600 s), re-sign what
# expires within 12 hours.
LOOP_S = 3600.0
WITHIN = timedelta(hours=12)


def test_default_refresh_keeps_every_role_valid_with_hours_to_spare(tmp_path: Path) -> None:
    now = [datetime(2030, 1, 1, tzinfo=timezone.utc)]
    repo = TufRepository.create(
        tmp_path / "repo",
        offline_root_key_path=tmp_path / "root.pem",
        bin_bits=2,
        clock=lambda: now[0],
    )
    refreshed: list[str] = []
    least_margin = timedelta(days=999)
    for _ in range(int(10 * 24 * 3600 / LOOP_S)):  # ten days of the loop
        now[0] += timedelta(seconds=LOOP_S)
        refreshed += repo.refresh_expiring(within=WITHIN)
        state = TufRepository.load(tmp_path / "repo", NullPublisher(), clock=lambda: now[0])
        expiries = [
            state._timestamp.signed.expires,
            state._snapshot.signed.expires,
            *(md.signed.expires for md in state._roles.values()),
        ]
        least_margin = min(least_margin, min(expiries) - now[0])
    # Every role always has at least (12 h - one loop interval) left: agents that check
    # every few minutes never see expired metadata while the server runs.
    assert least_margin >= WITHIN - timedelta(seconds=LOOP_S)
    assert refreshed.count("timestamp") >= 10  # re-signed daily (1-day expiry)
    assert "snapshot" in refreshed  # 7-day expiry


def _forge_timestamp(e: Env, version: int, stolen: CryptoSigner) -> bytes:
    """What a holder of the stolen timestamp key can sign."""
    md = Metadata.from_bytes((e.repo.metadata_dir / "timestamp.json").read_bytes())
    md.signed.version = version
    md.signed.expires = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=30)
    md.signatures.clear()
    md.sign(stolen)
    return md.to_bytes()


def test_compromised_timestamp_key_is_recovered_by_rotation(env: Env) -> None:  # noqa: F811
    package = env.publish_model("m", 1, b"model-one" * 100)
    env.assign(1, package)
    assert env.cycle().assignment(DEVICE) is not None
    topic = env.md_topic("timestamp.json")
    stolen = _load_signer(env.repo.root_dir / "keys" / "timestamp.pem")
    # The attacker signs a far-future timestamp version (a fast-forward attack): with the
    # real key it is accepted, and would lock the device out of every later timestamp.
    env.pub.publish(topic, _forge_timestamp(env, 10_000, stolen))
    assert env.cycle().assignment(DEVICE) is not None
    # Recovery: the operator rotates the timestamp key (a new root, signed offline).
    env.repo.rotate_online_key("timestamp")
    package2 = env.publish_model("m", 2, b"model-two" * 100)
    env.assign(2, package2)
    cycle = env.cycle()
    assignment = cycle.assignment(DEVICE)
    # The device dropped the fast-forwarded timestamp (its key is no longer trusted) and
    # follows the repository again, without reinstalling or re-enrolling.
    assert assignment is not None and assignment.serial == 2
    assert cycle.model_file(cycle.package(assignment.models[0].package)).exists()
    # The stolen key is worthless now.
    env.pub.publish(topic, _forge_timestamp(env, 20_000, stolen))
    with pytest.raises(TrustError) as e:
        env.cycle().assignment(DEVICE)
    assert e.value.reason == "untrusted_metadata"


def test_compromised_bins_key_is_recovered_by_rotation(env: Env) -> None:  # noqa: F811
    package = env.publish_model("m", 1, b"model-one" * 100)
    env.assign(1, package)
    assert env.cycle().assignment(DEVICE) is not None
    env.repo.rotate_online_key("bins")  # needs only the online targets key
    env.assign(2, package)
    assignment = env.cycle().assignment(DEVICE)
    assert assignment is not None and assignment.serial == 2
