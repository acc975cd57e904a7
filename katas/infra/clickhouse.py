"""A small async client for ClickHouse's HTTP interface.

The same client talks to the native chDB store owner (`katas.infra.chdb_server`) and to a ClickHouse
server under Compose, so kata code never knows which one it has.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import httpx


class ClickHouseError(RuntimeError):
    pass


class ClickHouse:
    def __init__(self, url: str, *, timeout_s: float = 30.0) -> None:
        self._client = httpx.AsyncClient(base_url=url, timeout=timeout_s)

    async def __aenter__(self) -> ClickHouse:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._client.aclose()

    async def execute(self, sql: str, body: bytes = b"", default_format: str = "TabSeparated") -> bytes:
        params = (
            {"query": sql, "default_format": default_format} if body else {"default_format": default_format}
        )
        response = await self._client.post("/", params=params, content=body or sql.encode())
        if response.status_code != 200:
            raise ClickHouseError(f"{response.status_code}: {response.text.strip()} (query: {sql[:200]})")
        return response.content

    async def rows(self, sql: str) -> list[dict[str, Any]]:
        out = await self.execute(sql, default_format="JSONEachRow")
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    async def scalar(self, sql: str) -> Any:
        rows = await self.rows(sql)
        return next(iter(rows[0].values())) if rows else None

    async def insert(self, table: str, rows: Iterable[Mapping[str, Any]]) -> int:
        lines = [json.dumps(row, separators=(",", ":"), default=str) for row in rows]
        if lines:
            await self.execute(f"INSERT INTO {table} FORMAT JSONEachRow", "\n".join(lines).encode())
        return len(lines)
