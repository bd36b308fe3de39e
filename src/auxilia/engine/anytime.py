"""Anytime inference: the accuracy and cost of every exit, and confidence-threshold early exit.

Costs come from one traced forward of the whole multi-exit model, for any backbone. A
``TorchDispatchMode`` sees every aten op, counts its FLOPs with ``torch.utils.flop_counter``'s
registered formulas (the ops ``FlopCounterMode`` counts, decomposed the same way), times it, and
gives it a bit. Each tensor storage carries the bit set of its *ancestry*: the ops, and the
parameters, that its value depends on (the union of its inputs' sets plus the op's own bit).
The cost of an exit is then the cost of its logits' ancestry: the backbone up to that stage and
that exit's head, however the backbone orders its work (a ResNet's shortcut conv computed after
the main branch, a ViT that copies its intermediate maps at the end of the forward) and whatever
order ``MultiExitModel.forward`` runs the heads in. FLOPs are per image (one multiply-add = 2
FLOPs, as ``FlopCounterMode`` counts), parameters are counted once per storage, latency is the
summed CPU time of the ancestry's ops on one batch (each op's fastest of several runs).

Early exit orders the exits by depth; a sample leaves at the first exit whose max softmax is at
least the threshold, and the final exit answers the rest. Thresholds are chosen on the val split
(:func:`val_thresholds`), never on test. Leaving at exit k costs everything
needed for exits 1..k (the earlier heads were evaluated to decide not to leave). A threshold of
1 or more means "always final": no auxiliary head is evaluated, so it costs the final exit alone.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import flop_registry

from auxilia.data.file_images import read_pixels
from auxilia.data.types import Split
from auxilia.engine.anytime_files import (
    REPORT_FILES,
    checkpoint_label,
    plot_report,
    report_names,
    report_paths,
    write_report,
)
from auxilia.engine.evaluate import batches
from auxilia.engine.header import data_lines, model_line
from auxilia.engine.reload import load_run
from auxilia.losses import topk_correct

__all__ = ["REPORT_FILES", "THRESHOLDS", "anytime_report", "checkpoint_label", "early_exit",
           "exit_costs", "model_flops", "plot_report", "report_names", "report_paths",
           "sample_images", "trace_exits", "val_thresholds", "write_report"]

THRESHOLDS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97, 0.99, 0.999, 1.0)
"""Early-exit thresholds for a run without a val split (:func:`val_thresholds` otherwise);
1.0 is "always final"."""


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


class _AncestryMode(TorchDispatchMode):
    """Counts, times and tracks the ancestry (a bit set held in an int) of every aten op."""

    def __init__(self, params: dict[int, int]) -> None:
        super().__init__()
        self.ancestry: dict[int, int] = dict(params)  # storage -> bit set
        self.first_op_bit = len(params)
        self.op_flops: list[int] = []
        self.op_seconds: list[float] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        if func is not torch.ops.prim.device.default:  # as FlopCounterMode: decompose first
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        start = time.perf_counter()
        out = func(*args, **kwargs)
        self.op_seconds.append(time.perf_counter() - start)
        formula = flop_registry.get(func._overloadpacket)
        self.op_flops.append(int(formula(*args, **kwargs, out_val=out)) if formula else 0)
        mask = 1 << (self.first_op_bit + len(self.op_flops) - 1)
        for t in tree_leaves((args, kwargs)):
            if isinstance(t, torch.Tensor):
                mask |= self.ancestry.get(_storage(t), 0)
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and _storage(t):
                self.ancestry[_storage(t)] = mask
        return out


@dataclass
class Trace:
    """One traced forward: the ancestry of every exit's logits and what each op cost.

    Attributes:
        masks: exit name -> bit set of its logits' ancestry, exits in depth order.
        param_numel: numel of each parameter storage (bits ``0..P-1``).
        op_flops: FLOPs of each op, for the whole batch (bits ``P..``).
        op_seconds: wall time of each op.
    """

    masks: dict[str, int]
    param_numel: list[int]
    op_flops: list[int]
    op_seconds: list[float]

    def cost(self, mask: int) -> dict[str, float]:
        """Parameters, FLOPs and seconds of the ops and parameters in ``mask``."""
        p = len(self.param_numel)
        params = sum(n for i, n in enumerate(self.param_numel) if mask >> i & 1)
        ops = [i for i in range(len(self.op_flops)) if mask >> (p + i) & 1]
        return {"params": params, "flops": sum(self.op_flops[i] for i in ops),
                "seconds": sum(self.op_seconds[i] for i in ops)}


@torch.no_grad()
def trace_exits(model: nn.Module, x: torch.Tensor) -> Trace:
    """Run ``model(x)`` (``{exit: {"logits": ...}}``) once under the ancestry tracer."""
    params: dict[int, int] = {}
    for p in model.parameters():  # distinct parameters; ones sharing a storage share a bit
        params[_storage(p)] = params.get(_storage(p), 0) + p.numel()
    bits = {ptr: 1 << i for i, ptr in enumerate(params)}
    mode = _AncestryMode(bits)
    with mode:
        outs = model(x)
    masks = {name: mode.ancestry[_storage(f["logits"])] for name, f in outs.items()
             if "logits" in f}
    return Trace(masks, list(params.values()), mode.op_flops, mode.op_seconds)


def exit_costs(model: nn.Module, images: torch.Tensor, repeats: int = 5) -> dict[str, Any]:
    """Per-exit and early-exit cost of a multi-exit model, on the CPU.

    Args:
        model: returns ``{exit: {"logits": ...}}``; exits with logits are taken in their order.
        images: a normalised batch; FLOPs are per image, latency is per batch of this size.
        repeats: timed runs (after one warm-up); each op takes its fastest time.

    Returns:
        ``{"exits": {name: cost}, "prefix": {name: cost of exits 1..k}, "batch": B,
        "forward_latency_ms": wall time of one untraced forward of every exit}``, a cost being
        ``{"params", "flops", "latency_ms"}``.
    """
    model = copy.deepcopy(model).cpu().eval()
    images = images.cpu()
    counted = trace_exits(model, images[:1])
    trace_exits(model, images)  # warm-up
    runs = [trace_exits(model, images) for _ in range(max(1, repeats))]
    seconds = [min(r.op_seconds[i] for r in runs)
               for i in range(len(runs[0].op_seconds))]
    timed = Trace(runs[0].masks, runs[0].param_numel, runs[0].op_flops, seconds)

    def cost(mask_counted: int, mask_timed: int) -> dict[str, float]:
        c, t = counted.cost(mask_counted), timed.cost(mask_timed)
        return {"params": c["params"], "flops": c["flops"], "latency_ms": 1e3 * t["seconds"]}

    names = list(counted.masks)
    exits, prefix = {}, {}
    acc_c = acc_t = 0
    for name in names:
        acc_c |= counted.masks[name]
        acc_t |= timed.masks[name]
        exits[name] = cost(counted.masks[name], timed.masks[name])
        prefix[name] = cost(acc_c, acc_t)
    forward_ms = 1e3 * min(_wall_time(model, images) for _ in range(max(1, repeats)))
    return {"exits": exits, "prefix": prefix, "batch": int(images.shape[0]),
            "forward_latency_ms": forward_ms}


def model_flops(model: nn.Module, strip: nn.Module, image: torch.Tensor) -> dict[str, Any]:
    """FLOPs per image of the training model, of the deployed one, and of each exit alone.

    Args:
        model: the multi-exit model with its training heads (traced in eval mode on the CPU).
        strip: the deployed model (``model.strip()``).
        image: one normalised image ``[1, C, H, W]``.

    Returns:
        ``{"trained": every op of one forward with all heads (per view), "deployed": the
        deployed model's forward, "exits": {name: the ops that exit's logits need}}``.
    """
    from torch.utils.flop_counter import FlopCounterMode

    traced = trace_exits(copy.deepcopy(model).cpu().eval(), image.cpu())
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:  # the deployed model returns plain logits
        copy.deepcopy(strip).cpu().eval()(image.cpu())
    return {"trained": int(sum(traced.op_flops)), "deployed": int(counter.get_total_flops()),
            "exits": {name: int(traced.cost(mask)["flops"])
                      for name, mask in traced.masks.items()}}


@torch.no_grad()
def _wall_time(model: nn.Module, x: torch.Tensor) -> float:
    start = time.perf_counter()
    model(x)
    return time.perf_counter() - start


def early_exit(logits: torch.Tensor, labels: torch.Tensor, thresholds: Sequence[float],
               prefix_cost: torch.Tensor, final_cost: torch.Tensor) -> dict[str, torch.Tensor]:
    """Accuracy and mean cost of confidence-threshold early exit, vectorised over samples.

    Args:
        logits: ``[E, N, K]``, exits in depth order, the final exit last.
        labels: ``[N]``.
        thresholds: ``T`` values; a sample leaves at the first exit whose max softmax is at least
            the threshold; 1 or more means always final.
        prefix_cost: ``[E, M]``: M cost measures (FLOPs, ...) of leaving at each exit.
        final_cost: ``[M]``: the final exit alone (the cost of "always final").

    Returns:
        ``top1`` ``[T]`` (%), ``cost`` ``[T, M]`` (mean per sample), ``fraction`` ``[T, E]`` (%).
    """
    num_exits, n = logits.shape[:2]
    if n == 0:
        raise ValueError("early_exit needs at least one sample")
    t = torch.as_tensor(thresholds, dtype=torch.float32)
    conf, pred = logits.float().softmax(-1).max(-1)                      # [E, N]
    leave = conf[None] >= t[:, None, None]                               # [T, E, N]
    leave[:, -1] = True
    leave[t >= 1.0, :-1] = False
    first = leave.int().argmax(1)                                        # [T, N]
    correct = (pred == labels[None]).float()                             # [E, N]
    top1 = 100.0 * correct.gather(0, first).mean(1)
    costs = prefix_cost.double()[first].mean(1)                          # [T, M]
    costs[t >= 1.0] = final_cost.double()
    counts = torch.nn.functional.one_hot(first, num_exits).sum(1)
    return {"top1": top1, "cost": costs, "fraction": 100.0 * counts.double() / n}


@torch.no_grad()
def collect_logits(model: nn.Module, split: Split, view: nn.Module, batch_size: int,
                   device: torch.device) -> tuple[list[str], torch.Tensor]:
    """Exit names (depth order) and their logits ``[E, N, K]`` on a split, on the CPU."""
    model.eval()
    names: list[str] = []
    chunks: list[torch.Tensor] = []
    for images, _ in batches(split, batch_size):
        outs = model(view(images.to(device)))
        names = [name for name, f in outs.items() if "logits" in f]
        chunks.append(torch.stack([outs[name]["logits"].float().cpu() for name in names]))
    return names, torch.cat(chunks, dim=1)


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    hits = topk_correct(logits, labels)
    return {f"top{k}": 100.0 * float(v) / max(1, len(labels)) for k, v in hits.items()}


def anytime_report(path: str | Path, which: str = "best", splits: Sequence[str] = ("val", "test"),
                   thresholds: Sequence[float] | None = None, latency_batch: int = 64,
                   repeats: int = 5, data_root: str | Path | None = None,
                   device: str | None = None) -> dict[str, Any]:
    """Accuracy and cost of every exit, and the early-exit curve, of a saved run.

    Logits are computed in float32 on ``device`` (``--device``; by default the run's own, or
    the best one here when this machine lacks it, with a note in the header: see
    :func:`auxilia.engine.device.run_device`); costs are measured on the CPU.
    Without ``thresholds`` they are chosen on the val split (:func:`val_thresholds`; the
    fixed :data:`THRESHOLDS` without one) and reported on every split; none is picked on test.
    A model with one exit gets no early-exit rows (``early_exit["skipped"]`` says why).

    Returns:
        A JSON-ready dict: ``exits`` (per exit: params, flops, latency_ms, and top1/top5 per
        split), ``early_exit`` (``thresholds``, ``threshold_source``: ``val``, ``given`` or
        ``fixed``, and per split one row per threshold), ``latency_batch``, ``checkpoint``
        (:func:`checkpoint_label`), ``step``, ``device`` (where the logits were computed) and
        ``header`` (the data and model lines a training run prints,
        :mod:`auxilia.engine.header`, and the device note).

    ``data_root`` is the data's new root when it moved since training (see
    :func:`auxilia.engine.reload.load_run`).
    """
    notes: list[str] = []
    setup, checkpoint = load_run(path, which, device, data_root, notes)
    cfg = setup.config
    names, logits = _split_logits(setup, splits)
    sample = sample_images(setup, latency_batch)
    costs = exit_costs(setup.model, sample, repeats)
    exits = {name: {**costs["exits"][name],
                    **{s: _accuracy(lg[i], y) for s, (lg, y) in logits.items()}}
             for i, name in enumerate(names)}
    report = {"run": cfg.run_name(), "checkpoint": checkpoint_label(path, which),
              "step": checkpoint["loop"]["step"], "latency_batch": costs["batch"],
              "forward_latency_ms": costs["forward_latency_ms"], "latency_repeats": repeats,
              "exits": exits, "early_exit": {"order": names},
              "device": str(setup.device),
              "header": [*data_lines(setup), model_line(setup), *(f"note: {n}" for n in notes)]}
    if len(names) < 2:
        report["early_exit"]["skipped"] = SINGLE_EXIT
        return report
    chosen, source = _thresholds(setup, logits, thresholds)
    report["early_exit"].update({"thresholds": chosen, "threshold_source": source,
                                 "prefix_cost": costs["prefix"]})
    for split_name, (lg, y) in logits.items():
        report["early_exit"][split_name] = _early_exit_rows(lg, y, chosen, names, costs)
    return report


SINGLE_EXIT = ("early exit needs auxiliary classifiers (e.g. method=deep_supervision); this "
               "model has one exit, so there is no early-exit table")
"""Why a single-exit model's report has no early-exit rows."""

