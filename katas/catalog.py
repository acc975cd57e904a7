"""The kata cards (`katas/<kata>/kata.toml`) as a validated model.

A card is the single source for what a kata promises: its statement, NFR targets at production and at
miniature scale, the components the kata text expects (and which module implements each), the common
mistakes (and the switch that reproduces each), and, once built, the stack that `katas up` starts.
"""

from __future__ import annotations

import os
import tomllib
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from katas import REPO_ROOT

KATAS_PACKAGE_DIR = REPO_ROOT / "katas"
ServerKind = Literal[
    "redis",
    "redis_replica",
    "redis_sentinel",
    "mosquitto",
    "postgres",
    "postgres_standby",
    "s3rver",
    "tansu",
    "chdb",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KataStatus(StrEnum):
    PLANNED = "planned"
    BUILT = "built"


class Comparison(StrEnum):
    AT_LEAST = ">="
    AT_MOST = "<="


class Nfr(_Strict):
    """One NFR row: the production target from the kata text and the miniature target we measure."""

    id: str = Field(pattern=r"^[a-z0-9_]+$")
    name: str
    production: str
    miniature: str
    metric: str | None = Field(
        default=None, description="key of the measured value in a check run; None if not measurable here"
    )
    op: Comparison | None = None
    target: float | None = None
    unit: str = ""
    note: str = Field(default="", description="why the miniature target is fair, or why it is not measured")

    @model_validator(mode="after")
    def _measurable_rows_are_complete(self) -> Nfr:
        if self.metric is not None and (self.op is None or self.target is None):
            raise ValueError(f"NFR {self.id!r}: a measured NFR needs both 'op' and 'target'")
        if self.metric is None and (self.op is not None or self.target is not None):
            raise ValueError(f"NFR {self.id!r}: 'op' and 'target' need a 'metric' to compare against")
        if self.metric is None and not self.note:
            raise ValueError(f"NFR {self.id!r}: an NFR that is not measured needs a 'note' saying why")
        return self

    def passes(self, measured: float) -> bool:
        if self.op is None or self.target is None:
            raise ValueError(f"NFR {self.id!r} is not measured here")
        return measured >= self.target if self.op is Comparison.AT_LEAST else measured <= self.target


class Component(_Strict):
    """An expected component of the kata text, and the module or server that implements it."""

    name: str
    expects: str = Field(description="what the kata text expects, in a few words")
    module: str | None = Field(default=None, description="repo-relative path of the implementing file")
    server: ServerKind | None = Field(default=None, description="the real server that plays this role")

    @property
    def built(self) -> bool:
        return self.module is not None or self.server is not None


class Mistake(_Strict):
    """A common mistake: either a switch that reproduces it plus a test, or a reason it is structural."""

    name: str = Field(pattern=r"^[a-z0-9-]+$")
    text: str
    switch: str | None = Field(default=None, description="value of `katas up <kata> --mistake`")
    test: str | None = Field(default=None, description="repo-relative path of the test that shows it")
    structural: str | None = Field(default=None, description="why no switch: where the design avoids it")

    @model_validator(mode="after")
    def _switch_or_reason(self) -> Mistake:
        if (self.switch is None) == (self.structural is None):
            raise ValueError(f"mistake {self.name!r}: give either a 'switch' or a 'structural' reason")
        if self.test is not None and self.switch is None:
            raise ValueError(f"mistake {self.name!r}: a 'test' shows a 'switch'; this mistake has none")
        return self


class ServerSpec(_Strict):
    name: str = Field(pattern=r"^[a-z0-9_-]+$")
    kind: ServerKind
    options: dict[str, str | int | bool] = Field(default_factory=dict)
    proxied: bool = Field(default=False, description="clients reach it through a chaos TCP proxy")
    with_mistake: str | None = Field(
        default=None,
        description="start this server only when that mistake switch is on (the store a mistake misuses)",
    )


class ServiceSpec(_Strict):
    name: str = Field(pattern=r"^[a-z0-9_-]+$")
    module: str = Field(description="run as `python -m <module>`")
    args: list[str] = Field(default_factory=list)
    health_port_env: str | None = Field(
        default=None, description="env var through which the launcher hands the service a free port"
    )


class StackSpec(_Strict):
    servers: list[ServerSpec] = Field(default_factory=list)
    services: list[ServiceSpec] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict, description="extra variables for every service")
    secrets: list[str] = Field(
        default_factory=list,
        description="variables given a random value once per run directory and passed to every service",
    )
    publish: dict[str, str] = Field(
        default_factory=dict, description="endpoints.json entries taken from secrets: entry name -> variable"
    )

    @model_validator(mode="after")
    def _published_secrets_exist(self) -> StackSpec:
        unknown = set(self.publish.values()) - set(self.secrets)
        if unknown:
            raise ValueError(f"publish names variables that are not secrets: {', '.join(sorted(unknown))}")
        return self


class Scale(_Strict):
    factor: str
    why: str


class KataCard(_Strict):
    id: str = Field(pattern=r"^[a-z_]+$")
    number: int = Field(ge=1)
    title: str
    status: KataStatus = KataStatus.PLANNED
    summary: str
    statement: str
    functional: list[str] = Field(min_length=1)
    constraints: list[str] = Field(default_factory=list)
    scale: Scale
    nfr: list[Nfr] = Field(min_length=1)
    component: list[Component] = Field(min_length=1)
    mistake: list[Mistake] = Field(min_length=1)
    stack: StackSpec = Field(default_factory=StackSpec)

    @model_validator(mode="after")
    def _servers_name_known_switches(self) -> KataCard:
        switches = {m.switch for m in self.mistake if m.switch}
        for server in self.stack.servers:
            if server.with_mistake is not None and server.with_mistake not in switches:
                raise ValueError(f"server {server.name!r}: with_mistake names no switch of this card")
        return self

    @property
    def built(self) -> bool:
        return self.status is KataStatus.BUILT

    @property
    def directory(self) -> Path:
        return catalog_dir() / self.id


def catalog_dir() -> Path:
    """Where kata folders live; KATAS_CATALOG_DIR lets tests point at a catalogue of their own."""
    return Path(os.environ.get("KATAS_CATALOG_DIR", KATAS_PACKAGE_DIR))


class UnknownKataError(LookupError):
    pass


def kata_ids() -> list[str]:
    return sorted(p.parent.name for p in catalog_dir().glob("*/kata.toml"))


def load_card(path: Path) -> KataCard:
    with path.open("rb") as f:
        return KataCard.model_validate(tomllib.load(f))


@cache
def _load_cached(path: Path, mtime: float) -> KataCard:
    return load_card(path)


def get_card(kata: str) -> KataCard:
    path = catalog_dir() / kata / "kata.toml"
    if not kata.isidentifier() or not path.is_file():
        known = ", ".join(kata_ids()) or "none"
        raise UnknownKataError(f"unknown kata {kata!r} (known: {known})")
    return _load_cached(path, path.stat().st_mtime)


def all_cards() -> list[KataCard]:
    return sorted((get_card(k) for k in kata_ids()), key=lambda c: c.number)
