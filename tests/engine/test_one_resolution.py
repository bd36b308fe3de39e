"""One resolution of ``auto`` for every command, one header, and progress a log can follow."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from auxilia.compare import progress as sweep_progress
from auxilia.compare.progress import SweepProgress
from auxilia.compare.runner import DataCache, run_sweep
from auxilia.compare.spec import quick_sweep
from auxilia.config import load_config
from auxilia.engine import train
from auxilia.engine.auto import resolve, resolve_for
from auxilia.engine.header import HeaderDedup
from auxilia.engine.runlog import ProgressBar

QUIET = ["run.tensorboard=false", "run.plot=false", "train.steps=3", "data.batch_size=8",
         "train.eval_every=3"]


def _photos(root: Path, side: int = 48, classes: int = 3, n: int = 6) -> Path:
    rng = np.random.default_rng(0)
    for split, count in (("train", n), ("test", 2)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def _recorded(run_dir: Path) -> tuple[str, int | str]:
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    return saved["model"]["name"], saved["data"]["image_size"]


def test_compare_trains_at_the_size_train_picks(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    root = _photos(tmp_path / "photos")
    data = ["data.source=folder", f"data.root={root}", "data.val_fraction=0.34", *QUIET]
    single = train(load_config(None, [f"run.dir={tmp_path / 'one'}", "run.progress=off",
                                      *data]))
    sweep = quick_sweep(None, "supervised", 1, [f"run.dir={tmp_path / 'sw'}", *data], name="s")
    outcome = run_sweep(sweep, display=False)
    assert _recorded(single.run_dir) == ("resnet20", 32)
    assert _recorded(outcome.folder / "supervised" / "seed0") == ("resnet20", 32)
    out = capsys.readouterr().out
    # the sweep shows the header a single run prints: data, model and the auto choice
    assert "supervised/seed0:\n  data: folder, 3 classes, images 3x32x32" in out
    assert "  model: resnet20 at 32x32" in out
    assert "note: auto: model resnet20 at 32x32 for 48x48 RGB images" in out


def test_a_named_model_is_not_a_named_size(tmp_path: Path) -> None:
    root = _photos(tmp_path / "photos")
    config = load_config(None, ["data.source=folder", f"data.root={root}", "model.name=resnet8"])
    resolved, line = resolve(config)
    assert (resolved.model.name, resolved.data.image_size) == ("resnet8", 32)
    assert line is not None and "choose with data.image_size=..." in line
    native = load_config(None, ["data.source=folder", f"data.root={root}",
                                "model.name=resnet8", "data.image_size=native"])
    resolved, line = resolve(native)
    assert (resolved.model.name, resolved.data.image_size, line) == ("resnet8", "native", None)


def test_a_run_is_named_from_what_the_user_set_and_records_the_name(tmp_path: Path) -> None:
    root = _photos(tmp_path / "photos")
    config = load_config(None, ["data.source=folder", f"data.root={root}"])
    resolved, _ = resolve(config)
    # auto's model is in the name, auto's input size is not a setting of the user's
    assert resolved.run.name == "folder-photos-resnet20-supervised-s0"
    sized = load_config(None, ["data.source=folder", f"data.root={root}", "data.image_size=48"])
    assert resolve(sized)[0].run.name == "folder-photos-resnet20-supervised-s0-image_size48"
    named = load_config(None, ["data.source=folder", f"data.root={root}", "run.name=mine"])
    assert resolve(named)[0].run.name == "mine"
    result = train(load_config(None, ["data.source=folder", f"data.root={root}",
                                      f"run.dir={tmp_path / 'runs'}", "run.progress=off",
                                      *QUIET]))
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert saved["run"]["name"] == result.run_dir.name


def test_splits_loaded_from_the_resolved_config_resolve_as_files_do(tmp_path: Path) -> None:
    import torch

    root = _photos(tmp_path / "photos")
    config = load_config(None, ["data.source=folder", f"data.root={root}"])
    resolved, line = resolve(config)
    data = DataCache().get(resolved)
    assert resolve_for(config, data, torch.device("cpu")) == (resolved, line)
    # splits loaded at another size (the Python API's data=) keep their size
    native = DataCache().get(config)
    assert native.image_shape[1] == 48
    kept, _ = resolve_for(config, native, torch.device("cpu"))
    assert kept.data.image_size == 48


def test_a_plain_log_says_how_far_and_how_long(capsys: pytest.CaptureFixture[str]) -> None:
    bar = ProgressBar(total=10, start=2, mode="plain")
    bar.update(2, "loss 1.0")
    bar.update(4, "loss 0.9")
    lines = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"step 2/10 loss 1\.0 \| \d+s elapsed", lines[0])
    assert re.fullmatch(r"step 4/10 loss 0\.9 \| \d+s elapsed, ~\d+s left", lines[1])


def test_a_sweep_in_a_log_prints_step_lines_with_time_left(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sweep_progress, "FIRST_LINE_S", 0.0)
    monkeypatch.setattr(sweep_progress, "LINE_EVERY_S", 3600.0)
    progress = SweepProgress("sw", ["a/seed0", "b/seed0"], ["a", "b"], todo=[0, 1])
    with progress:
        progress.start(0, 100)
        progress.step(0, 1)
        progress.step(0, 2)  # within LINE_EVERY_S of the first line: not printed
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "a/seed0: step" in line]
    assert len(lines) == 1
    assert re.search(r"step 1/100, \d+s elapsed", lines[0])


def test_a_header_is_shown_once_per_distinct_lines() -> None:
    shown: list[str] = []
    dedup = HeaderDedup(shown.append)
    dedup("a/seed0", ["data: x", "model: m"])
    dedup("a/seed1", ["data: x", "model: m"])
    dedup("b/seed0", ["data: x", "model: n"])
    assert shown == ["a/seed0:", "  data: x", "  model: m", "b/seed0:", "  data: x", "  model: n"]


def test_a_single_run_prints_model_and_budget_lines(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    train(load_config(None, [f"run.dir={tmp_path}", "run.progress=plain", *QUIET]))
    out = capsys.readouterr().out
    assert re.search(r"^model: small_cnn at 8x8, [\d,]+ parameters; method supervised$", out,
                     re.MULTILINE)
    assert re.search(r"^train: 3 steps \(.* epochs of \d+ steps\) at batch 8, sgd lr 0\.05, "
                     r"schedule cosine, evaluating every 3 steps$", out, re.MULTILINE)


def test_on_a_gpu_auto_fine_tunes_a_pretrained_backbone_when_its_weights_are_at_hand(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from auxilia.engine import auto
    from auxilia.models.pretrained import PretrainedChoice

    config = load_config(None, [])
    pick = PretrainedChoice("timm/resnet18.a1_in1k", True, 224, "auto: timm/resnet18.a1_in1k ...")
    monkeypatch.setattr(auto, "gpu_pretrained_choice", lambda channels, side: pick)
    resolved, line = auto.resolve_auto(config, gpu=True, shape=(3, 200, False))
    assert (resolved.model.name, resolved.model.pretrained, resolved.data.image_size) == (
        "timm/resnet18.a1_in1k", True, 224)
    assert line == pick.reason
    # on a CPU, or with a named model or size, the table applies as before
    assert auto.resolve_auto(config, gpu=False, shape=(3, 200, False))[0].model.name == "resnet20"
    named = load_config(None, ["model.name=resnet8"])
    assert auto.resolve_auto(named, gpu=True, shape=(3, 200, False))[0].data.image_size == 64
    # weights that cannot be had: the from-scratch choice
    monkeypatch.setattr(auto, "gpu_pretrained_choice", lambda channels, side: None)
    resolved, _ = auto.resolve_auto(config, gpu=True, shape=(3, 200, False))
    assert (resolved.model.name, resolved.data.image_size) == ("resnet18", 64)


def test_a_named_pretrained_timm_model_trains_at_its_pretraining_size(tmp_path: Path) -> None:
    from auxilia.engine.auto import resolve_auto

    pretrained = load_config(None, ["model.name=timm/resnet18.a1_in1k", "model.pretrained=true"])
    resolved, line = resolve_auto(pretrained, gpu=False, shape=(3, 200, False))
    assert resolved.data.image_size == 224
    assert line is not None and "at 224x224 (its pretraining size)" in line
    scratch = load_config(None, ["model.name=timm/resnet18.a1_in1k"])
    assert resolve_auto(scratch, gpu=False, shape=(3, 200, False))[0].data.image_size == 32
