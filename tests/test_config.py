from __future__ import annotations

from pathlib import Path

import pytest

from auxilia.config import ConfigError, load_config, parse_config


def test_defaults_are_a_supervised_digits_run() -> None:
    config = load_config()
    assert config.data.source == "digits"
    assert [m.name for m in config.method] == ["supervised"]
    assert config.run_name() == "digits-small_cnn-supervised-s0"


def test_yaml_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("optim: {lr: 0.2}\nmethod: deep_supervision\n")
    config = load_config(path, ["optim.lr=1e-3", "method=[{name: deep_supervision, "
                                "exits: {s1: 0.5}}]", "schedule.milestones=[10, 20]"])
    assert config.optim.lr == pytest.approx(1e-3)
    assert config.method[0].exits == {"s1": 0.5}
    assert config.schedule.milestones == [10, 20]


def test_unknown_key_names_the_nearest_valid_key() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["data.batchsize=3"])
    assert "data.batchsize" in str(err.value)
    assert "did you mean 'batch_size'" in str(err.value)


def test_unknown_section_is_refused() -> None:
    with pytest.raises(ConfigError, match="optimizer: unknown key.*did you mean 'optim'"):
        parse_config({"optimizer": {"lr": 0.1}})


def test_wrong_type_names_path_and_expected_type() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["optim.lr=fast"])
    message = str(err.value)
    assert "optim.lr" in message and "float" in message and "'fast'" in message


def test_errors_are_collected_together() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.epochs=x", "model.nmae=resnet20"])
    assert "train.epochs" in str(err.value) and "model.nmae" in str(err.value)


def test_unknown_method_lists_valid_ones() -> None:
    with pytest.raises(ConfigError, match="unknown method 'deep_supervison'.*deep_supervision"):
        load_config(None, ["method=deep_supervison"])


def test_method_parameters_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"method\[0\]\.exit: unknown key.*'exits'"):
        load_config(None, ["method=[{name: deep_supervision, exit: {s3: 0.7}}]"])


def test_bad_override_syntax() -> None:
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["optim.lr"])


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text("seed: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_every_shipped_config_validates() -> None:
    configs = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        load_config(path)
