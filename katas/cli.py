"""`katas`: start a kata on real servers, drive load, break it, and read its scorecard."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.live import Live
from rich.markdown import Markdown
from rich.table import Table

from katas.card_view import render_card, render_kata_list
from katas.catalog import KataCard, UnknownKataError, all_cards, get_card
from katas.infra import control
from katas.infra.chaos import ACTION_HELP, ChaosAction
from katas.infra.stack import Stack, StackError, pid_alive, read_state, reap_leftovers

app = typer.Typer(
    help="Kata Lab: runnable miniatures of system-design katas on real servers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(
    help="Raw throughput of the lab's building blocks on this machine.", no_args_is_help=True
)
app.add_typer(bench_app, name="bench")
console = Console()
err = Console(stderr=True)

EXIT_NOT_BUILT = 2
EXIT_FAILED = 1


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def card_or_fail(kata: str) -> KataCard:
    try:
        return get_card(kata)
    except UnknownKataError as exc:
        fail(str(exc))


def built_card_or_fail(kata: str, what: str) -> KataCard:
    card = card_or_fail(kata)
    if not card.built:
        fail(
            f"kata {kata!r} is not built yet, so there is nothing to {what}. "
            f"`katas card {kata}` shows what it will contain.",
            EXIT_NOT_BUILT,
        )
    return card


def kata_module(card: KataCard, name: str, what: str) -> Any:
    """A kata's own module (check, load, ...); a built kata without it says so instead of crashing."""
    module = f"katas.{card.id}.{name}"
    if importlib.util.find_spec(module) is None:
        fail(f"kata {card.id!r} has no {what} yet (module {module} is missing)", EXIT_NOT_BUILT)
    return importlib.import_module(module)


# ------------------------------------------------------------------------------------------- catalogue
@app.command("list")
def list_katas() -> None:
    """The katas, what each is about, and whether it is built."""
    console.print(render_kata_list(all_cards()))


@app.command()
def card(kata: str) -> None:
    """A kata's card: statement, NFR targets, expected components and common mistakes."""
    console.print(render_card(card_or_fail(kata)))


@app.command()
def lab(kata: str) -> None:
    """Print the kata's hands-on lab guide (LAB.md)."""
    card = built_card_or_fail(kata, "practise")
    guide = card.directory / "LAB.md"
    if not guide.is_file():
        fail(f"{guide} is missing", EXIT_NOT_BUILT)
    console.print(Markdown(guide.read_text()))


# ------------------------------------------------------------------------------------------ lifecycle
def status_table(kata: str, rows: list[dict[str, Any]]) -> Table:
    table = Table(title=f"{kata}: components", title_justify="left")
    for column in ("component", "kind", "state", "endpoint", "pid", "network", "detail"):
        table.add_column(column)
    for row in rows:
        if row.get("paused"):
            state = "[magenta]paused[/]"
        elif row["healthy"]:
            state = "[green]up[/]"
        elif row["running"]:
            state = "[yellow]unhealthy[/]"
        else:
            state = "[red]down[/]"
        network = row.get("network", "direct")
        network_cell = network if network in ("direct", "normal") else f"[magenta]{network}[/]"
        table.add_row(
            row["name"],
            row["kind"],
            state,
            row["endpoint"],
            str(row["pid"] or "-"),
            network_cell,
            row.get("detail", ""),
        )
    return table


