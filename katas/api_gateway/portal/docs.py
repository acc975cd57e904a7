"""The backends' API documentation, read from each backend's `/openapi.json` on the server side.

Fetched concurrently, each with a short timeout, and cached: a success for `ttl_s`, a failure for
`failure_ttl_s` (so a dead backend is retried soon, but does not cost every page view a timeout). A dead or
garbled backend shows as unavailable with the reason; it never breaks the page. Concurrent page views
share one fetch per backend (a lock each). The specs come from services the portal does not control, so
nothing in them is trusted: sizes are bounded and every string is escaped by the template.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
MAX_SPEC_BYTES = 2 * 1024 * 1024
MAX_OPERATIONS = 500


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str


@dataclass(frozen=True)
class BackendDocs:
    name: str
    title: str = ""
    version: str = ""
    operations: tuple[Operation, ...] = ()
    error: str | None = None
    """Why the backend's docs are unavailable; None when they were read."""

    @property
    def available(self) -> bool:
        return self.error is None


def _text(value: Any, limit: int = 300) -> str:
    return value[:limit] if isinstance(value, str) else ""


def operations_of(spec: Any) -> list[Operation]:
    """Method, path and summary (else the operation id) of every operation in an OpenAPI document, in
    path order; anything not shaped like OpenAPI is skipped rather than trusted."""
    paths = spec.get("paths") if isinstance(spec, dict) else None
    if not isinstance(paths, dict):
        raise ValueError("the document has no paths object")
    found: list[Operation] = []
    for path in sorted(p for p in paths if isinstance(p, str)):
        item = paths[path]
        if not isinstance(item, dict):
            continue
        for method in HTTP_METHODS:
            operation = item.get(method)
            if isinstance(operation, dict):
                summary = _text(operation.get("summary")) or _text(operation.get("operationId"))
                found.append(Operation(method.upper(), path[:300], summary))
    return found[:MAX_OPERATIONS]


@dataclass
class _Cached:
    docs: BackendDocs
    until: float
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class OpenApiCatalog:
    def __init__(
        self,
        backends: Mapping[str, str],
        session: aiohttp.ClientSession,
        *,
        ttl_s: float = 60.0,
        failure_ttl_s: float = 5.0,
        timeout_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backends = dict(backends)
        self.session = session
        self.ttl_s = ttl_s
        self.failure_ttl_s = failure_ttl_s
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.clock = clock
        self._cache = {name: _Cached(BackendDocs(name, error="not read yet"), 0.0) for name in backends}

    async def docs(self) -> list[BackendDocs]:
        return list(await asyncio.gather(*(self._docs(name) for name in sorted(self.backends))))

    async def _docs(self, name: str) -> BackendDocs:
        cached = self._cache[name]
        async with cached.lock:
            if self.clock() >= cached.until:
                cached.docs = await self._fetch(name)
                ttl = self.ttl_s if cached.docs.available else self.failure_ttl_s
                cached.until = self.clock() + ttl
            return cached.docs

    async def _fetch(self, name: str) -> BackendDocs:
        url = self.backends[name].rstrip("/") + "/openapi.json"
        try:
            async with self.session.get(url, timeout=self.timeout) as response:
                if response.status != 200:
                    return BackendDocs(name, error=f"HTTP {response.status}")
                body = await response.content.read(MAX_SPEC_BYTES + 1)
        except (aiohttp.ClientError, TimeoutError) as error:
            return BackendDocs(name, error=f"cannot be reached ({type(error).__name__})")
        if len(body) > MAX_SPEC_BYTES:
            return BackendDocs(name, error="its OpenAPI document is too large")
        try:
            spec = json.loads(body)
            operations = operations_of(spec)
        except (ValueError, RecursionError) as error:
            return BackendDocs(name, error=f"its OpenAPI document cannot be read ({error})"[:200])
        info = spec.get("info") if isinstance(spec.get("info"), dict) else {}
        return BackendDocs(name, _text(info.get("title")), _text(info.get("version"), 40), tuple(operations))
