"""The prepared GPU check (``benchmarks/gpu_check.py``) in its reduced CPU form: every part
runs and reports figures that say something (on the GPU machine it runs in full)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_reduced_gpu_check_runs_on_the_cpu(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    results = _script().main([
        "--device", "cpu", "--steps", "3", "--recipes", "supervised", "--precisions", "fp32",
        "--no-pytest", "--image-size", "8", "--model", "small_cnn", "--batch-size", "16",
        "--determinism-recipe", "supervised", "--resume-recipe", "supervised",
        "--out", str(tmp_path)])
    assert json.loads((tmp_path / "gpu_check.json").read_text())["steps"] == 3
    (row,) = results["recipes"]
    assert row["recipe"] == "supervised" and row["steps"] == 3 and row["images_per_s"] > 0
    assert row["syncs"]["median"] is None  # no CUDA: nothing counted, nothing pretended
    assert row["estimate_mib"] > 0
    assert results["determinism"]["differing"] == []
    assert results["resumption"] == {"interrupted_at": 1, "differing": []}
    evals = results["eval_on_cpu"]
    assert evals["cpu"]["code"] == 0 and evals["cpu"]["device"] == "cpu"
    assert evals["cpu"]["top1"] == evals["run"]["top1"]
    out = capsys.readouterr().out
    assert "| supervised | fp32 |" in out and "deterministic runs: 0 tensors differ" in out


def test_unknown_recipes_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _script().parse(["--recipes", "supervised,nope"])
    assert "unknown recipe or precision nope" in capsys.readouterr().err
