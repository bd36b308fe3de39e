"""Dense tasks from files (``data.dense``): images with their target maps beside them, read from
a folder or CSVs, split like classification data, augmented together (crop, flip, quarter
turns) with the grasp angle's cos 2θ / sin 2θ transformed, and trained by ``auxilia train``.

The data is a small synthetic grasp-like set written by the tests: a bright rectangle at an
angle θ on a dark image, with its position, cos 2θ, sin 2θ and width maps."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from auxilia.cli import main
from auxilia.config import ConfigError, load_config
from auxilia.data.config import DataConfig
from auxilia.data.dense_augment import (
    JointAugment,
    JointDraw,
    angle_signs,
    joint_augmentation,
    move,
)
from auxilia.data.raw import DataError
from auxilia.data.sources import load_dataset
from auxilia.data.view_shards import Shard
from auxilia.engine.batches import make_batch
from auxilia.engine.setup import build_setup
from auxilia.seeding import seeded

SIDE = 16
FIELDS = ["pos", "cos", "sin", "width"]


def grasp(rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A rectangle at a random angle θ (of its long axis, ``atan2(d row, d col)``): the image
    ``uint8 [S, S]`` and its maps ``float32 [S, S]`` (zero outside the rectangle)."""
    theta = rng.uniform(-math.pi / 2, math.pi / 2)
    cy, cx = rng.uniform(5, SIDE - 5, 2)
    half_len, half_width = rng.uniform(2.5, 5.0), rng.uniform(1.0, 2.0)
    rows, cols = np.mgrid[0:SIDE, 0:SIDE].astype(np.float64)
    along = (cols - cx) * math.cos(theta) + (rows - cy) * math.sin(theta)
    across = -(cols - cx) * math.sin(theta) + (rows - cy) * math.cos(theta)
    inside = ((np.abs(along) <= half_len) & (np.abs(across) <= half_width)).astype(np.float32)
    image = (40 + 180 * inside).astype(np.uint8)
    return image, {"pos": inside, "cos": math.cos(2 * theta) * inside,
                   "sin": math.sin(2 * theta) * inside, "width": half_width / 4 * inside}


def write_grasps(folder: Path, n: int, seed: int = 0, prefix: str = "g") -> list[str]:
    """``n`` samples in ``folder``: ``<stem>.png``, ``<stem>.pos.png`` (a map image) and
    ``<stem>.{cos,sin,width}.npy``; returns the stems."""
    folder.mkdir(parents=True, exist_ok=True)
    rng, stems = np.random.default_rng(seed), []
    for i in range(n):
        image, maps = grasp(rng)
        stem = f"{prefix}{i:03d}"
        Image.fromarray(image).save(folder / f"{stem}.png")
        Image.fromarray((maps["pos"] * 255).astype(np.uint8)).save(folder / f"{stem}.pos.png")
        for field in ("cos", "sin", "width"):
            np.save(folder / f"{stem}.{field}.npy", maps[field])
        stems.append(stem)
    return stems


def _cfg(root: Path, **extra: object) -> DataConfig:
    return DataConfig.model_validate({"source": "folder", "root": str(root), "grayscale": True,
                                      "dense": {"fields": FIELDS}, **extra})


def _maps_by_name(split) -> dict[str, dict[str, np.ndarray]]:
    return {Path(str(n)).stem: {f: split.targets[f][i, 0].numpy() for f in FIELDS}
            for i, n in enumerate(split.names)}


def _written(folder: Path, stem: str) -> dict[str, np.ndarray]:
    maps = {f: np.load(folder / f"{stem}.{f}.npy") for f in ("cos", "sin", "width")}
    maps["pos"] = np.asarray(Image.open(folder / f"{stem}.pos.png")) / 255.0
    return maps


