"""The control API of a running stack, served by the `katas up` process on loopback.

`katas up` owns the stack: the server processes are its children and the chaos proxies run in its threads.
Other commands (`katas status`, `katas chaos`, `katas down`) therefore ask it, over a small JSON-over-HTTP
API whose address is in `.katas/<kata>/state.json`.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from katas.infra import chaos
from katas.infra.ports import LOOPBACK
from katas.infra.stack import Stack, StackError, read_state

MAX_REQUEST_BYTES = 64 * 1024


class ControlServer:
    def __init__(self, stack: Stack, on_shutdown: Callable[[], None]) -> None:
        self.stack = stack
        self._on_shutdown = on_shutdown
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer((LOOPBACK, 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="katas-control", daemon=True)

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self._httpd.server_address[1]}"

    def start(self) -> ControlServer:
        self._thread.start()
        self.stack.control_address = self.address
        self.stack.write_files()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def handle(self, method: str, path: str, body: dict[str, Any]) -> tuple[HTTPStatus, Any]:
        if method == "GET" and path == "/status":
            return HTTPStatus.OK, {"components": self.stack.status(), "endpoints": self.stack.endpoints()}
        if method == "POST" and path == "/chaos":
            try:
                action = chaos.ChaosAction(body.get("action", ""))
                with self._lock:  # one fault at a time, so restarts do not interleave
                    message = chaos.apply(
                        self.stack,
                        action,
                        str(body.get("component", "")),
                        ms=float(body.get("ms", 200)),
                        jitter_ms=float(body.get("jitter_ms", 0)),
                    )
            except (ValueError, StackError) as exc:
                return HTTPStatus.BAD_REQUEST, {"error": str(exc)}
            except Exception as exc:  # a failed restart must reach the user, not kill the supervisor
                return HTTPStatus.INTERNAL_SERVER_ERROR, {"error": str(exc)}
            return HTTPStatus.OK, {"message": message}
        if method == "POST" and path == "/shutdown":
            threading.Thread(target=self._on_shutdown, daemon=True).start()
            return HTTPStatus.ACCEPTED, {"message": "stopping"}
        return HTTPStatus.NOT_FOUND, {"error": f"no route {method} {path}"}

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        control = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

            def _serve(self, method: str) -> None:
                length = min(int(self.headers.get("Content-Length") or 0), MAX_REQUEST_BYTES)
                raw = self.rfile.read(length) if length else b"{}"
                try:
                    body = json.loads(raw or b"{}")
                    if not isinstance(body, dict):
                        raise ValueError("body must be a JSON object")
                except ValueError as exc:
                    status, reply = HTTPStatus.BAD_REQUEST, {"error": f"bad JSON: {exc}"}
                else:
                    status, reply = control.handle(method, self.path, body)
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

        return Handler


class NotRunningError(RuntimeError):
    pass


def request(
    kata: str, method: str, path: str, body: dict[str, Any] | None = None, timeout_s: float = 120
) -> Any:
    """Call the control API of the running stack of `kata`."""
    state = read_state(kata)
    if not state or not state.get("control"):
        raise NotRunningError(f"{kata} is not running: start it with `katas up {kata}`")
    data = json.dumps(body or {}).encode() if method == "POST" else None
    req = urllib.request.Request(
        f"http://{state['control']}{path}",
        data=data,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as response:  # noqa: S310
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = json.loads(exc.read() or b"{}").get("error", exc.reason)
        raise StackError(str(detail)) from None
    except (urllib.error.URLError, ConnectionError) as exc:
        raise NotRunningError(
            f"{kata} is not answering on {state['control']} ({exc}); `katas down {kata}` cleans up"
        ) from None
