"""The multi-exit model: backbone + heads on named exits + the main classifier."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn

from auxilia.models.backbone import Backbone
from auxilia.models.heads import HeadSpec, LinearProbe, build_head
from auxilia.seeding import derive_seed, seeded

FINAL = "final"

Outputs = dict[str, dict[str, torch.Tensor]]


def _init_stream(init_seed: int | None, *purpose: str) -> AbstractContextManager[None]:
    """The random stream a part of the model is initialised from.

    With a seed, each part draws from its own stream (:func:`auxilia.seeding.derive_seed`), so
    adding, removing or reordering heads never changes another part's initial weights; without
    one, parts draw from the global RNG one after the other.
    """
    return nullcontext() if init_seed is None else seeded(derive_seed(init_seed, *purpose))


class Classifier(nn.Module):
    """The deployable network: backbone, global average pooling, linear classifier.

    ``forward(x)`` maps ``[B, C, H, W]`` to logits ``[B, num_classes]``.
    """

    def __init__(self, backbone: Backbone, classifier: nn.Linear, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(drop_rate)
        self.classifier = classifier

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fmap = self.backbone(x)[self.backbone.last_stage]
        return self.classifier(self.dropout(fmap.mean(dim=(2, 3))))


class MultiExitModel(Classifier):
    """A classifier whose every exit can carry training-only heads.

    Exits are the backbone's stages (``s1``..``sN``, feature maps) and ``final`` (the pooled
    feature of the last stage, where the main classifier sits). ``freeze_backbone=True`` trains
    only the heads and classifier, with the backbone's BatchNorm statistics fixed.

    ``forward(x)`` returns, in one pass, ``{exit: {"feat": tensor, <field>: head output}}``;
    ``final`` always has ``feat`` ``[B, D]`` and ``logits`` ``[B, num_classes]``. A head returns
    one tensor (stored under its spec's field) or a dict of fields (merged into its exit's
    outputs). A ``"probe"`` head on ``final`` (:class:`~auxilia.models.heads.LinearProbe`) adds
    the main classifier applied to the detached pooled feature under its field: a linear probe
    whose loss trains the classifier only, however other terms train the backbone.
    """

    def __init__(self, backbone: Backbone, num_classes: int, heads: Sequence[HeadSpec] = (),
                 drop_rate: float = 0.0, freeze_backbone: bool = False,
                 init_seed: int | None = None) -> None:
        """Build the classifier and attach ``heads``.

        Args:
            backbone: the feature extractor.
            num_classes: outputs of the main classifier (and of classifier heads).
            heads: training-only heads to attach.
            drop_rate: dropout before the main classifier.
            freeze_backbone: train only heads and classifier; backbone BatchNorm in eval mode.
            init_seed: the run's seed: the classifier and each head (also those attached
                later) are initialised from their own stream derived from it; None draws
                from the global RNG in order of construction.
        """
        with _init_stream(init_seed, "classifier"):
            classifier = nn.Linear(backbone.num_features, num_classes)
        super().__init__(backbone, classifier, drop_rate)
        self.num_classes = num_classes
        self.init_seed = init_seed
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:
            backbone.requires_grad_(False)
        self.heads = nn.ModuleDict()
        self.head_specs: dict[str, HeadSpec] = {}
        for spec in heads:
            self.attach(spec)

    @property
    def exits(self) -> tuple[str, ...]:
        return (*self.backbone.stage_names, FINAL)

    def exit_channels(self, exit_name: str) -> int:
        if exit_name == FINAL:
            return self.backbone.num_features
        if exit_name not in self.backbone.stage_channels:
            raise ValueError(f"model has no exit {exit_name!r}; exits: {', '.join(self.exits)}")
        return self.backbone.stage_channels[exit_name]

    def attach(self, spec: HeadSpec) -> None:
        """Attach a head; an (exit, field) pair holds one head only."""
        if spec.exit == FINAL and spec.field == "logits":
            raise ValueError("the final exit's logits are the main classifier; attach elsewhere")
        if spec.key in self.heads:
            raise ValueError(f"exit {spec.exit!r} already has a {spec.field!r} head")
        with _init_stream(self.init_seed, "head", spec.key):
            head = build_head(spec, self.exit_channels(spec.exit), self.num_classes)
        self.heads[spec.key] = head
        self.head_specs[spec.key] = spec

    def remove_head(self, exit_name: str, field: str) -> None:
        """Remove the head producing ``field`` on ``exit_name``.

        Raises:
            KeyError: if no such head is attached.
        """
        key = HeadSpec(exit_name, field, "").key
        if key not in self.heads:
            raise KeyError(f"no {field!r} head on exit {exit_name!r}")
        del self.heads[key]
        del self.head_specs[key]

    def forward(self, x: torch.Tensor) -> Outputs:  # type: ignore[override]
        stages = self.backbone(x)
        pooled = stages[self.backbone.last_stage].mean(dim=(2, 3))
        outs: Outputs = {name: {"feat": fmap} for name, fmap in stages.items()}
        outs[FINAL] = {"feat": pooled, "logits": self.classifier(self.dropout(pooled))}
        for key, head in self.heads.items():
            spec = self.head_specs[key]
            if isinstance(head, LinearProbe):
                # its own output on detached features: the probe's loss reaches the classifier
                # only, so the backbone's gradient from every other term is left as it was
                outs[FINAL][spec.field] = self.classifier(self.dropout(pooled.detach()))
                continue
            result = head(outs[spec.exit]["feat"])
            if isinstance(result, dict):  # a head may give several fields, e.g. logits + hint
                outs[spec.exit].update(result)
            else:
                outs[spec.exit][spec.field] = result
        return outs

    def train(self, mode: bool = True) -> MultiExitModel:
        """A frozen backbone stays in eval mode (fixed BatchNorm statistics) while heads train."""
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    def strip(self) -> Classifier:
        """The plain classifier, every training-only head removed (shares parameters)."""
        return Classifier(self.backbone, self.classifier, self.dropout.p)
