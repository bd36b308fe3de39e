"""Default run names (auxilia.run_names): every setting that changes training is in the name,
nothing that does not, the same from a run folder's config.yaml, and never longer than allowed."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml

from auxilia.config import MAX_RUN_NAME, check_run_name, load_config, parse_config
from auxilia.run_names import RESULT_NEUTRAL_KEYS, differing_settings

TRAINING_CHANGES = [
    [], ["data.labels_per_class=10"], ["data.labels_per_class=20"], ["optim.lr=0.1"],
    ["optim.lr=0.10000001"], ["optim.name=adamw"], ["optim.nesterov=true"],
    ["schedule.name=multistep", "schedule.milestones=[10, 20]"],
    ["schedule.name=multistep", "schedule.milestones=[10, 30]"], ["train.steps=3"],
    ["train.epochs=3"], ["data.image_size=16"], ["data.views={x_lb: strong}"],
    ["model.kwargs={width: 8}"], ["model.weights=/a/w.pt"], ["model.weights=/b/w.pt"],
    ["data.unlabeled=extra"], ["train.amp=true"], ["seed=1"], ["method=deep_supervision"],
    ["method=[{name: deep_supervision, exits: {s1: 0.5}}]"],
    ["method=[deep_supervision, supervised]"], ["data.split_seed=3"],
]


def _name(*items: str) -> str:
    return load_config(None, ["model.name=small_cnn", *items]).run_name()


def test_the_defaults_keep_their_short_name() -> None:
    assert _name() == "digits-small_cnn-supervised-s0"
    assert load_config().run_name() == "digits-auto-supervised-s0"


def test_settings_that_differ_are_named_in_a_readable_form() -> None:
    assert _name("method=fixmatch", "data.labels_per_class=10", "optim.lr=0.1") == (
        "digits-small_cnn-fixmatch-s0-labels_per_class10-lr0.1")
    assert _name("optim.name=adamw", "optim.nesterov=true", "train.deterministic=false",
                 "schedule.milestones=[10, 20]", "train.epochs=3") == (
        "digits-small_cnn-supervised-s0-adamw-nesterov-milestones10_20-epochs3-"
        "no_deterministic")
    weights = _name("model.weights=/data/w.pt")
    assert re.fullmatch(r"digits-small_cnn-supervised-s0-weights~[0-9a-f]{6}", weights)


def test_every_setting_that_changes_training_changes_the_name() -> None:
    names = [_name(*items) for items in TRAINING_CHANGES]
    assert len(set(names)) == len(names), names


def test_a_method_parameter_is_named_and_qualified_when_two_methods_share_it() -> None:
    assert _name("method=[{name: fixmatch, ema_decay: 0.99}]").endswith(
        "-fixmatch-s0-ema_decay0.99")
    two = _name("method=[{name: fixmatch, weight: 2}, {name: pseudo_label, weight: 3}]",
                "schedule.name=cosine", "optim.lr=0.05", "optim.nesterov=false")
    assert "fixmatch.weight2" in two and "pseudo_label.weight3" in two


@pytest.mark.parametrize("item", ["run.progress=off", "run.tensorboard=false", "run.plot=false",
                                  "run.dir=elsewhere", "train.device=cpu", "train.log_every=7",
                                  "data.num_workers=2", "data.eval_batch_size=7",
                                  "data.root=/somewhere"])
def test_settings_that_do_not_change_training_are_left_out(item: str) -> None:
    assert _name(item) == "digits-small_cnn-supervised-s0"
    assert item.split("=")[0].startswith(RESULT_NEUTRAL_KEYS)


def test_a_methods_own_defaults_count_as_defaults() -> None:
    plain = _name("method=fixmatch")
    assert plain == "digits-small_cnn-fixmatch-s0"
    assert _name("method=fixmatch", "optim.lr=0.03", "schedule.name=fixmatch_cosine") == plain
    assert _name("method=fixmatch", "optim.lr=0.05") == plain + "-lr0.05"
    assert _name("method=supervised", "optim.lr=0.03") != _name("method=supervised")


def test_the_name_is_the_same_from_the_run_folders_config_yaml() -> None:
    config = load_config(None, ["method=fixmatch", "data.labels_per_class=10", "optim.lr=0.1",
                                "model.weights=w.pt", "train.epochs=2.0"])
    again = parse_config(yaml.safe_load(yaml.safe_dump(config.to_dict())))
    assert again.run_name() == config.run_name()
    assert config.run_name().endswith("-epochs2")


def test_the_name_and_its_hash_are_the_same_in_another_process() -> None:
    items = ["model.weights=/x/y.pt"] + [f"schedule.milestones=[{i}, {i + 1}]" for i in (1,)]
    code = ("import sys; from auxilia.config import load_config; "
            "print(load_config(None, sys.argv[1:]).run_name())")
    out = subprocess.run([sys.executable, "-c", code, *items], capture_output=True, text=True,
                         check=True, env={"PYTHONHASHSEED": "123"}).stdout.strip()
    assert out == load_config(None, items).run_name()


def test_a_long_name_is_cut_with_a_hash_of_everything_that_differs() -> None:
    many = ["data.labels_per_class=10", "data.views={x_lb: weak, x_lb2: strong}",
            "optim.lr=0.123456789", "optim.momentum=0.85", "optim.weight_decay=0.000123",
            "schedule.min_lr_ratio=0.0123", "schedule.warmup_epochs=1.5", "train.steps=12345",
            "train.eval_every=100", "data.val_fraction=0.15", "data.test_fraction=0.25"]
    first, second = (_name(*many, "method=[fixmatch, deep_supervision, ps_kd]",
                           f"train.keep_last_evals={k}") for k in (7, 8))
    for name in (first, second):
        assert len(name) <= MAX_RUN_NAME and check_run_name(name) == name
        assert re.search(r"-[0-9a-f]{8}$", name)
        assert "keep_last_evals" not in name  # cut off: only the hash tells them apart
    assert first != second


def test_run_name_wins_when_set() -> None:
    assert _name("run.name=mine", "optim.lr=0.2") == "mine"


def test_differing_settings_lists_keys_in_config_order() -> None:
    config = load_config(None, ["optim.lr=0.2", "data.labels_per_class=5", "train.steps=3"])
    assert [k for k, _ in differing_settings(config)] == [
        "data.labels_per_class", "optim.lr", "train.steps"]


def test_a_native_size_is_named_and_an_epochs_that_steps_or_time_replace_is_not() -> None:
    native = load_config(None, ["data.image_size=native"]).run_name()
    assert native.endswith("-image_sizenative")
    assert load_config(None, []).run_name() == "digits-auto-supervised-s0"
    for length in ("train.steps=5", "train.time=30s"):
        assert (load_config(None, [length, "train.epochs=3"]).run_name()
                == load_config(None, [length]).run_name())
    assert "epochs3" in load_config(None, ["train.epochs=3"]).run_name()
