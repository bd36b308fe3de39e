"""When evaluation happens: ``train.eval_every`` in steps or epochs, ``train.test_eval``,
the summary and curves of runs that skip test, and the progress shown while evaluating."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from auxilia.config import ConfigError, load_config
from auxilia.engine import train
from auxilia.engine.reload import evaluate_run
from auxilia.engine.runlog import ProgressBar
from auxilia.engine.selection import TEST_EVAL_SHARE, evaluate_test_every_time
from auxilia.engine.selection import is_better as _is_better
from auxilia.report import curves_figure, summarize

# a noisy digits run: at lr 0.2 val stalls for a while, and at the last step, so "selected"
# skips test at some evaluations and still evaluates it at the end
NOISY = ["train.steps=30", "train.eval_every=1", "optim.lr=0.2", "train.test_eval=selected",
         "seed=2"]  # a seed whose val curve does not improve at the last step


def _records(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _evals(run_dir: Path) -> list[dict[str, Any]]:
    return [r for r in _records(run_dir) if "epoch" in r]


def _has_test(record: dict[str, Any]) -> bool:
    return any(k.startswith("test/") for k in record)


def _improving_steps(evals: list[dict[str, Any]]) -> list[int]:
    """Replays the selection on val (the loop's own rule) over the evaluation records."""
    steps, best = [], None
    for record in evals:
        if _is_better(record, best):
            steps.append(record["step"])
            best = {"val": {k[4:]: v for k, v in record.items() if k.startswith("val/")}}
    return steps


# ----------------------------------------------------------------------------- eval_every


@pytest.mark.parametrize(("given", "stored", "steps"), [
    (100, 100, 100), ("100 steps", 100, 100), ("1 step", 1, 1),
    ("2 epochs", "2 epochs", 38), ("0.5 epoch", "0.5 epochs", 10), ("2ep", "2 epochs", 38),
    ("1 Epoch", "1 epoch", 19), ("0.01 epochs", "0.01 epochs", 1), (None, None, 19),
])
def test_eval_every_takes_steps_or_epochs(given: object, stored: object, steps: int) -> None:
    train_cfg = load_config(None, []).train.model_copy()
    train_cfg.eval_every = given
    assert train_cfg.eval_every == stored  # one spelling per value: resume compares configs
    assert train_cfg.eval_every_steps(19) == steps


@pytest.mark.parametrize("bad", ["fast", "0", "-3", "true", "2.5", "'0 epochs'", "nanep",
                                 "'2 epochs please'", "[2]"])
def test_a_bad_eval_every_is_one_line_naming_the_key_and_the_forms(bad: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"train.eval_every={bad}"])
    (line,) = str(err.value).splitlines()[1:]
    assert line.strip().startswith("train.eval_every: expected a number of steps (100, "
                                   "'100 steps') or of epochs ('2 epochs', '0.5 epoch', '2ep')")


def test_eval_every_in_epochs_and_in_steps_gives_those_evaluation_steps(tiny_config) -> None:
    by_epoch = train(tiny_config("run.name=ep", "train.eval_every=1 epoch")).run_dir
    evals = _evals(by_epoch)
    assert [r["epoch"] for r in evals] == [1.0, 2.0]  # tiny_config trains 2 epochs
    spe = evals[0]["step"]
    half = train(tiny_config("run.name=half", "train.eval_every=0.5 epochs")).run_dir
    every = round(spe / 2)
    assert [r["step"] for r in _evals(half)] == [*range(every, 2 * spe, every), 2 * spe]
    steps = train(tiny_config("run.name=st", "train.eval_every=7")).run_dir
    assert [r["step"] for r in _evals(steps)] == [*range(7, 2 * spe, 7), 2 * spe]


# ----------------------------------------------------------------------------- test_eval


