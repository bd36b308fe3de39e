"""Terms of a dense regression task: an output map against the batch's target map."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from auxilia.terms.core import Batch, Outputs, Progress, Ref, Term


class TargetMSE(Term):
    """Mean squared error of an output map ``[B, C, H, W]`` against ``batch[target]`` (the
    task's own loss for regression maps), averaged over every element."""

    def __init__(self, name: str, ref: Ref, target: str, weight: float = 1.0) -> None:
        super().__init__(name, weight)
        self.ref, self.target = ref, target

    def refs(self) -> tuple[Ref, ...]:
        return (self.ref,)

    def options(self) -> tuple[Any, ...]:
        return (self.target,)

    def compute(self, outputs: Outputs, batch: Batch, progress: Progress) -> torch.Tensor:
        out, target = self.ref.read(outputs).float(), batch[self.target].float()
        if out.shape != target.shape:
            raise ValueError(f"{self.name}: the output {tuple(out.shape)} and the target "
                             f"{self.target} {tuple(target.shape)} differ in shape")
        return F.mse_loss(out, target)
