"""A real HTTP webhook receiver for the stacks: alerting services deliver to it like to a pager.

Every POST to `/hooks/<channel>` whose body is JSON is appended, as one JSON line with the channel and the
time it arrived, to the file named by KATAS_WEBHOOK_LOG (default: `webhook.jsonl` in the service's folder).
Tests and lab exercises read that file; its path is published as `webhook_log` in endpoints.json.
Bodies that are not JSON, or too large, are refused with 400/413 and counted, never written.

Run: python -m katas.infra.webhook_receiver   (port from KATAS_SERVICE_PORT)
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType

from katas.infra.settings import infra_settings

MAX_BODY_BYTES = 1024 * 1024


class WebhookLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.received = 0
        self.rejected = 0

    def append(self, channel: str, payload: object) -> None:
        line = json.dumps({"channel": channel, "received_at": time.time(), "payload": payload})
        with self._lock, self.path.open("a") as out:
            out.write(line + "\n")
            out.flush()
            os.fsync(out.fileno())
            self.received += 1


def make_handler(log: WebhookLog) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out as two writes; no 40 ms stall

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

        def _reply(self, status: HTTPStatus, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/healthz":
                self._reply(HTTPStatus.OK, b'{"status":"ok"}')
            elif self.path == "/metrics":
                text = (
                    "# TYPE webhook_received_total counter\n"
                    f"webhook_received_total {log.received}\n"
                    "# TYPE webhook_rejected_total counter\n"
                    f"webhook_rejected_total {log.rejected}\n"
                )
                self._reply(HTTPStatus.OK, text.encode(), "text/plain; version=0.0.4")
            else:
                self._reply(HTTPStatus.NOT_FOUND, b'{"error":"not found"}')

        def do_POST(self) -> None:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length < 0:
                log.rejected += 1
                self.close_connection = True
                self._reply(HTTPStatus.BAD_REQUEST, b'{"error":"bad Content-Length"}')
                return
            if length > MAX_BODY_BYTES:
                log.rejected += 1
                self.close_connection = True  # the unread body must not be taken for the next request
                self._reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, b'{"error":"body larger than 1 MiB"}')
                return
            body = self.rfile.read(length)
            if not self.path.startswith("/hooks/") or len(self.path) <= len("/hooks/"):
                self._reply(HTTPStatus.NOT_FOUND, b'{"error":"POST to /hooks/<channel>"}')
                return
            try:
                payload = json.loads(body)
            except ValueError as exc:
                log.rejected += 1
                error = json.dumps({"error": f"body is not JSON: {exc}"}).encode()
                self._reply(HTTPStatus.BAD_REQUEST, error)
                return
            log.append(self.path.removeprefix("/hooks/"), payload)
            self._reply(HTTPStatus.OK, b'{"status":"stored"}')

    return Handler


def main() -> None:
    port = int(os.environ["KATAS_SERVICE_PORT"])
    home = Path.cwd()
    path = Path(os.environ.get("KATAS_WEBHOOK_LOG", home / "webhook.jsonl")).resolve()
    path.touch()
    (home / "endpoints.json").write_text(json.dumps({"webhook_log": str(path)}))
    server = ThreadingHTTPServer((infra_settings().service_bind_host, port), make_handler(WebhookLog(path)))
    server.daemon_threads = True

    def shutdown(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    print(json.dumps({"event": "listening", "port": port, "webhook_log": str(path)}), flush=True)
    server.serve_forever(poll_interval=0.2)
    server.server_close()


if __name__ == "__main__":
    main()
