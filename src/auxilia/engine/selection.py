"""Evaluation during training and model selection on validation only.

Every ``train.eval_every`` steps the loop calls :func:`evaluate_and_save`: every exit is
evaluated on val (and on test when ``train.test_eval`` says so), the best val top-1 of the main
exit selects ``best.pt``, and ``last.pt`` is written. Test never selects anything.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from auxilia.engine import state as run_state
from auxilia.engine.setup import step_views
from auxilia.engine.stepper import NonFiniteLossError
from auxilia.parts import STUDENT

if TYPE_CHECKING:
    from auxilia.engine.context import RunContext


def evaluate_and_save(run: RunContext, *, test_now: bool = True) -> None:
    """Evaluate, select on val, checkpoint.

    Test is evaluated when ``test_now`` (every evaluation, or the last step), when this
    evaluation selects a new best (so the selected checkpoint's test numbers are exact), and
    always without a val split (then the latest evaluation is the selected one).
    """
    loop, io = run.loop, run.io
    assert io.folder is not None, "a run evaluates once it has its folder"
    check_finite_weights(run)
    record: dict[str, Any] = {"step": loop.step, "epoch": loop.step / run.steps_per_epoch}
    models = evaluated_models(run)
    for prefix, model in models.items():
        record.update(evaluate_split(run, "val", model, prefix))
    improved = is_better(record, loop.best)
    for prefix, model in models.items():
        # each model's own selection on val gets its exact test numbers too
        if test_now or improved or (prefix and _improves(record, loop.evals, prefix[:-1])):
            record.update(evaluate_split(run, "test", model, prefix))
        record.update(unlabeled_quality(run, model, prefix))
    run.set_modes()  # evaluation put the models in eval mode
    loop.evals.append(record)
    io.log.write(record)
    if improved:
        loop.best = {"step": loop.step,
                     "val": {k[4:]: v for k, v in record.items() if k.startswith("val/")},
                     "test": {k[5:]: v for k, v in record.items() if k.startswith("test/")}}
    run_state.save(io.folder.last, run)
    if io.writes:
        io.folder.drop_replaced()  # the new run has a checkpoint: the run it replaced can go
    if improved:
        run_state.save(io.folder.best, run)
    io.bar.message(eval_line(record))


def check_finite_weights(run: RunContext) -> None:
    """Refuse to checkpoint weights that became NaN/inf (of any slot)."""
    bad = [f"{slot}.{n}" if slot != "student" else n
           for slot, model in run.models.items() for n, t in model.state_dict().items()
           if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        folder = run.io.folder
        last = folder.last if folder is not None and folder.last.is_file() else "none yet"
        raise NonFiniteLossError(
            f"weights became non-finite by step {run.loop.step} ({', '.join(bad[:3])}...); "
            f"stopped without writing a checkpoint. Last good checkpoint: {last}. "
            "Try a lower optim.lr or optim.grad_clip")


def evaluated_models(run: RunContext) -> dict[str, nn.Module]:
    """Key prefix → model: the deployed model (no prefix: ``val/...``), then the student when
    it is not the deployed one and every slot marked ``evaluated`` (``ema:val/...``)."""
    deployed = run.objective.deployed
    models = {"": run.models[deployed]}
    if deployed != STUDENT:
        models[f"{STUDENT}:"] = run.student
    for name, slot in run.slots.items():
        if slot.evaluated and name != deployed:
            models[f"{name}:"] = run.models[name]
    return models


def evaluate_split(run: RunContext, name: str, model: nn.Module | None = None,
                   prefix: str = "") -> dict[str, float]:
    """``{"<prefix><name>/<metric>": value}`` of ``model`` (the student by default) on the
    split ``name``; empty for an empty split."""
    setup = run.setup
    split = getattr(setup.data, name)
    if not len(split):
        return {}
    with run.io.bar.evaluating(f"{prefix}{name}", len(split)):
        metrics = setup.evaluator.metrics(setup.model if model is None else model, split)
    return {f"{prefix}{name}/{k}": v for k, v in metrics.items()}


def unlabeled_quality(run: RunContext, model: nn.Module, prefix: str = "") -> dict[str, float]:
    """Pseudo-label quality of ``model`` on the unlabeled samples whose labels are known
    (:func:`auxilia.engine.evaluate.pseudo_label_quality`), as ``<prefix>unlabeled/...``."""
    setup = run.setup
    monitor = setup.unlabeled_monitor
    if monitor is None:
        return {}
    metrics = setup.evaluator.pseudo_labels(model, monitor, run.objective.threshold)
    return {f"{prefix}unlabeled/{k}": v for k, v in metrics.items()}


TEST_EVAL_SHARE = 0.3
"""``train.test_eval: auto`` evaluates test every time while the test split holds at most this
share of the images trained between two evaluations. Per image, an evaluation forward costs
about a third of a training step (forward + backward), so 0.3 keeps test at about 10 % of the
training time; the rule looks at sizes only, never at timings, so a resumed run decides the
same."""


def eval_every(run: RunContext) -> int:
    """Steps between two evaluations: ``train.eval_every``, or by default once per epoch, but
    never so often that an evaluation costs more than about 10 % of the training between two.

    The rule is :data:`TEST_EVAL_SHARE`'s: the images an evaluation forwards (val and the
    unlabeled monitor, for every evaluated model) at most 0.3 times the images the steps
    between two evaluations train on (every view of every stream). It matters when an epoch of
    the labeled split is a step or two (``data.labels_per_class=10``), where once per epoch
    would spend most of the run evaluating. Sizes only, never timings: a resumed run decides
    the same.
    """
    train = run.config.train
    per_epoch = run.steps_per_epoch
    if train.eval_every is not None:
        return train.eval_every_steps(per_epoch)
    images = evaluation_images(run, test_share=0.0) * len(evaluated_models(run))
    batch = run.labeled.batch_size
    per_step = step_views(run.objective, batch) * batch
    return max(per_epoch, math.ceil(images / (TEST_EVAL_SHARE * max(1, per_step))))


def evaluation_images(run: RunContext, test_share: float) -> float:
    """Images one evaluation forwards through each evaluated model: val, the unlabeled
    monitor, and ``test_share`` of test (1 when every evaluation evaluates it)."""
    data, monitor = run.setup.data, run.setup.unlabeled_monitor
    return (len(data.val) + test_share * len(data.test)
            + (len(monitor) if monitor is not None else 0))


def evaluate_test_every_time(mode: str, n_val: int, n_test: int,
                             images_between_evals: int) -> bool:
    """Whether every evaluation also evaluates test (``train.test_eval`` resolved).

    ``selected`` (and ``auto`` for a test split larger than :data:`TEST_EVAL_SHARE` of the
    images trained between evaluations) evaluates test only where val selects a new best and
    at the last step; without a val split every evaluation is a selection, so test is always
    evaluated.
    """
    if mode == "every" or n_val == 0:
        return True
    if mode == "selected":
        return False
    return n_test <= TEST_EVAL_SHARE * images_between_evals


def test_eval_note(mode: str, n_test: int) -> str:
    why = (f"train.test_eval=auto: {n_test:,} test images cost more than about 10 % of the "
           "training between evaluations" if mode == "auto" else "train.test_eval=selected")
    return (f"test is evaluated only when val selects a new best checkpoint, and at the last "
            f"step ({why}; train.test_eval=every evaluates it every time)")


def is_better(record: dict[str, Any], best: dict[str, Any] | None) -> bool:
    """Selection on validation only: higher val top-1 of the main exit, then lower val loss
    (a dense task, which has no top-1: lower val loss).

    An evaluation whose validation loss or top-1 is NaN/inf is never selected.
    """
    if "val/final/top1" not in record and "val/loss" not in record:
        return True  # no validation split: the latest model is the selected one
    key = _selection_key(record, "val/")
    if not all(math.isfinite(v) for v in key):
        return False
    if best is None:
        return True
    return key > _selection_key(best["val"], "")


def _improves(record: dict[str, Any], evals: list[dict[str, Any]], name: str) -> bool:
    """Whether ``record`` is a new best on val for the model evaluated as ``name:``."""
    mine = per_model_records([*evals, record]).get(name, [])
    return bool(mine) and is_better(mine[-1], best_on_val(mine[:-1]))


def best_on_val(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The selection :func:`evaluate_and_save` makes, replayed over evaluation records:
    ``{"step", "val", "test"}`` of the best on validation (test only where it was evaluated)."""
    best: dict[str, Any] | None = None
    for record in records:
        if is_better(record, best):
            best = {"step": record["step"],
                    "val": {k[4:]: v for k, v in record.items() if k.startswith("val/")},
                    "test": {k[5:]: v for k, v in record.items() if k.startswith("test/")}}
    return best


