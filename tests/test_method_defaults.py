"""Methods' own defaults (auxilia.method_defaults): applied where the user set nothing, by
every path that makes a config, never over a key the user set."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from auxilia.compare.spec import Sweep, Variant, plan_sweep, quick_sweep
from auxilia.config import (
    Config,
    ConfigError,
    OptimConfig,
    ScheduleConfig,
    load_config,
    parse_config,
)
from auxilia.method_defaults import (
    SECTIONS,
    applied_method_defaults,
    declared_defaults,
    user_settings,
)
from auxilia.recipes import RECIPES
from auxilia.recipes.semi import FixMatchParams

ROOT = Path(__file__).resolve().parents[1]
FIXMATCH = {"name": "sgd", "lr": 0.03, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}


def _optim(config: Config) -> dict[str, object]:
    return {k: getattr(config.optim, k) for k in FIXMATCH}


def test_fixmatch_trains_with_its_own_optimizer_and_schedule_and_says_so() -> None:
    config = load_config(None, ["method=fixmatch"])
    assert _optim(config) == FIXMATCH
    assert config.schedule.name == "fixmatch_cosine"
    assert applied_method_defaults(config) == [
        "method defaults: fixmatch sets optim.lr=0.03, optim.nesterov=true, "
        "schedule.name=fixmatch_cosine (set a key to choose otherwise)"]
    supervised = load_config(None, ["method=supervised"])
    assert (supervised.optim.lr, supervised.optim.nesterov, supervised.schedule.name) == (
        0.05, False, "cosine")
    assert applied_method_defaults(supervised) == []


def test_mixmatch_and_uda_declare_their_papers_settings() -> None:
    mixmatch = load_config(None, ["method=mixmatch"])
    assert (mixmatch.optim.name, mixmatch.optim.lr, mixmatch.optim.weight_decay,
            mixmatch.schedule.name) == ("adamw", 0.002, 0.02, "constant")
    uda = load_config(None, ["method=uda"])
    assert _optim(uda) == FIXMATCH and uda.schedule.name == "fixmatch_cosine"
    both = load_config(None, ["method=[fixmatch, uda]"])  # they agree: no conflict
    assert "fixmatch and uda set" in applied_method_defaults(both)[0]


def test_every_declared_default_is_a_valid_setting_of_its_section() -> None:
    for name, recipe in RECIPES.items():
        by_section: dict[str, dict[str, object]] = {}
        for key, value in recipe.defaults.items():
            section, _, field = key.partition(".")
            assert section in SECTIONS, f"{name}: {key}"
            by_section.setdefault(section, {})[field] = value
        if by_section:
            assert recipe.defaults_source, name
        OptimConfig.model_validate(by_section.get("optim", {}))
        ScheduleConfig.model_validate(by_section.get("schedule", {}))


@pytest.mark.parametrize("how", ["override", "yaml", "dict", "python"])
def test_a_key_the_user_set_wins_over_the_method_default_on_every_path(
        how: str, tmp_path: Path) -> None:
    if how == "override":
        config = load_config(None, ["method=fixmatch", "optim.lr=0.1", "schedule.name=cosine"])
    elif how == "yaml":
        path = tmp_path / "c.yaml"
        path.write_text("method: fixmatch\noptim: {lr: 0.1}\nschedule: {name: cosine}\n")
        config = load_config(path)
    elif how == "dict":
        config = parse_config({"method": "fixmatch", "optim": {"lr": 0.1},
                               "schedule": {"name": "cosine"}})
    else:
        config = Config(method=[FixMatchParams()], optim=OptimConfig(lr=0.1),
                        schedule=ScheduleConfig(name="cosine"))
    assert (config.optim.lr, config.schedule.name) == (0.1, "cosine")
    assert config.optim.nesterov is True  # the key it did not set still takes the default
    assert applied_method_defaults(config) == [
        "method defaults: fixmatch sets optim.nesterov=true (set a key to choose otherwise)"]


def test_a_section_passed_in_python_is_not_changed() -> None:
    optim = OptimConfig(lr=0.1)
    Config(method=[FixMatchParams()], optim=optim)
    assert (optim.nesterov, optim.model_fields_set) == (False, {"lr"})


def test_a_config_reread_from_its_run_folder_is_the_same_config() -> None:
    config = load_config(None, ["method=fixmatch", "data.labels_per_class=10"])
    again = parse_config(yaml.safe_load(yaml.safe_dump(config.to_dict())))
    assert again.to_dict() == config.to_dict()
    assert applied_method_defaults(again) == []  # every key is set in config.yaml
    assert again.run_name() == config.run_name()
    # and the user's settings alone give it back too (a Config as a sweep's base)
    assert parse_config(user_settings(config)).to_dict() == config.to_dict()


def test_changing_the_methods_brings_the_new_ones_defaults_only() -> None:
    config = load_config(None, ["method=fixmatch", "optim.momentum=0.8"])
    config.method = load_config(None, ["method=supervised"]).method
    assert (config.optim.lr, config.optim.nesterov, config.schedule.name) == (
        0.05, False, "cosine")
    assert config.optim.momentum == 0.8


def test_two_methods_that_disagree_are_refused_in_one_line_naming_them_and_the_fix() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["method=[fixmatch, mixmatch]"])
    problem = str(err.value).splitlines()[1:]
    assert len(problem) == 1
    assert "fixmatch and mixmatch" in problem[0] and "optim.lr (fixmatch: 0.03, mixmatch: " \
        "0.002)" in problem[0] and "set optim.name=sgd optim.lr=0.03" in problem[0]
    settled = load_config(None, ["method=[fixmatch, mixmatch]", "optim.name=adamw",
                                 "optim.lr=0.001", "optim.weight_decay=0",
                                 "schedule.name=constant"])
    assert (settled.optim.name, settled.optim.lr, settled.optim.nesterov) == (
        "adamw", 0.001, True)
    assert declared_defaults(settled.method)[1].keys() == {
        "optim.name", "optim.lr", "optim.weight_decay", "schedule.name"}


@pytest.mark.parametrize("name", ["semi_digits_cpu", "semi_mnist_cpu"])
def test_configs_that_set_the_keys_train_exactly_as_written(name: str) -> None:
    path = ROOT / "configs" / f"{name}.yaml"
    written = yaml.safe_load(path.read_text())
    for method in ("fixmatch", "mixmatch", "uda", "mean_teacher", "supervised"):
        config = load_config(path, [f"method={method}"])
        assert config.optim.model_dump(include=set(written["optim"])) == written["optim"]
        assert config.schedule.name == written["schedule"]["name"]
        assert applied_method_defaults(config) == []


def _plans(base: str | Path | Config, tmp_path: Path) -> dict[str, Config]:
    sweep = Sweep("s", base, (Variant("supervised", "supervised", "supervised"),
                              Variant("fixmatch", "fixmatch", "fixmatch")), seeds=(0,),
                  overrides=(f"run.dir={tmp_path}", "optim.weight_decay=0.001",
                             "data.labels_per_class=10"), budget={"steps": 2})
    return {p.variant.label: p.config for p in plan_sweep(sweep)}


@pytest.mark.parametrize("kind", ["yaml", "config", "none"])
def test_a_sweep_gives_each_variant_its_methods_defaults_and_the_shared_overrides(
        kind: str, tmp_path: Path) -> None:
    path = tmp_path / "base.yaml"
    path.write_text("model: {name: small_cnn}\noptim: {momentum: 0.8}\n")
    base = {"yaml": path, "config": load_config(path), "none": None}[kind]
    plans = _plans(base, tmp_path)
    sup, fix = plans["supervised"], plans["fixmatch"]
    assert sup.optim.weight_decay == fix.optim.weight_decay == 0.001
    assert (sup.optim.lr, sup.optim.nesterov, sup.schedule.name) == (0.05, False, "cosine")
    assert (fix.optim.lr, fix.optim.nesterov, fix.schedule.name) == (
        0.03, True, "fixmatch_cosine")
    if kind != "none":
        assert sup.optim.momentum == fix.optim.momentum == 0.8


def test_a_quick_comparison_of_supervised_and_fixmatch_plans(tmp_path: Path) -> None:
    sweep = quick_sweep(None, "supervised,fixmatch", seeds=1,
                        overrides=(f"run.dir={tmp_path}", "optim.lr=0.01",
                                   "data.labels_per_class=10"))
    configs = [p.config for p in plan_sweep(sweep)]
    assert [c.optim.lr for c in configs] == [0.01, 0.01]
    assert [c.schedule.name for c in configs] == ["cosine", "fixmatch_cosine"]


def test_a_pipeline_on_a_config_gives_a_later_rounds_method_its_defaults(tmp_path: Path) -> None:
    from auxilia.engine.rounds import Pipeline, Round, plan_pipeline

    base = load_config(None, [f"run.dir={tmp_path}", "data.labels_per_class=10"])
    plans = plan_pipeline(Pipeline("p", base, (Round("sup"), Round("fm", ("method=fixmatch",)))))
    assert [(p.config.optim.lr, p.config.schedule.name) for p in plans] == [
        (0.05, "cosine"), (0.03, "fixmatch_cosine")]


def test_the_python_api_on_a_config_with_another_method_takes_its_defaults(
        tmp_path: Path) -> None:
    import auxilia

    base = load_config(None, [f"run.dir={tmp_path}", "run.name=r", "model.name=small_cnn",
                              "data.labels_per_class=5", "run.progress=off",
                              "run.tensorboard=false", "run.plot=false", "train.steps=2"])
    result = auxilia.train(base, method="fixmatch", optim__momentum=0.8)
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert (saved["optim"]["lr"], saved["optim"]["momentum"], saved["optim"]["nesterov"],
            saved["schedule"]["name"]) == (0.03, 0.8, True, "fixmatch_cosine")