def test_a_folder_of_images_and_maps_loads_with_val_and_test_carved(tmp_path: Path) -> None:
    stems = write_grasps(tmp_path / "d", 30)
    data = load_dataset(_cfg(tmp_path / "d"))
    assert (len(data.train), len(data.val), len(data.test)) == (21, 3, 6)
    assert "carved from train" in data.origins["val"] and data.classes == ["maps"]
    assert data.image_shape == (1, SIDE, SIDE)
    seen = set()
    for split in (data.train, data.val, data.test):
        assert {f: tuple(t.shape[1:]) for f, t in split.targets.items()} == {
            f: (1, SIDE, SIDE) for f in FIELDS}
        for stem, maps in _maps_by_name(split).items():
            for f, values in _written(tmp_path / "d", stem).items():
                np.testing.assert_allclose(maps[f], values, atol=1e-7)
            seen.add(stem)
    assert seen == set(stems)
    # the image and its maps stay paired: the bright pixels are the position map's
    i = 0
    assert torch.equal(data.train.images[i, 0] > 128, data.train.targets["pos"][i, 0] > 0.5)


def _csv(path: Path, folder: Path, stems: list[str]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "pos", "cos", "sin", "width"])
        for s in stems:
            w.writerow([f"{folder.name}/{s}.png", f"{folder.name}/{s}.pos.png",
                        *(f"{folder.name}/{s}.{k}.npy" for k in ("cos", "sin", "width"))])


def test_split_folders_and_csvs_read_the_same_samples_and_maps(tmp_path: Path) -> None:
    root = tmp_path / "d"
    stems = {name: write_grasps(root / name, n, seed, name)
             for name, n, seed in (("train", 12, 0), ("val", 4, 1), ("test", 5, 2))}
    by_folder = load_dataset(_cfg(root))
    for name in stems:
        _csv(root / f"{name}.csv", root / name, stems[name])
    by_csv = load_dataset(DataConfig.model_validate({
        "source": "csv", "grayscale": True, "dense": {"fields": FIELDS},
        "csv": {k: str(root / f"{k}.csv") for k in stems}}))
    assert by_folder.origins["val"] == "folder val/" and by_csv.origins["val"].startswith("CSV")
    for name in stems:
        a, b = getattr(by_folder, name), getattr(by_csv, name)
        assert len(a) == len(stems[name])
        assert torch.equal(a.images, b.images)
        assert all(torch.equal(a.targets[f], b.targets[f]) for f in FIELDS)
    assert by_folder.identity["splits"] == by_csv.identity["splits"]


def test_the_fingerprint_covers_the_maps(tmp_path: Path) -> None:
    root = tmp_path / "d"
    write_grasps(root, 12)
    before = load_dataset(_cfg(root)).identity
    np.save(root / "g003.width.npy", np.load(root / "g003.width.npy") * 2)
    after = load_dataset(_cfg(root)).identity
    assert before["splits"] != after["splits"]  # the images are the same, a map is not


def _drop(root: Path) -> dict:
    (root / "g002.width.npy").unlink()
    return {}


def _reshape(root: Path) -> dict:
    np.save(root / "g002.cos.npy", np.zeros((SIDE - 1, SIDE), np.float32))
    return {}


def _orphan(root: Path) -> dict:
    (root / "g002.png").rename(root / "elsewhere.png")
    return {}


def _stray(root: Path) -> dict:
    np.save(root / "g002.npy", np.zeros((SIDE, SIDE), np.float32))
    return {}


def _rgb_map(root: Path) -> dict:
    Image.new("RGB", (SIDE, SIDE)).save(root / "g002.pos.png")
    return {}


def _channels(root: Path) -> dict:
    np.save(root / "g002.sin.npy", np.zeros((2, SIDE, SIDE), np.float32))
    return {}


