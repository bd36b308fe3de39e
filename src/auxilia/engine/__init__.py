"""The engine: the one training loop, evaluation, checkpoints and run folders."""

from auxilia.engine.loop import NonFiniteLossError
from auxilia.engine.run import RunResult, train

__all__ = ["NonFiniteLossError", "RunResult", "train"]
