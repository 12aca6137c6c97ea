"""Telemetry end to end on scikit-learn's bundled digits data: devices streaming held-out
rows stay quiet, the device with a shifted stream raises a drift alert for the shifted
features, and no raw input value ever leaves a device."""

from __future__ import annotations

import io
import json
import queue
import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.protocol import Envelope
from fleet_server.local_fleet import AgentProcess
from tests.support.fleet import running_server

pytestmark = pytest.mark.slow

SHIFTED = ("f20", "f21", "f28")
AGENT_ENV = {"EDGE_AGENT_HEARTBEAT_S": "0.5", "EDGE_AGENT_SUMMARY_WINDOW_S": "1"}


def _digits_model(tmp: Path) -> tuple[Path, Path, np.ndarray]:
    import skops.io as sio
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    # The sample (the reference profile) is a validation split the model never saw: profiled on
    # training rows, its scores would be more confident than any live data and "drift".
    train, validation, held_out = order[:700], order[700:1200], order[1200:]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300)).fit(
        x[train], y[train]
    )
    path = tmp / "digits.skops"
    sio.dump(model, path)
    buf = io.StringIO()
    np.savetxt(
        buf,
        x[validation],
        delimiter=",",
        fmt="%g",
        header=",".join(f"f{i}" for i in range(64)),
        comments="",
    )
    sample = tmp / "digits.csv"
    sample.write_text(buf.getvalue())
    return path, sample, x[held_out]


def _stream(
    agent: AgentProcess, rows: np.ndarray, stop: threading.Event, errors: list[str]
) -> None:
    rng = np.random.default_rng()
    while not stop.is_set():
        batch = rows[rng.integers(0, len(rows), 100)]
        try:
            agent.infer("digits", batch.tolist())
        except Exception as e:  # recorded, asserted on below
            errors.append(repr(e))
        time.sleep(0.05)


def test_shifted_device_alerts_on_its_features_and_the_others_stay_quiet(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mosquitto,  # type: ignore[no-untyped-def]
) -> None:
    for key, value in {
        "DRIFT_MIN_ROWS": "600",
        "DRIFT_INTERVAL_S": "1",
        "DRIFT_CONSECUTIVE": "2",
    }.items():
        monkeypatch.setenv(f"FLEET_SERVER_{key}", value)
    with running_server(tmp_path / "server", mqtt_url=mosquitto.url) as fleet:
        # Everything devices send upstream, as the broker sees it.
        sniffed: queue.Queue[bytes] = queue.Queue()
        sniffer = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="sniffer")
        sniffer.on_message = lambda c, u, m: sniffed.put(bytes(m.payload))
        sniffer.connect("127.0.0.1", mosquitto.port)
        sniffer.subscribe("edgefleet/devices/+/up", 1)
        sniffer.loop_start()

        model, sample, held_out = _digits_model(tmp_path)
        fleet.client.publish("digits", model, sample=sample)
        agents = []
        for i in range(3):
            a = AgentProcess(tmp_path / f"agent-{i}", env=AGENT_ENV)
            a.enroll(fleet.url, fleet.client.enrollment_token(group="plant"), f"cam-{i}")
            a.start()
            agents.append(a)
        stop = threading.Event()
        errors: list[str] = []
        threads = []
        try:
            dep = fleet.client.deploy("digits", 1, group="plant")
            assert fleet.client.wait_deployment(dep["id"])["counts"] == {"active": 3}

            shifted = held_out.copy()
            cols = [int(f[1:]) for f in SHIFTED]
            shifted[:, cols] = np.clip(shifted[:, cols] + 6.0, 0, 16)
            # One row with a value no histogram would carry (one row: no drift of its own).
            marker = held_out[:1].copy()
            marker[:, 5] = 987654.25
            streams = [held_out, held_out, shifted]
            for agent, rows in zip(agents, streams, strict=True):
                t = threading.Thread(target=_stream, args=(agent, rows, stop, errors), daemon=True)
                t.start()
                threads.append(t)
            agents[0].infer("digits", marker.tolist())

            deadline = time.monotonic() + 90
            drift_alerts: list[dict[str, object]] = []
            quiet_checks = flagged = 0
            while time.monotonic() < deadline:
                time.sleep(2)
                for device in ("cam-0", "cam-1"):
                    report = fleet.client._call("GET", f"/api/v1/devices/{device}/drift")
                    for m in report["models"]:
                        for f in m["features"]:
                            if f["kind"] in ("numeric", "categorical"):
                                quiet_checks += 1
                                flagged += f["level"] != "ok"
                drift_alerts = [a for a in fleet.client.alerts() if a["kind"] == "drift"]
                if drift_alerts and quiet_checks >= 64 * 2 * 5:
                    break
            stop.set()
            assert not errors, errors[:3]
            assert drift_alerts, "the shifted device raised no drift alert"
            assert {a["device_id"] for a in drift_alerts} == {"cam-2"}
            features = set(drift_alerts[0]["detail"]["features"])  # type: ignore[index]
            inputs_flagged = {f for f in features if f.startswith("f")}
            assert inputs_flagged and inputs_flagged <= set(SHIFTED), features
            false_alarm_rate = flagged / max(quiet_checks, 1)
            print(
                f"false-alarm rate on unshifted devices: {flagged}/{quiet_checks} = "
                f"{false_alarm_rate:.4f}"
            )
            assert quiet_checks > 0 and false_alarm_rate < 0.01

            # Privacy: summaries did go upstream, and the marker value is in none of them.
            payloads = []
            while not sniffed.empty():  # as sent (deflated) and as the server reads them
                raw = sniffed.get()
                payloads += [raw, json.dumps(Envelope.from_bytes(raw).body).encode()]
            assert any(Envelope.from_bytes(p).kind == "summary" for p in payloads[::2])
            for p in payloads:
                assert b"987654" not in p
        finally:
            stop.set()
            for t in threads:
                t.join(5)
            for a in agents:
                a.stop()
            sniffer.loop_stop()
