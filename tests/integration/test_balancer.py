"""The stack's TCP load balancer in front of real Redis servers: connections go round robin, and a
target that refuses connections (a killed instance) is skipped, so clients only lose what it held."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from katas.infra.balancer import RoundRobinBalancer
from katas.infra.ports import LOOPBACK, free_port
from katas.infra.servers import RedisServer


def _whoami(port: int) -> str:
    """Which Redis answered, by the run id it reports."""
    with redis.Redis(host=LOOPBACK, port=port, socket_timeout=2, socket_connect_timeout=2) as client:
        return str(client.info("server")["run_id"])


def test_connections_go_round_robin_and_a_dead_target_is_skipped(
    launch: Callable[[Any], Any], run_dir: Path
) -> None:
    servers = [launch(RedisServer(f"redis-{i}", run_dir)) for i in range(3)]
    dead_port = free_port()  # nothing listens here: a target that refuses
    targets = [(LOOPBACK, s.port) for s in servers] + [(LOOPBACK, dead_port)]
    with RoundRobinBalancer("entry", targets) as balancer:
        seen = Counter(_whoami(balancer.port) for _ in range(12))
        assert len(seen) == 3, "every live target gets connections"
        assert sorted(seen.values()) == [3, 3, 6], "the dead target's turns went to the next one"
        assert balancer.stats().upstream_failures == 3

        servers[0].kill()
        after = Counter(_whoami(balancer.port) for _ in range(8))
        assert len(after) == 2
        assert sum(after.values()) == 8, "no connection failed: the killed target was skipped"
