"""Chaos on a running stack: kill, terminate, pause, resume or restart any component, or delay, cut or
blackhole its network through the proxy in front of it.

Process faults act on the whole process group (see katas.infra.servers); network faults need the
component to be `proxied = true` in the card's stack, because the proxy is what clients talk to.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

from katas.infra.stack import Stack, StackError


class ChaosAction(StrEnum):
    KILL = "kill"
    TERMINATE = "terminate"
    PAUSE = "pause"
    RESUME = "resume"
    RESTART = "restart"
    START = "start"
    DELAY = "delay"
    CUT = "cut"
    BLACKHOLE = "blackhole"
    RESTORE = "restore"


ACTION_HELP: dict[ChaosAction, str] = {
    ChaosAction.KILL: "SIGKILL the component's process group: a crash with no flush",
    ChaosAction.TERMINATE: "SIGTERM and wait: a graceful stop (the component stays down)",
    ChaosAction.PAUSE: "SIGSTOP: the process hangs, connections stay open (a GC pause, a frozen VM)",
    ChaosAction.RESUME: "SIGCONT after pause",
    ChaosAction.RESTART: "stop (if running) and start again on the same port and data",
    ChaosAction.START: "start a component that was killed or terminated",
    ChaosAction.DELAY: "add --ms (±--jitter-ms) to each direction of its network path: a round trip gains twice that",
    ChaosAction.CUT: "reset every connection and refuse new ones",
    ChaosAction.BLACKHOLE: "keep connections open but forward nothing (clients time out)",
    ChaosAction.RESTORE: "heal the network path",
}


def apply(
    stack: Stack, action: ChaosAction, component: str, *, ms: float = 200.0, jitter_ms: float = 0.0
) -> str:
    """Apply one fault and return a sentence saying what was done."""
    target = stack[component]
    process_actions: dict[ChaosAction, Callable[[], object]] = {
        ChaosAction.KILL: target.kill,
        ChaosAction.TERMINATE: target.stop,
        ChaosAction.PAUSE: target.pause,
        ChaosAction.RESUME: target.resume,
        ChaosAction.RESTART: target.restart,
        ChaosAction.START: target.start,
    }
    if action in process_actions:
        process_actions[action]()
        stack.write_files()  # a restart changes PIDs
        return f"{action.value} {component}: pid {target.pid}, running={target.is_running()}"
    proxy = stack.proxies.get(component)
    if proxy is None:
        proxied = ", ".join(stack.proxies) or "none"
        raise StackError(
            f"{component} has no network proxy, so its network cannot be {action.value}; "
            f"proxied components in {stack.kata}: {proxied}"
        )
    if action is ChaosAction.DELAY:
        proxy.delay(ms, jitter_ms)
    elif action is ChaosAction.CUT:
        proxy.cut()
    elif action is ChaosAction.BLACKHOLE:
        proxy.blackhole()
    else:
        proxy.restore()
    return f"{action.value} {component}: network {proxy.state}"
