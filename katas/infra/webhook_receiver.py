"""A real HTTP webhook receiver for the stacks: alerting services deliver to it like to a pager.

Every POST to `/hooks/<channel>` whose body is JSON is appended, as one JSON line with the channel and the
time it arrived, to the file named by KATAS_WEBHOOK_LOG (default: `webhook.jsonl` in the service's folder).
Tests and lab exercises read that file; its path is published as `webhook_log` in endpoints.json.
Bodies that are not JSON, or larger than 1 MiB, are refused with 400/413 and counted, never written.

Run: python -m katas.infra.webhook_receiver   (port from KATAS_SERVICE_PORT)
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from prometheus_client import Counter

from katas.infra.service import Worker, http_app, publish_endpoints, run_service

MAX_BODY_BYTES = 1024 * 1024
RECEIVED = Counter("webhook_received", "webhook calls stored")
REJECTED = Counter("webhook_rejected", "webhook calls refused (not JSON, too large)")


class WebhookLog:
    """Appends each delivery as a JSON line, flushed to disk before the call is answered."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def append(self, channel: str, payload: object) -> None:
        line = json.dumps({"channel": channel, "received_at": time.time(), "payload": payload})
        with self._lock, self.path.open("a") as out:
            out.write(line + "\n")
            out.flush()
            os.fsync(out.fileno())


def create_app(log: WebhookLog) -> FastAPI:
    app = http_app("webhook receiver")

    @app.post("/hooks/{channel}")
    async def deliver(channel: str, request: Request) -> JSONResponse:
        if int(request.headers.get("content-length") or 0) > MAX_BODY_BYTES:
            REJECTED.inc()
            return JSONResponse({"error": "body larger than 1 MiB"}, status_code=413)
        body = await request.body()
        try:
            payload = json.loads(body)
        except ValueError as exc:
            REJECTED.inc()
            return JSONResponse({"error": f"body is not JSON: {exc}"}, status_code=400)
        log.append(channel, payload)
        RECEIVED.inc()
        return JSONResponse({"status": "stored"})

    return app


def prepare_log() -> Path:
    path = Path(os.environ.get("KATAS_WEBHOOK_LOG", Path.cwd() / "webhook.jsonl")).resolve()
    path.touch()
    publish_endpoints(webhook_log=str(path))
    return path


async def build() -> tuple[FastAPI, Sequence[Worker]]:
    return create_app(WebhookLog(await asyncio.to_thread(prepare_log))), ()


if __name__ == "__main__":
    run_service(build)
