"""The `katas` command as a participant uses it: up, status, chaos, down, on a small built kata whose
stack is real (a proxied Redis and the webhook receiver), plus the plain refusals for katas not built."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from katas.infra.stack import pid_alive

DEMO_CARD = """
id = "demo"
number = 1
title = "Demo stack for the CLI tests"
status = "built"
summary = "A proxied Redis and the webhook receiver."
statement = "Exists so the CLI can be tested end to end on real servers."
functional = ["start, observe, break and stop a stack"]

[scale]
factor = "1"
why = "nothing is scaled"

[[nfr]]
id = "nothing"
name = "Nothing measured"
production = "-"
miniature = "-"
note = "a test fixture"

[[component]]
name = "Cache"
expects = "a real Redis"
server = "redis"

[[mistake]]
name = "demo-mistake"
text = "a switch the stack passes to its services"
switch = "demo-mistake"

[stack]
servers = [{ name = "redis", kind = "redis", proxied = true }]
services = [{ name = "webhook", module = "katas.infra.webhook_receiver" }]
"""


def katas(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "katas.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def demo_env(run_dir: Path) -> dict[str, str]:
    catalog = run_dir / "catalog"
    (catalog / "demo").mkdir(parents=True)
    (catalog / "demo" / "kata.toml").write_text(DEMO_CARD)
    return {**os.environ, "KATAS_CATALOG_DIR": str(catalog), "KATAS_RUN_ROOT": str(run_dir / "runs")}


@pytest.fixture
def demo_up(demo_env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "katas.cli", "up", "demo", "--no-live", "--mistake", "demo-mistake"],
        env=demo_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    run = Path(demo_env["KATAS_RUN_ROOT"]) / "demo"
    try:
        assert supervisor.stdout is not None
        lines = []
        for line in supervisor.stdout:
            lines.append(line)
            if line.strip() == "ready":
                break
        else:
            pytest.fail("katas up ended without getting ready:\n" + "".join(lines))
        yield supervisor, run
    finally:
        if supervisor.poll() is None:
            supervisor.send_signal(signal.SIGTERM)
            supervisor.wait(60)
        katas(demo_env, "down", "demo")  # reaps anything a failed test left behind


def test_up_status_chaos_down(demo_env: dict[str, str], demo_up: tuple[subprocess.Popen[str], Path]) -> None:
    supervisor, run = demo_up
    endpoints = json.loads((run / "endpoints.json").read_text())
    assert set(endpoints) >= {"redis", "webhook", "webhook_log"}
    state = json.loads((run / "state.json").read_text())
    assert state["supervisor_pid"] == supervisor.pid
    assert state["mistakes"] == ["demo-mistake"]

    status = katas(demo_env, "status", "demo")
    assert status.returncode == 0, status.stderr
    assert "redis" in status.stdout
    assert "webhook" in status.stdout
    assert "down" not in status.stdout

    host, port = endpoints["redis"].split(":")
    cache = redis.Redis(host=host, port=int(port), socket_timeout=2, retry=None)
    cache.set("k", "v")

    cut = katas(demo_env, "chaos", "demo", "cut", "redis")
    assert cut.returncode == 0, cut.stderr
    with pytest.raises(redis.ConnectionError):
        redis.Redis(host=host, port=int(port), socket_timeout=2, retry=None).get("k")
    assert "cut" in katas(demo_env, "status", "demo").stdout
    assert katas(demo_env, "chaos", "demo", "restore", "redis").returncode == 0
    assert redis.Redis(host=host, port=int(port), socket_timeout=2).get("k") == b"v"

    no_proxy = katas(demo_env, "chaos", "demo", "cut", "webhook")
    assert no_proxy.returncode != 0
    assert "has no network proxy" in no_proxy.stderr

    killed = katas(demo_env, "chaos", "demo", "kill", "webhook")
    assert killed.returncode == 0, killed.stderr
    assert "down" in katas(demo_env, "status", "demo").stdout
    assert katas(demo_env, "chaos", "demo", "start", "webhook").returncode == 0
    reply = httpx.post(f"{endpoints['webhook']}/hooks/alerts", json={"rule": "demo", "severity": "high"})
    assert reply.status_code == 200
    delivered = [json.loads(line) for line in Path(endpoints["webhook_log"]).read_text().splitlines()]
    assert delivered[-1]["payload"] == {"rule": "demo", "severity": "high"}

    pids = [c["pid"] for c in json.loads((run / "state.json").read_text())["components"]]
    down = katas(demo_env, "down", "demo")
    assert down.returncode == 0, down.stderr
    supervisor.wait(30)
    assert not any(pid_alive(pid) for pid in pids), "a component outlived `katas down`"
    assert not (run / "state.json").exists()
    assert not (run / "endpoints.json").exists()


def test_down_reaps_what_a_crashed_supervisor_left(
    demo_env: dict[str, str], demo_up: tuple[subprocess.Popen[str], Path]
) -> None:
    supervisor, run = demo_up
    pids = [c["pid"] for c in json.loads((run / "state.json").read_text())["components"]]
    supervisor.kill()  # no chance to stop its children
    supervisor.wait(10)
    assert all(pid_alive(pid) for pid in pids)
    down = katas(demo_env, "down", "demo")
    assert down.returncode == 0, down.stderr
    assert "stopped leftovers" in down.stdout
    deadline = time.monotonic() + 10
    while any(pid_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(pid_alive(pid) for pid in pids)


def test_a_second_up_and_an_unknown_mistake_are_refused(
    demo_env: dict[str, str], demo_up: tuple[subprocess.Popen[str], Path]
) -> None:
    again = katas(demo_env, "up", "demo", "--no-live")
    assert again.returncode == 1
    assert "already running" in again.stderr


def test_unknown_mistake_is_refused(demo_env: dict[str, str]) -> None:
    result = katas(demo_env, "up", "demo", "--no-live", "--mistake", "no-such-thing")
    assert result.returncode == 1
    assert "unknown mistake switch no-such-thing" in result.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["up", "ota_fleet"],
        ["status", "dr"],
        ["chaos", "saas_tenancy", "kill", "redis"],
        ["load", "hybrid_deploy"],
        ["check", "dr"],
        ["lab", "ota_fleet"],
    ],
)
def test_commands_on_a_kata_not_built_say_so_and_fail(command: list[str]) -> None:
    result = katas(dict(os.environ), *command)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "is not built yet" in result.stderr


def test_list_and_card_show_every_kata() -> None:
    listing = katas(dict(os.environ), "list")
    assert listing.returncode == 0
    for kata in ("siem", "ota_fleet", "hybrid_deploy", "sensors", "saas_tenancy", "api_gateway", "dr"):
        assert kata in listing.stdout
    card = katas(dict(os.environ), "card", "ota_fleet")
    assert card.returncode == 0
    assert "not built" in card.stdout
    unknown = katas(dict(os.environ), "card", "nope")
    assert unknown.returncode == 1
    assert "unknown kata 'nope'" in unknown.stderr


@pytest.mark.parametrize("kata", ["siem", "api_gateway"])
@pytest.mark.parametrize(("command", "option"), [("load", "--profile"), ("check", "--short")])
def test_load_and_check_pass_help_and_options_to_the_kata(command: str, option: str, kata: str) -> None:
    own = katas(dict(os.environ), command, kata, "--help")
    assert own.returncode == 0, own.stderr
    assert f"usage: katas {command} {kata}" in own.stdout
    assert option in own.stdout
    general = katas(dict(os.environ), command, "--help")
    assert general.returncode == 0
    assert f"katas {command} KATA --help" in general.stdout


@pytest.mark.parametrize("kata", ["siem", "api_gateway"])
def test_load_without_a_running_stack_says_how_to_start_it(kata: str) -> None:
    not_running = katas(dict(os.environ), "load", kata, "--endpoints", "/nonexistent/endpoints.json")
    assert not_running.returncode == 3
    assert f"the {kata} stack is not running" in not_running.stderr
    assert f"katas up {kata}" in not_running.stderr
