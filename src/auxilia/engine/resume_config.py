"""The config of ``auxilia train --resume RUN [key=value ...]``: the run's own ``config.yaml``
with the overrides on top, refusing the keys that would move the run (``run.name``,
``run.dir``): the folder resumed is RUN, wherever its config says it was."""

from __future__ import annotations

import json
from pathlib import Path

from auxilia.config import Config, ConfigError, apply_override, check_run_name, load_config
from auxilia.engine.runfolder import RunFolder

__all__ = ["resume_config"]


def resume_config(run_dir: Path, overrides: list[str]) -> Config:
    """The run's own config (``RUN/config.yaml``) with ``key=value`` overrides on top.

    The overrides may change only what does not change the results (``train.device``,
    ``run.progress``, ...); the check against the checkpoint then names any other key.
    """
    folder = RunFolder(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise NotADirectoryError(f"cannot resume: {run_dir} is a file, not a run folder; "
                                 "--resume takes the run folder (runs/<name>)")
    if not run_dir.is_dir():
        raise FileNotFoundError(f"cannot resume: run folder {run_dir} does not exist; start "
                                "the run without --resume")
    if not folder.config.is_file():
        raise FileNotFoundError(f"cannot resume: {folder.config} does not exist; is {run_dir} "
                                "an auxilia run folder?")
    config = load_config(folder.config, _refuse_moving_overrides(run_dir, overrides))
    # run.dir and run.name locate the folder being resumed, wherever it was moved
    config.run.dir, config.run.name = str(run_dir.parent), run_dir.name
    return config


def _refuse_moving_overrides(run_dir: Path, overrides: list[str]) -> list[str]:
    """Refuse ``run.name=``/``run.dir=`` overrides naming another place than ``run_dir``.

    The folder resumed is ``run_dir`` whatever its ``config.yaml`` says (it may have been
    moved), so these overrides cannot take effect; replacing them silently would let a user
    believe the run continues under the new name. Naming ``run_dir`` itself is harmless, in any
    spelling of the same place (``run.name=rr/``, ``run.dir=runs/``): the overrides returned
    then end with ``run.name=<the folder's name>``, which the run.name rule accepts. A name
    that is not a plain name at all is refused with that rule's own message.
    """
    overrides = list(overrides)
    raw: dict[str, object] = {}
    for item in overrides:
        apply_override(raw, item)
    run = raw.get("run")
    given = run if isinstance(run, dict) else {}
    # str(): run.name=123 names the folder 123; that YAML made it a number is load_config's to say
    name = str(given.get("name"))
    if "name" in given and name != run_dir.name:
        if name and Path(name) == Path(run_dir.name):  # rr/: the same folder
            overrides.append(f"run.name={json.dumps(run_dir.name)}")
        else:
            try:
                check_run_name(name)
            except ValueError as err:
                raise ConfigError(f"--resume: {err}") from None
            raise ConfigError(
                f"--resume: run.name cannot change on resume (it is the name of the run folder "
                f"{run_dir}, which is continued); to continue the run under another name, move "
                f"its folder (mv {run_dir} {run_dir.parent / name}) and resume that; to start a "
                "new run, leave out --resume")
    if "dir" in given and Path(str(given["dir"])).expanduser().resolve() != (
            run_dir.parent.resolve()):
        raise ConfigError(
            f"--resume: run.dir cannot change on resume (the run folder {run_dir} is "
            f"continued where it is); to continue it in {given['dir']}, move it there "
            f"(mv {run_dir} {Path(str(given['dir'])) / run_dir.name}) and resume that; to "
            "start a new run, leave out --resume")
    return overrides