@pytest.mark.parametrize(("spoil", "message"), [
    (_drop, r"image .*g002\.png has no map of field 'width': expected .*g002\.width\.npy "
            r"\(or \.png\); add it, or remove 'width' from data\.dense\.fields"),
    (_reshape, r"map .*g002\.cos\.npy has shape \[1, 15, 16\]; its image g002\.png is 16x16.*"
               r"fix the file"),
    (_orphan, r"map .*g002\.\w+\.\w+ has no image .*g002\.<ext> beside it; add the image"),
    (_stray, r"g002\.npy is no map: a map is <stem>\.<field>\.npy"),
    (_rgb_map, r"cannot read map .*g002\.pos\.png .*one channel.*save a multi-channel map"),
    (_channels, r"map .*g0\d\d\.sin\.npy has \d channels.*same channels; fix the file"),
    (lambda root: {"image_size": 32}, r"data\.image_size=32 would resize the 16x16 images but "
                                      r"not their maps; set data\.image_size=native"),
    (lambda root: {"dense": {"fields": []}}, r"data\.dense\.fields is empty"),
    (lambda root: {"labels_per_class": 2}, r"data\.labels_per_class does not apply"),
    (lambda root: {"source": "digits"}, r"set data\.source to folder or csv"),
])
def test_bad_map_files_are_refused_in_one_line_naming_the_file_and_the_fix(
        tmp_path: Path, spoil, message: str) -> None:
    root = tmp_path / "d"
    write_grasps(root, 8)
    extra = spoil(root)
    with pytest.raises(DataError, match=message) as info:
        load_dataset(_cfg(root, **extra))
    assert "\n" not in str(info.value)


def test_a_csv_without_a_fields_column_names_it(tmp_path: Path) -> None:
    root = tmp_path / "d"
    _csv(root / "train.csv", root / "g", write_grasps(root / "g", 6))
    cfg = DataConfig.model_validate({"source": "csv", "grayscale": True, "csv": {
        "train": str(root / "train.csv")}, "dense": {"fields": [*FIELDS, "depth"]}})
    with pytest.raises(DataError, match=r"train CSV .* has no column 'depth' \(a field of "
                                        r"data\.dense\.fields\); columns found"):
        load_dataset(cfg)


# ------------------------------------------------------------------ joint augmentation


def _augment(images: torch.Tensor, maps: dict[str, torch.Tensor], seed: int,
             shard: Shard | None = None, padding: int = 3) -> tuple:
    joint = JointAugment(("crop", "flip", "rot90"), padding, ("cos", "sin"))
    with seeded(seed):
        out = joint(images, maps, shard)
    with seeded(seed):
        draw = joint.draw(shard.total if shard else images.shape[0])
    return out, draw


def test_a_marked_pixel_lands_at_the_same_place_in_the_image_and_every_map() -> None:
    b = 64
    g = torch.Generator().manual_seed(0)
    where = torch.randint(0, SIDE * SIDE, (b,), generator=g)
    mark = torch.zeros(b, SIDE * SIDE)
    mark[torch.arange(b), where] = 1
    mark = mark.view(b, 1, SIDE, SIDE)
    images = (mark * 255).to(torch.uint8).repeat(1, 3, 1, 1)
    maps = {"pos": mark.clone(), "width": 2 * mark.repeat(1, 2, 1, 1)}
    (x, out), _ = _augment(images, maps, seed=1)
    assert x.dtype == torch.uint8 and x.shape == images.shape
    for field, t in out.items():
        assert torch.equal(x[:, :1] > 0, t[:, :1] > 0), field
        assert torch.equal(t.sum((1, 2, 3)), (t > 0).sum((1, 2, 3)) * maps[field].amax())
    moved = (x[:, 0] != images[:, 0]).flatten(1).any(1)
    assert moved.float().mean() > 0.8  # the marks did move, in most samples


def _expected_angles(theta: np.ndarray, offsets: np.ndarray, flip: bool, turns: int,
                     padding: int) -> tuple[np.ndarray, np.ndarray]:
    """cos 2θ', sin 2θ' of the transformed ground truth: the θ map's pixels moved with numpy,
    then each axis direction (d col, d row) = (cos θ, sin θ) mapped as the pixels are."""
    side = theta.shape[0]
    valid = np.pad(np.ones_like(theta), padding)[offsets[0]:offsets[0] + side,
                                                 offsets[1]:offsets[1] + side]
    theta = np.pad(theta, padding)[offsets[0]:offsets[0] + side, offsets[1]:offsets[1] + side]
    dc, dr = np.cos(theta), np.sin(theta)
    if flip:  # column c -> side - 1 - c
        theta, valid, dc = theta[:, ::-1], valid[:, ::-1], -dc[:, ::-1]
        dr = dr[:, ::-1]
    for _ in range(turns):  # np.rot90: pixel (r, c) -> (side - 1 - c, r), so (dc, dr) -> (dr, -dc)
        dc, dr = np.rot90(dr), np.rot90(-dc)
        valid = np.rot90(valid)
    new = np.arctan2(dr, dc)
    return np.cos(2 * new) * valid, np.sin(2 * new) * valid


