"""auxilia: train image classifiers with auxiliary supervision."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__version__ = "0.1.0"


def train(config: Any = None, *, resume: bool = False, overwrite: bool = False,
          teacher: Any = None, **overrides: Any) -> Any:
    """Train a run and return its :class:`~auxilia.engine.RunResult`.

    Args:
        config: a :class:`~auxilia.config.Config`, a path to a YAML file, a nested dict, or None
            for the defaults.
        resume: continue the run folder's last checkpoint exactly.
        overwrite: replace an existing run folder.
        teacher: a run folder (``teacher.run``), a ``teacher:`` section as a dict, or any
            ``torch.nn.Module`` as the teacher of ``kd``/``hints`` (logits, or a
            dict of outputs), wrapped by :class:`auxilia.teachers.ModuleTeacher`; give a
            ``ModuleTeacher(module, exits={"s2": "layer2"})`` to expose intermediate features.
        **overrides: dotted keys written with ``__`` for the dots, e.g. ``optim__lr=0.1``.

    Example:
        >>> result = auxilia.train("configs/demo.yaml", train__epochs=5)  # doctest: +SKIP
        >>> result.test_top1  # doctest: +SKIP
    """
    from auxilia.config import Config, parse_config, read_yaml, set_dotted
    from auxilia.engine import train as engine_train
    from auxilia.method_defaults import user_settings

    if isinstance(config, Config):  # what its user set: an overridden method brings its defaults
        raw = user_settings(config)
    elif isinstance(config, dict):
        raw = dict(config)
    elif config is not None:
        raw = read_yaml(Path(config))
    else:
        raw = {}
    if isinstance(teacher, str | Path):  # a run folder or checkpoint: teacher.run
        teacher = {"run": str(teacher)}
    if isinstance(teacher, dict):  # the config's teacher section
        raw["teacher"], teacher = teacher, None
    for key, value in overrides.items():
        set_dotted(raw, key.replace("__", "."), value)
    return engine_train(parse_config(raw), resume=resume, overwrite=overwrite, teacher=teacher)


__all__ = ["__version__", "train"]
