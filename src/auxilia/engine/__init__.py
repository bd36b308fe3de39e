"""The engine: the one training loop, evaluation, checkpoints and run folders."""

from auxilia.engine.run import RunResult, train
from auxilia.engine.stepper import NonFiniteLossError

__all__ = ["NonFiniteLossError", "RunResult", "train"]
