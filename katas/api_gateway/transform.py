"""What the gateway changes in a backend's answer: internal fields stripped from JSON, and XML from a
legacy backend turned into JSON. Pure functions over bodies; the gateway node applies them per route.
"""

from __future__ import annotations

from typing import Any
from xml.etree.ElementTree import Element

from defusedxml import ElementTree


class TransformError(ValueError):
    """The backend's answer is not what the route says it is (the gateway answers 502)."""


def strip_fields(body: Any, fields: frozenset[str]) -> Any:
    """`body` without the keys in `fields`, at any depth (in objects inside objects and lists)."""
    if not fields:
        return body
    if isinstance(body, dict):
        return {k: strip_fields(v, fields) for k, v in body.items() if k not in fields}
    if isinstance(body, list):
        return [strip_fields(item, fields) for item in body]
    return body


def xml_to_json(text: bytes | str) -> dict[str, Any]:
    """An XML document as JSON: `{root tag: content}`. Attributes become `@name`, text beside children or
    attributes becomes `#text`, an element repeated among its siblings becomes a list, an empty element
    None. Parsed with defusedxml: entity expansion and external references are refused."""
    try:
        root = ElementTree.fromstring(text)
    except Exception as exc:  # ParseError and defusedxml's refusals alike
        raise TransformError(f"the backend's answer is not well-formed XML: {exc}") from exc
    return {_name(root.tag): _content(root)}


def _name(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]  # drop a namespace


def _content(element: Element) -> Any:
    children: dict[str, Any] = {}
    for child in element:
        name, value = _name(child.tag), _content(child)
        if name in children:  # repeated: a list (an element's own content is never a list)
            if not isinstance(children[name], list):
                children[name] = [children[name]]
            children[name].append(value)
        else:
            children[name] = value
    attributes = {f"@{_name(k)}": v for k, v in element.attrib.items()}
    text = (element.text or "").strip()
    if not children and not attributes:
        return text or None
    content: dict[str, Any] = {**attributes, **children}
    if text:
        content["#text"] = text
    return content
