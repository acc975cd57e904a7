"""Routing by path, method, header and tier, and the answer transformations, without servers."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from katas.api_gateway.routing import Refusal, Route, RouteMatch, RouteTable, Tier
from katas.api_gateway.transform import TransformError, strip_fields, xml_to_json

TABLE = RouteTable(
    [
        Route(name="orders", prefix="/orders", backend="orders"),
        Route(name="orders-v2", prefix="/orders", backend="orders-v2", headers={"X-API-Version": "2"}),
        Route(name="refunds", prefix="/orders/refunds", backend="payments", upstream_prefix="/refunds"),
        Route(name="reports", prefix="/reports", backend="reports", methods=frozenset({"get"}),
              tiers=frozenset({Tier.PRO, Tier.ENTERPRISE})),
    ]
)  # fmt: skip


def routed(method: str, path: str, tier: Tier = Tier.FREE, **headers: str) -> RouteMatch | Refusal:
    return TABLE.match(method, path, {k.replace("_", "-"): v for k, v in headers.items()}, tier)


def test_the_longest_prefix_wins_and_is_rewritten_for_the_backend() -> None:
    match = routed("POST", "/orders/refunds/42")
    assert isinstance(match, RouteMatch)
    assert (match.route.backend, match.upstream_path) == ("payments", "/refunds/42")
    plain = routed("GET", "/orders/7")
    assert isinstance(plain, RouteMatch)
    assert (plain.route.backend, plain.upstream_path) == ("orders", "/orders/7")


def test_a_prefix_does_not_match_a_longer_word() -> None:
    assert routed("GET", "/ordersheet") is Refusal.NO_ROUTE


def test_a_header_condition_picks_the_more_specific_route() -> None:
    match = routed("GET", "/orders/7", x_api_version="2")
    assert isinstance(match, RouteMatch)
    assert match.route.backend == "orders-v2"
    other = routed("GET", "/orders/7", x_api_version="3")
    assert isinstance(other, RouteMatch)
    assert other.route.backend == "orders"


def test_refusals_say_why() -> None:
    assert routed("GET", "/nowhere") is Refusal.NO_ROUTE
    assert routed("DELETE", "/reports/daily", Tier.PRO) is Refusal.METHOD
    assert routed("GET", "/reports/daily", Tier.FREE) is Refusal.TIER
    assert [r.status for r in (Refusal.NO_ROUTE, Refusal.METHOD, Refusal.TIER)] == [404, 405, 403]
    assert isinstance(routed("GET", "/reports/daily", Tier.ENTERPRISE), RouteMatch)


def test_bad_routes_are_refused_when_loaded() -> None:
    with pytest.raises(ValidationError, match="path prefix"):
        Route(name="x", prefix="orders", backend="orders")
    with pytest.raises(ValidationError, match="timeout_s"):
        Route(name="x", prefix="/x", backend="x", timeout_s=0)
    with pytest.raises(ValidationError):
        Route.model_validate({"name": "x", "prefix": "/x", "backend": "x", "retries": 3})
    with pytest.raises(ValueError, match="unique"):
        RouteTable([Route(name="x", prefix="/a", backend="a"), Route(name="x", prefix="/b", backend="b")])


@given(st.text(alphabet="/abcdefgh-.%", max_size=40), st.sampled_from(["GET", "post", "PATCH", "TRACE"]))
def test_any_path_gets_a_route_or_a_reason(path: str, method: str) -> None:
    result = TABLE.match(method, path, {}, Tier.FREE)
    assert isinstance(result, (RouteMatch, Refusal))


def test_internal_fields_are_stripped_at_any_depth() -> None:
    body: Any = {"id": 1, "_internal": {"db": "x"}, "items": [{"sku": "a", "cost_price": 3}], "n": None}
    assert strip_fields(body, frozenset({"_internal", "cost_price"})) == {
        "id": 1,
        "items": [{"sku": "a"}],
        "n": None,
    }
    assert strip_fields(body, frozenset()) is body


def test_xml_from_a_legacy_backend_becomes_json() -> None:
    xml = (
        b'<?xml version="1.0"?><invoice id="7" xmlns="urn:legacy"><total currency="EUR">12.50</total>'
        b"<line>a</line><line>b</line><note/></invoice>"
    )
    assert xml_to_json(xml) == {
        "invoice": {
            "@id": "7",
            "total": {"@currency": "EUR", "#text": "12.50"},
            "line": ["a", "b"],
            "note": None,
        }
    }


@pytest.mark.parametrize(
    "hostile",
    [
        b"<a><b></a>",
        b'<!DOCTYPE x [<!ENTITY e "boom">]><x>&e;</x>',
        b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>',
        b"",
    ],
)
def test_broken_or_hostile_xml_is_refused_with_a_reason(hostile: bytes) -> None:
    with pytest.raises(TransformError, match="not well-formed XML"):
        xml_to_json(hostile)
