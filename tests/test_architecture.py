"""The architecture as a test: the import-linter contracts of ``pyproject.toml``
(``[tool.importlinter]``: the layers, and no import cycle in any package) hold, so that
``pytest`` alone fails on a violation as ``make test`` does; and they are not vacuous: an
upward import or a cycle added to the real import graph breaks them."""

from __future__ import annotations

import subprocess
import sys
from copy import deepcopy
from pathlib import Path
from typing import Any

import grimp
import pytest
from importlinter.api import read_configuration
from importlinter.contracts.acyclic_siblings import AcyclicSiblingsContract
from importlinter.contracts.layers import LayersContract

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
CONTRACTS: dict[str, type[Any]] = {"layers": LayersContract, "acyclic": AcyclicSiblingsContract}


def test_the_import_contracts_hold() -> None:
    """What ``make test`` runs: ``lint-imports`` over the source tree, every contract kept."""
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint_imports), "--no-cache", "--no-logo", str(PYPROJECT)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.fixture(scope="module")
def configuration() -> dict[str, Any]:
    return read_configuration(str(PYPROJECT))


@pytest.fixture(scope="module")
def graph(configuration: dict[str, Any]) -> grimp.ImportGraph:
    """auxilia's import graph, built as lint-imports builds it."""
    options = configuration["session_options"]  # values as the file gives them, as text
    excluded = str(options.get("exclude_type_checking_imports", False)).lower() == "true"
    return grimp.build_graph(*options["root_packages"], cache_dir=None,
                             exclude_type_checking_imports=excluded)


def _kept(configuration: dict[str, Any], graph: grimp.ImportGraph, contract_id: str,
          added: tuple[str, str] | None = None) -> bool:
    """Whether the contract ``contract_id`` holds on ``graph`` with the import ``added``
    (importer, imported) put in."""
    (options,) = [c for c in configuration["contracts_options"] if c.get("id") == contract_id]
    copy = deepcopy(graph)  # as lint-imports checks each contract on its own copy
    if added is not None:
        copy.add_import(importer=added[0], imported=added[1])
    contract = CONTRACTS[contract_id](name=options["name"],
                                      session_options=configuration["session_options"],
                                      contract_options=options)
    return bool(contract.check(copy, verbose=False).kept)


@pytest.mark.parametrize("added", [
    ("auxilia.losses.classification", "auxilia.terms.core"),
    ("auxilia.data.sources", "auxilia.engine.memory"),  # the decoded-size check, once
    ("auxilia.report", "auxilia.engine.checkpoint"),  # atomic_write, once
    ("auxilia.recipes.base", "auxilia.config"),
    ("auxilia.engine.run", "auxilia.compare.runner"),
    ("auxilia.models.registry", "auxilia.data.streams"),  # siblings in one layer
    ("auxilia.paths", "auxilia.seeding"),  # the small helpers import none of each other
    ("auxilia.seeding", "auxilia.train_config"),
])
def test_an_upward_import_breaks_the_layers(configuration: dict[str, Any],
                                            graph: grimp.ImportGraph,
                                            added: tuple[str, str]) -> None:
    assert _kept(configuration, graph, "layers")
    assert not _kept(configuration, graph, "layers", added)


@pytest.mark.parametrize("added", [
    ("auxilia.models.weights", "auxilia.models.registry"),  # the weights/registry circle
    ("auxilia.engine.teacher", "auxilia.engine.reload"),  # reload -> setup -> teacher
    ("auxilia.engine.checkpoint", "auxilia.engine.state"),  # state -> checkpoint
])
def test_a_cycle_breaks_the_acyclic_contract(configuration: dict[str, Any],
                                             graph: grimp.ImportGraph,
                                             added: tuple[str, str]) -> None:
    assert _kept(configuration, graph, "acyclic")
    assert not _kept(configuration, graph, "acyclic", added)


def test_every_module_of_auxilia_has_a_layer(configuration: dict[str, Any],
                                             graph: grimp.ImportGraph) -> None:
    """A new top-level module or package is placed in a layer, never left outside the
    contract (where it could import anything)."""
    (options,) = [c for c in configuration["contracts_options"] if c.get("id") == "layers"]
    named = {name.strip().strip("()") for layer in options["layers"]
             for name in layer.replace(":", "|").split("|")}
    children = {module.removeprefix("auxilia.") for module in graph.find_children("auxilia")}
    assert sorted(children - named) == []
    assert sorted(named - children) == []  # a layer naming a module that is gone