@app.command()
def up(
    kata: str,
    mistake: Annotated[
        list[str] | None, typer.Option(help="turn on a common mistake (repeatable); see `katas card`")
    ] = None,
    live: Annotated[bool, typer.Option(help="live status table; off when output is not a terminal")] = True,
) -> None:
    """Start the kata natively on real servers; Ctrl-C or `katas down` stops it."""
    card = built_card_or_fail(kata, "start")
    state = read_state(kata)
    if state and pid_alive(state.get("supervisor_pid")):
        fail(
            f"{kata} is already running (supervisor pid {state['supervisor_pid']}); `katas down {kata}` first"
        )
    reap_leftovers(kata)
    try:
        stack = Stack.for_card(card, tuple(mistake or ()))
    except StackError as exc:
        fail(str(exc))

    stopping = threading.Event()

    def request_stop(signum: int = 0, frame: FrameType | None = None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    console.print(f"starting [bold]{kata}[/] in {stack.run_dir} ...")
    try:
        stack.start()
    except Exception as exc:
        fail(f"{kata} did not start:\n{exc}")
    server = control.ControlServer(stack, on_shutdown=request_stop).start()
    try:
        console.print(f"[green]{kata} is up[/]; endpoints in {stack.run_dir / 'endpoints.json'}")
        if live and console.is_terminal:
            with Live(status_table(kata, stack.status()), console=console, refresh_per_second=1) as view:
                while not stopping.wait(1.0):
                    view.update(status_table(kata, stack.status()))
        else:
            console.print(status_table(kata, stack.status()))
            console.print("ready", highlight=False)
            stopping.wait()
    finally:
        console.print(f"stopping {kata} ...")
        server.stop()
        stack.stop()
        console.print(f"{kata} stopped")


@app.command()
def down(kata: str) -> None:
    """Stop a running kata and everything it started."""
    card_or_fail(kata)
    state = read_state(kata)
    if state is None:
        console.print(f"{kata} is not running")
        return
    # If the supervisor is gone, the request fails and the leftovers are reaped below.
    with contextlib.suppress(control.NotRunningError, StackError):
        control.request(kata, "POST", "/shutdown", timeout_s=10)
    supervisor = state.get("supervisor_pid")
    deadline = time.monotonic() + 60
    while pid_alive(supervisor) and time.monotonic() < deadline:
        time.sleep(0.2)
    leftovers = reap_leftovers(kata)
    if leftovers:
        console.print(f"stopped leftovers: {', '.join(leftovers)}")
    console.print(f"{kata} stopped")


@app.command()
def status(kata: str) -> None:
    """The components of a running kata: up or down, endpoint, PID, network faults."""
    built_card_or_fail(kata, "show")
    reply = call_control(kata, "GET", "/status")
    console.print(status_table(kata, reply["components"]))


def call_control(kata: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    try:
        return control.request(kata, method, path, body)
    except control.NotRunningError as exc:
        fail(str(exc))
    except StackError as exc:
        fail(str(exc))


@app.command()
def chaos(
    kata: str,
    action: Annotated[
        ChaosAction, typer.Argument(help="; ".join(f"{a.value}: {h}" for a, h in ACTION_HELP.items()))
    ],
    component: str,
    ms: Annotated[float, typer.Option(help="delay in milliseconds (delay only)")] = 200.0,
    jitter_ms: Annotated[float, typer.Option(help="delay jitter in milliseconds (delay only)")] = 0.0,
) -> None:
    """Break (or heal) one component of a running kata."""
    built_card_or_fail(kata, "break")
    body = {"action": action.value, "component": component, "ms": ms, "jitter_ms": jitter_ms}
    console.print(call_control(kata, "POST", "/chaos", body)["message"])


# -------------------------------------------------------------------------------------- load and check
PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}
"""`katas load|check <kata> ...`: every option, --help included, belongs to the kata's own module."""


def run_kata_module(kata: str, args: list[str], name: str, what: str) -> NoReturn:
    if kata in ("--help", "-h"):
        console.print(
            f"usage: katas {name} KATA [OPTIONS]; `katas {name} KATA --help` lists the kata's options"
        )
        raise typer.Exit(0)
    card = built_card_or_fail(kata, name)
    run: Callable[[list[str]], int] = kata_module(card, name, what).main
    raise typer.Exit(run(args))


@app.command(context_settings=PASS_THROUGH)
def load(ctx: typer.Context, kata: str) -> None:
    """Drive the kata's load generator against the running kata (options are the generator's own)."""
    run_kata_module(kata, list(ctx.args), "load", "load generator")


@app.command(context_settings=PASS_THROUGH)
def check(ctx: typer.Context, kata: str) -> None:
    """Measure every NFR at the miniature target and write the scorecard (options are the check's own)."""
    run_kata_module(kata, list(ctx.args), "check", "NFR check")


@bench_app.command("infra")
def bench_infra(
    seconds: Annotated[float, typer.Option(help="seconds per measurement")] = 5.0,
    output: Annotated[Path | None, typer.Option(help="also write the results as JSON here")] = None,
) -> None:
    """Raw throughput of each native server: the ceilings kata pipelines are compared against."""
    from katas.infra import bench

    results = bench.run_all(seconds=seconds)
    console.print(bench.render(results))
    if output is not None:
        bench.write_json(results, output)
        console.print(f"written to {output}")


if __name__ == "__main__":
    app()
