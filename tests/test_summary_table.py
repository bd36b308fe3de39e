"""The final table (auxilia.summary_table, cli._print_summary): every evaluated model at its own
selected checkpoint, the deployed one marked and why it is deployed."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console

from auxilia.cli import _print_summary
from auxilia.config import load_config
from auxilia.recipes import deploy_reason
from auxilia.summary_table import deployed_line, summary_table


def _model(step: int, val: float, test: float, last: float) -> dict[str, Any]:
    return {"best_val": {"step": step, "val": {"final/top1": val},
                         "test": {"final/top1": test, "final/top5": 90.0}},
            "last": {"test/final/top1": last}, "median_last_k": {}}


def _summary(**extra: Any) -> dict[str, Any]:
    return {"run": "runs/r", "exits": ["s1", "final"], "steps": 10, "train_seconds": 1.0,
            "train_images_per_s": 5.0, "params": {"total": 10, "trainable": 10, "deployed": 8},
            **_model(8, 27.0, 27.6, 27.1), **extra}


def _text(summary: dict[str, Any]) -> str:
    console = Console(file=io.StringIO(), width=200)
    console.print(summary_table(summary))
    return console.file.getvalue()  # type: ignore[attr-defined]


def test_every_evaluated_model_is_listed_at_its_own_checkpoint_with_the_deployed_first() -> None:
    summary = _summary(deployed="ema", models={"student": _model(6, 30.4, 30.5, 32.0),
                                               "ema": _model(8, 27.0, 27.6, 27.1)},
                       deployed_because="FixMatch deploys the EMA")
    rows = [line for line in _text(summary).splitlines() if "final" in line]
    assert len(rows) == 2
    assert "ema (deployed)" in rows[0] and "27.60" in rows[0] and " 8 " in rows[0]
    assert "student" in rows[1] and "30.50" in rows[1] and "32.00" in rows[1] and " 6 " in rows[1]
    assert deployed_line(summary) == "deployed: ema (FixMatch deploys the EMA)"


def test_a_single_model_keeps_the_exit_table_and_says_nothing_about_deployment() -> None:
    summary = _summary(deployed="student")
    text = _text(summary)
    assert "selected on val at step 8" in text and "27.60" in text and "model" not in text
    assert deployed_line(summary) is None


def test_a_peer_beside_the_student_says_the_student_is_deployed() -> None:
    summary = _summary(deployed="student", models={"student": _model(8, 27.0, 27.6, 27.1),
                                                   "peer": _model(4, 25.0, 25.5, 25.0)})
    assert "peer" in _text(summary)
    assert deployed_line(summary) == "deployed: student (the student is deployed)"


def test_print_summary_prints_the_table_and_the_reason(capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    _print_summary(_summary(deployed="ema", models={"student": _model(6, 30.4, 30.5, 32.0),
                                                    "ema": _model(8, 27.0, 27.6, 27.1)},
                            deployed_because="why [not]"))
    out = capsys.readouterr().out
    assert "student" in out and "deployed: ema (why [not])" in out and "10 steps" in out


@pytest.mark.parametrize(("method", "deployed", "expected"), [
    ("fixmatch", "ema", "FixMatch evaluates and deploys the EMA of the student's weights (decay "
                        "0.999), as the paper does; fixmatch.deploy=student deploys the student"),
    ("[{name: fixmatch, deploy: student}]", "student", "the student is deployed"),
    ("[{name: pi_model, ema_decay: 0.99}]", "ema", "Π-model evaluates and deploys the EMA of "
     "the student's weights (decay 0.99), as pi_model.ema_decay asks; pi_model.deploy=student "
     "deploys the student"),
    ("supervised", "student", "the student is deployed"),
])
def test_each_method_says_why_its_deployed_model_is_deployed(method: str, deployed: str,
                                                              expected: str) -> None:
    assert deploy_reason(load_config(None, [f"method={method}"]).method, deployed) == expected
