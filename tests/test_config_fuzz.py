"""Fuzzed configurations: a valid Config or a ConfigError naming the key, nothing else.

Random ``key=value`` overrides (real dotted keys and junk, random YAML scalars) and random nested
dicts go through :func:`load_config` / :func:`parse_config` and through the command line.
``AUXILIA_FUZZ_EXAMPLES`` (default 120) sets the number of examples.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

import auxilia.engine
from auxilia.cli import main as cli
from auxilia.config import Config, ConfigError, load_config, parse_config, set_dotted


def _keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        sub = next((a for a in (field.annotation, *getattr(field.annotation, "__args__", ()))
                    if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if sub is not None:
            keys += _keys(sub, f"{prefix}{name}.")
    return keys


REAL_KEYS = [*_keys(Config), "method.name", "method[0]",
             "method.exits", "method.weight"]
JUNK_KEY = st.text(st.sampled_from("abcxyz_.- 0[]=:#"), max_size=12).filter(
    lambda k: not k.startswith("-"))
KEY = st.sampled_from(REAL_KEYS) | JUNK_KEY
SCALARS = ["0", "1", "-1", "3", "64", "0.5", "1e-3", "1.0e+400", "99999999999999999999", "true",
           "false", "off", "on", "yes", "null", "~", "''", '"x"', "[]", "{}", "[1, 2]", "[a, b]",
           "{a: 1}", "{name: supervised}", ".inf", "-.inf", ".nan", "abc", "resnet20", "sgd",
           "adamw", "cosine", "multistep", "deep_supervision", "supervised", "digits", "folder",
           "csv", "skip", "stop", "bfloat16", "cpu", "!!python/name:os.system",
           "!!python/object/apply:os.system [ls]", "&a [1]", "*a", "{", "]", "- x", "a: b",
           "[[[[1]]]]", "\t", "#", "@", "%YAML 1.1", "? a"]
VALUE = st.sampled_from(SCALARS) | st.text(max_size=10)
OVERRIDE = st.builds(lambda k, v: f"{k}={v}", KEY, VALUE)
EXAMPLES = int(os.environ.get("AUXILIA_FUZZ_EXAMPLES", "120"))  # raise it to fuzz longer
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


def _head(key: str) -> str:
    """The section an override or raw key touches, as error messages spell it."""
    return str(key).partition("=")[0].strip().split(".")[0].split("[")[0]


def _check(result: Config | ConfigError, touched: list[str]) -> None:
    if isinstance(result, ConfigError):
        message = str(result)
        assert any(_head(k) in message for k in touched), (touched, message)
    else:  # a valid config survives its own round trip (config.yaml, checkpoints, resume)
        assert isinstance(result, Config)
        again = parse_config(result.to_dict())
        assert json.dumps(again.to_dict()) == json.dumps(result.to_dict())


def _load(overrides: list[str]) -> Config | ConfigError:
    try:
        return load_config(None, overrides)
    except ConfigError as err:
        return err


@FUZZ
@given(st.lists(OVERRIDE | JUNK_KEY, min_size=1, max_size=4))
def test_random_overrides_give_a_config_or_a_config_error(overrides: list[str]) -> None:
    _check(_load(overrides), overrides)


@FUZZ
@given(KEY, VALUE)
def test_one_bad_override_is_named(key: str, value: str) -> None:
    result = _load([f"{key}={value}"])
    if isinstance(result, ConfigError) and key.strip(" .") and "=" not in key:
        head = _head(key)
        assert head in str(result), (key, value, str(result))


_LEAF = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
_TREE = st.recursive(_LEAF, lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=6) | st.integers(), inner, max_size=3),
                     max_leaves=12)


@FUZZ
@given(st.dictionaries(st.sampled_from(REAL_KEYS) | st.text(max_size=6), _TREE, max_size=4))
def test_random_nested_dicts_give_a_config_or_a_config_error(paths: dict[str, Any]) -> None:
    raw: dict[str, Any] = {}
    for key, value in paths.items():
        if key.strip("."):
            set_dotted(raw, key, value)
    try:
        result: Config | ConfigError = parse_config(raw)
    except ConfigError as err:
        result = err
    _check(result, list(raw))


class _Stop(KeyboardInterrupt):
    """Raised by the stand-in for training: the config was valid."""


@settings(max_examples=EXAMPLES // 2, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(OVERRIDE, min_size=1, max_size=3))
def test_cli_reports_bad_overrides_in_one_error_line(overrides: list[str]) -> None:
    def train(*args: Any, **kwargs: Any) -> None:
        raise _Stop

    err = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(err):
        mp.setattr(auxilia.engine, "train", train)
        code = cli(["train", *overrides])
    text = err.getvalue()
    if code == 130:  # valid: training would have started
        assert isinstance(_load(overrides), Config)
        return
    assert code == 2, (overrides, text)
    assert text.startswith("error: ") and text.count("error:") == 1, text
    assert "Traceback" not in text
    assert any(_head(k) in text for k in overrides), (overrides, text)


_YAML_LINE = st.builds(lambda indent, key, value: f"{'  ' * indent}{key}: {value}",
                       st.integers(0, 2), st.sampled_from(REAL_KEYS) | JUNK_KEY,
                       st.sampled_from(SCALARS))


@FUZZ
@given(st.lists(_YAML_LINE | st.text(max_size=20), max_size=6))
def test_random_yaml_files_give_a_config_or_a_config_error(
        tmp_path_factory: pytest.TempPathFactory, lines: list[str]) -> None:
    path = tmp_path_factory.getbasetemp() / "fuzz.yaml"
    path.write_text("\n".join(lines) + "\n")
    try:
        result: Config | ConfigError = load_config(path)
    except ConfigError as err:
        result = err
    if isinstance(result, ConfigError) and "fuzz.yaml" in str(result):
        return  # not YAML, or not a mapping: the file is named
    parsed = yaml.safe_load(path.read_text()) if isinstance(result, ConfigError) else {}
    _check(result, list(parsed or {}))  # the file parsed: one of its keys is named
