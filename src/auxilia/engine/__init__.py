"""The engine: the one training loop, evaluation, checkpoints and run folders."""

from auxilia.engine.loop import NonFiniteLossError, RunResult, train

__all__ = ["NonFiniteLossError", "RunResult", "train"]
