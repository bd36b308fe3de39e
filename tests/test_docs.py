"""The reliability table names real tests: every ``tests/...py::name`` in it exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NODE = re.compile(r"`(tests/[\w/]+\.py)::(\w+)(?:\[[^\]]*\])?`")


def test_every_test_named_in_the_reliability_doc_exists() -> None:
    text = (ROOT / "docs" / "reliability.md").read_text()
    nodes = NODE.findall(text)
    assert len(nodes) > 100
    missing = [f"{path}::{name}" for path, name in nodes
               if not (ROOT / path).is_file()
               or f"def {name}(" not in (ROOT / path).read_text()]
    assert not missing, missing