VAL_QUANTILES: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
"""Quantiles of the val confidences that :func:`val_thresholds` places thresholds at."""


def val_thresholds(val_logits: torch.Tensor) -> list[float]:
    """Early-exit thresholds at which about 100, 90, ..., 10, 5 % of val leaves early, and 1.0.

    A sample leaves before the final exit exactly when its most confident auxiliary exit
    reaches the threshold, so the thresholds are quantiles (``VAL_QUANTILES``, taken at sample
    values) of that per-sample confidence: the table then spans the whole range from "almost
    everything leaves at the first exits" to "always final", whatever the model's calibration.
    Ties and confidences that round to 1.0 collapse, so there may be fewer rows.

    Args:
        val_logits: ``[E, N, K]`` on the val split, exits in depth order, the final exit last
            (``E >= 2``).
    """
    conf = val_logits[:-1].float().softmax(-1).amax(-1).amax(0)                  # [N]
    levels = torch.tensor(VAL_QUANTILES, dtype=conf.dtype)
    values = torch.quantile(conf, levels, interpolation="lower").tolist()
    return [*sorted({v for v in values if v < 1.0}), 1.0]


def _thresholds(setup: Any, logits: dict[str, tuple[torch.Tensor, torch.Tensor]],
                given: Sequence[float] | None) -> tuple[list[float], str]:
    """The thresholds and where they come from; only ever the val split's confidences."""
    if given is not None:
        return [float(t) for t in given], "given"
    if "val" in logits:
        return val_thresholds(logits["val"][0]), "val"
    if len(setup.data.val):  # val is not reported (--split test) but still picks thresholds
        return val_thresholds(_logits(setup, setup.data.val)[1]), "val"
    return list(THRESHOLDS), "fixed"  # no val split: nothing else may pick them


