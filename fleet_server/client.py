"""``FleetClient``: the REST API from Python, for notebooks, CI pipelines and ``fleetctl``.

Errors are typed; catch the base class or the one you care about::

    FleetError                    anything this client raises on purpose
    ├── FleetConnectionError      the server could not be reached (DNS, refused, timeout)
    └── FleetAPIError             the server answered with an error (``status``, ``detail``,
        │                         ``body``: the whole JSON answer, e.g. a parity report)
        ├── UnauthorizedError     401 missing, unknown, expired or revoked token
        ├── ForbiddenError        403 the token's role may not do this
        ├── NotFoundError         404 no such model, version, device or deployment
        ├── ConflictError         409 wrong state (e.g. promoting a deprecated version)
        ├── PayloadTooLargeError  413
        ├── RejectedError         422 invalid request or the model failed a check
        ├── RateLimitedError      429
        └── ServerError           5xx
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

UPLOAD_CHUNK = 64 * 1024

Progress = Callable[[int, int], None]
"""Called with (bytes sent, total bytes) while a model uploads."""


class FleetError(Exception):
    """Base of every error this client raises on purpose."""


class FleetConnectionError(FleetError):
    """The server could not be reached."""


class FleetAPIError(FleetError):
    """The server answered with an error status; ``status`` and ``detail`` say which."""

    def __init__(self, status: int, detail: Any, body: dict[str, Any] | None = None) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail
        self.body = body or {}


class UnauthorizedError(FleetAPIError):
    pass


class ForbiddenError(FleetAPIError):
    pass


class NotFoundError(FleetAPIError):
    pass


class ConflictError(FleetAPIError):
    pass


class PayloadTooLargeError(FleetAPIError):
    pass


class RejectedError(FleetAPIError):
    pass


class RateLimitedError(FleetAPIError):
    pass


class ServerError(FleetAPIError):
    pass


_BY_STATUS: dict[int, type[FleetAPIError]] = {
    401: UnauthorizedError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: RejectedError,
    429: RateLimitedError,
}


def api_error(status: int, detail: Any, body: dict[str, Any] | None = None) -> FleetAPIError:
    """The typed error for an HTTP status."""
    cls = _BY_STATUS.get(status, ServerError if status >= 500 else FleetAPIError)
    return cls(status, detail, body)


def _payload(source: Path | bytes) -> bytes:
    return source.read_bytes() if isinstance(source, Path) else source


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

    def _send(self, request: httpx.Request) -> Any:
        try:
            r = self._http.send(request)
        except httpx.TransportError as e:
            raise FleetConnectionError(f"cannot reach {self._http.base_url}: {e}") from e
        if r.status_code >= 400:
            body: dict[str, Any] = {}
            try:
                parsed = r.json()
                body = parsed if isinstance(parsed, dict) else {}
                detail = body.get("detail", r.text)
            except ValueError:
                detail = r.text
            raise api_error(r.status_code, detail, body)
        return r.json()

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        return self._send(self._http.build_request(method, path, **kw))

    # models ----------------------------------------------------------------------------
    def publish(
        self,
        name: str,
        model: Path | bytes,
        *,
        sample: Path | bytes | None = None,
        tolerance: float = 1e-4,
        force: bool = False,
        filename: str | None = None,
        variant: str | None = None,
        variant_tolerance: float = 1e-2,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Upload a model (ONNX or skops) to become the next version of ``name``.

        ``variant="optimized"`` also registers the optimized variant as the version after
        (see ``variants`` in the answer). ``progress(sent, total)`` follows the upload.
        """
        fname = filename or (model.name if isinstance(model, Path) else "model")
        files: dict[str, Any] = {"file": (fname, _payload(model), "application/octet-stream")}
        if sample is not None:
            files["sample"] = ("sample.csv", _payload(sample), "text/csv")
        data = {"tolerance": str(tolerance), "force": str(force).lower()}
        if variant:
            data |= {"variant": variant, "variant_tolerance": str(variant_tolerance)}
        request = self._http.build_request(
            "POST", f"/api/v1/models/{name}/versions", files=files, data=data
        )
        if progress is not None:
            request = self._with_progress(request, progress)
        result: dict[str, Any] = self._send(request)
        return result

    @staticmethod
    def _with_progress(request: httpx.Request, progress: Progress) -> httpx.Request:
        """The same request, its body streamed in chunks that report progress."""
        body = request.read()
        total = len(body)

        def chunks() -> Iterator[bytes]:
            sent = 0
            progress(0, total)
            for start in range(0, total, UPLOAD_CHUNK):
                piece = body[start : start + UPLOAD_CHUNK]
                yield piece
                sent += len(piece)
                progress(sent, total)

        headers = {k: v for k, v in request.headers.items() if k.lower() != "content-length"}
        headers["Content-Length"] = str(total)  # no chunked encoding: the server checks size
        return httpx.Request(request.method, request.url, headers=headers, content=chunks())

    def models(
        self,
        *,
        prefix: str | None = None,
        tag: str | None = None,
        stage: str | None = None,
        deprecated: bool | None = None,
    ) -> list[dict[str, Any]]:
        """One summary per model name; filters keep names with a matching version
        (listed in ``matching_versions``)."""
        params = _params(prefix=prefix, tag=tag, stage=stage, deprecated=deprecated)
        result: list[dict[str, Any]] = self._call("GET", "/api/v1/models", params=params)
        return result

    def versions(
        self,
        name: str,
        *,
        tag: str | None = None,
        stage: str | None = None,
        deprecated: bool | None = None,
    ) -> list[dict[str, Any]]:
        params = _params(tag=tag, stage=stage, deprecated=deprecated)
        result: list[dict[str, Any]] = self._call(
            "GET", f"/api/v1/models/{name}/versions", params=params
        )
        return result

    def model_version(self, name: str, version: int) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/api/v1/models/{name}/versions/{version}")
        return result

    def set_stage(self, name: str, version: int, stage: str) -> dict[str, Any]:
        """none, staging, production (archives the previous production version), archived."""
        result: dict[str, Any] = self._call(
            "PUT", f"/api/v1/models/{name}/versions/{version}/stage", json={"stage": stage}
        )
        return result

    def set_tags(self, name: str, version: int, tags: list[str]) -> dict[str, Any]:
        result: dict[str, Any] = self._call(
            "PUT", f"/api/v1/models/{name}/versions/{version}/tags", json={"tags": tags}
        )
        return result

    def change_tags(
        self,
        name: str,
        version: int,
        *,
        add: list[str] | None = None,
        remove: list[str] | None = None,
    ) -> dict[str, Any]:
        result: dict[str, Any] = self._call(
            "POST",
            f"/api/v1/models/{name}/versions/{version}/tags",
            json={"add": add or [], "remove": remove or []},
        )
        return result

    def deprecate(self, name: str, version: int, reason: str = "") -> dict[str, Any]:
        result: dict[str, Any] = self._call(
            "POST", f"/api/v1/models/{name}/versions/{version}/deprecate", json={"reason": reason}
        )
        return result

    def publish_variant(
        self,
        name: str,
        version: int,
        *,
        tolerance: float = 1e-2,
        quantize: bool = True,
        force: bool = False,
    ) -> dict[str, Any]:
        """Register the optimized variant of base version ``version`` as a new version."""
        result: dict[str, Any] = self._call(
            "POST",
            f"/api/v1/models/{name}/versions/{version}/variants",
            json={
                "kind": "optimized",
                "tolerance": tolerance,
                "quantize": quantize,
                "force": force,
            },
        )
        return result

    # devices and enrollment --------------------------------------------------------------
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

    # deployments -------------------------------------------------------------------------
    def deploy(
        self,
        model: str,
        version: int,
        *,
        devices: list[str] | None = None,
        group: str | None = None,
    ) -> dict[str, Any]:
        if bool(devices) == bool(group):
            raise ValueError("give devices or a group, not both or neither")
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


def _params(**kw: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in kw.items():
        if value is None:
            continue
        out[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return out
