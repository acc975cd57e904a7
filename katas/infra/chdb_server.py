"""The chDB store owner: one process that opens a chDB data directory and serves it over HTTP.

It speaks the subset of ClickHouse's HTTP interface that `katas.infra.clickhouse` uses (the query in the
`query` parameter or the body, data for INSERT in the body, `default_format`, `/ping`), so kata services
talk to this process natively and to a real ClickHouse server under Compose with the same client.
Queries are serialised: chDB sessions are not meant to be shared between threads.

Run: python -m katas.infra.chdb_server --path DIR --port PORT
"""

from __future__ import annotations

import argparse
import fcntl
import signal
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from urllib.parse import parse_qs, urlsplit

from chdb import session as chdb_session

from katas.infra.ports import LOOPBACK

MAX_BODY_BYTES = 256 * 1024 * 1024


class StoreOwner:
    """Holds the directory lock and the chDB session for the life of the process."""

    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self._lock_file = (path / ".owner.lock").open("w")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(f"chdb store {path} is already owned by another process") from None
        self._session = chdb_session.Session(str(path))
        self._query_lock = threading.Lock()

    def query(self, sql: str, default_format: str) -> bytes:
        with self._query_lock:
            result = self._session.query(sql, default_format)
        return bytes(result.bytes())

    def close(self) -> None:
        with self._query_lock:
            self._session.close()
        self._lock_file.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes; no 40 ms stall
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - signature of the base
        pass  # one line per query would drown the log; errors are logged below

    def do_GET(self) -> None:
        if urlsplit(self.path).path in ("/ping", "/healthz"):
            self._reply(HTTPStatus.OK, b"Ok.\n")
            return
        self._run(b"")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self.close_connection = True  # the unread body must not be taken for the next request
            self._reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, b"body too large\n")
            return
        self._run(self.rfile.read(length))

    def _run(self, body: bytes) -> None:
        params = parse_qs(urlsplit(self.path).query)
        query = params.get("query", [""])[0]
        sql = f"{query}\n{body.decode()}" if query else body.decode()
        if not sql.strip():
            self._reply(HTTPStatus.BAD_REQUEST, b"empty query\n")
            return
        try:
            out = self.server.owner.query(sql, params.get("default_format", ["TabSeparated"])[0])
        except Exception as exc:  # chDB raises its own error type for every SQL problem
            message = f"{exc}\n".encode()
            print(f"query failed: {exc}", file=sys.stderr, flush=True)
            self._reply(HTTPStatus.INTERNAL_SERVER_ERROR, message, {"X-ClickHouse-Exception-Code": "1"})
            return
        self._reply(HTTPStatus.OK, out)

    def _reply(self, status: HTTPStatus, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, owner: StoreOwner) -> None:
        super().__init__((LOOPBACK, port), _Handler)
        self.owner = owner


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--path", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)

    owner = StoreOwner(args.path)
    server = _Server(args.port, owner)

    def shutdown(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    print(f"chdb store {args.path} serving on {LOOPBACK}:{args.port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        owner.close()
        print("chdb store closed", flush=True)


if __name__ == "__main__":
    main()
