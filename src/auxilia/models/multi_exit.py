"""The multi-exit model: backbone + heads on named exits + the main classifier."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from auxilia.models.backbone import Backbone
from auxilia.models.heads import HeadSpec, build_head

FINAL = "final"

Outputs = dict[str, dict[str, torch.Tensor]]


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
    feature of the last stage, where the main classifier sits). ``probe=True`` detaches the
    classifier's input (a linear probe on the features); ``freeze_backbone=True`` trains only
    the heads and classifier, with the backbone's BatchNorm statistics fixed.

    ``forward(x)`` returns, in one pass, ``{exit: {"feat": tensor, <field>: head output}}``;
    ``final`` always has ``feat`` ``[B, D]`` and ``logits`` ``[B, num_classes]``. A head returns
    one tensor (stored under its spec's field) or a dict of fields (merged into its exit's
    outputs).
    """

    def __init__(self, backbone: Backbone, num_classes: int, heads: Sequence[HeadSpec] = (),
                 drop_rate: float = 0.0, probe: bool = False,
                 freeze_backbone: bool = False) -> None:
        super().__init__(backbone, nn.Linear(backbone.num_features, num_classes), drop_rate)
        self.num_classes = num_classes
        self.probe = probe
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
        self.heads[spec.key] = build_head(spec, self.exit_channels(spec.exit), self.num_classes)
        self.head_specs[spec.key] = spec

    def detach(self, exit_name: str, field: str) -> None:
        key = HeadSpec(exit_name, field, "").key
        if key not in self.heads:
            raise KeyError(f"no {field!r} head on exit {exit_name!r}")
        del self.heads[key]
        del self.head_specs[key]

    def forward(self, x: torch.Tensor) -> Outputs:  # type: ignore[override]
        stages = self.backbone(x)
        pooled = stages[self.backbone.last_stage].mean(dim=(2, 3))
        outs: Outputs = {name: {"feat": fmap} for name, fmap in stages.items()}
        classifier_in = pooled.detach() if self.probe else pooled
        outs[FINAL] = {"feat": pooled, "logits": self.classifier(self.dropout(classifier_in))}
        for key, head in self.heads.items():
            spec = self.head_specs[key]
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
