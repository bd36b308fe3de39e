"""Anytime inference: per-exit cost by ancestry tracing, early exit, ``auxilia eval`` outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from auxilia.cli import main as cli
from auxilia.config import load_config
from auxilia.engine import anytime, train
from auxilia.engine.anytime import (
    SINGLE_EXIT,
    THRESHOLDS,
    VAL_QUANTILES,
    anytime_report,
    collect_logits,
    early_exit,
    exit_costs,
    trace_exits,
    val_thresholds,
)
from auxilia.engine.reload import evaluate_run, load_run
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


# ----------------------------------------------------------------------------- report names


def _small_run(root: Path, name: str, *extra: str) -> Path:
    config = load_config(None, [f"run.dir={root}", f"run.name={name}", "run.progress=off",
                                "run.tensorboard=false", "run.plot=false", "train.steps=3",
                                "data.batch_size=64", *extra])
    return train(config).run_dir


def test_each_checkpoint_gets_its_own_report_files(tmp_path, capsys) -> None:
    run = _small_run(tmp_path / "runs", "named", "method=deep_supervision")
    fast = ["--latency-batch", "2", "--thresholds", "0.9,1"]
    assert cli(["eval", str(run), *fast]) == 0
    best = (run / "anytime.json").read_bytes()
    assert json.loads(best)["checkpoint"] == "best"
    assert cli(["eval", str(run / "checkpoints" / "last.pt"), *fast]) == 0
    assert (run / "anytime.json").read_bytes() == best  # the best checkpoint's report stays
    assert json.loads((run / "anytime-last.json").read_text())["checkpoint"] == "last"
    assert (run / "anytime-last.png").read_bytes().startswith(b"\x89PNG")
    (run / "anytime-last.json").write_text("an earlier eval of last")
    assert cli(["eval", str(run), "--checkpoint", "last", *fast]) == 0  # replaced in a run
    assert json.loads((run / "anytime-last.json").read_text())["checkpoint"] == "last"

    loose = tmp_path / "elsewhere" / "snapshot.pt"
    loose.parent.mkdir()
    loose.write_bytes((run / "checkpoints" / "last.pt").read_bytes())
    assert cli(["eval", str(loose), *fast]) == 0
    assert json.loads((loose.parent / "snapshot-anytime.json").read_text())["step"] == 3
    assert cli(["eval", str(loose), "--out", str(tmp_path / "out"), *fast]) == 0
    assert (tmp_path / "out" / "snapshot-anytime.png").is_file()
    assert cli(["eval", str(loose), *fast]) == 2  # not a run folder: kept without --overwrite
    assert "snapshot-anytime" in capsys.readouterr().err
    # the run folder holds only what auxilia writes, so --overwrite may still replace it
    train(load_config(run / "config.yaml", []), overwrite=True)
    assert not (run / "anytime-last.json").exists()


# ----------------------------------------------------------------------------- thresholds


def test_val_thresholds_spread_the_share_leaving_early() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 2000, 10) * torch.linspace(0.5, 6, 2000)[None, :, None]
    thresholds = val_thresholds(logits)
    assert len(thresholds) == len(VAL_QUANTILES) + 1 and thresholds[-1] == 1.0
    assert thresholds == sorted(set(thresholds))
    res = early_exit(logits, torch.zeros(2000, dtype=torch.long), thresholds,
                     torch.ones(3, 1), torch.ones(1))
    early = (100 - res["fraction"][:, -1]).tolist()  # % leaving before the final exit
    expected = [100 * (1 - q) for q in VAL_QUANTILES] + [0.0]
    assert early == pytest.approx(expected, abs=0.1)


def test_thresholds_come_from_val_never_from_test(run_dir, monkeypatch) -> None:
    plain = anytime_report(run_dir, latency_batch=2, repeats=1)
    assert plain["early_exit"]["threshold_source"] == "val"
    setup, _ = load_run(run_dir)
    _, val_logits = collect_logits(setup.model, setup.data.val, setup.eval_view, 512,
                                   setup.device)
    assert plain["early_exit"]["thresholds"] == val_thresholds(val_logits)
    assert 10 <= len(plain["early_exit"]["thresholds"]) <= 13

    loaded: list = []
    real_load, real_collect = anytime.load_run, anytime.collect_logits

    def load(*args, **kwargs):
        loaded.append(real_load(*args, **kwargs))
        return loaded[-1]

    def collect(model, split, *args):  # the test split gets far flatter confidences
        names, logits = real_collect(model, split, *args)
        return names, logits * (0.01 if split is loaded[-1][0].data.test else 1.0)

    monkeypatch.setattr(anytime, "load_run", load)
    monkeypatch.setattr(anytime, "collect_logits", collect)
    flat = anytime_report(run_dir, latency_batch=2, repeats=1)
    assert flat["early_exit"]["thresholds"] == plain["early_exit"]["thresholds"]
    def accuracy_rows(report: dict, split: str) -> list:
        return [(r["threshold"], r["top1"], r["fraction"]) for r in report["early_exit"][split]]

    assert accuracy_rows(flat, "val") == accuracy_rows(plain, "val")
    assert accuracy_rows(flat, "test") != accuracy_rows(plain, "test")  # test did change
    only_test = anytime_report(run_dir, splits=("test",), latency_batch=2, repeats=1)
    assert only_test["early_exit"]["thresholds"] == plain["early_exit"]["thresholds"]
    assert "val" not in only_test["early_exit"]


def test_without_val_the_fixed_grid_is_used_and_said(tmp_path, capsys) -> None:
    run = _small_run(tmp_path, "noval", "method=deep_supervision", "data.val_fraction=0")
    assert cli(["eval", str(run), "--latency-batch", "2"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps the table's title
    assert "thresholds: a fixed grid, as the run has no val split" in out
    early = json.loads((run / "anytime.json").read_text())["early_exit"]
    assert early["threshold_source"] == "fixed" and early["thresholds"] == list(THRESHOLDS)


def test_a_single_exit_model_gets_one_line_instead_of_an_early_exit_table(tmp_path,
                                                                          capsys) -> None:
    run = _small_run(tmp_path, "plain", "method=supervised")
    assert cli(["eval", str(run), "--latency-batch", "2"]) == 0
    out = capsys.readouterr().out
    assert "early exit needs auxiliary classifiers (e.g. method=deep_supervision)" in out
    assert "early exit at max softmax" not in out and "% final" not in out
    report = json.loads((run / "anytime.json").read_text())
    assert report["early_exit"] == {"order": ["final"], "skipped": SINGLE_EXIT}
    assert list(report["exits"]) == ["final"] and "test" in report["exits"]["final"]
    assert (run / "anytime.png").read_bytes().startswith(b"\x89PNG")
