"""The docs tell the truth about the code: tests they cite exist, links and tables are current."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from auxilia.cli import main

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


LINK = re.compile(r"\]\(([^)#\s]+)(?:#([^)\s]+))?\)")


def heading_anchors(page: Path) -> set[str]:
    """The anchors of a Markdown page's headings, as mkdocs (Python-Markdown's toc) makes them."""
    anchors, fenced = set(), False
    for line in page.read_text().splitlines():
        fenced ^= line.startswith("```")
        if not fenced and line.startswith("#"):
            text = re.sub(r"[^\w\s-]", "", line.lstrip("#").strip()).strip().lower()
            anchors.add(re.sub(r"[-\s]+", "-", text))
    return anchors


def test_every_link_of_the_readme_reaches_a_file_and_heading() -> None:
    links = LINK.findall((ROOT / "README.md").read_text())
    assert len(links) > 15
    broken = [f"{target}#{anchor}" if anchor else target for target, anchor in links
              if not target.startswith("http")
              and (not (ROOT / target).is_file()
                   or (anchor and anchor not in heading_anchors(ROOT / target)))]
    assert not broken, broken


def test_the_readme_method_table_lists_every_method_auxilia_knows(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "methods"]) == 0
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip()}
    readme = (ROOT / "README.md").read_text()
    in_table = set(re.findall(r"^\| `(\w+)` \|", readme, re.MULTILINE))
    assert len(listed) >= 20
    assert in_table == listed


def test_the_readme_commands_are_the_quick_starts() -> None:
    def auxilia_lines(page: str) -> list[str]:
        text = (ROOT / page).read_text()
        blocks = re.findall(r"```bash\n(.*?)```", text, re.DOTALL)
        return [ln.strip() for b in blocks for ln in b.splitlines() if ln.startswith("auxilia ")]

    readme, quickstart = auxilia_lines("README.md"), auxilia_lines("docs/quickstart.md")
    assert len(readme) >= 5
    assert [c for c in quickstart if c in readme] == readme  # the same commands, in order