def test_angle_fields_equal_those_of_the_transformed_ground_truth_angle() -> None:
    b, padding = 64, 3
    theta = torch.rand(b, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(2)) * math.pi
    maps = {"cos": torch.cos(2 * theta), "sin": torch.sin(2 * theta), "pos": torch.ones_like(theta)}
    images = torch.zeros(b, 1, SIDE, SIDE, dtype=torch.uint8)
    (_, out), draw = _augment(images, maps, seed=3, padding=padding)
    combos = set()
    for i in range(b):
        flip, turns = bool(draw.flips[i]), int(draw.turns[i])
        combos.add((flip, turns))
        cos, sin = _expected_angles(theta[i, 0].double().numpy(), draw.offsets[i].numpy(),
                                    flip, turns, padding)
        np.testing.assert_allclose(out["cos"][i, 0].numpy(), cos, atol=1e-5)
        np.testing.assert_allclose(out["sin"][i, 0].numpy(), sin, atol=1e-5)
    assert len(combos) == 8  # every flip x quarter-turn case was checked


def test_the_flip_and_quarter_turn_rules_on_one_axis() -> None:
    """θ = 30°: a flip gives −30° (cos 2θ kept, sin 2θ negated); a quarter turn 120° (both
    negated); a half turn 210° ≡ 30° (both kept)."""
    t = math.radians(30)
    maps = {"cos": torch.full((3, 1, 4, 4), math.cos(2 * t)),
            "sin": torch.full((3, 1, 4, 4), math.sin(2 * t))}
    draw = JointDraw(None, torch.tensor([True, False, False]), torch.tensor([0, 1, 2]))
    cos, sin = angle_signs(draw, 3, torch.device("cpu"))
    for i, degrees in enumerate((-30, 120, 210)):
        want = math.radians(degrees)
        assert float(maps["cos"][i, 0, 0, 0] * cos[i]) == pytest.approx(math.cos(2 * want))
        assert float(maps["sin"][i, 0, 0, 0] * sin[i]) == pytest.approx(math.sin(2 * want))


def test_the_draw_is_bit_equal_under_one_seed_and_a_shard_gets_its_rows() -> None:
    g = torch.Generator().manual_seed(4)
    images = torch.randint(0, 256, (12, 3, SIDE, SIDE), dtype=torch.uint8, generator=g)
    maps = {"cos": torch.randn(12, 1, SIDE, SIDE, generator=g),
            "sin": torch.randn(12, 1, SIDE, SIDE, generator=g)}
    (x1, t1), _ = _augment(images, maps, seed=5)
    (x2, t2), _ = _augment(images, maps, seed=5)
    (x3, _), _ = _augment(images, maps, seed=6)
    assert torch.equal(x1, x2) and all(torch.equal(t1[k], t2[k]) for k in maps)
    assert not torch.equal(x1, x3)
    (xs, ts), _ = _augment(images[4:8], {k: v[4:8] for k, v in maps.items()}, seed=5,
                           shard=Shard(4, 12))
    assert torch.equal(xs, x1[4:8]) and all(torch.equal(ts[k], t1[k][4:8]) for k in maps)


def test_move_refuses_nothing_and_rot90_needs_square_images() -> None:
    joint = JointAugment(("rot90",), 0)
    with pytest.raises(ValueError, match=r"rot90 but the images are 8x4, not square"):
        joint(torch.zeros(2, 1, 4, 8, dtype=torch.uint8), {})
    x = torch.arange(16.0).view(1, 1, 4, 4)
    draw = JointAugment(("crop",), 1).draw(1)
    assert move(x, draw, 0).equal(x)  # no padding: no shift