def _split_logits(setup: Any, splits: Sequence[str]
                  ) -> tuple[list[str], dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Exit names and ``{split: (logits [E, N, K], labels)}`` of the non-empty ``splits``."""
    logits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    names: list[str] = []
    for split_name in splits:
        split = getattr(setup.data, split_name)
        if len(split):
            names, lg = _logits(setup, split)
            logits[split_name] = lg, split.labels
    if not logits:
        raise ValueError(f"splits {', '.join(splits)} are empty; evaluate another --split")
    return names, logits


def _logits(setup: Any, split: Split) -> tuple[list[str], torch.Tensor]:
    return collect_logits(setup.model, split, setup.eval_view,
                          setup.config.data.eval_batch_size, setup.device)


def sample_images(setup: Any, size: int) -> torch.Tensor:
    data = setup.data
    split = next(s for s in (data.val, data.test, data.train) if len(s))
    images = read_pixels(split.images, slice(0, size))
    images = images.repeat((size + len(images) - 1) // len(images), 1, 1, 1)[:size]
    with torch.no_grad():
        return setup.eval_view(images.to(setup.device)).float()


_MEASURES = ("flops", "params", "latency_ms")


def _early_exit_rows(logits: torch.Tensor, labels: torch.Tensor, thresholds: Sequence[float],
                     names: list[str], costs: dict[str, Any]) -> list[dict[str, Any]]:
    prefix = torch.tensor([[costs["prefix"][n][m] for m in _MEASURES] for n in names])
    final = torch.tensor([costs["exits"][names[-1]][m] for m in _MEASURES])
    res = early_exit(logits, labels, thresholds, prefix, final)
    rows = []
    for i, t in enumerate(thresholds):
        mean = dict(zip(_MEASURES, res["cost"][i].tolist(), strict=True))
        rows.append({"threshold": float(t), "top1": float(res["top1"][i]),
                     "mean_flops": mean["flops"], "mean_params": mean["params"],
                     "mean_latency_ms": mean["latency_ms"],
                     "fraction": dict(zip(names, res["fraction"][i].tolist(), strict=True))})
    return rows
