"""The training loop: the only one in auxilia.

Every step: draw index batches from the stream, build the objective's views, run one forward
per model over the concatenated views, evaluate the objective's terms, step the optimizer.
Every ``eval_every`` steps: evaluate every exit on val (and on test when ``train.test_eval``
says so), select on val, checkpoint.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from auxilia.config import Config
from auxilia.data.streams import IndexStream
from auxilia.engine import state as run_state
from auxilia.engine.evaluate import autocast, evaluate
from auxilia.engine.runlog import MetricsLog, Progress, RunFolder
from auxilia.engine.schedule import lr_factor
from auxilia.engine.setup import Setup
from auxilia.engine.signals import Interrupted, StopFlag
from auxilia.terms import Progress as Where

Callback = Callable[[int, dict[str, float]], None]


class NonFiniteLossError(FloatingPointError):
    """The loss or the gradients became NaN/inf; no checkpoint was written for that step."""


@dataclass
class LoopState:
    """Counters that travel with the checkpoint."""

    step: int = 0
    evals: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    skipped_steps: int = 0
    train_seconds: float = 0.0
    images: int = 0


def forward_all(models: dict[str, nn.Module], wanted: dict[str, list[str]],
                batch: dict[str, torch.Tensor]) -> dict[tuple[str, str], Any]:
    """One forward per model over the concatenation of its views, split back per view."""
    outputs: dict[tuple[str, str], Any] = {}
    for name, views in wanted.items():
        sizes = [batch[v].shape[0] for v in views]
        x = batch[views[0]] if len(views) == 1 else torch.cat([batch[v] for v in views])
        out = models[name](x)
        for i, view in enumerate(views):
            outputs[(name, view)] = {
                exit_name: {k: (t if len(views) == 1 else t.split(sizes)[i]) for k, t in f.items()}
                for exit_name, f in out.items()}
    return outputs


def make_batch(setup: Setup, idx: torch.Tensor) -> dict[str, torch.Tensor]:
    """Gather the labeled samples ``idx`` and build every view the objective asked for."""
    split = setup.data.train
    raw = split.images[idx].to(setup.device, non_blocking=True)
    batch = {"y_lb": split.labels[idx].to(setup.device), "idx_lb": idx.to(setup.device)}
    for key, view in setup.train_views.items():
        x = view(raw)
        if setup.config.model.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        batch[key] = x
    return batch


def run_loop(setup: Setup, optimizer: torch.optim.Optimizer, stream: IndexStream,
              loop: LoopState, folder: RunFolder, log: MetricsLog,
              callbacks: Sequence[Callback], stop: StopFlag) -> None:
    cfg = setup.config
    spe = stream.batches_per_epoch
    total = cfg.train.steps or math.ceil(float(cfg.train.epochs or 1) * spe)
    eval_every = cfg.train.eval_every_steps(spe)
    test_always = evaluate_test_every_time(cfg.train.test_eval, len(setup.data.val),
                                           len(setup.data.test), eval_every * stream.batch_size)
    scaler = torch.amp.GradScaler("cuda", enabled=_fp16_scaling(setup))
    models = {"student": setup.model}
    wanted = setup.objective.inputs()
    running: dict[str, torch.Tensor] = {}
    bar = Progress(total, loop.step, cfg.run.progress)
    if not test_always and len(setup.data.test):
        bar.message(_test_eval_note(cfg.train.test_eval, len(setup.data.test)))
    batches = iter(stream)
    t_start = time.perf_counter()
    setup.model.train()
    if stop.requested:  # a signal while the run was being built: nothing trained, nothing saved
        bar.close()
        print(f"{stop.name} received before the first step; nothing was trained", flush=True)
        raise Interrupted(stop.signum or signal.SIGINT)
    while loop.step < total:
        where = Where(loop.step, total, spe)
        for group in optimizer.param_groups:
            group["lr"] = cfg.optim.lr * lr_factor(loop.step, total, spe, cfg.schedule)
        batch = make_batch(setup, next(batches))
        skipped = loop.skipped_steps
        losses, outputs = _step(setup, optimizer, scaler, models, wanted, batch, where,
                                loop, folder)
        loop.step += 1
        loop.images += int(batch["y_lb"].shape[0])
        if loop.skipped_steps == skipped:  # a skipped step's non-finite loss is not averaged
            _accumulate(running, losses, outputs, batch)
        for cb in callbacks:
            cb(loop.step, {k: float(v.detach()) for k, v in losses.items()})
        if loop.step % cfg.train.log_every == 0 or loop.step == total:
            _log_train(running, loop, optimizer, log, bar, cfg, t_start)
        if loop.step % eval_every == 0 or loop.step == total:
            loop.train_seconds += time.perf_counter() - t_start
            _evaluate_and_save(setup, optimizer, stream, loop, folder, log, bar,
                               test_now=test_always or loop.step == total)
            t_start = time.perf_counter()
        if stop.requested:
            loop.train_seconds += time.perf_counter() - t_start
            run_state.save(folder.last, setup, optimizer, stream, loop)
            folder.drop_replaced()
            bar.close()
            print(f"{stop.name} received: stopped at step {loop.step}; checkpoint written to "
                  f"{folder.last}. Resume with: auxilia train --resume {folder.path}",
                  flush=True)
            raise Interrupted(stop.signum or signal.SIGINT)
    bar.close()


def _fp16_scaling(setup: Setup) -> bool:
    t = setup.config.train
    return t.amp and t.amp_dtype == "float16" and setup.device.type == "cuda"


def _step(setup: Setup, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
          models: dict[str, nn.Module], wanted: dict[str, list[str]], batch: dict[str, Any],
          where: Where, loop: LoopState, folder: RunFolder
          ) -> tuple[dict[str, torch.Tensor], dict[tuple[str, str], Any]]:
    cfg = setup.config
    with autocast(setup.device, cfg.train.amp, setup.amp_dtype):
        outputs = forward_all(models, wanted, batch)
        losses = setup.objective(outputs, batch, where)
    optimizer.zero_grad(set_to_none=True)
    if not torch.isfinite(losses["loss"]):
        _nonfinite(cfg, loop, folder, f"loss is {float(losses['loss'].detach())}", losses)
        return losses, outputs
    scaler.scale(losses["loss"]).backward()
    # Without fp16 loss scaling a non-finite gradient is always an error; with it, overflowing
    # steps are the scaler's to skip (scaler.step) unless clipping or skipping asks to look.
    if (cfg.optim.grad_clip is not None or cfg.train.on_nonfinite == "skip"
            or not scaler.is_enabled()):
        scaler.unscale_(optimizer)
        if cfg.optim.grad_clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(setup.model.parameters(), cfg.optim.grad_clip)
        else:  # only look: no rescaling pass over the gradients
            norm = torch.nn.utils.get_total_norm(
                [p.grad for p in setup.model.parameters() if p.grad is not None])
        if not torch.isfinite(norm):
            _nonfinite(cfg, loop, folder, f"gradient norm is {float(norm)}", losses)
            optimizer.zero_grad(set_to_none=True)
            scaler.update()
            return losses, outputs
    scaler.step(optimizer)
    scaler.update()
    return losses, outputs


def _nonfinite(cfg: Config, loop: LoopState, folder: RunFolder, what: str,
               losses: dict[str, torch.Tensor]) -> None:
    terms = ", ".join(f"{k}={float(v):.4g}" for k, v in losses.items()
                      if k != "loss")
    if cfg.train.on_nonfinite == "skip":
        loop.skipped_steps += 1
        return
    last = folder.last if folder.last.is_file() else "none yet"
    raise NonFiniteLossError(
        f"{what} at step {loop.step + 1} (terms: {terms}); stopped without writing a "
        f"checkpoint. Last good checkpoint: {last}. Try a lower optim.lr, optim.grad_clip, "
        "or train.on_nonfinite=skip")


def _accumulate(running: dict[str, Any], losses: dict[str, torch.Tensor],
                outputs: dict[tuple[str, str], Any], batch: dict[str, torch.Tensor]) -> None:
    for key, value in losses.items():
        running[key] = running.get(key, 0) + value.detach().float()
    main = outputs.get(("student", "x_lb"))
    if main is not None:
        hits = (main["final"]["logits"].argmax(1) == batch["y_lb"]).sum()
        running["_correct"] = running.get("_correct", 0) + hits
        running["_seen"] = running.get("_seen", 0) + batch["y_lb"].shape[0]
    running["_steps"] = running.get("_steps", 0) + 1


def _log_train(running: dict[str, Any], loop: LoopState, optimizer: torch.optim.Optimizer,
               log: MetricsLog, bar: Progress, cfg: Config, t_start: float) -> None:
    n = max(1, int(running.pop("_steps", 1)))
    seen = int(running.pop("_seen", 0))
    correct = float(running.pop("_correct", 0))
    record: dict[str, Any] = {"step": loop.step, "lr": optimizer.param_groups[0]["lr"]}
    record.update({f"train/{k}": float(v) / n for k, v in running.items()})
    if seen:
        record["train/top1"] = 100.0 * correct / seen
    running.clear()
    if "train/loss" not in record:  # every step since the last line was skipped
        record["train/skipped_window"] = True
    log.write(record)
    acc = f" acc {record['train/top1']:.1f}%" if seen else ""
    loss = f"{record['train/loss']:.4f}" if "train/loss" in record else "- (steps skipped)"
    bar.update(loop.step, f"loss {loss}{acc} lr {record['lr']:.4g}")


def _evaluate_and_save(setup: Setup, optimizer: torch.optim.Optimizer, stream: IndexStream,
                       loop: LoopState, folder: RunFolder, log: MetricsLog, bar: Progress,
                       *, test_now: bool = True) -> None:
    """Evaluate, select on val, checkpoint.

    Test is evaluated when ``test_now`` (every evaluation, or the last step), when this
    evaluation selects a new best (so the selected checkpoint's test numbers are exact), and
    always without a val split (then the latest evaluation is the selected one).
    """
    _check_finite_weights(setup, loop, folder)
    record: dict[str, Any] = {"step": loop.step, "epoch": loop.step / stream.batches_per_epoch}
    record.update(_evaluate_split(setup, "val", bar))
    improved = _is_better(record, loop.best)
    if test_now or improved:
        record.update(_evaluate_split(setup, "test", bar))
    loop.evals.append(record)
    log.write(record)
    if improved:
        loop.best = {"step": loop.step,
                     "val": {k[4:]: v for k, v in record.items() if k.startswith("val/")},
                     "test": {k[5:]: v for k, v in record.items() if k.startswith("test/")}}
    run_state.save(folder.last, setup, optimizer, stream, loop)
    folder.drop_replaced()  # the new run has a checkpoint: the run it replaced can go
    if improved:
        run_state.save(folder.best, setup, optimizer, stream, loop)
    bar.message(_eval_line(record))


def _check_finite_weights(setup: Setup, loop: LoopState, folder: RunFolder) -> None:
    bad = [n for n, t in setup.model.state_dict().items()
           if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        last = folder.last if folder.last.is_file() else "none yet"
        raise NonFiniteLossError(
            f"weights became non-finite by step {loop.step} ({', '.join(bad[:3])}...); "
            f"stopped without writing a checkpoint. Last good checkpoint: {last}. "
            "Try a lower optim.lr or optim.grad_clip")


def _evaluate_split(setup: Setup, name: str, bar: Progress) -> dict[str, float]:
    """``{"<name>/<metric>": value}`` for the split ``name``; empty for an empty split."""
    cfg, split = setup.config, getattr(setup.data, name)
    if not len(split):
        return {}
    with bar.evaluating(name, len(split)):
        metrics = evaluate(setup.model, split, setup.eval_view,
                           batch_size=cfg.data.eval_batch_size, device=setup.device,
                           amp=cfg.train.amp, amp_dtype=setup.amp_dtype,
                           channels_last=cfg.model.channels_last)
    return {f"{name}/{k}": v for k, v in metrics.items()}


TEST_EVAL_SHARE = 0.3
"""``train.test_eval: auto`` evaluates test every time while the test split holds at most this
share of the images trained between two evaluations. Per image, an evaluation forward costs
about a third of a training step (forward + backward), so 0.3 keeps test at about 10 % of the
training time; the rule looks at sizes only, never at timings, so a resumed run decides the
same."""


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


def _test_eval_note(mode: str, n_test: int) -> str:
    why = (f"train.test_eval=auto: {n_test:,} test images cost more than about 10 % of the "
           "training between evaluations" if mode == "auto" else "train.test_eval=selected")
    return (f"test is evaluated only when val selects a new best checkpoint, and at the last "
            f"step ({why}; train.test_eval=every evaluates it every time)")


def _is_better(record: dict[str, Any], best: dict[str, Any] | None) -> bool:
    """Selection on validation only: higher val top-1 of the main exit, then lower val loss.

    An evaluation whose validation loss or top-1 is NaN/inf is never selected.
    """
    if "val/final/top1" not in record:
        return True  # no validation split: the latest model is the selected one
    key = (record["val/final/top1"], -record.get("val/loss", 0.0))
    if not all(math.isfinite(v) for v in key):
        return False
    if best is None:
        return True
    return key > (best["val"]["final/top1"], -best["val"].get("loss", 0.0))


def _eval_line(record: dict[str, Any]) -> str:
    exits = sorted({k.split("/")[1] for k in record if k.endswith("/top1")})
    parts = [f"eval step {record['step']} (epoch {record['epoch']:.1f})"]
    for split in ("val", "test"):
        accs = " ".join(f"{e} {record[f'{split}/{e}/top1']:.2f}" for e in exits
                        if f"{split}/{e}/top1" in record)
        if accs:
            parts.append(f"{split} top1: {accs}")
    return " | ".join(parts)


