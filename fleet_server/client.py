"""``FleetClient``: the REST API from Python, for notebooks, CI pipelines and ``fleetctl``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx


class FleetAPIError(Exception):
    """The server answered with an error status; ``status`` and ``detail`` say which."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


class FleetClient:
    def __init__(self, server: str, token: str, *, timeout: float = 300.0) -> None:
        self._http = httpx.Client(
            base_url=server.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> FleetClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        r = self._http.request(method, path, **kw)
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            raise FleetAPIError(r.status_code, detail)
        return r.json()

    # models
    def publish(
        self,
        name: str,
        model: Path | bytes,
        *,
        sample: Path | bytes | None = None,
        tolerance: float = 1e-4,
        force: bool = False,
        filename: str | None = None,
    ) -> dict[str, Any]:
        data = model.read_bytes() if isinstance(model, Path) else model
        fname = filename or (model.name if isinstance(model, Path) else "model")
        files: dict[str, Any] = {"file": (fname, data)}
        if sample is not None:
            sdata = sample.read_bytes() if isinstance(sample, Path) else sample
            files["sample"] = ("sample.csv", sdata, "text/csv")
        result: dict[str, Any] = self._call(
            "POST",
            f"/api/v1/models/{name}/versions",
            files=files,
            data={"tolerance": str(tolerance), "force": str(force).lower()},
        )
        return result

    def models(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/api/v1/models")
        return result

    def model_version(self, name: str, version: int) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/api/v1/models/{name}/versions/{version}")
        return result

    # devices and enrollment
    def enrollment_token(self, group: str = "", expires_in_s: int = 3600) -> str:
        body = self._call(
            "POST", "/api/v1/enrollment-tokens", json={"group": group, "expires_in_s": expires_in_s}
        )
        return str(body["token"])

    def devices(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/api/v1/devices")
        return result

    def device(self, device_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/api/v1/devices/{device_id}")
        return result

    def telemetry(self, device_id: str, kind: str | None = None) -> list[dict[str, Any]]:
        params = {"kind": kind} if kind else {}
        result: list[dict[str, Any]] = self._call(
            "GET", f"/api/v1/devices/{device_id}/telemetry", params=params
        )
        return result

    def revoke(self, device_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", f"/api/v1/devices/{device_id}/revoke")
        return result

    # deployments
    def deploy(
        self,
        model: str,
        version: int,
        *,
        devices: list[str] | None = None,
        group: str | None = None,
    ) -> dict[str, Any]:
        target: dict[str, Any] = {"devices": devices} if devices else {"group": group}
        result: dict[str, Any] = self._call(
            "POST",
            "/api/v1/deployments",
            json={"model": model, "version": version, "target": target},
        )
        return result

    def deployment(self, deployment_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/api/v1/deployments/{deployment_id}")
        return result

    def wait_deployment(
        self, deployment_id: str, *, timeout: float = 120.0, poll: float = 0.5
    ) -> dict[str, Any]:
        """Poll until no device is pending or downloading; return the last status."""
        deadline = time.monotonic() + timeout
        while True:
            dep = self.deployment(deployment_id)
            if all(d["status"] not in ("pending", "downloading") for d in dep["devices"]):
                return dep
            if time.monotonic() > deadline:
                raise TimeoutError(f"deployment {deployment_id} still running: {dep['counts']}")
            time.sleep(poll)

    def alerts(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/api/v1/alerts")
        return result
