"""The CUDA paths, on a real GPU (``pytest -m gpu``; skipped without one): training steps in
every precision and memory layout, a CUDA-trained run evaluated on the CPU, CUDA generators
restored on a machine with fewer GPUs, bit-identical deterministic runs, and no CUDA context
from a CPU run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import auxilia
from auxilia.cli import main
from auxilia.seeding import restore_cuda_rng

pytestmark = pytest.mark.gpu

PRECISIONS = {
    "fp32": {},
    "bf16": {"train__amp": True, "train__amp_dtype": "bfloat16"},
    "fp16": {"train__amp": True, "train__amp_dtype": "float16"},  # with the gradient scaler
    "channels_last": {"model__channels_last": True},
}


def _train(tmp_path: Path, name: str, **overrides: Any) -> Any:
    settings = {"run__dir": str(tmp_path / "runs"), "run__name": name, "run__progress": "off",
                "run__tensorboard": False, "run__plot": False, "train__device": "cuda",
                "train__steps": 6, "data__batch_size": 64, **overrides}
    return auxilia.train(**settings)


@pytest.mark.parametrize("precision", list(PRECISIONS))
@pytest.mark.parametrize("method", ["supervised", "cds"])
def test_training_steps_on_cuda(tmp_path: Path, precision: str, method: str) -> None:
    result = _train(tmp_path, f"{method}-{precision}", method=method, **PRECISIONS[precision])
    summary = result.summary
    assert summary["steps"] == 6 and summary["skipped_steps"] == 0
    assert summary["machine"]["device"].startswith("cuda")
    assert all(p.device.type == "cuda" for p in result.model.parameters())
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text()
               .splitlines()]
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert losses and all(torch.isfinite(torch.tensor(losses))), losses


def test_a_cuda_run_is_evaluated_on_the_cpu(tmp_path: Path) -> None:
    run = _train(tmp_path, "portable", method="deep_supervision").run_dir
    assert main(["eval", str(run), "--device", "cpu", "--latency-batch", "8"]) == 0
    on_cpu = json.loads((run / "anytime.json").read_text())
    assert on_cpu["device"] == "cpu"
    assert main(["eval", str(run), "--latency-batch", "8"]) == 0  # the run's own device
    on_gpu = json.loads((run / "anytime.json").read_text())
    assert on_gpu["device"].startswith("cuda")
    for exit_name, figures in on_gpu["exits"].items():  # same model, same predictions
        assert figures["test"]["top1"] == pytest.approx(on_cpu["exits"][exit_name]["test"]
                                                        ["top1"], abs=0.2), exit_name


def test_cuda_generators_restore_with_fewer_gpus(tmp_path: Path) -> None:
    """A checkpoint saved with more GPUs than this machine has resumes (GPU 0's state)."""
    present = torch.cuda.device_count()
    torch.cuda.manual_seed(123)
    first = torch.cuda.get_rng_state(0)
    expected = torch.rand(4, device="cuda:0")
    states = [first] + [torch.cuda.get_rng_state(0)] * present  # one more than there are
    assert restore_cuda_rng(states) == present
    assert torch.equal(torch.rand(4, device="cuda:0"), expected)
    result = _train(tmp_path, "rng", train__steps=4)
    last = result.run_dir / "checkpoints" / "last.pt"
    checkpoint = torch.load(last, weights_only=True)
    assert len(checkpoint["rng"]["cuda"]) == present
    checkpoint["rng"]["cuda"] = [*checkpoint["rng"]["cuda"], checkpoint["rng"]["cuda"][0]]
    checkpoint["loop"]["step"] = 2  # resume half-way, with a state for a GPU not here
    torch.save(checkpoint, last)
    resumed = _train(tmp_path, "rng", train__steps=4, resume=True)
    assert resumed.summary["steps"] == 4


def test_deterministic_runs_are_bit_identical(tmp_path: Path) -> None:
    runs = [_train(tmp_path, f"det{i}", method="cds", train__deterministic=True)
            for i in range(2)]
    a, b = (r.model.state_dict() for r in runs)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    determinism = runs[0].summary["determinism"]
    assert determinism["deterministic"] and isinstance(determinism["nondeterministic_ops"],
                                                       list)


def test_a_cpu_run_creates_no_cuda_context(tmp_path: Path) -> None:
    """In a fresh process (this one has CUDA started by the tests above)."""
    code = ("import auxilia, torch\n"
            f"auxilia.train(run__dir={str(tmp_path / 'cpu')!r}, run__progress='off', "
            "run__tensorboard=False, run__plot=False, train__device='cpu', train__steps=3, "
            "method='mean_teacher', data__labels_per_class=5)\n"
            "print(torch.cuda.is_initialized())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip().splitlines()[-1] == "False", out
