"""MixMatch (Berthelot et al., NeurIPS 2019) as a step strategy: the inputs of its loss are made
inside the step, from guessed labels, so it replaces the default step and keeps everything else.

One step:

1. **Guess** (no gradient): the student on the K weak views of the unlabeled batch
   (``x_ulb_w``, ``x_ulb_w2``, ...), the softmax averaged over the K views and sharpened at T.
   The guess runs in train mode, as the paper's code does, but leaves the BatchNorm running
   statistics as they were (they are snapshotted and restored), so only the mixed forward
   below updates them.
2. **Mix**: ``W = [x_lb, x_ulb_w, x_ulb_w2, ...]`` with targets ``[one-hot(y_lb), q, q, ...]``,
   shuffled and mixed with ``λ' = max(λ, 1 − λ)``, λ ~ Beta(α, α) once per step (seeded by the
   run's seed and the step), so each mixed sample stays closest to its own input.
3. **One concatenated forward** of the student over every view the objective reads (the mixed
   labeled part ``x_mix_lb``, the mixed unlabeled part ``x_mix_ulb`` and any other method's
   views): BatchNorm sees the whole mixed batch at once, so the paper's interleaving across
   devices is unnecessary.
4. The objective (``L_x`` soft CE on ``x_mix_lb`` against ``t_mix_lb``, ``λ_u``·MSE of
   probabilities on ``x_mix_ulb`` against ``t_mix_ulb``, plus any combined method's terms),
   one backward, every optimizer stepped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from auxilia.losses import mixup, sharpen
from auxilia.parts import STUDENT, StepResult, StepTools
from auxilia.seeding import derive_seed, seeded
from auxilia.terms import Progress

MIX_LB, MIX_ULB = "x_mix_lb", "x_mix_ulb"
TARGET_LB, TARGET_ULB = "t_mix_lb", "t_mix_ulb"


@dataclass(frozen=True)
class MixMatchStep:
    """The MixMatch step (see the module docstring).

    Args:
        guess_views: the unlabeled weak views averaged into the guess (K = 2 by default).
        temperature: sharpening temperature T (0.5).
        alpha: the Beta(α, α) parameter of mixup (0.75).
        num_classes: classes of the one-hot labeled targets.
        seed: the run's seed (mixup's draws are seeded by it and the step).
    """

    guess_views: tuple[str, ...]
    temperature: float
    alpha: float
    num_classes: int
    seed: int

    def __call__(self, tools: StepTools, batch: Mapping[str, torch.Tensor],
                 progress: Progress) -> StepResult:
        guess = self.guess(tools, batch)
        mixed = self.mix(batch, guess, progress.step)
        full = {**batch, **mixed}
        with tools.autocast():
            outputs = tools.forward(tools.objective.inputs(), full)
            losses = tools.objective(outputs, full, progress)
        tools.backward_step(losses["loss"], losses=losses)
        return StepResult(losses, outputs)

    def guess(self, tools: StepTools, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Sharpened mean prediction of the student over the K weak unlabeled views
        ``[μB, C]``, without gradient and without touching BatchNorm's running statistics."""
        student = tools.models[STUDENT]
        saved = [b.clone() for b in student.buffers()]
        with torch.no_grad(), tools.autocast():
            outputs = tools.forward({STUDENT: list(self.guess_views)}, batch)
        for buffer, old in zip(student.buffers(), saved, strict=True):
            buffer.copy_(old)
        probs = torch.stack([outputs[(STUDENT, v)]["final"]["logits"].float().softmax(1)
                             for v in self.guess_views]).mean(0)
        return sharpen(probs, self.temperature)

    def mix(self, batch: Mapping[str, torch.Tensor], guess: torch.Tensor, step: int
            ) -> dict[str, torch.Tensor]:
        """The mixed labeled and unlabeled inputs and their targets, as batch keys."""
        x_lb = batch["x_lb"]
        onehot = F.one_hot(batch["y_lb"], self.num_classes).float()
        inputs = torch.cat([x_lb, *(batch[v] for v in self.guess_views)])
        targets = torch.cat([onehot, *(guess for _ in self.guess_views)])
        with seeded(derive_seed(self.seed, "mixmatch", step), inputs.device):
            x_mix, t_mix, _ = mixup(inputs.float(), targets, self.alpha)
        x_mix = x_mix.to(x_lb.dtype)
        if x_lb.is_contiguous(memory_format=torch.channels_last):
            x_mix = x_mix.contiguous(memory_format=torch.channels_last)
        b = x_lb.shape[0]
        return {MIX_LB: x_mix[:b], MIX_ULB: x_mix[b:],
                TARGET_LB: t_mix[:b], TARGET_ULB: t_mix[b:]}