def per_model_records(evals: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The evaluation records of every model evaluated beside the deployed one
    (``ema:val/final/top1`` → the ``ema`` model's ``val/final/top1``)."""
    names = list(dict.fromkeys(k.split(":", 1)[0] for r in evals for k in r if ":" in k))
    return {name: [{"step": r["step"], **{k[len(name) + 1:]: v for k, v in r.items()
                                           if k.startswith(f"{name}:")}} for r in evals]
            for name in names}


def _selection_key(metrics: dict[str, Any], prefix: str) -> tuple[float, ...]:
    loss = -metrics.get(f"{prefix}loss", 0.0)
    top1 = metrics.get(f"{prefix}final/top1")
    return (loss,) if top1 is None else (top1, loss)


def eval_line(record: dict[str, Any]) -> str:
    exits = sorted({k.split("/")[1] for k in record if k.endswith("/top1")})
    parts = [f"eval step {record['step']} (epoch {record['epoch']:.1f})"]
    if not exits:  # a dense task: its losses
        parts += [f"{split} loss {record[f'{split}/loss']:.4g}" for split in ("val", "test")
                  if f"{split}/loss" in record]
    for split in ("val", "test"):
        accs = " ".join(f"{e} {record[f'{split}/{e}/top1']:.2f}" for e in exits
                        if f"{split}/{e}/top1" in record)
        if accs:
            parts.append(f"{split} top1: {accs}")
    return " | ".join(parts)
