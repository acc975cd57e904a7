"""A backend service behind the gateway: `python -m katas.api_gateway.services.backend <name>`.

The stack runs five of them (BACKENDS), each a real HTTP server with six endpoints under `/<name>`:

    *      /<name>/echo          the request as received: method, path, query, headers, body (JSON)
    GET    /<name>/items         every item
    GET    /<name>/items/{id}    one item (404 if none)
    POST   /<name>/items         create (201, with its id)
    PUT    /<name>/items/{id}    replace
    DELETE /<name>/items/{id}    delete (204)

Items carry fields no client should see (`_internal`, `cost_cents`): the gateway's routes strip them,
which tests can tell from the echo and items answers. `invoices` is the legacy one: its items endpoints
answer XML, which the gateway turns into JSON. The data lives in the process: the backends are what the
gateway protects, not the point of the kata.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse

from katas.infra.service import Worker, http_app, run_service, service_name

BACKENDS = ("orders", "payments", "catalog", "users", "invoices")
XML_BACKENDS = frozenset({"invoices"})
MAX_BODY_BYTES = 1 << 20


def _seed(name: str) -> dict[str, dict[str, Any]]:
    return {
        str(n): {
            "id": str(n),
            "name": f"{name} item {n}",
            "price_cents": 100 * n,
            "cost_cents": 60 * n,
            "_internal": {"shard": n % 4, "row_version": 1},
        }
        for n in range(1, 6)
    }


def _xml(tag: str, value: Any) -> str:
    if isinstance(value, dict):
        inner = "".join(_xml(k.lstrip("_"), v) for k, v in value.items() if k != "id")
        ident = f" id={quoteattr(str(value['id']))}" if "id" in value else ""
        return f"<{tag}{ident}>{inner}</{tag}>"
    if isinstance(value, list):
        return "".join(_xml(tag, item) for item in value)
    return f"<{tag}>{escape(str(value))}</{tag}>"


def create_app(name: str) -> FastAPI:
    app = http_app(f"backend {name}")
    items = _seed(name)
    as_xml = name in XML_BACKENDS

    def answer(content: Any, status: int = 200) -> Response:
        if as_xml:
            root = "items" if isinstance(content, list) else "item"
            body = _xml(root, {"item": content} if isinstance(content, list) else content)
            return Response(f'<?xml version="1.0"?>{body}', status, media_type="application/xml")
        return JSONResponse(content, status)

    async def read_item(request: Request) -> dict[str, Any]:
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            raise HTTPException(413, f"body larger than {MAX_BODY_BYTES} bytes")
        try:
            body = json.loads(raw or b"{}")
        except ValueError as exc:
            raise HTTPException(400, f"body is not JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise HTTPException(400, "body must be a JSON object")
        return body

    @app.api_route(f"/{name}/echo", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    async def echo(request: Request) -> dict[str, Any]:
        raw = await request.body()
        return {
            "service": name,
            "method": request.method,
            "path": request.url.path,
            "query": dict(request.query_params),
            "headers": dict(request.headers),
            "body": raw[:MAX_BODY_BYTES].decode(errors="replace"),
        }

    @app.get(f"/{name}/items")
    async def list_items() -> Response:
        return answer(list(items.values()))

    @app.get(f"/{name}/items/{{item_id}}")
    async def get_item(item_id: str) -> Response:
        if item_id not in items:
            raise HTTPException(404, f"no {name} item {item_id}")
        return answer(items[item_id])

    @app.post(f"/{name}/items")
    async def create_item(request: Request) -> Response:
        body = await read_item(request)
        item_id = str(max((int(i) for i in items), default=0) + 1)
        items[item_id] = {**body, "id": item_id, "_internal": {"shard": int(item_id) % 4, "row_version": 1}}
        return answer(items[item_id], 201)

    @app.put(f"/{name}/items/{{item_id}}")
    async def replace_item(item_id: str, request: Request) -> Response:
        if item_id not in items:
            raise HTTPException(404, f"no {name} item {item_id}")
        version = int(items[item_id].get("_internal", {}).get("row_version", 0)) + 1
        items[item_id] = {**await read_item(request), "id": item_id, "_internal": {"row_version": version}}
        return answer(items[item_id])

    @app.delete(f"/{name}/items/{{item_id}}", status_code=204)
    async def delete_item(item_id: str) -> Response:
        if items.pop(item_id, None) is None:
            raise HTTPException(404, f"no {name} item {item_id}")
        return Response(status_code=204)

    return app


async def build() -> tuple[FastAPI, Sequence[Worker]]:
    name = sys.argv[1] if len(sys.argv) > 1 else service_name()
    if name not in BACKENDS:
        raise SystemExit(f"unknown backend {name!r}; the backends are {', '.join(BACKENDS)}")
    return create_app(name), []


if __name__ == "__main__":
    run_service(build)
