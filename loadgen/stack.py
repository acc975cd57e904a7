"""What every kata's load generator and check need from a running stack: its endpoints, read from
`.katas/<kata>/endpoints.json`, and the promise that traffic only ever goes to this machine."""

from __future__ import annotations

import argparse
import ipaddress
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from katas import REPO_ROOT
from katas.infra.stack import run_dir_for
from loadgen.profiles import Profile, ProfileError, parse_profile

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


class LoadSetupError(RuntimeError):
    """A load run cannot start: a bad profile (exit 2), no stack (exit 3) or a non-local address (exit 2)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def add_run_options(parser: argparse.ArgumentParser, kata: str) -> None:
    """The options every kata's `katas load` has besides its profile."""
    parser.add_argument(
        "--endpoints",
        type=Path,
        default=None,
        help=f"the stack's endpoints.json (default: {default_endpoints_path(kata)})",
    )
    parser.add_argument("--output", type=Path, default=None, help="where to write the LoadResult as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def open_run(
    kata: str,
    profile_text: str,
    endpoints_path: Path | None,
    required: Sequence[str],
    *,
    local: Sequence[str] = (),
) -> tuple[Profile, dict[str, Any]]:
    """The parsed profile and the running stack's endpoints, or LoadSetupError with what to do."""
    try:
        profile = parse_profile(profile_text)
    except ProfileError as exc:
        raise LoadSetupError(str(exc), EXIT_USAGE) from exc
    try:
        endpoints = read_endpoints(
            kata, endpoints_path or default_endpoints_path(kata), required, local=local
        )
    except StackNotRunningError as exc:
        raise LoadSetupError(str(exc), EXIT_NOT_RUNNING) from exc
    except ValueError as exc:
        raise LoadSetupError(str(exc), EXIT_USAGE) from exc
    return profile, endpoints