def test_one_angle_field_without_the_other_is_refused() -> None:
    cfg = DataConfig.model_validate({"dense": {"angle_fields": ["cos", "sin2"]}})
    with pytest.raises(ValueError, match=r"data\.dense\.angle_fields=\['cos', 'sin2'\] but the "
                                         r"targets have 'cos' and not the other"):
        joint_augmentation(cfg, ["pos", "cos", "sin"], SIDE)
    assert joint_augmentation(cfg.model_copy(update={"augment": "none"}), ["cos"], SIDE) is None


# ------------------------------------------------------------------ training from files


def _config(root: Path, runs: Path, *extra: str):
    return load_config(None, ["method={name: dense, aux_exit: s2}", "model.name=small_cnn",
                              "train.device=cpu", "data.source=folder", f"data.root={root}",
                              "data.grayscale=true", "data.dense.fields=[pos,cos,sin,width]",
                              "data.batch_size=8", f"run.dir={runs}", "run.progress=off",
                              "run.tensorboard=false", "run.plot=false", *extra])


def test_a_training_batch_moves_images_and_maps_together(tmp_path: Path) -> None:
    write_grasps(tmp_path / "d", 20)
    setup = build_setup(_config(tmp_path / "d", tmp_path / "runs"))
    idx = torch.arange(8)
    batch = make_batch(setup, idx, step=3)
    again = make_batch(setup, idx, step=3)
    assert all(torch.equal(batch[k], again[k]) for k in batch if k.startswith(("x_", "target_")))
    split = setup.data.train
    pixels = batch["x_lb"] * setup.data.std[0] + setup.data.mean[0]
    assert torch.equal(pixels > 0.5, batch["target_lb_pos"] > 0.5)  # the rectangle's pixels
    assert not torch.equal(batch["target_lb_pos"], split.targets["pos"][idx])  # it moved
    plain = build_setup(_config(tmp_path / "d", tmp_path / "runs", "data.augment=none"))
    still = make_batch(plain, idx, step=3)
    assert torch.equal(still["target_lb_cos"], split.targets["cos"][idx])


def test_auxilia_train_from_a_dense_folder_reports_each_fields_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "120")  # the final table at full width
    root = tmp_path / "d"
    for name, n, seed in (("train", 24, 0), ("val", 6, 1), ("test", 6, 2)):
        write_grasps(root / name, n, seed, name)
    args = ["train", "method={name: dense, aux_exit: s2}", "model.name=small_cnn",
            "train.device=cpu", "data.source=folder", f"data.root={root}", "data.grayscale=true",
            "data.dense.fields=[pos,cos,sin,width]", "data.batch_size=8", "train.steps=3",
            "train.eval_every=3", f"run.dir={tmp_path / 'runs'}", "run.name=grasp",
            "run.progress=off", "run.tensorboard=false", "run.plot=false"]
    assert main(args) == 0
    out = capsys.readouterr().out
    summary = json.loads(next((tmp_path / "runs").rglob("summary.json")).read_text())
    test = summary["best_val"]["test"]
    for field in FIELDS:
        assert test[f"s3/{field}_mse"] >= 0 and f"s2/{field}_mse" in test
        assert f"val/s3/{field}_mse" in summary["median_last_k"]
    assert test["loss"] == pytest.approx(sum(test[f"s3/{f}_mse"] for f in FIELDS))
    table = out[out.index("selected on val loss"):]
    for field in FIELDS:  # the final table: each exit's error on each field
        assert re.search(rf"s3 +│ {field} +│ +[\d.e-]+ +│ +[\d.e-]+ +│", table), table


@pytest.mark.parametrize(("override", "message"), [
    ("data.dense.fields=[pos, pos]", r"data\.dense\.fields must be distinct names"),
    ("data.dense.fields=[a.b]", r"data\.dense\.fields must be distinct names without '\.'"),
    ("data.dense.angle_fields=[cos, cos]", r"names one field twice \('cos'\)"),
    ("data.dense.augment=[zoom]", r"data\.dense\.augment"),
    ("data.dense.padding=-1", r"data\.dense\.padding"),
])
def test_bad_dense_settings_are_refused_naming_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])
