"""Sends SIEM events to a running stack the way real sources do: syslog over UDP and TCP (octet-counted
frames), JSON and Windows event XML batches over HTTP. Used by the load generator and the tests."""

from __future__ import annotations

import asyncio
import socket
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import httpx

from katas.siem.framing import octet_frame
from katas.siem.samples import RawEvent, json_batch, winxml_batch


def _host_port(address: str) -> tuple[str, int]:
    host, port = address.rsplit(":", 1)
    return host, int(port)


class SiemSender:
    """One sender for all four transports; HTTP answers 202 only once the broker stored the batch."""

    def __init__(self, endpoints: Mapping[str, Any], *, tcp_connections: int = 4) -> None:
        self.udp_address = _host_port(endpoints["syslog_udp"])
        self.tcp_address = _host_port(endpoints["syslog_tcp"])
        self.http = httpx.AsyncClient(base_url=endpoints["http_ingest"], timeout=30.0)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._tcp_count = tcp_connections
        self._tcp: list[asyncio.StreamWriter] = []
        self.busy_retries = 0

    async def __aenter__(self) -> SiemSender:
        for _ in range(self._tcp_count):
            _, writer = await asyncio.open_connection(*self.tcp_address)
            self._tcp.append(writer)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for writer in self._tcp:
            writer.close()
            await writer.wait_closed()
        await self.http.aclose()
        self.udp.close()

    async def send(self, events: Iterable[RawEvent]) -> None:
        """Send events grouped by transport (and by source for HTTP, which carries the source in a header)."""
        http_batches: dict[tuple[str, str], list[bytes]] = defaultdict(list)
        for index, event in enumerate(events):
            if event.transport == "syslog-udp":
                self.udp.sendto(event.payload, self.udp_address)
            elif event.transport == "syslog-tcp":
                self._tcp[index % len(self._tcp)].write(octet_frame(event.payload))
            else:
                http_batches[(event.transport, event.source_id)].append(event.payload)
        await asyncio.gather(*(writer.drain() for writer in self._tcp))
        for (transport, source), payloads in http_batches.items():
            await self._post(transport, source, payloads)

    async def _post(self, transport: str, source: str, payloads: list[bytes]) -> None:
        if transport == "http-json":
            path, body, kind = "/ingest/json", json_batch(payloads), "application/json"
        else:
            path, body, kind = "/ingest/winxml", winxml_batch(payloads), "application/xml"
        while True:
            response = await self.http.post(
                path, content=body, headers={"X-Source": source, "Content-Type": kind}
            )
            if response.status_code != 503:
                response.raise_for_status()
                return
            self.busy_retries += 1  # the pipeline pushes back: wait as told, send again
            await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