def test_selected_evaluates_test_exactly_at_improving_steps_and_the_last(tiny_config) -> None:
    result = train(tiny_config("run.name=sel", *NOISY))
    evals = _evals(result.run_dir)
    improving = _improving_steps(evals)
    tested = [r["step"] for r in evals if _has_test(r)]
    assert len(tested) < len(evals), "val improved at every step: the run proves nothing"
    assert evals[-1]["step"] not in improving, "the last step improved: it proves nothing"
    assert tested == [*improving, evals[-1]["step"]]
    summary = result.summary
    assert summary["last"] == {k: v for k, v in evals[-1].items() if "/" in k}
    best = summary["best_val"]
    assert best["step"] == improving[-1]
    fresh, checkpoint = evaluate_run(result.run_dir, "best", ("test",))
    assert checkpoint["loop"]["step"] == best["step"]
    assert best["test"] == pytest.approx(fresh["test"])


def test_test_eval_every_evaluates_test_at_every_evaluation(tiny_config) -> None:
    every = [o.replace("selected", "every") for o in NOISY]
    evals = _evals(train(tiny_config("run.name=every", *every)).run_dir)
    assert len(evals) == 30 and all(_has_test(r) for r in evals)


def test_without_a_val_split_test_is_evaluated_every_time(tiny_config) -> None:
    result = train(tiny_config("run.name=noval", "data.val_fraction=0", *NOISY))
    evals = _evals(result.run_dir)
    assert len(evals) == 30 and all(_has_test(r) for r in evals)
    assert result.summary["best_val"]["step"] == 30  # the latest evaluation is selected


def test_auto_rule_on_both_sides_of_its_boundary() -> None:
    between = 1000  # training images between two evaluations
    limit = int(TEST_EVAL_SHARE * between)
    assert evaluate_test_every_time("auto", 100, limit, between)
    assert not evaluate_test_every_time("auto", 100, limit + 1, between)
    assert evaluate_test_every_time("every", 100, 10**6, between)
    assert not evaluate_test_every_time("selected", 100, 1, between)
    assert evaluate_test_every_time("selected", 0, 10**6, between)  # no val: always


def test_auto_picks_selected_for_frequent_evaluations_and_every_for_rare_ones(
        tiny_config, capsys: pytest.CaptureFixture[str]) -> None:
    auto = [o.replace("selected", "auto") for o in NOISY]
    frequent = _evals(train(tiny_config("run.name=freq", *auto, "run.progress=plain")).run_dir)
    out = capsys.readouterr().out
    # 359 test images against 64 trained between evaluations: test only where it selects
    assert not all(_has_test(r) for r in frequent) and _has_test(frequent[-1])
    assert "train.test_eval=auto: 359 test images cost more than about 10 %" in out
    assert "evaluating val (180 images)" in out and "evaluating test (359 images)" in out
    # 359 test images against 20 x 64 = 1,280 trained between evaluations: test every time
    rare = _evals(train(tiny_config("run.name=rare", "train.steps=40", "train.eval_every=20",
                                    "run.progress=plain")).run_dir)
    assert [r["step"] for r in rare] == [20, 40] and all(_has_test(r) for r in rare)
    assert "test is evaluated only" not in capsys.readouterr().out


def _interrupt_at(step: int):
    def callback(current: int, losses: dict[str, float]) -> None:
        if current == step:
            os.kill(os.getpid(), signal.SIGINT)
    return callback


def test_resume_after_ctrl_c_with_selected_test_matches_an_uninterrupted_run(
        tiny_config) -> None:
    reference = train(tiny_config("run.name=straight", *NOISY))
    config = tiny_config("run.name=broken", *NOISY)
    skipped = [r["step"] for r in _evals(reference.run_dir) if not _has_test(r)]
    with pytest.raises(KeyboardInterrupt):  # stop inside a stretch where test is skipped
        train(config, callbacks=[_interrupt_at(skipped[0])])
    resumed = train(config, resume=True)
    for key in ("last", "best_val", "median_last_k"):
        assert resumed.summary[key] == reference.summary[key], key
    assert _evals(resumed.run_dir) == _evals(reference.run_dir)
    # (the training-loss line after a resume averages the steps since the resume only)
    assert len(_records(resumed.run_dir)) == len(_records(reference.run_dir))


# ----------------------------------------------------------------------------- summary, curves


