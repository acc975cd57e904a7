"""What every kata's load generator and check need from a running stack: its endpoints, read from
`.katas/<kata>/endpoints.json`, and the promise that traffic only ever goes to this machine."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from katas import REPO_ROOT
from katas.infra.stack import run_dir_for

EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3


class StackNotRunningError(RuntimeError):
    """The kata's endpoints file is missing or incomplete: the stack is not up."""


def default_endpoints_path(kata: str) -> Path:
    return run_dir_for(kata) / "endpoints.json"


def default_output(kata: str, stem: str = "load") -> Path:
    return REPO_ROOT / "reports" / kata / f"{stem}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_of(address: str) -> str:
    """The host of a URL or of a host:port address."""
    if "://" in address:
        return urlsplit(address).hostname or ""
    return address.rsplit(":", 1)[0]


def read_endpoints(
    kata: str, path: Path, required: Sequence[str], *, local: Sequence[str] = ()
) -> dict[str, Any]:
    """The running stack's endpoints. StackNotRunningError if there is no stack or an entry in `required`
    is missing; ValueError if an address in `local` (default: all of `required`) is not on loopback."""
    if not path.is_file():
        raise StackNotRunningError(
            f"no endpoints file at {path}: the {kata} stack is not running. "
            f"Start it with `katas up {kata}` (or point --endpoints at a running stack's endpoints.json)."
        )
    endpoints: dict[str, Any] = json.loads(path.read_text())
    missing = [name for name in required if name not in endpoints]
    if missing:
        raise StackNotRunningError(
            f"{path} has no {', '.join(missing)}: the stack is not fully up (see `katas status {kata}`)"
        )
    remote = [name for name in (local or required) if not is_loopback(host_of(str(endpoints[name])))]
    if remote:
        raise ValueError(f"the load generator only sends to loopback; {', '.join(remote)} is not local")
    return endpoints
