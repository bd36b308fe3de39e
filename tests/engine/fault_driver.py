"""Runs ``auxilia.engine.train`` in a child process and SIGKILLs it at a chosen point.

Used by ``test_faults.py``: ``python fault_driver.py '<json>'`` with the keys

* ``overrides``: ``key=value`` items for :func:`auxilia.config.load_config`;
* ``resume`` / ``overwrite``: passed to ``train``;
* ``fault``: ``"step"`` (kill after optimizer step ``at``), ``"eval"`` (kill half-way through
  evaluation round ``at``: after its val split, before its test split), ``"write"`` (the
  ``at``-th atomic write of ``checkpoints/<file>`` writes ``fraction`` of its bytes, then the
  process is killed) or ``None``.

The monkeypatches live in this child only.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any


def _kill() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_at_step(at: int) -> Any:
    def callback(step: int, losses: dict[str, float]) -> None:
        if step == at:
            _kill()
    return callback


def _kill_during_eval(at: int) -> None:
    from auxilia.engine import evaluate as evaluate_module

    real, calls = evaluate_module.evaluate, [0]

    def evaluate(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == 2 * at:  # round ``at`` has evaluated val; die before test
            _kill()
        return real(*args, **kwargs)

    evaluate_module.evaluate = evaluate  # what every Evaluator of the run calls


def _kill_during_write(at: int, file: str, fraction: float) -> None:
    from auxilia.engine import checkpoint

    real, calls = checkpoint.atomic_write, [0]

    def atomic_write(path: Path, write: Any) -> None:
        if path.name == file:
            calls[0] += 1
            if calls[0] == at:
                def torn(f: Any) -> None:
                    buffer = io.BytesIO()
                    write(buffer)
                    data = buffer.getvalue()
                    f.write(data[: int(len(data) * fraction)])
                    f.flush()
                    os.fsync(f.fileno())
                    _kill()

                return real(path, torn)
        return real(path, write)

    checkpoint.atomic_write = atomic_write


def main(spec: dict[str, Any]) -> None:
    from auxilia.config import load_config
    from auxilia.engine import train

    callbacks = []
    if spec.get("fault") == "step":
        callbacks.append(_kill_at_step(spec["at"]))
    elif spec.get("fault") == "eval":
        _kill_during_eval(spec["at"])
    elif spec.get("fault") == "write":
        _kill_during_write(spec["at"], spec["file"], spec["fraction"])
    config = load_config(None, spec["overrides"])
    train(config, resume=spec.get("resume", False), overwrite=spec.get("overwrite", False),
          callbacks=callbacks)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
