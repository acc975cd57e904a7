"""Every raw reading as a row of one PostgreSQL table: the card's "before" world, for the
`raw-rows-in-postgres` mistake.

The card's company keeps everything in a single PostgreSQL database, and the common mistake is to keep
doing so for raw readings: 50,000 writes a second swamp it without partitioning. This adapter is that
world, written the way such a system usually is, honestly and without artificial slowness:

- one ordinary table, `raw_readings`, with a primary key (tenant, building, sensor, timestamp), so a
  redelivered reading collapses as it does in the design's ReplacingMergeTree (`ON CONFLICT DO NOTHING`),
  and an index on (tenant, building, ts) for the dashboards' "this building, this range" queries;
- no partitioning (one heap and two B-trees that grow with every reading) and no retention;
- one `INSERT` per reading on one connection in autocommit, so every reading is a transaction of its own
  with its own WAL flush: what an ORM or a per-message handler does. psycopg prepares the statement
  after a few executions (its default), as any driver would.

Nothing here batches, copies or pipelines: those are the fixes (and the design's ClickHouse insert of a
second's readings in one statement is the further step). The recorder chooses this adapter when the
switch is on (`katas.sensors.services.recorder`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import psycopg

from katas.sensors.readings import Reading

TABLE: Final = "raw_readings"
SCHEMA: Final = (
    f"""CREATE TABLE IF NOT EXISTS {TABLE} (
        tenant text NOT NULL,
        building text NOT NULL,
        floor text NOT NULL,
        zone text NOT NULL,
        sensor_id text NOT NULL,
        type text NOT NULL,
        value double precision NOT NULL,
        unit text NOT NULL,
        ts timestamptz NOT NULL,
        PRIMARY KEY (tenant, building, sensor_id, ts)
    )""",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_building_ts ON {TABLE} (tenant, building, ts)",
)
INSERT: Final = (
    f"INSERT INTO {TABLE} (tenant, building, floor, zone, sensor_id, type, value, unit, ts) "  # noqa: S608 - a constant
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
)


class PostgresRawStore:
    """One connection to the PostgreSQL database, one statement per reading. Not safe for concurrent
    use beyond what psycopg's connection lock gives: writes are serialised, as on any one connection."""

    def __init__(self, dsn: str, *, connect_timeout_s: int = 10) -> None:
        self.dsn = dsn
        self.connect_timeout_s = connect_timeout_s
        self._conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None

    async def open(self) -> PostgresRawStore:
        """Connect and create the table and its index (idempotent)."""
        await self._connection()
        return self

    async def _connection(self) -> psycopg.AsyncConnection[tuple[object, ...]]:
        """The open connection, or a new one after it broke (the caller's retry then reconnects)."""
        if self._conn is None or self._conn.closed:
            conn = await psycopg.AsyncConnection.connect(
                self.dsn, autocommit=True, connect_timeout=self.connect_timeout_s
            )
            for statement in SCHEMA:
                await conn.execute(statement)
            self._conn = conn
        return self._conn

    async def write(self, readings: Iterable[Reading]) -> int:
        """Insert the readings one by one, each committed on its own; the number of statements run. A
        failure leaves the readings before it stored; sending them again is harmless (the primary key)."""
        conn = await self._connection()
        written = 0
        for reading in readings:
            p = reading.place
            await conn.execute(
                INSERT,
                (p.tenant, p.building, p.floor, p.zone, p.sensor_id, reading.type, reading.value,
                 reading.unit, reading.ts),
            )  # fmt: skip
            written += 1
        return written

    async def count(self, tenant: str | None = None) -> int:
        """Rows stored (of one tenant): for tests and the lab."""
        conn = await self._connection()
        if tenant is None:
            cursor = await conn.execute(f"SELECT count(*) FROM {TABLE}")  # noqa: S608 - a constant
        else:
            cursor = await conn.execute(f"SELECT count(*) FROM {TABLE} WHERE tenant = %s", (tenant,))  # noqa: S608
        row = await cursor.fetchone()
        return int(row[0]) if row else 0  # type: ignore[call-overload]

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
