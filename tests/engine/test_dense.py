"""Distillation of any output: a dense regression task (smooth maps from synthetic images) whose
model outputs a dict of maps, trained under its own MSE, with an auxiliary head and a teacher's
maps as additional targets; evaluation and selection by the task's loss, not top-1."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from auxilia.config import load_config
from auxilia.data.identity import identity
from auxilia.data.types import DatasetSplits, Split
from auxilia.engine import train
from auxilia.engine.batches import make_batch
from auxilia.engine.context import build_run
from auxilia.engine.setup import build_setup
from auxilia.engine.stepper import Stepper
from auxilia.teachers import ModuleTeacher

SIDE, MEAN, STD = 16, 0.5, 0.25


def _maps(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The task: a blurred copy ("pos") and the negative ("width") of each image."""
    x = images.float() / 255
    return {"pos": F.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=False),
            "width": 1.0 - x}


def _split(n: int, seed: int) -> Split:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 1, 4, 4, generator=g)
    images = (F.interpolate(coarse, size=(SIDE, SIDE), mode="bilinear", align_corners=False)
              * 255).round().to(torch.uint8)
    return Split(images, torch.full((n,), -1), keys=torch.arange(n) + 1000 * seed,
                 targets=_maps(images))


@pytest.fixture(scope="module")
def data() -> DatasetSplits:
    splits = DatasetSplits(_split(256, 0), _split(64, 1), _split(64, 2), classes=["map"],
                           mean=(MEAN,), std=(STD,), family="digits")
    splits.identity = identity(splits, "synthetic-maps")
    return splits


class ExactTeacher(nn.Module):
    """Computes the task's maps from the student's normalised batch: a perfect teacher."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return _maps((x * STD + MEAN) * 255)


def _config(runs: Path, method: str, *extra: str):
    return load_config(None, [f"method={method}", "model.name=small_cnn", "train.device=cpu",
                              "data.batch_size=32", "train.steps=120", "train.eval_every=40",
                              "optim.lr=0.05", f"run.dir={runs}", "run.progress=off",
                              "run.tensorboard=false", "run.plot=false", *extra])


def test_a_dense_task_trains_on_its_loss_and_reports_it(data: DatasetSplits, tmp_path: Path
                                                        ) -> None:
    result = train(_config(tmp_path, "{name: dense, aux_exit: s2}", "run.name=d"), data=data)
    evals = result.summary["best_val"]
    assert not any(k.endswith("top1") for k in evals["val"])  # the task's loss, not top-1
    assert set(evals["test"]) >= {"loss", "s3/pos_mse", "s3/width_mse", "s2/pos_mse"}
    assert evals["test"]["loss"] == pytest.approx(evals["test"]["s3/pos_mse"]
                                                  + evals["test"]["s3/width_mse"])
    # the zero map's error is the targets' mean square: training must beat it clearly
    zero = sum(float(t.square().mean()) for t in data.test.targets.values())
    assert evals["test"]["loss"] < 0.5 * zero
    records = [r for r in result.summary["last"]]
    assert "val/loss" in records and "val/s2/width_mse" in records
    stripped = result.model.strip().state_dict()
    assert not any(k.startswith("heads.") for k in stripped)  # dense heads are training heads


def test_the_teachers_maps_alone_teach_the_task(data: DatasetSplits, tmp_path: Path) -> None:
    """With the task's own targets weighted 0, a perfect teacher's maps are the only signal."""
    method = "{name: dense, task_weight: 0, distill_weight: 1.0}"
    result = train(_config(tmp_path, method, "run.name=t"), data=data, teacher=ExactTeacher())
    zero = sum(float(t.square().mean()) for t in data.test.targets.values())
    assert result.summary["best_val"]["test"]["loss"] < 0.5 * zero
    assert result.summary["teacher"]["unchanged"]


def test_dense_terms_are_nonzero_and_reach_the_student_only(data: DatasetSplits,
                                                            tmp_path: Path) -> None:
    method = "{name: dense, aux_exit: s2, distill_weight: 0.5}"
    setup = build_setup(_config(tmp_path, method), data,
                        teacher=ModuleTeacher(ExactTeacher()))
    run = build_run(setup)
    batch = make_batch(setup, torch.arange(16))
    outputs = Stepper(run).forward(setup.objective.inputs(), batch)
    assert set(setup.objective.terms) == {"mse_pos", "mse_width", "aux_mse_pos",
                                          "aux_mse_width", "distill_pos", "distill_width"}
    for name, term in setup.objective.terms.items():
        setup.model.zero_grad(set_to_none=True)
        value = term.compute(outputs, batch, None)  # type: ignore[arg-type]
        assert value.item() > 0, name
        value.backward(retain_graph=True)
        head = "s2__dense" if name.startswith("aux") else "s3__dense"
        grads = {n for n, p in setup.model.named_parameters() if p.grad is not None
                 and p.grad.abs().sum() > 0}
        assert any(n.startswith(f"heads.{head}.") for n in grads), name
        assert any(n.startswith("backbone.") for n in grads), name
        assert not any(n.startswith("classifier.") for n in grads), name


def test_a_dense_task_needs_dense_targets(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="dense needs dense targets"):
        build_setup(_config(tmp_path, "dense"))