def _eval_record(step: int, val: float, test: float | None) -> dict[str, Any]:
    record = {"step": step, "epoch": step / 10, "val/final/top1": val, "val/loss": 1.0}
    if test is not None:
        record["test/final/top1"] = test
    return record


def test_summary_medians_test_over_the_evaluations_that_have_it() -> None:
    evals = [_eval_record(1, 50, 40), _eval_record(2, 60, 55), _eval_record(3, 58, None),
             _eval_record(4, 59, None), _eval_record(5, 57, 52)]
    best = {"step": 2, "val": {"final/top1": 60}, "test": {"final/top1": 55}}
    summary = summarize(evals, best, k=4)
    assert summary["last"] == {"val/final/top1": 57, "val/loss": 1.0, "test/final/top1": 52}
    assert summary["best_val"]["test"] == {"final/top1": 55}
    median = summary["median_last_k"]
    assert median == {"k": 4, "k_test": 2, "val/final/top1": 58.5,
                      "test/final/top1": 53.5}  # 55 and 52: the skipped ones are not zeros


def test_curves_mark_test_points_and_say_when_test_was_selected_only() -> None:
    evals = [_eval_record(1, 50, 40), _eval_record(2, 48, None), _eval_record(3, 60, 55)]
    fig = curves_figure([{"step": 1, "train/loss": 2.0}, *evals])
    ax = fig.axes[1]
    assert ax.get_title() == "accuracy per exit (test at selected checkpoints)"
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines["test final"].get_xdata()) == [1, 3]
    assert lines["test final"].get_marker() == "o"
    assert list(lines["val final"].get_xdata()) == [1, 2, 3]
    every = curves_figure([_eval_record(1, 50, 40), _eval_record(2, 48, 41)])
    assert every.axes[1].get_title() == "accuracy per exit"


# ----------------------------------------------------------------------------- progress


def test_progress_shows_the_evaluation_then_the_training_line_again(
        capsys: pytest.CaptureFixture[str]) -> None:
    bar = ProgressBar(10, 0, "bar")
    try:
        bar.update(3, "loss 0.5")
        task = bar._bar.tasks[0]
        with bar.evaluating("val", 1000):
            assert task.description == "evaluating val (1,000 images)"
        assert task.description == "loss 0.5"
        with pytest.raises(RuntimeError), bar.evaluating("test", 5):
            raise RuntimeError("an evaluation that fails still gives the bar back")
        assert task.description == "loss 0.5"
    finally:
        bar.close()
    plain = ProgressBar(10, 0, "plain")
    with plain.evaluating("test", 12345):
        pass
    assert capsys.readouterr().out.splitlines()[-1] == "evaluating test (12,345 images)"
    with ProgressBar(10, 0, "off").evaluating("val", 3):
        pass
    assert capsys.readouterr().out == ""


def test_by_default_an_epoch_of_a_step_or_two_is_not_evaluated_every_step() -> None:
    import math

    from auxilia.engine.context import build_run
    from auxilia.engine.selection import eval_every
    from auxilia.engine.setup import build_setup

    def cadence(*overrides: str) -> tuple[int, int]:
        run = build_run(build_setup(load_config(None, ["train.steps=50", *overrides])))
        return eval_every(run), run.steps_per_epoch

    every, per_epoch = cadence()  # the full digits: once per epoch, as before
    assert every == per_epoch > 1
    # 10 labels per class: an epoch is one step; FixMatch evaluates the EMA and the student on
    # val and on the unlabeled monitor, so the steps between evaluations must pay for that
    every, per_epoch = cadence("method=fixmatch", "data.labels_per_class=10",
                               "model.name=small_cnn")
    assert per_epoch == 1
    evaluated = 2 * (180 + 1150)  # two models over val and the monitor (digits' 1,150 unlabeled)
    assert every == math.ceil(evaluated / (TEST_EVAL_SHARE * 64 * 15))  # 1 + 7 x 2 views of 64
    assert every > 1
    assert cadence("method=fixmatch", "data.labels_per_class=10", "model.name=small_cnn",
                   "train.eval_every=1")[0] == 1  # a cadence the user sets is kept
