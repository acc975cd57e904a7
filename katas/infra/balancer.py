"""A TCP load balancer for a kata's stack: one entry address in front of several instances of a service.

`python -m katas.infra.balancer http://127.0.0.1:8001 http://127.0.0.1:8002 ...` (or the same list,
comma-separated, in BALANCER_TARGETS, which a card's `[stack.env]` can fill) listens on
KATAS_SERVICE_PORT and hands each new client connection to the next target in turn (connection-level
round robin, as a cloud network load balancer does); a target that refuses the connection (a killed
instance) is skipped for that connection, so a dead instance costs only the connections it held. It is
the chaos proxy's data path (katas.infra.proxy) with more than one target, so the stack can also delay or
cut the entry itself. The stack checks it healthy by its targets' `/healthz`, through it.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
from collections.abc import Sequence
from urllib.parse import urlsplit

from katas.infra.proxy import LISTEN_HOST, ChaosProxy
from katas.infra.service import log, publish_endpoints
from katas.infra.settings import infra_settings


class RoundRobinBalancer(ChaosProxy):
    def __init__(
        self,
        name: str,
        targets: Sequence[tuple[str, int]],
        listen_port: int = 0,
        listen_host: str = LISTEN_HOST,
    ) -> None:
        if not targets:
            raise ValueError("a balancer needs at least one target")
        super().__init__(name, targets[0], listen_port)
        self._listen_host = listen_host  # all interfaces only inside a container (KATAS_SERVICE_BIND_HOST)
        self.targets = list(targets)
        self._turn = itertools.count()

    def _candidates(self) -> list[tuple[str, int]]:
        first = next(self._turn) % len(self.targets)
        return self.targets[first:] + self.targets[:first]


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url if "//" in url else f"//{url}")
    if parts.hostname is None or parts.port is None:
        raise ValueError(f"a target is host:port or a URL with a port, got {url!r}")
    return parts.hostname, parts.port


def main(argv: Sequence[str]) -> None:
    given = list(argv) or [os.environ.get("BALANCER_TARGETS", "")]
    targets = [_host_port(url) for arg in given for url in arg.split(",") if url.strip()]
    balancer = RoundRobinBalancer(
        os.environ.get("KATAS_SERVICE_NAME", "balancer"),
        targets,
        listen_port=int(os.environ["KATAS_SERVICE_PORT"]),
        listen_host=infra_settings().service_bind_host,
    )
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    balancer.start()
    publish_endpoints(nodes=[f"http://{host}:{port}" for host, port in targets])
    log("started", targets=[f"{host}:{port}" for host, port in targets])
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    balancer.stop()
    log("stopped", upstream_failures=balancer.stats().upstream_failures)


if __name__ == "__main__":
    main(sys.argv[1:])
