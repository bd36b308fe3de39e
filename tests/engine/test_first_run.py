"""A newcomer's own images: defaults that fit the data, visible splits, clear path errors."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from auxilia.atomic_files import current_umask
from auxilia.config import load_config
from auxilia.data.config import CsvFiles, DataConfig
from auxilia.data.sources import DataError, load_dataset
from auxilia.engine import train
from auxilia.engine.auto import choose, resolve_auto
from auxilia.engine.checkpoint import load_checkpoint
from auxilia.models.registry import create_backbone


def _write(path: Path, seed: int, side: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _scenes(root: Path, side: int = 64, classes: tuple[str, ...] = ("beach", "city", "coast"),
            n: int = 8, test_names: tuple[str, ...] | None = None) -> Path:
    for c, name in enumerate(classes):
        for i in range(n):
            _write(root / "train" / name / f"{i}.png", 100 * c + i, side)
        for i in range(3):
            folder = (test_names or classes)[c]
            _write(root / "test" / folder / f"{i}.png", 5000 + 100 * c + i, side)
    return root


def _base(runs: Path, *extra: str) -> list[str]:
    return [f"run.dir={runs}", "run.progress=plain", "run.tensorboard=false", "run.plot=false",
            "train.steps=3", "data.batch_size=8", *extra]


# ----------------------------------------------------------------------------- the choice


@pytest.mark.parametrize(("channels", "side", "gpu", "expected"), [
    (1, 8, False, ("small_cnn", None)), (1, 28, False, ("small_cnn", None)),
    (3, 32, False, ("resnet20", None)), (3, 200, False, ("resnet20", 32)),
    (1, 200, False, ("resnet20", 32)), (3, 200, True, ("resnet18", 64)),
    (3, 12, True, ("small_cnn", None))])
def test_the_documented_rule(channels: int, side: int, gpu: bool,
                             expected: tuple[str, int | None]) -> None:
    assert choose(channels, side, gpu, size_given=False) == expected


def test_what_the_user_names_is_kept() -> None:
    # a named model is not a named size: large images still come at the table's size
    named = load_config(None, ["model.name=resnet8"])
    config, line = resolve_auto(named, gpu=False, shape=(3, 200, False))
    assert (config.model.name, config.data.image_size) == ("resnet8", 32)
    assert line == ("auto: model resnet8 at 32x32 for 200x200 RGB images, training on CPU; "
                    "choose with data.image_size=...")
    config, _ = resolve_auto(named, gpu=True, shape=(3, 200, False))
    assert (config.model.name, config.data.image_size) == ("resnet8", 64)
    config, _ = resolve_auto(named, gpu=False, shape=(1, 28, False))
    assert (config.model.name, config.data.image_size) == ("resnet8", "native")
    both = load_config(None, ["model.name=resnet8", "data.image_size=native"])
    assert resolve_auto(both, gpu=False, shape=(3, 200, False)) == (both, None)
    sized = load_config(None, ["data.image_size=48"])
    config, line = resolve_auto(sized, gpu=False, shape=(3, 200, False))
    assert (config.model.name, config.data.image_size) == ("resnet20", 48)
    native = load_config(None, ["data.image_size=native"])
    config, _ = resolve_auto(native, gpu=False, shape=(3, 200, False))
    assert (config.model.name, config.data.size) == ("resnet20", None)
    mixed, _ = resolve_auto(load_config(None, []), gpu=False, shape=(3, 30, True))
    assert (mixed.model.name, mixed.data.image_size) == ("resnet20", 30)  # one size to stack


def test_large_images_get_a_model_and_size_that_fit_and_the_run_says_so(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _scenes(tmp_path / "scenes", side=64)
    config = load_config(None, [*_base(tmp_path / "runs"), "data.source=folder",
                                f"data.root={root}"])
    result = train(config)
    out = capsys.readouterr().out
    assert ("auto: model resnet20 at 32x32 for 64x64 RGB images, training on CPU; choose with "
            "model.name=... and data.image_size=...") in out
    # the model auto chose is in the name, with the settings the user set unlike the defaults
    assert result.run_dir.name == "folder-scenes-resnet20-supervised-s0-batch_size8-steps3"
    saved = load_checkpoint(result.run_dir / "checkpoints" / "last.pt")["config"]
    assert (saved["model"]["name"], saved["data"]["image_size"]) == ("resnet20", 32)
    assert result.summary["splits"]["train"]["origin"] == "folder train/"
    # the same auto config resumes: it resolves to what the run recorded
    assert train(config, resume=True).summary["steps"] == 3


def test_the_default_run_name_tells_two_folder_datasets_apart(tmp_path: Path) -> None:
    names = {load_config(None, ["data.source=folder", f"data.root={tmp_path / d}"]).run_name()
             for d in ("scenes", "birds")}
    assert names == {"folder-scenes-auto-supervised-s0", "folder-birds-auto-supervised-s0"}
    csv = load_config(None, ["data.source=csv", "data.csv.train=/x/flowers_train.csv"])
    assert csv.run_name().startswith("csv-flowers_train-")


# ----------------------------------------------------------------------------- splits


def test_every_run_prints_its_splits_and_where_they_came_from(
        tiny_config, capsys: pytest.CaptureFixture[str]) -> None:
    summary = train(tiny_config("run.progress=plain", "train.steps=2")).summary
    out = capsys.readouterr().out
    assert "data: digits, 10 classes, images 1x8x8" in out
    assert "  train       1,258  scikit-learn's bundled digits" in out
    assert "  val           180  carved from train (val_fraction=0.1, split_seed=0)" in out
    assert "  test          359  carved from train (test_fraction=0.2, split_seed=0)" in out
    assert summary["splits"]["test"] == {
        "count": 359, "origin": "carved from train (test_fraction=0.2, split_seed=0)"}


def test_class_folders_that_differ_by_case_across_splits_are_matched(tmp_path: Path) -> None:
    root = _scenes(tmp_path, side=8, classes=("Beach", "City", "Coast"),
                   test_names=("beach", "CITY", "Coast"))
    data = load_dataset(DataConfig(source="folder", root=str(root)))
    assert data.classes == ["Beach", "City", "Coast"] and len(data.test) == 9
    assert [int((data.test.labels == c).sum()) for c in range(3)] == [3, 3, 3]
    note = next(n for n in data.notes if "ignoring case" in n)
    assert "beach -> Beach" in note and "CITY -> City" in note and "Coast ->" not in note


def test_training_class_folders_that_differ_only_by_case_are_refused(tmp_path: Path) -> None:
    root = _scenes(tmp_path, side=8, classes=("coast", "Coast"))
    with pytest.raises(DataError, match=r"differ only by case \(\['Coast', 'coast'\]\)"):
        load_dataset(DataConfig(source="folder", root=str(root)))


def test_a_validation_split_too_small_to_select_on_is_noted() -> None:
    data = load_dataset(DataConfig(source="digits", val_fraction=0.03))
    assert any("val has 54 images for 10 classes (5.4 per class): too few" in n
               and "data.val_fraction" in n for n in data.notes)
    assert not any("too few" in n for n in load_dataset(DataConfig(source="digits")).notes)


def _val_note(cfg: DataConfig) -> str:
    return next(n for n in load_dataset(cfg).notes if "too few to select" in n)


def test_the_small_validation_note_suggests_only_a_larger_fraction_that_gives_enough(
        tmp_path: Path) -> None:
    suggested = re.search(r"raise data\.val_fraction \(e\.g\. ([0-9.]+)\)",
                          _val_note(DataConfig(source="digits", val_fraction=0.03)))
    assert suggested and float(suggested[1]) > 0.03
    followed = load_dataset(DataConfig(source="digits", val_fraction=float(suggested[1])))
    assert len(followed.val) >= 100 and not any("too few" in n for n in followed.notes)
    # 8 images per class at val_fraction=0.2: no fraction gives 10 val images per class and
    # keeps half of them for training; a val split of the source's own ignores the fraction
    root = _scenes(tmp_path, side=8)
    note = _val_note(DataConfig(source="folder", root=str(root), val_fraction=0.2))
    assert "val_fraction" not in note
    assert note.endswith("too few to select a checkpoint reliably; add validation images "
                         "(at least 10 per class)")
    for c, name in enumerate(("beach", "city", "coast")):
        _write(root / "val" / name / "0.png", 9000 + c, 8)
    own = _val_note(DataConfig(source="folder", root=str(root), val_fraction=0.05))
    assert "val has 3 images" in own and "val_fraction" not in own


# ----------------------------------------------------------------------------- CSV paths


def test_a_csv_whose_files_are_all_missing_says_file_not_found_and_where_they_are(
        tmp_path: Path) -> None:
    for c, name in enumerate(("ant", "bee")):
        for i in range(3):
            _write(tmp_path / "data" / "images" / f"{name}{i}.png", 10 * c + i, 8)
    lists = tmp_path / "data" / "lists"
    lists.mkdir()
    rows = "".join(f"{n}{i}.png,{n}\n" for n in ("ant", "bee") for i in range(3))
    (lists / "train.csv").write_text("filename,class\n" + rows)
    cfg = DataConfig(source="csv", csv=CsvFiles(train=str(lists / "train.csv")))
    with pytest.raises(DataError) as err:
        load_dataset(cfg)
    message = str(err.value)
    assert message.startswith("file not found: none of the 6 files listed in")
    assert "relative to data.csv.image_dir when it is set" in message
    assert f"set data.csv.image_dir={tmp_path / 'data' / 'images'}" in message
    fixed = cfg.model_copy(update={"csv": cfg.csv.model_copy(
        update={"image_dir": str(tmp_path / "data" / "images")})})
    assert len(load_dataset(fixed).train) + len(load_dataset(fixed).val) > 0


# ----------------------------------------------------------------------------- numbers, files


def test_resume_prints_the_step_it_resumes_from(tiny_config,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    config = tiny_config("run.name=r", "train.steps=4", "run.progress=plain")
    result = train(config)
    capsys.readouterr()
    train(config, resume=True)
    assert (f"resuming {result.run_dir} from step 4 (of 4 steps; "
            f"{result.run_dir / 'checkpoints' / 'last.pt'})") in capsys.readouterr().out


def test_files_are_written_with_the_users_usual_permissions(tiny_config) -> None:
    previous = os.umask(0o022)
    try:
        run = train(tiny_config("run.name=r", "train.steps=2")).run_dir
        expected = 0o666 & ~current_umask()
    finally:
        os.umask(previous)
    assert expected == 0o644
    for name in ("config.yaml", "summary.json", "data.json", "checkpoints/last.pt",
                 "checkpoints/best.pt", ".auxilia-run"):
        assert stat.S_IMODE((run / name).stat().st_mode) == 0o644, name


def test_the_export_card_says_how_images_were_resized(tmp_path: Path) -> None:
    import json

    from auxilia.cli import main as cli

    root = _scenes(tmp_path / "scenes", side=40)
    config = load_config(None, [*_base(tmp_path / "runs", "run.progress=off"),
                                "data.source=folder", f"data.root={root}", "run.name=r"])
    run = train(config).run_dir
    assert cli(["export", str(run), "--format", "state_dict"]) == 0
    card = json.loads((run / "export" / "model.json").read_text())
    assert card["input_shape"] == ["batch", 3, 32, 32]
    assert card["resize"]["size"] == [32, 32]
    assert "bilinear with antialiasing" in card["resize"]["method"]
    assert "aspect ratio is not kept" in card["resize"]["method"]


def test_pretrained_weights_without_network_say_how_to_pass_a_file(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import timm
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*args: object, **kwargs: object) -> None:
        if kwargs.get("pretrained"):
            raise LocalEntryNotFoundError("cannot find the requested files in the local cache")
        raise AssertionError("only the pretrained call is expected")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(ValueError, match=r"model\.pretrained=true: timm/resnet18's weights are "
                                         r"not in the Hugging Face cache .*model\.weights="
                                         r"FILE"):
        create_backbone("timm/resnet18", in_chans=3, image_size=32, pretrained=True)
