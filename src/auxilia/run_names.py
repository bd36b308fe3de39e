"""Default run folder names: ``<data>-<model>-<methods>-s<seed>``, then every setting that
differs from its default, so that two configs that train differently never share a folder.

A setting's default is its section's own default, or the default a configured method declares
(:mod:`auxilia.method_defaults`): ``fixmatch`` at its own lr adds nothing, at ``optim.lr=0.1``
it adds ``lr0.1``. Settings that do not change the results (:data:`RESULT_NEUTRAL_KEYS`: the
run's folder and displays, the device, logging cadence, decoding workers, evaluation batch size,
where the data lives) are left out. The name is a function of the config's values alone (no
path is resolved here but ``data.root``'s own name, no device is probed), so a run folder's
``config.yaml`` names the same folder on every machine. Past :data:`MAX_RUN_NAME` characters
the name keeps the settings that fit and ends with a stable hash (8 hex digits) of the whole.

Each differing setting is written ``<key><value>`` (``labels_per_class10``, ``lr0.1``);
``true`` as the key alone (``nesterov``), ``false`` as ``no_<key>``; a ``.name`` (optimizer,
schedule) as its value alone (``adamw``); a path, a mapping or an unusual string as
``<key>~<6 hex digits>`` of its value; a key whose last part is shared with another setting
in the name as its dotted path (``fixmatch.weight2``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from auxilia.method_defaults import canonical, declared_defaults

__all__ = ["MAX_RUN_NAME", "RESULT_NEUTRAL_KEYS", "data_name", "default_run_name",
           "differing_settings"]

MAX_RUN_NAME = 128
"""The longest run name (room is kept for the lock and replacement names beside it)."""

RESULT_NEUTRAL_KEYS = ("run.progress", "run.tensorboard", "run.plot", "run.dir", "run.name",
                       "train.log_every", "train.device", "data.num_workers",
                       "data.eval_batch_size", "data.root")
"""Settings (dotted prefixes) that do not change a run's results: a resume may change them,
and run names leave them out. ``train.device`` picks the hardware, not the experiment (the same
config continued on another machine is the same run); ``data.root`` says where the data is
(``folder``/``csv`` data name their folder in the name's data part)."""

IN_BASE = ("seed", "data.source", "model.name")
"""Settings the name's first part already shows."""
UNSIZED = ("auto", None)
"""``data.image_size`` values left out: ``auto`` (the size it picks is not a setting of the
user's). ``native`` is named: it trains at another size than ``auto`` picks for large images."""
_PLAIN = re.compile(r"[A-Za-z0-9_.+]{1,24}")
_DIFFERENT = object()  # the default of a key two methods declare differently: every value differs


def default_run_name(config: Any) -> str:
    """``<data>-<model>-<methods>-s<seed>[-<setting>...]`` for a :class:`~auxilia.config.Config`
    (see the module docstring), at most :data:`MAX_RUN_NAME` characters."""
    methods = "+".join(m.name for m in config.method)
    model = config.model.name.replace("/", "-")
    base = f"{data_name(config.data)}-{model}-{methods}-s{config.seed}"
    settings = differing_settings(config)
    leaves = Counter(_leaf(key) for key, _ in settings)
    items = [_item(_label(key, leaves), value) for key, value in settings]
    full = "-".join([base, *items])
    if len(full) <= MAX_RUN_NAME:
        return full
    digest = hashlib.sha1(full.encode()).hexdigest()[:8]
    room = MAX_RUN_NAME - len(digest) - 1
    kept = base[:room]
    for item in items:  # whole settings only, as many as fit before the hash
        if len(kept) + 1 + len(item) > room:
            break
        kept = f"{kept}-{item}"
    return f"{kept.rstrip('-._~')}-{digest}"


def differing_settings(config: Any) -> list[tuple[str, Any]]:
    """The settings that differ from their defaults and change what is trained, as
    ``(dotted key, value)`` in the config's order; a method's parameters are keyed
    ``<method>.<param>`` (``<method>[i].<param>`` for a method listed twice)."""
    values, conflicts = declared_defaults(config.method)
    reference = {**values, **dict.fromkeys(conflicts, _DIFFERENT)}
    out: list[tuple[str, Any]] = []
    for name, info in type(config).model_fields.items():
        if name == "method":
            out.extend(_method_settings(config.method))
            continue
        value = getattr(config, name)
        default = info.get_default(call_default_factory=True)
        out.extend(_differences(name, _dump(value), _dump(default), reference))
    train = config.train  # train.steps or train.time replace train.epochs, which is unused
    unused = ("train.epochs",) if train.steps is not None or train.time is not None else ()
    return [(k, v) for k, v in out if not k.startswith((*RESULT_NEUTRAL_KEYS, *IN_BASE))
            and not (k == "data.image_size" and v in UNSIZED) and k not in unused]


def data_name(data: Any) -> str:
    """``folder-<root's name>`` / ``csv-<name>`` tell two datasets of one source apart; other
    sources are their name."""
    if data.source not in ("folder", "csv"):
        return str(data.source)
    anchor = data.root or (data.csv.train if data.csv is not None else None)
    if anchor is None:
        return str(data.source)
    path = Path(anchor).expanduser()
    name = (path.resolve().name if data.root else path.stem) or "data"
    plain = "".join(c if c.isalnum() or c in "-_+" else "_" for c in name).lstrip("._")
    return f"{data.source}-{plain[:40] or 'data'}"


def _method_settings(methods: list[Any]) -> list[tuple[str, Any]]:
    counts = Counter(m.name for m in methods)
    out: list[tuple[str, Any]] = []
    for i, method in enumerate(methods):
        where = method.name if counts[method.name] == 1 else f"{method.name}[{i}]"
        default = type(method)(name=method.name)
        out.extend(_differences(where, _dump(method), _dump(default), {}))
    return [(k, v) for k, v in out if not k.endswith(".name")]


def _differences(key: str, value: Any, default: Any, reference: dict[str, Any]
                 ) -> list[tuple[str, Any]]:
    """``value``'s settings unlike ``reference``'s (a method's default) or ``default``'s; a
    section is compared key by key, a mapping field (``model.kwargs``) as one value."""
    if isinstance(value, dict) and isinstance(default, dict) and default:
        return [item for sub in value for item in _differences(
            f"{key}.{sub}", value[sub], default.get(sub), reference)]
    wanted = reference.get(key, default)
    return [] if wanted is not _DIFFERENT and _same(value, wanted) else [(key, value)]


def _dump(value: Any) -> Any:
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def _same(a: Any, b: Any) -> bool:
    return json.dumps(canonical(a), sort_keys=True) == json.dumps(canonical(b), sort_keys=True)


def _leaf(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _label(key: str, leaves: Counter[str]) -> str:
    """A ``.name`` (optimizer, schedule: the value says which) has none; a last part shared by
    two settings of the name is its dotted path; any other, its last part."""
    leaf = _leaf(key)
    return "" if leaf == "name" else key if leaves[leaf] > 1 else leaf


def _item(label: str, value: Any) -> str:
    """One setting as a part of the name (see the module docstring)."""
    if value is True:
        return label or "true"
    if value is False:
        return f"no_{label}"
    if value is None:
        return f"{label}_none"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return f"{label}{int(value)}"
    if isinstance(value, int | float):
        return f"{label}{value!r}"
    if isinstance(value, str) and _PLAIN.fullmatch(value):
        return f"{label}{value}"
    if (isinstance(value, list) and 0 < len(value) <= 4
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)):
        return label + "_".join(_item("", v) for v in value)
    digest = hashlib.sha1(json.dumps(value, sort_keys=True).encode()).hexdigest()[:6]
    return f"{label}~{digest}"
