"""Portable runs: a saved run loads on a machine without its GPU, CUDA generators are restored
only for the GPUs present, and a CPU run on a machine with GPUs never starts CUDA."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

from auxilia.cli import main
from auxilia.config import ConfigError
from auxilia.engine import train
from auxilia.engine.device import pick_device, run_device
from auxilia.seeding import restore_cuda_rng, rng_state, set_rng_state

NOTE = ("note: the run trained on train.device=cuda:1, which this machine lacks (CUDA is not "
        "available here): loaded on cpu instead (choose with --device)")


def _gpus(monkeypatch: pytest.MonkeyPatch, count: int) -> list[int]:
    """This machine has ``count`` GPUs, as far as torch's queries tell; starting CUDA fails
    (and is recorded in the returned list) since this CPU build has none to start."""
    started: list[int] = []

    def start() -> None:
        started.append(1)
        raise AssertionError("CUDA was started")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "_lazy_init", start)
    return started


def _cuda_run(tiny_config: Any, device: str = "cuda:1") -> Path:
    """A run saved as if trained on ``device``: trained here, its recorded device rewritten."""
    result = train(tiny_config("train.steps=3", "train.device=cpu"))
    for name in ("best.pt", "last.pt"):
        path = result.run_dir / "checkpoints" / name
        checkpoint = torch.load(path, weights_only=True)
        checkpoint["config"]["train"]["device"] = device
        torch.save(checkpoint, path)
    return result.run_dir


def test_a_gpu_run_is_evaluated_here_with_a_note(
        tiny_config: Any, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    run = _cuda_run(tiny_config)
    _gpus(monkeypatch, 0)
    assert main(["eval", str(run), "--split", "test", "--latency-batch", "4"]) == 0
    assert "loaded on cpu instead" in " ".join(capsys.readouterr().out.split())
    report = json.loads((run / "anytime.json").read_text())
    assert NOTE in report["header"] and report["device"] == "cpu"
    assert main(["eval", str(run), "--split", "test", "--latency-batch", "4",
                 "--device", "cpu"]) == 0
    assert "note: the run trained" not in capsys.readouterr().out  # chosen: nothing to say
    assert NOTE not in json.loads((run / "anytime.json").read_text())["header"]


def test_an_unavailable_device_option_is_one_line_naming_the_option(
        tiny_config: Any, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    run = _cuda_run(tiny_config)
    _gpus(monkeypatch, 0)
    capsys.readouterr()  # the training's own lines
    assert main(["eval", str(run), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err == ("error: --device 'cuda': CUDA is not available here; use --device cpu; "
                   "valid: auto, cpu, cuda, cuda:N (N < the number of GPUs), mps\n"), err


def test_run_device_keeps_the_runs_device_when_present(monkeypatch: pytest.MonkeyPatch) -> None:
    _gpus(monkeypatch, 2)
    assert run_device(None, "cuda:1") == (torch.device("cuda:1"), None)
    assert run_device("cpu", "cuda:1") == (torch.device("cpu"), None)
    _gpus(monkeypatch, 1)
    device, note = run_device(None, "cuda:1")
    assert device == torch.device("cuda")
    assert note == ("the run trained on train.device=cuda:1, which this machine lacks (this "
                    "machine has 1 GPU (cuda:0 to cuda:0)): loaded on cuda instead (choose "
                    "with --device)")
    with pytest.raises(ConfigError, match=r"^--device 'cuda:3': this machine has 1 GPU"):
        run_device("cuda:3", "cpu")
    with pytest.raises(ConfigError, match=r"^train.device='cuda:3'"):  # the config's key
        pick_device("cuda:3")


def test_cuda_generators_are_restored_only_for_the_gpus_present(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint saved on 2 GPUs: ``torch.cuda.set_rng_state_all`` would index GPU 1."""
    restored: list[int] = []
    monkeypatch.setattr(torch.cuda, "set_rng_state",
                        lambda state, device: restored.append(device))
    states = [torch.zeros(16, dtype=torch.uint8), torch.ones(16, dtype=torch.uint8)]
    _gpus(monkeypatch, 1)
    assert restore_cuda_rng(states) == 1 and restored == [0]
    _gpus(monkeypatch, 4)
    restored.clear()
    assert restore_cuda_rng(states) == 2 and restored == [0, 1]
    _gpus(monkeypatch, 0)
    restored.clear()
    assert restore_cuda_rng(states) == 0 and restored == []
    saved = rng_state()  # CUDA not started: no CUDA state read, and none started
    assert "cuda" not in saved
    set_rng_state({**saved, "cuda": states})  # the CPU generators alone
    assert torch.equal(torch.get_rng_state(), saved["torch"])


def test_a_cpu_run_on_a_gpu_machine_starts_no_cuda(
        tiny_config: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Training, checkpointing (the generators' state), resuming and evaluating on the CPU
    while torch reports a GPU: nothing may start CUDA (a context takes hundreds of MiB of
    every GPU's memory, and fails on a GPU another job holds exclusively)."""
    started = _gpus(monkeypatch, 1)
    config = tiny_config("train.steps=3", "train.device=cpu", "method=mean_teacher",
                         "data.labels_per_class=5")

    def stop(step: int, losses: dict[str, float]) -> None:
        if step == 1:
            signal.raise_signal(signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        train(config, callbacks=[stop])
    result = train(config, resume=True)
    assert result.summary["steps"] == 3
    assert main(["eval", str(result.run_dir), "--split", "test", "--latency-batch", "4"]) == 0
    assert started == [] and not torch.cuda.is_initialized()
