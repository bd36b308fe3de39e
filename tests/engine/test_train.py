"""End to end on the embedded digits: accuracy, run folder, resume, faults."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from torch.nn.modules.module import register_module_forward_hook

from auxilia.cli import main as cli
from auxilia.config import load_config
from auxilia.engine import NonFiniteLossError, train
from auxilia.engine.batches import make_batch
from auxilia.engine.checkpoint import load_checkpoint
from auxilia.engine.context import build_run
from auxilia.engine.runlog import RunFolder, RunFolderError
from auxilia.engine.setup import build_setup
from auxilia.engine.state import IncompatibleResumeError
from auxilia.engine.stepper import Stepper
from auxilia.models.multi_exit import MultiExitModel
from auxilia.terms import Progress

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_reaches_97_percent_and_fills_the_run_folder(tmp_path: Path) -> None:
    config = load_config(ROOT / "configs" / "demo.yaml",
                         [f"run.dir={tmp_path}", "run.progress=off"])
    result = train(config)
    assert result.test_top1 >= 97.0, result.summary
    folder = result.run_dir
    for name in ("config.yaml", "metrics.jsonl", "curves.png", "summary.json",
                 "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (folder / name).is_file(), name
    assert any((folder / "tb").glob("events.out.tfevents.*"))
    summary = json.loads((folder / "summary.json").read_text())
    assert set(summary["exits"]) == {"s1", "s2", "s3", "final"}
    for exit_name in ("s1", "s2", "final"):  # every exit with a classifier is evaluated
        assert f"{exit_name}/top1" in summary["best_val"]["val"]
        assert f"{exit_name}/top5" in summary["best_val"]["test"]
    assert summary["params"]["deployed"] < summary["params"]["total"]
    records = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    assert any("train/ce_s1" in r for r in records)


def _interrupt_at(step: int):
    def callback(current: int, losses: dict) -> None:
        if current == step:
            os.kill(os.getpid(), signal.SIGINT)
    return callback


def test_resume_after_ctrl_c_matches_an_uninterrupted_run(tiny_config) -> None:
    overrides = ["method=deep_supervision", "train.eval_every=7", "train.epochs=3"]
    reference = train(tiny_config(*overrides, "run.name=straight"))
    config = tiny_config(*overrides, "run.name=broken")
    with pytest.raises(KeyboardInterrupt):
        train(config, callbacks=[_interrupt_at(10)])
    saved = load_checkpoint(reference.run_dir.parent / "broken" / "checkpoints" / "last.pt")
    assert saved["loop"]["step"] == 10
    resumed = train(config, resume=True)
    assert resumed.summary["last"] == reference.summary["last"]
    assert resumed.summary["best_val"] == reference.summary["best_val"]
    for (name, a), b in zip(reference.model.state_dict().items(),
                            resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    lines = (resumed.run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len((reference.run_dir / "metrics.jsonl").read_text().splitlines())


def test_existing_run_folder_is_never_overwritten_silently(tiny_config) -> None:
    config = tiny_config("train.steps=3")
    train(config)
    with pytest.raises(RunFolderError, match="--overwrite"):
        train(config)
    train(config, overwrite=True)


def test_resume_with_a_different_config_says_what_differs(tiny_config) -> None:
    train(tiny_config("train.steps=3", "run.name=r"))
    with pytest.raises(IncompatibleResumeError, match=r"optim\.lr: checkpoint has 0\.05"):
        train(tiny_config("train.steps=3", "run.name=r", "optim.lr=0.2"), resume=True)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_config) -> None:
    config = tiny_config("optim.lr=1e12", "train.eval_every=1", "train.steps=50")
    with pytest.raises(NonFiniteLossError, match="Last good checkpoint") as err:
        train(config)
    folder = next(Path(config.run.dir).iterdir())  # the run's folder (its name is resolved)
    last = load_checkpoint(folder / "checkpoints" / "last.pt")
    assert f"step {last['loop']['step'] + 1}" in str(err.value) or (
        f"by step {last['loop']['step'] + 1}" in str(err.value))
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())


def _built(config):
    run = build_run(build_setup(config))
    run.io.folder = RunFolder(Path(config.run.dir) / "x")
    return run


def test_nonfinite_steps_can_be_skipped(tiny_config) -> None:
    run = _built(tiny_config("train.on_nonfinite=skip"))
    model = run.student
    before = [p.detach().clone() for p in model.parameters()]
    batch = make_batch(run.setup, torch.arange(16))
    batch["x_lb"][0, 0, 0, 0] = float("nan")
    assert not Stepper(run).step(batch, Progress(0, 2, 1)).committed
    assert run.loop.skipped_steps == 1
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    batch = make_batch(run.setup, torch.arange(16))
    assert Stepper(run).step(batch, Progress(1, 2, 1)).committed
    assert run.loop.skipped_steps == 1
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_bf16_autocast_trains(tiny_config) -> None:
    seen: list[tuple[bool, torch.dtype]] = []

    def record(module: torch.nn.Module, args: object, output: object) -> None:
        # training forwards only: evaluation and the memory estimate (on "meta") run too
        if isinstance(module, MultiExitModel) and module.training:
            logits = output["final"]["logits"]  # type: ignore[index]
            if logits.device.type != "meta":
                seen.append((torch.is_autocast_enabled(logits.device.type), logits.dtype))

    handle = register_module_forward_hook(record)
    try:
        result = train(tiny_config("train.amp=true", "model.channels_last=true",
                                   "train.steps=20"))
    finally:
        handle.remove()
    assert result.summary["steps"] == 20
    # the step counter alone would pass with autocast a no-op: the forwards must be in bf16
    assert seen == [(True, torch.bfloat16)] * 20


def test_cli_train_eval_and_list(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = [f"run.dir={tmp_path}", "run.name=cli", "train.steps=20", "run.progress=plain",
            "method=deep_supervision"]
    assert cli(["train", *args]) == 0
    out = capsys.readouterr().out
    assert "eval step 20" in out and "step 20/20" in out
    assert cli(["eval", str(tmp_path / "cli")]) == 0
    out = capsys.readouterr().out
    assert "s1" in out and "final" in out and "test top1" in out
    assert cli(["train", *args]) == 2
    assert "--overwrite" in capsys.readouterr().err
    for what, expected in (("methods", "deep_supervision"), ("models", "resnet20"),
                           ("datasets", "cifar10")):
        assert cli(["list", what]) == 0
        assert expected in capsys.readouterr().out


def test_cli_reports_errors_in_one_line(capsys: pytest.CaptureFixture) -> None:
    assert cli(["train", "model.name=resnet21", "run.progress=off"]) == 2
    err = capsys.readouterr().err
    assert "resnet21" in err and "resnet20" in err and "Traceback" not in err


def test_offline_linear_probe_on_a_previous_runs_backbone(tiny_config) -> None:
    source = train(tiny_config("method=metric", "train.steps=6", "run.name=pretrain"))
    ckpt = source.run_dir / "checkpoints" / "best.pt"
    probe = train(tiny_config("method=supervised", "model.freeze_backbone=true",
                              f"model.weights={ckpt}", "train.steps=6", "run.name=probe"))
    saved = load_checkpoint(ckpt)["model"]
    for name, value in probe.model.backbone.state_dict().items():
        assert torch.equal(value, saved[f"backbone.{name}"]), name
    params = probe.summary["params"]
    assert params["trainable"] == probe.model.classifier.weight.numel() + 10


def test_gradient_clipping_bounds_the_global_norm(tiny_config) -> None:
    run = _built(tiny_config("optim.grad_clip=0.001"))
    batch = make_batch(run.setup, torch.arange(16))
    assert Stepper(run).step(batch, Progress(0, 2, 1)).committed
    grads = [p.grad for p in run.student.parameters() if p.grad is not None]
    assert float(torch.nn.utils.get_total_norm(grads)) <= 0.001 * 1.0001
