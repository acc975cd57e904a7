"""Shared fixtures: servers come from the lab's own launchers, exactly as `katas up` starts them."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from playwright.async_api import Browser, async_playwright
from prometheus_client.parser import text_string_to_metric_families

from katas.infra.servers import Server

S = TypeVar("S", bound=Server)
TESTS_DIR = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by its folder (unit, integration, chaos, nfr), so `-m unit` selects the fast ones."""
    for item in items:
        folder = Path(str(item.fspath)).relative_to(TESTS_DIR).parts[0]
        if folder in ("unit", "integration", "chaos", "nfr"):
            item.add_marker(getattr(pytest.mark, folder))


@contextlib.contextmanager
def reachable_run_dir(prefix: str = "katas-test-") -> Iterator[Path]:
    """A run directory every server can reach: PostgreSQL runs as its own user, and pytest's own
    tmp_path sits under a folder only root may enter. KATAS_KEEP_RUN_DIRS=1 keeps it (and the servers'
    logs in it) afterwards, for a post-mortem."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    try:
        yield path
    finally:
        if not os.environ.get("KATAS_KEEP_RUN_DIRS"):
            shutil.rmtree(path, ignore_errors=True)


def wait_for(check: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.5) -> Any:
    """Call `check` until it returns something truthy, and return that; fail the test after `timeout_s`
    with `what` did not happen."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(every_s)
    pytest.fail(f"{what} did not happen within {timeout_s} s")


def webhook_alerts(endpoints: Mapping[str, Any], channel: str | None = None) -> list[dict[str, Any]]:
    """The bodies the stack's webhook receiver stored (those of `channel`, or all), in arrival order."""
    lines = Path(endpoints["webhook_log"]).read_text().splitlines()
    entries = [json.loads(line) for line in lines if line.strip()]
    return [entry["payload"] for entry in entries if channel is None or entry["channel"] == channel]


def service_metric(base_url: str, name: str) -> float:
    """A sample of a service's /metrics, summed over its labels (0 while it has not been touched)."""
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )


@pytest.fixture
def run_dir() -> Iterator[Path]:
    """A run directory for one test (see `reachable_run_dir`)."""
    with reachable_run_dir() as path:
        yield path


@pytest.fixture
def launch(run_dir: Path) -> Iterator[Callable[[S], S]]:
    """Start servers for one test; every one is stopped afterwards, by its PID, whatever happened. It
    depends on `run_dir` so that the servers stop before their folder is deleted, whatever order a test
    asks for the two in."""
    started: list[Server] = []

    def _launch(server: S) -> S:
        started.append(server)
        server.start()
        return server

    yield _launch
    for server in reversed(started):
        server.stop()


# ------------------------------------------------------------------------------- a real headless browser
CHROMIUM = os.environ.get("KATAS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
"""Debian's Chromium in a sandbox-less container: no GPU, no network beyond the lab's own servers."""


def chromium() -> str:
    """Debian's Chromium, which setup installs; its absence fails the test (never a silent skip)."""
    if not Path(CHROMIUM).is_file():
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests drive Debian's chromium "
            "(`make setup` installs it: scripts/setup.sh; or point KATAS_CHROMIUM at a Chromium binary)"
        )
    return CHROMIUM


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Headless Chromium driven by Playwright, for the tests of the katas' web pages."""
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=chromium(), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()
