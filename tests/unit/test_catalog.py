"""The kata cards (`katas/<kata>/kata.toml`): they validate, agree with the repository, and render."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from rich.console import Console

from katas import REPO_ROOT
from katas.card_view import render_card, render_kata_list
from katas.catalog import (
    KATAS_PACKAGE_DIR,
    Comparison,
    KataCard,
    KataStatus,
    Nfr,
    UnknownKataError,
    all_cards,
    get_card,
    kata_ids,
    load_card,
)

pytestmark = pytest.mark.unit

EXPECTED_KATAS = {
    "siem": 1,
    "ota_fleet": 2,
    "hybrid_deploy": 3,
    "sensors": 4,
    "saas_tenancy": 5,
    "api_gateway": 6,
    "dr": 7,
}
CARD_PATHS = sorted(KATAS_PACKAGE_DIR.glob("*/kata.toml"))


def resolve_in_repo(ref: str) -> Path | None:
    """The file a card points at: a repo-relative path (`a/b/c.py`, optionally `::test_name`) or a
    dotted module (`a.b.c` -> `a/b/c.py` or `a/b/c/__init__.py`). None if it does not exist."""
    ref = ref.split("::", 1)[0]
    if "/" in ref or ref.endswith(".py"):
        candidates = [REPO_ROOT / ref]
    else:
        base = REPO_ROOT.joinpath(*ref.split("."))
        candidates = [base.with_suffix(".py"), base / "__init__.py"]
    return next((c for c in candidates if c.is_file()), None)


@pytest.fixture(autouse=True)
def _real_catalog(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KATAS_CATALOG_DIR", raising=False)


@pytest.fixture(scope="module")
def cards() -> list[KataCard]:
    return [load_card(path) for path in CARD_PATHS]


# --- the seven cards -------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", CARD_PATHS, ids=lambda p: p.parent.name)
def test_every_card_validates_and_sits_in_its_own_folder(path: Path) -> None:
    card = load_card(path)
    assert card.id == path.parent.name
    assert (path.parent / "__init__.py").is_file(), f"{card.id}: kata folder is not a package"


def test_exactly_the_seven_katas_numbered_one_to_seven(cards: list[KataCard]) -> None:
    assert {card.id: card.number for card in cards} == EXPECTED_KATAS
    assert kata_ids() == sorted(EXPECTED_KATAS)
    assert [card.number for card in all_cards()] == list(range(1, 8))


def test_every_referenced_file_exists(cards: list[KataCard]) -> None:
    missing = [
        f"{card.id}: {kind} {ref!r}"
        for card in cards
        for kind, ref in [
            *(("component module", c.module) for c in card.component if c.module),
            *(("mistake test", m.test) for m in card.mistake if m.test),
            *(("stack service module", s.module) for s in card.stack.services),
        ]
        if resolve_in_repo(ref) is None
    ]
    assert not missing, "cards name files that do not exist:\n" + "\n".join(missing)


def test_every_mistake_has_a_switch_or_a_structural_reason(cards: list[KataCard]) -> None:
    bare = [f"{card.id}: {m.name}" for card in cards for m in card.mistake if not (m.switch or m.structural)]
    assert not bare, f"mistakes with neither switch nor structural reason: {bare}"


def test_planned_cards_have_no_implemented_components(cards: list[KataCard]) -> None:
    for card in cards:
        if card.status is KataStatus.PLANNED:
            built = [c.name for c in card.component if c.module is not None]
            assert not built, f"{card.id} is planned but names modules for {built}"


def test_names_are_unique_within_a_card(cards: list[KataCard]) -> None:
    for card in cards:
        metrics = [n.metric for n in card.nfr if n.metric is not None]
        assert len(metrics) == len(set(metrics)), f"{card.id}: duplicate NFR metric in {metrics}"
        nfr_ids = [n.id for n in card.nfr]
        assert len(nfr_ids) == len(set(nfr_ids)), f"{card.id}: duplicate NFR id in {nfr_ids}"
        mistakes = [m.name for m in card.mistake]
        assert len(mistakes) == len(set(mistakes)), f"{card.id}: duplicate mistake in {mistakes}"
        switches = [m.switch for m in card.mistake if m.switch]
        assert len(switches) == len(set(switches)), f"{card.id}: duplicate switch in {switches}"


def test_get_card_returns_the_card_of_that_kata() -> None:
    for kata, number in EXPECTED_KATAS.items():
        assert get_card(kata).number == number


# --- the model and its validators ------------------------------------------------------------------------


def _nfr(**overrides: object) -> Nfr:
    fields: dict[str, object] = {
        "id": "ingest",
        "name": "Ingestion throughput",
        "production": "50,000 events/s",
        "miniature": "5,000 events/s",
        "metric": "ingest_events_per_s",
        "op": ">=",
        "target": 5000,
        "unit": "events/s",
    }
    return Nfr.model_validate(fields | overrides)


@pytest.mark.parametrize(
    ("op", "measured", "expected"),
    [
        (">=", 5001.0, True),
        (">=", 5000.0, True),
        (">=", 4999.9, False),
        ("<=", 4999.9, True),
        ("<=", 5000.0, True),
        ("<=", 5000.1, False),
    ],
)
def test_nfr_passes_compares_with_the_target_inclusively(op: str, measured: float, expected: bool) -> None:
    nfr = _nfr(op=op)
    assert nfr.op is Comparison(op)
    assert nfr.passes(measured) is expected


@pytest.mark.parametrize("missing", ["op", "target"])
def test_a_measured_nfr_needs_op_and_target(missing: str) -> None:
    with pytest.raises(ValidationError, match="needs both 'op' and 'target'"):
        _nfr(**{missing: None})


def test_an_unmeasured_nfr_needs_a_note() -> None:
    with pytest.raises(ValidationError, match="needs a 'note'"):
        _nfr(metric=None, op=None, target=None)
    assert _nfr(metric=None, op=None, target=None, note="a yearly figure").metric is None


def test_an_unknown_op_or_field_is_rejected() -> None:
    with pytest.raises(ValidationError):
        _nfr(op="<")
    with pytest.raises(ValidationError):
        _nfr(threshold=3)


def test_an_unknown_kata_raises_unknown_kata_error() -> None:
    with pytest.raises(UnknownKataError, match="no_such_kata"):
        get_card("no_such_kata")


def test_the_catalogue_directory_can_be_pointed_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "dr").mkdir()
    (tmp_path / "dr" / "kata.toml").write_bytes((KATAS_PACKAGE_DIR / "dr" / "kata.toml").read_bytes())
    monkeypatch.setenv("KATAS_CATALOG_DIR", str(tmp_path))
    assert kata_ids() == ["dr"]
    assert get_card("dr").directory == tmp_path / "dr"
    with pytest.raises(UnknownKataError, match="known: dr"):
        get_card("siem")


def test_resolve_in_repo_understands_paths_and_dotted_modules() -> None:
    assert resolve_in_repo("katas.catalog") == KATAS_PACKAGE_DIR / "catalog.py"
    assert resolve_in_repo("katas") == KATAS_PACKAGE_DIR / "__init__.py"
    assert resolve_in_repo("katas/catalog.py") == KATAS_PACKAGE_DIR / "catalog.py"
    assert resolve_in_repo("tests/unit/test_catalog.py::test_x") == Path(__file__).resolve()
    assert resolve_in_repo("katas.no_such_module") is None


# --- rendering -------------------------------------------------------------------------------------------


def _render(renderable: object) -> str:
    console = Console(record=True, width=120, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_render_kata_list_shows_every_card(cards: list[KataCard]) -> None:
    text = _render(render_kata_list(sorted(cards, key=lambda c: c.number)))
    for card in cards:
        assert card.id in text
        assert card.status.value in text


@pytest.mark.parametrize("kata", sorted(EXPECTED_KATAS))
def test_render_card_shows_the_whole_card(kata: str) -> None:
    card = get_card(kata)
    text = _render(render_card(card))
    assert card.title in text
    for heading in ("Functional requirements", "Non-functional requirements", "Common mistakes"):
        assert heading in text
    for name in [n.metric for n in card.nfr if n.metric] + [m.name for m in card.mistake]:
        assert name in text
    if card.status is KataStatus.PLANNED:
        assert text.count("not built") >= len(card.component)
