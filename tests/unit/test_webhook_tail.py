"""The checks' reader of a webhook log: only whole, new, JSON lines, and nothing before the file exists."""

from __future__ import annotations

from pathlib import Path

import pytest

from katas.checking import WebhookTail

pytestmark = pytest.mark.unit


def test_each_call_returns_the_whole_lines_added_since_the_last(tmp_path: Path) -> None:
    path = tmp_path / "webhook.jsonl"
    tail = WebhookTail(path)
    assert tail.new_lines() == []  # the receiver has written nothing yet
    path.write_bytes(b'{"a": 1}\nnot json\n{"b": 2')
    assert tail.new_lines() == [{"a": 1}]  # the half-written line waits
    with path.open("ab") as log:
        log.write(b'}\n{"c": 3}\n')
    assert tail.new_lines() == [{"b": 2}, {"c": 3}]
    assert tail.new_lines() == []
