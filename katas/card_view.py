"""Rich renderables for the kata cards: the catalogue table (`katas list`) and one card (`katas card`).

Card text is wrapped in `Text` everywhere so that brackets in a card are shown as written, never parsed
as rich markup.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich import box
from rich.console import Group, RenderableType
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from katas.catalog import Component, KataCard, KataStatus, Mistake, Nfr

_STATUS_STYLE = {KataStatus.PLANNED: "yellow", KataStatus.BUILT: "green"}


def _status(status: KataStatus) -> Text:
    return Text(status.value, style=_STATUS_STYLE.get(status, ""))


def _number(value: float) -> str:
    return f"{value:,.0f}" if value.is_integer() else f"{value:,g}"


def measured_as(nfr: Nfr) -> Text:
    """`metric op target unit` for a measured NFR, else its note (dim)."""
    if nfr.metric is None or nfr.op is None or nfr.target is None:
        return Text(nfr.note, style="dim")
    expression = f"{nfr.metric} {nfr.op.value} {_number(nfr.target)} {nfr.unit}".rstrip()
    return Text(expression, style="cyan")


def implemented_by(component: Component) -> Text:
    """The implementing module and/or server, or "not built"."""
    parts = [part for part in (component.module, component.server and f"server: {component.server}") if part]
    if not parts:
        return Text("not built", style="dim red")
    return Text(" + ".join(parts), style="green")


def reproduced_by(mistake: Mistake) -> Text:
    """The switch (and its test once written), the structural reason, or a warning if neither is given."""
    if mistake.switch is not None:
        text = Text(f"--mistake {mistake.switch}", style="magenta")
        text.append(f"  test: {mistake.test}" if mistake.test else "  (no test yet)", style="dim")
        return text
    if mistake.structural is not None:
        return Text(f"structural: {mistake.structural}")
    return Text("neither switch nor structural reason", style="bold red")


def render_kata_list(cards: Sequence[KataCard]) -> Table:
    table = Table(title="Kata Lab", box=box.SIMPLE_HEAVY, expand=True)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("kata", style="bold", no_wrap=True)
    table.add_column("title", ratio=1)
    table.add_column("status", no_wrap=True)
    table.add_column("summary", ratio=2)
    for card in cards:
        table.add_row(
            str(card.number), Text(card.id), Text(card.title), _status(card.status), Text(card.summary)
        )
    return table


def _nfr_table(card: KataCard) -> Table:
    table = Table(title="Non-functional requirements", box=box.SIMPLE, expand=True, title_justify="left")
    table.add_column("NFR", style="bold", ratio=2)
    table.add_column("production", ratio=2)
    table.add_column("miniature", ratio=3)
    table.add_column("measured as", ratio=3, overflow="fold")
    for nfr in card.nfr:
        table.add_row(Text(nfr.name), Text(nfr.production), Text(nfr.miniature), measured_as(nfr))
    return table


def _component_table(card: KataCard) -> Table:
    table = Table(title="Expected components", box=box.SIMPLE, expand=True, title_justify="left")
    table.add_column("component", style="bold", ratio=2)
    table.add_column("the kata expects", ratio=3)
    table.add_column("implemented by", ratio=3, overflow="fold")
    for component in card.component:
        table.add_row(Text(component.name), Text(component.expects), implemented_by(component))
    return table


def _mistake_table(card: KataCard) -> Table:
    table = Table(title="Common mistakes", box=box.SIMPLE, expand=True, title_justify="left")
    table.add_column("mistake", style="bold", no_wrap=True)
    table.add_column("what goes wrong", ratio=4)
    table.add_column("reproduced by", ratio=4, overflow="fold")
    for mistake in card.mistake:
        table.add_row(Text(mistake.name), Text(mistake.text), reproduced_by(mistake))
    return table


def _listing(items: Sequence[str], *, numbered: bool) -> Text:
    marks = (f"{i}." if numbered else "-" for i in range(1, len(items) + 1))
    return Text("\n").join(Text(f"{mark} {item}") for mark, item in zip(marks, items, strict=True))


def render_card(card: KataCard) -> Group:
    heading = Text.assemble(
        (f"Kata {card.number}: {card.title}", "bold"), "  ", (f"[{card.id}] ", "dim"), _status(card.status)
    )
    parts: list[RenderableType] = [
        heading,
        Text(card.summary, style="italic"),
        Padding(Text(card.statement), (1, 0, 0, 0)),
        Padding(Text("Functional requirements", style="bold underline"), (1, 0, 0, 0)),
        _listing(card.functional, numbered=True),
    ]
    if card.constraints:
        parts += [
            Padding(Text("Constraints", style="bold underline"), (1, 0, 0, 0)),
            _listing(card.constraints, numbered=False),
        ]
    parts += [
        Padding(Text.assemble(("Scale ", "bold underline"), card.scale.factor), (1, 0, 0, 0)),
        Padding(Text(card.scale.why), (0, 0, 1, 0)),
        _nfr_table(card),
        _component_table(card),
        _mistake_table(card),
    ]
    return Group(*parts)
