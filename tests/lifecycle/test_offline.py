"""The broker goes away (Mosquitto stopped): local inference keeps answering; when Mosquitto
comes back on the same port the agent reconnects by itself and delivers what it queued."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

from fleet_server.local_fleet import free_port
from tests.lifecycle.conftest import Pipeline
from tests.lifecycle.support import Device, deploy_and_wait, start_mosquitto_on, wait_for
from tests.support.fleet import running_server

MODEL = "offline"
OUTAGE_S = 4.0


def _ts(value: str) -> float:
    dt = datetime.fromisoformat(value)
    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()


def test_inference_goes_on_without_the_broker_and_the_agent_reconnects(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    port = free_port()
    broker = start_mosquitto_on(tmp_path / "mosquitto", port)
    with running_server(tmp_path / "server", mqtt_url=broker.url) as fleet:
        client = fleet.client
        dev = Device.enroll(fleet, tmp_path, "offline")
        try:
            assert client.publish(MODEL, pipeline.model, sample=pipeline.sample)["version"] == 1
            dev.start()
            assert deploy_and_wait(client, MODEL, 1, dev.device_id)["status"] == "active"
            wait_for(lambda: client.telemetry(dev.device_id, "heartbeat"), 30, "a heartbeat")

            broker.stop()
            down_at = time.time()
            answers = 0
            while time.time() - down_at < OUTAGE_S:  # serving never waits on the network
                assert dev.infer(MODEL, pipeline.row)["model_version"] == "1"
                answers += 1
            broker = start_mosquitto_on(tmp_path / "mosquitto", port)
            up_at = time.time()

            def heartbeats_after_restart() -> list[dict[str, object]] | None:
                beats = client.telemetry(dev.device_id, "heartbeat")
                return beats if any(_ts(str(b["ts"])) > up_at for b in beats) else None

            beats = wait_for(heartbeats_after_restart, 90, "a heartbeat after the restart")
            reconnect_s = time.time() - up_at
            during = [b for b in beats if down_at + 1 < _ts(str(b["ts"])) < up_at]
            assert during, "heartbeats queued during the outage were lost"
            assert dev.infer(MODEL, pipeline.row)["model_version"] == "1"
            summary = f"{answers} answers while the broker was down; reported again"
            print(f"\n{summary} {reconnect_s:.1f} s after it came back ({len(during)} queued)")
        finally:
            dev.stop()
            broker.stop()
