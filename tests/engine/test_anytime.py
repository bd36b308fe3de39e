"""Anytime inference: per-exit cost by ancestry tracing, early exit, ``auxilia eval`` outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from auxilia.cli import main as cli
from auxilia.config import load_config
from auxilia.engine import train
from auxilia.engine.anytime import early_exit, exit_costs, trace_exits
from auxilia.engine.reload import evaluate_run
from auxilia.models.heads import HeadSpec
from auxilia.models.multi_exit import MultiExitModel
from auxilia.models.registry import create_backbone


def _model(name: str, in_chans: int, size: int, **kwargs: object) -> MultiExitModel:
    """A multi-exit model with an auxiliary classifier on every stage but the last."""
    torch.manual_seed(0)
    backbone = create_backbone(name, in_chans=in_chans, image_size=size, pretrained=False,
                               weights=None, **kwargs)
    heads = [HeadSpec(s, "logits", "classifier") for s in backbone.stage_names[:-1]]
    return MultiExitModel(backbone, 10, heads).eval()


def test_small_cnn_costs_match_a_hand_count() -> None:
    model = _model("small_cnn", 1, 8)
    trace = trace_exits(model, torch.randn(1, 1, 8, 8))
    costs = {name: trace.cost(mask) for name, mask in trace.masks.items()}
    # one conv3x3 per stage on 8x8 digits: 1->32 at 8x8, 32->64 at 4x4, 64->128 at 2x2;
    # a multiply-add is 2 FLOPs; each exit adds its linear classifier on the pooled map
    conv = [2 * 32 * 1 * 9 * 8 * 8, 2 * 64 * 32 * 9 * 4 * 4, 2 * 128 * 64 * 9 * 2 * 2]
    assert costs["s1"]["flops"] == conv[0] + 2 * 32 * 10
    assert costs["s2"]["flops"] == conv[0] + conv[1] + 2 * 64 * 10
    assert costs["final"]["flops"] == sum(conv) + 2 * 128 * 10
    conv_bn = [32 * 9 + 2 * 32, 64 * 32 * 9 + 2 * 64, 128 * 64 * 9 + 2 * 128]
    assert costs["s1"]["params"] == conv_bn[0] + 32 * 10 + 10
    assert costs["s2"]["params"] == conv_bn[0] + conv_bn[1] + 64 * 10 + 10
    assert costs["final"]["params"] == sum(conv_bn) + 128 * 10 + 10


@pytest.mark.parametrize(("name", "in_chans", "size", "kwargs"), [
    ("small_cnn", 1, 8, {}),
    ("resnet20", 3, 16, {}),  # shortcut convs
    # timm's ViT copies its intermediate maps after the last block
    ("timm/vit_tiny_patch16_224", 3, 32, {"depth": 3}),
])
def test_exit_costs_grow_with_depth_and_end_at_the_full_forward(name, in_chans, size,
                                                                 kwargs) -> None:
    model = _model(name, in_chans, size, **kwargs)
    x = torch.randn(1, in_chans, size, size)
    trace = trace_exits(model, x)
    costs = [trace.cost(mask) for mask in trace.masks.values()]
    assert list(trace.masks) == [*model.backbone.stage_names[:-1], "final"]
    for key in ("flops", "params"):
        values = [c[key] for c in costs]
        assert values == sorted(values) and values[0] < values[-1] / 2, (key, values)
    stripped = model.strip()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        stripped(x)
    assert costs[-1]["flops"] == counter.get_total_flops()
    assert costs[-1]["params"] == sum(p.numel() for p in stripped.parameters())


def test_exit_costs_time_a_batch_and_price_early_exit_prefixes() -> None:
    model = _model("small_cnn", 1, 8)
    costs = exit_costs(model, torch.randn(4, 1, 8, 8), repeats=1)
    assert costs["batch"] == 4 and costs["forward_latency_ms"] > 0
    exits, prefix = costs["exits"], costs["prefix"]
    assert all(c["latency_ms"] > 0 for c in exits.values())
    assert prefix["s1"] == exits["s1"]
    heads = sum(p.numel() for p in model.heads.parameters())
    assert prefix["final"]["params"] == exits["final"]["params"] + heads
    assert prefix["final"]["flops"] == exits["final"]["flops"] + 2 * (32 + 64) * 10


def _reference_exit(conf: torch.Tensor, t: float) -> list[int]:
    """Per-sample loop: the first exit with max softmax >= t, the final one otherwise."""
    last = conf.shape[0] - 1
    return [next(e for e in range(last + 1) if e == last or conf[e, n] >= t)
            for n in range(conf.shape[1])]


def test_early_exit_thresholds() -> None:
    torch.manual_seed(0)
    logits, labels = 3 * torch.randn(3, 200, 10), torch.randint(0, 10, (200,))
    prefix, final = torch.tensor([[10.0, 1.0], [30.0, 2.0], [70.0, 4.0]]), torch.tensor([60, 3])
    res = early_exit(logits, labels, [0.0, 0.6, 1.0, 1.5], prefix, final)
    correct = (logits.argmax(-1) == labels).float()
    acc = 100 * correct.mean(1)
    assert res["fraction"][0].tolist() == [100.0, 0.0, 0.0]  # everything leaves at the first
    assert res["top1"][0] == pytest.approx(float(acc[0]))
    assert res["cost"][0].tolist() == [10.0, 1.0]
    for i in (2, 3):  # 1 or more: always final, no auxiliary head evaluated
        assert res["fraction"][i].tolist() == [0.0, 0.0, 100.0]
        assert res["top1"][i] == pytest.approx(float(acc[2]))
        assert res["cost"][i].tolist() == [60.0, 3.0]
    chosen = torch.tensor(_reference_exit(logits.softmax(-1).amax(-1), 0.6))
    assert 0 < (chosen == 0).sum() < 200 and (chosen == 2).any()
    assert res["top1"][1] == pytest.approx(100 * float(correct[chosen, torch.arange(200)].mean()))
    assert res["cost"][1].tolist() == pytest.approx(prefix[chosen].mean(0).tolist())
    assert res["fraction"][1].tolist() == pytest.approx(
        [100 * float((chosen == e).float().mean()) for e in range(3)])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("anytime")
    config = load_config(None, [f"run.dir={root}", "run.name=ds", "run.progress=off",
                                "run.tensorboard=false", "run.plot=false", "train.steps=3",
                                "data.batch_size=64", "method=deep_supervision"])
    return train(config).run_dir


def test_cli_eval_writes_anytime_json_and_png(run_dir, tmp_path, capsys) -> None:
    assert cli(["eval", str(run_dir), "--latency-batch", "8"]) == 0
    out = capsys.readouterr().out
    assert "MFLOPs" in out and "% s1" in out and "test top1" in out
    assert (run_dir / "anytime.png").stat().st_size > 0
    report = json.loads((run_dir / "anytime.json").read_text())
    exits = report["exits"]
    assert list(exits) == ["s1", "s2", "final"] and report["latency_batch"] == 8
    assert [e["flops"] for e in exits.values()] == sorted(e["flops"] for e in exits.values())
    reference, _ = evaluate_run(run_dir, "best", ("val", "test"))
    for split in ("val", "test"):
        assert exits["final"][split]["top1"] == pytest.approx(reference[split]["final/top1"])
        assert exits["s1"][split]["top5"] == pytest.approx(reference[split]["s1/top5"])
        always_final = report["early_exit"][split][-1]
        assert always_final["threshold"] == 1.0
        assert always_final["top1"] == pytest.approx(exits["final"][split]["top1"])
        assert always_final["mean_flops"] == exits["final"]["flops"]

    assert cli(["eval", str(run_dir), "--split", "val", "--thresholds", "0,1",
                "--out", str(tmp_path), "--latency-batch", "2"]) == 0
    report = json.loads((tmp_path / "anytime.json").read_text())
    assert "test" not in report["early_exit"] and (tmp_path / "anytime.png").is_file()
    first, final = report["early_exit"]["val"]
    assert first["fraction"]["s1"] == 100.0 and final["fraction"]["final"] == 100.0
    assert first["top1"] == pytest.approx(report["exits"]["s1"]["val"]["top1"])


def test_cli_eval_rejects_bad_thresholds(run_dir, capsys) -> None:
    with pytest.raises(SystemExit):
        cli(["eval", str(run_dir), "--thresholds", "high"])
    assert "--thresholds" in capsys.readouterr().err
