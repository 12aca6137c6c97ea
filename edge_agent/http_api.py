"""The local Open Inference Protocol (KServe v2) REST API, standard library only.

One threaded HTTP/1.1 server (keep-alive) on ``host:port`` and, optionally, the same
routes on a Unix socket::

    GET  /v2/health/live                      200
    GET  /v2/health/ready                     200 when a model is loaded, else 503
    GET  /v2                                  server metadata
    GET  /v2/models/{name}[/versions/{v}]     model metadata
    GET  /v2/models/{name}[/versions/{v}]/ready
    POST /v2/models/{name}[/versions/{v}]/infer

Errors are ``{"error": "..."}``: 400 bad input, 404 unknown model or route, 405 wrong
method, 411/413 body without length or too large, 500 the model failed, 503 busy.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import socketserver
import stat
import sys
import threading
import time
from collections.abc import Callable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent import oip
from edge_agent.exceptions import (
    BadRequestError,
    ConfigError,
    InferenceError,
    UnknownModelError,
)
from edge_agent.runtime import LoadedModel, ModelRegistry

log = logging.getLogger(__name__)

# (model name, inputs, outputs, seconds, request id or None)
InferHook = Callable[[str, dict[str, np.ndarray], dict[str, np.ndarray], float, str | None], None]
RouteHandler = Callable[[bytes], tuple[int, Any]]

DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_CONNECTIONS = 64
DEFAULT_IDLE_TIMEOUT_S = 30.0
SERVER_NAME = "edgefleet-edge-agent"
MAX_LINE = 8192
MAX_HEADERS = 64

_REASONS = {s.value: s.phrase for s in HTTPStatus}
_BUSY_BODY = b'{"error":"too many open connections"}'
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)
)


def _json(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def _server_version() -> str:
    try:
        from importlib.metadata import version

        return version("edgefleet")
    except Exception:  # not installed as a distribution (source checkout)
        return "0"


class _Api:
    """What the handlers share: the registry, the hook, the limits."""

    def __init__(
        self,
        registry: ModelRegistry,
        on_infer: InferHook | None,
        extra_routes: Mapping[tuple[str, str], RouteHandler] | None,
        max_body_bytes: int,
    ) -> None:
        self.registry = registry
        self.on_infer = on_infer
        self.extra_routes = dict(extra_routes or {})
        self.max_body_bytes = max_body_bytes
        self.metadata = _json({"name": SERVER_NAME, "version": _server_version(),
                               "extensions": []})
        self.hook_failures = 0

    def model_metadata(self, model: LoadedModel) -> bytes:
        def specs(items: Any) -> list[dict[str, Any]]:
            return [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)}
                    for s in items]

        return _json({"name": model.name, "versions": [str(model.version)],
                      "platform": "onnxruntime", "inputs": specs(model.inputs),
                      "outputs": specs(model.outputs)})

    def model(self, name: str, version: str | None) -> LoadedModel:
        model = self.registry.get(name)
        if version is not None and version != str(model.version):
            raise UnknownModelError(
                f"model {name!r} version {version} is not loaded (serving {model.version})"
            )
        return model

    def call_hook(self, model: LoadedModel, inputs: dict[str, np.ndarray],
                  outputs: dict[str, np.ndarray], seconds: float,
                  request_id: str | None = None) -> None:
        hook = self.on_infer
        if hook is None:
            return
        try:
            hook(model.name, inputs, outputs, seconds, request_id)
        except Exception:  # telemetry must never break serving
            self.hook_failures += 1
            if self.hook_failures in (1, 10, 100, 1000):
                log.exception("on_infer hook failed (%d times)", self.hook_failures)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = SERVER_NAME
    api: _Api  # set on the per-server subclass
    timeout = DEFAULT_IDLE_TIMEOUT_S  # idle keep-alive connections close after this

    def setup(self) -> None:
        super().setup()
        if self.connection.family in (socket.AF_INET, socket.AF_INET6):
            # Nagle's algorithm would hold small responses back by up to 40 ms.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: " + format, *args)

    # -- responses --------------------------------------------------------------------------
    def _send(self, status: int, body: bytes) -> None:
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        )
        if self.close_connection:
            head += "Connection: close\r\n"
        self.wfile.write(head.encode("latin-1") + b"\r\n" + body)

    def _error(self, status: int, message: str, close: bool = False) -> None:
        if close:
            self.close_connection = True
        self._send(status, _json({"error": message}))

    # -- request parsing --------------------------------------------------------------------
    # A small HTTP/1.1 reader in place of BaseHTTPRequestHandler.parse_request, whose email
    # header parser costs more per request (about 26 µs) than running most models.
    headers: dict[str, str]  # type: ignore[assignment]  # lower-case names

    def handle_one_request(self) -> None:
        try:
            line = self.rfile.readline(MAX_LINE + 1)
            if not line:
                self.close_connection = True
                return
            self.raw_requestline = line
            if len(line) > MAX_LINE:
                self._bad_request(414, "request line too long")
                return
            parts = line.decode("latin-1").split()
            if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                self._bad_request(400, "malformed request line")
                return
            self.command, self.path, self.request_version = parts
            headers: dict[str, str] = {}
            while True:
                raw = self.rfile.readline(MAX_LINE + 1)
                if raw in (b"\r\n", b"\n", b""):
                    break
                name, sep, value = raw.decode("latin-1").partition(":")
                name = name.strip().lower()
                # Guards against header floods and against ambiguous bodies (request smuggling).
                if not sep or len(raw) > MAX_LINE or len(headers) >= MAX_HEADERS or (
                    name in headers and name in ("content-length", "transfer-encoding")
                ):
                    self._bad_request(400, "malformed or too many headers")
                    return
                headers[name] = value.strip()
            self.headers = headers
            connection = headers.get("connection", "").lower()
            self.close_connection = (
                connection == "close"
                if self.request_version == "HTTP/1.1"
                else connection != "keep-alive"
            )
            if headers.get("expect", "").lower() == "100-continue":
                # Refuse an oversized body before the client sends it.
                if self._body_length() is None:
                    return
                self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            method = getattr(self, "do_" + self.command, None)
            if method is None:
                self._method_not_allowed()
                return
            method()
        except TimeoutError:
            self.close_connection = True  # idle keep-alive connection

    def _bad_request(self, status: int, message: str) -> None:
        self.request_version = "HTTP/1.1"
        self._error(status, message, close=True)

    def _body_length(self) -> int | None:
        """The announced body length, or None after answering 411/413/400."""
        if self.headers.get("transfer-encoding"):
            self._error(411, "chunked request bodies are not supported; send Content-Length",
                        close=True)
            return None
        raw = self.headers.get("content-length")
        if raw is None:
            if self.command != "POST":
                return 0
            self._error(411, "POST needs a Content-Length", close=True)
            return None
        try:
            length = int(raw)
        except ValueError:
            length = -1
        if length < 0:
            self._error(400, "invalid Content-Length", close=True)
            return None
        # Guards against memory exhaustion through huge request bodies.
        if length > self.api.max_body_bytes:
            self._error(413, f"request body of {length} bytes exceeds the limit of "
                             f"{self.api.max_body_bytes} bytes", close=True)
            return None
        return length

    def _read_body(self) -> bytes | None:
        length = self._body_length()
        if length is None:
            return None
        body = self.rfile.read(length) if length else b""
        if len(body) != length:
            self.close_connection = True
            return None
        return body

    # -- routes -----------------------------------------------------------------------------
    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if self.headers.get("content-length") not in (None, "0") and self._read_body() is None:
            return
        extra = self.api.extra_routes.get(("GET", path))
        if extra is not None:
            self._extra(extra, b"")
            return
        parts = path.strip("/").split("/")
        api = self.api
        try:
            if parts[:1] != ["v2"]:
                raise _NotFound
            if len(parts) == 1:
                self._send(200, api.metadata)
            elif parts[1] == "health" and len(parts) == 3 and parts[2] in ("live", "ready"):
                if parts[2] == "live":
                    self._send(200, b'{"live":true}')
                elif api.registry.ready():
                    self._send(200, b'{"ready":true}')
                else:
                    self._send(503, b'{"ready":false}')
            elif parts[1] == "models" and len(parts) >= 3:
                name, version, rest = _model_path(parts)
                model = api.model(name, version)
                if rest == []:
                    self._send(200, api.model_metadata(model))
                elif rest == ["ready"]:
                    self._send(200, _json({"name": model.name, "ready": True}))
                else:
                    raise _NotFound
            else:
                raise _NotFound
        except _NotFound:
            self._not_found(path)
        except UnknownModelError as e:
            self._error(404, str(e))

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        body = self._read_body()
        if body is None:
            return
        extra = self.api.extra_routes.get(("POST", path))
        if extra is not None:
            self._extra(extra, body)
            return
        parts = path.strip("/").split("/")
        if len(parts) < 4 or parts[0] != "v2" or parts[1] != "models" or parts[-1] != "infer":
            self._not_found(path)
            return
        try:
            name, version, rest = _model_path(parts)
        except _NotFound:
            self._not_found(path)
            return
        if rest != ["infer"]:
            self._not_found(path)
            return
        self._infer(name, version, body)

    def _infer(self, name: str, version: str | None, body: bytes) -> None:
        api = self.api
        try:
            model = api.model(name, version)
            request = oip.decode_request(body)
            start = time.perf_counter()
            outputs = model.infer(request.inputs)
            seconds = time.perf_counter() - start
            response = oip.encode_response(
                model.name, model.version, outputs, request.id, request.outputs
            )
        except UnknownModelError as e:
            self._error(404, str(e))
            return
        except BadRequestError as e:
            self._error(400, str(e))
            return
        except InferenceError as e:
            self._error(500, str(e))
            return
        except Exception:
            log.exception("inference request on %s failed", name)
            self._error(500, "internal error")
            return
        # The hook (telemetry: a few µs) runs before the answer goes out, so a label posted
        # right after the answer always finds its prediction.
        api.call_hook(model, request.inputs, outputs, seconds, request.id)
        self._send(200, response)

    def _extra(self, handler: RouteHandler, body: bytes) -> None:
        try:
            status, doc = handler(body)
        except Exception:
            log.exception("route %s %s failed", self.command, self.path)
            self._error(500, "internal error")
            return
        self._send(status, doc if isinstance(doc, bytes) else _json(doc))

    def _not_found(self, path: str) -> None:
        self._error(404, f"no route {self.command} {path}")

    def _method_not_allowed(self) -> None:
        if self._read_body() is not None:
            self._error(405, f"method {self.command} is not allowed")

    do_PUT = do_DELETE = do_PATCH = _method_not_allowed


class _NotFound(Exception):
    pass


def _model_path(parts: list[str]) -> tuple[str, str | None, list[str]]:
    """``v2/models/{name}[/versions/{v}]/rest...`` -> (name, version, rest)."""
    name = parts[2]
    if len(parts) >= 5 and parts[3] == "versions":
        return name, parts[4], parts[5:]
    if len(parts) >= 4 and parts[3] == "versions":
        raise _NotFound
    return name, None, parts[3:]


class _Limited:
    """Server mixin: a bounded number of connections, and a way to cut them all on close."""

    max_connections = DEFAULT_MAX_CONNECTIONS
    daemon_threads = True

    def init_limits(self, max_connections: int) -> None:
        self._slots = threading.BoundedSemaphore(max_connections)
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        # Guards against connection floods using up threads and memory on a small device.
        if not self._slots.acquire(blocking=False):
            with contextlib.suppress(OSError):
                request.sendall(_BUSY)
            self.shutdown_request(request)  # type: ignore[attr-defined]
            return
        with self._open_lock:
            self._open.add(request)
        try:
            super().process_request(request, client_address)  # type: ignore[misc]
        except Exception:
            self._release(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)  # type: ignore[misc]
        finally:
            self._release(request)

    def _release(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver would print a traceback to stderr; a client that went away is normal.
        if isinstance(sys.exc_info()[1], OSError):
            log.debug("connection ended: %s", sys.exc_info()[1])
        else:
            log.exception("error while serving a connection")

    def cut_connections(self) -> None:
        with self._open_lock:
            conns = list(self._open)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _TcpServer(_Limited, socketserver.ThreadingMixIn, socketserver.TCPServer):
    allow_reuse_address = True


class _UnixServer(_Limited, socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    def server_bind(self) -> None:
        super().server_bind()
        # Owner and group may connect; set before listen() so nobody else ever can.
        os.chmod(str(self.server_address), 0o660)


class ApiServer:
    """The running API; ``port`` is the bound TCP port (0 asked for a free one)."""

    def __init__(self, servers: list[Any], port: int, unix_socket: Path | None) -> None:
        self._servers = servers
        self.port = port
        self.unix_socket = unix_socket
        self._threads = [
            threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.1},
                             name=f"oip-{i}", daemon=True)
            for i, s in enumerate(servers)
        ]
        for t in self._threads:
            t.start()

    def close(self) -> None:
        for s in self._servers:
            s.shutdown()
            s.server_close()
            s.cut_connections()
        for t in self._threads:
            t.join(timeout=5)
        if self.unix_socket is not None:
            with contextlib.suppress(FileNotFoundError):
                self.unix_socket.unlink()

    def __enter__(self) -> ApiServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _prepare_socket_path(path: Path) -> None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    # Guards against deleting a file that is not our stale socket.
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(f"{path} exists and is not a socket")
    path.unlink()


def start_api(
    registry: ModelRegistry,
    *,
    host: str = "127.0.0.1",
    port: int,
    unix_socket: Path | None = None,
    on_infer: InferHook | None = None,
    extra_routes: Mapping[tuple[str, str], RouteHandler] | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
) -> ApiServer:
    """Serve ``registry`` over HTTP on ``host:port`` (and ``unix_socket``); threads, no wait.

    ``on_infer(name, inputs, outputs, seconds, request_id)`` runs after each successful
    inference, just before the answer is sent (``seconds``: validation plus onnxruntime); it
    must be cheap, and its errors are logged, never returned. ``extra_routes`` maps
    ``(method, path)`` to ``handler(body) -> (status, doc)``.
    """
    api = _Api(registry, on_infer, extra_routes, max_body_bytes)
    handler = type("OipHandler", (_Handler,), {"api": api, "timeout": idle_timeout_s})
    servers: list[Any] = []
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        tcp_cls = type("TcpServer", (_TcpServer,), {"address_family": family})
        try:
            tcp = tcp_cls((host, port), handler)
        except OSError as e:
            raise ConfigError(f"cannot listen on {host}:{port}: {e}") from e
        tcp.init_limits(max_connections)
        servers.append(tcp)
        if unix_socket is not None:
            _prepare_socket_path(unix_socket)
            try:
                unix = _UnixServer(str(unix_socket), handler)
            except OSError as e:
                raise ConfigError(f"cannot listen on {unix_socket}: {e}") from e
            unix.init_limits(max_connections)
            servers.append(unix)
    except BaseException:
        for s in servers:
            s.server_close()
        raise
    return ApiServer(servers, tcp.server_address[1], unix_socket)
