"""The gateway's Redis through Sentinel: every node asks the Sentinels where the primary is, and asks
again after a failover, so a killed primary costs the failover time, not an outage until a restart
(one Redis address in the nodes' settings is the `single-redis-spof` mistake).

Limits and keys live on the primary and reach the replica by asynchronous replication: after a
failover, counters are as old as the replication lag at the kill (measured in
tests/integration/api_gateway/test_failover.py). While no primary answers, the limiter fails open to
each node's share (katas.api_gateway.ratelimit.FailOpenLimiter).
"""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel

DEFAULT_MASTER = "katas"


def primary_via_sentinels(
    sentinels: Sequence[tuple[str, int]],
    master_name: str = DEFAULT_MASTER,
    *,
    timeout_s: float = 0.25,
) -> Redis:
    """A client that always talks to the current primary. `timeout_s` bounds each command, so a dead
    primary turns into a fast error (and a fail-open decision) instead of a stalled request."""
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(sentinels),
        sentinel_kwargs={"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s},
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
    )
    primary: Redis = sentinel.master_for(master_name)
    return primary
