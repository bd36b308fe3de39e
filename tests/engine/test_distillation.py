"""Distillation end to end: teachers from runs, files and modules; frozen, in eval mode, never
changed; regressors and adaptation layers trained and never exported; pipelines resumable."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from torch import nn

import auxilia
from auxilia.config import ConfigError, load_config
from auxilia.engine import train
from auxilia.engine.checkpoint import load_checkpoint
from auxilia.engine.context import build_run
from auxilia.engine.export import export_run
from auxilia.engine.rounds import load_pipeline, run_pipeline
from auxilia.engine.setup import build_setup
from auxilia.models.multi_exit import MultiExitModel
from auxilia.teachers import InputAdapter, ModuleTeacher, weights_checksum

TINY = ["run.progress=off", "run.tensorboard=false", "run.plot=false", "data.batch_size=32",
        "train.steps=12", "train.eval_every=6", "train.device=cpu"]


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CDS-trained teacher on the embedded digits (projection heads on every stage)."""
    runs = tmp_path_factory.mktemp("teacher") / "runs"
    config = load_config(None, [*TINY, f"run.dir={runs}", "run.name=teacher", "method=cds",
                                "model.kwargs={widths: [48, 96, 160]}", "train.steps=40"])
    return train(config).run_dir


def _student(runs: Path, name: str, method: str, *extra: str):
    return load_config(None, [*TINY, f"run.dir={runs}", f"run.name={name}", f"method={method}",
                              *extra])


@pytest.mark.parametrize("method", ["kd", "hints", "cds_kd", "[kd, cds]", "[hints, kd]",
                                    "[kd, deep_supervision]", "[kd, byot]"])
def test_a_run_teacher_stays_bit_identical_and_is_reported(
        method: str, teacher_run: Path, tmp_path: Path) -> None:
    before = load_checkpoint(teacher_run / "checkpoints" / "best.pt")["model"]
    result = train(_student(tmp_path, "s", method, f"teacher.run={teacher_run}"))
    report = result.summary["teacher"]
    assert report["unchanged"] and report["sha256"] == report["sha256_end"]
    assert str(teacher_run) in report["source"]
    assert 0 <= report["val"]["top1"] <= 100 and 0 <= report["test"]["top1"] <= 100
    after = load_checkpoint(teacher_run / "checkpoints" / "best.pt")["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_the_teachers_accuracy_is_its_own(teacher_run: Path, tmp_path: Path) -> None:
    """Evaluated on the student's splits, the teacher scores what its own run recorded."""
    own = json.loads((teacher_run / "summary.json").read_text())["best_val"]
    result = train(_student(tmp_path, "s", "kd", f"teacher.run={teacher_run}"))
    assert result.summary["teacher"]["test"]["top1"] == pytest.approx(own["test"]["final/top1"])


class Recorder(nn.Module):
    """A plain classifier that records, at every call, its mode and whether grad was on."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(),
                                 nn.Linear(32, classes))
        self.calls: list[tuple[bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((self.training, torch.is_grad_enabled()))
        return self.net(x)


def test_a_module_teacher_runs_in_eval_mode_without_grad_at_every_step(tmp_path: Path) -> None:
    teacher = Recorder()
    teacher.train()  # as a user might hand it over: the run must put it in eval mode
    state = {k: v.clone() for k, v in teacher.state_dict().items()}
    result = auxilia.train(_student(tmp_path, "m", "kd"), teacher=teacher)
    steps = [c for c in teacher.calls]
    assert len(steps) >= 12 and all(c == (False, False) for c in steps)
    assert all(torch.equal(state[k], v) for k, v in teacher.state_dict().items())
    assert result.summary["teacher"]["unchanged"]
    assert "Recorder" in result.summary["teacher"]["source"]


def test_hint_regressor_and_adaptation_layers_train_and_are_never_exported(
        teacher_run: Path, tmp_path: Path) -> None:
    # the student's widths differ from the teacher's: cds_kd needs linear adaptation layers
    config = _student(tmp_path, "h", "[hints, cds_kd]", f"teacher.run={teacher_run}")
    run = build_run(build_setup(config))
    optimized = {id(p) for opt in run.optimizers.values() for g in opt.torch.param_groups
                 for p in g["params"]}
    regressor = list(run.student.heads["s2__fitnet"].parameters())
    adapters = [p for name, term in run.objective.terms.items() if name.startswith("proj_kd")
                for p in term.parameters()]
    assert regressor and adapters
    assert all(id(p) in optimized for p in regressor + adapters)
    assert not any(id(p) in optimized for p in run.models["teacher"].parameters())
    result = train(config)
    out = export_run(result.run_dir, "state_dict", tmp_path / "model.safetensors")
    from safetensors.torch import load_file

    keys = set(load_file(str(out.path)))
    assert keys and not any("heads" in k or "adapt" in k for k in keys)
    assert out.params_exported == sum(p.numel() for p in result.model.strip().parameters())
    assert out.params_trained > out.params_exported  # the regressor was trained, not exported


def test_a_teacher_that_trained_on_the_students_test_images_is_refused(
        teacher_run: Path, tmp_path: Path) -> None:
    # another split seed: the student's test images were in the teacher's training split
    config = _student(tmp_path, "leak", "kd", f"teacher.run={teacher_run}", "data.split_seed=3")
    with pytest.raises(ConfigError, match="trained on .* of the student's .* test images"):
        build_setup(config)


def test_a_recipe_without_a_teacher_says_how_to_give_one(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kd distils a teacher.*teacher.run="):
        build_setup(_student(tmp_path, "x", "kd"))
    with pytest.raises(ConfigError, match="teacher.model='small_cnn' needs teacher.weights"):
        build_setup(_student(tmp_path, "x", "kd", "teacher.model=small_cnn"))


def test_a_model_name_teacher_with_local_weights(teacher_run: Path, tmp_path: Path) -> None:
    """teacher.model + teacher.weights: a run's checkpoint gives backbone and classifier."""
    ckpt = teacher_run / "checkpoints" / "best.pt"
    config = _student(tmp_path, "w", "kd", "teacher.model=small_cnn", f"teacher.weights={ckpt}",
                      "teacher.kwargs={widths: [48, 96, 160]}")
    setup = build_setup(config)
    run_teacher = build_setup(_student(tmp_path, "r", "kd", f"teacher.run={teacher_run}"))
    x = setup.eval_view(setup.data.test.images[:8])
    a = setup.objective.slots["teacher"].model(x)["final"]["logits"]
    b = run_teacher.objective.slots["teacher"].model(x)["final"]["logits"]
    assert torch.allclose(a, b)


def test_input_adapter_feeds_the_teacher_its_own_statistics_and_size() -> None:
    seen: list[torch.Tensor] = []
    inner = ModuleTeacher(nn.Sequential(nn.Flatten(), nn.LazyLinear(3)))
    inner.module.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    adapter = InputAdapter(inner, ((0.5,), (0.25,)), ((0.4, 0.4, 0.4), (0.2, 0.2, 0.2)),
                           size=16, in_chans=3)
    pixels = torch.rand(2, 1, 8, 8)
    adapter((pixels - 0.5) / 0.25)
    want = torch.nn.functional.interpolate(((pixels - 0.4) / 0.2).expand(-1, 3, -1, -1),
                                           size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.allclose(seen[0], want, atol=1e-5)


def test_module_teacher_exposes_hooked_exits() -> None:
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                        nn.Linear(256, 10))
    out = ModuleTeacher(net, exits={"s1": "1"})(torch.rand(2, 1, 8, 8))
    assert out["s1"]["feat"].shape == (2, 4, 8, 8) and out["final"]["logits"].shape == (2, 10)
    with pytest.raises(ValueError, match="does not have"):
        ModuleTeacher(net, exits={"s1": "layer9"})


def test_mutual_learning_trains_both_and_reports_the_peer(tmp_path: Path) -> None:
    result = train(_student(tmp_path, "dml", "dml"))
    peer = result.summary["peers"]["peer"]
    assert 0 <= peer["test"]["top1"] <= 100 and peer["val"]["loss"] > 0
    ckpt = load_checkpoint(result.run_dir / "checkpoints" / "last.pt")
    assert "peer" in ckpt["slots"]  # trained alongside: checkpointed and resumable


def test_weights_checksum_sees_a_buffer_change() -> None:
    model = nn.BatchNorm1d(3)
    before = weights_checksum(model)
    model(torch.randn(4, 3))  # train mode: running statistics move
    assert weights_checksum(model) != before


def _interrupt_at(step: int):
    def callback(at: int, losses: dict) -> None:
        if at == step:
            signal.raise_signal(signal.SIGINT)
    return callback


def test_a_pipeline_interrupted_in_the_student_round_resumes_it_alone(tmp_path: Path) -> None:
    pipeline_file = tmp_path / "kd.yaml"
    pipeline_file.write_text(
        "name: kd\nrounds:\n  - name: teacher\n    overrides: [method=supervised]\n"
        "  - name: student\n    overrides: [method=kd, 'teacher.run={teacher}']\n")
    overrides = [*TINY, f"run.dir={tmp_path / 'runs'}"]
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(load_pipeline(pipeline_file, overrides),
                     callbacks={"student": [_interrupt_at(8)]})
    teacher = tmp_path / "runs" / "kd" / "teacher" / "checkpoints" / "best.pt"
    stamp = teacher.stat().st_mtime_ns
    counts = {"teacher": 0, "student": 0}

    def count(name: str):
        def callback(step: int, losses: dict) -> None:
            counts[name] += 1
        return callback

    results = run_pipeline(load_pipeline(pipeline_file, overrides),
                           callbacks={n: [count(n)] for n in counts})
    assert [r.status for r in results] == ["skipped", "resumed"]
    assert counts == {"teacher": 0, "student": 4} and teacher.stat().st_mtime_ns == stamp
    assert results[1].summary["teacher"]["unchanged"]


def test_auxilia_train_runs_a_pipeline_file(tmp_path: Path, capsys: pytest.CaptureFixture
                                            ) -> None:
    from auxilia.cli import main as cli

    pipeline_file = tmp_path / "kd.yaml"
    pipeline_file.write_text(
        "name: kd\nrounds:\n  - name: teacher\n    overrides: [method=supervised]\n"
        "  - name: student\n    overrides: [method=kd, 'teacher.run={teacher}']\n")
    assert cli(["train", str(pipeline_file), *TINY, f"run.dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "teacher " in out and "student " in out
    assert cli(["train", str(pipeline_file), "--resume"]) == 2


def test_the_example_pipelines_plan(tmp_path: Path) -> None:
    from auxilia.engine.rounds import plan_pipeline

    configs = Path(__file__).resolve().parents[2] / "configs"
    for path in sorted(configs.glob("kd_*.yaml")):
        if "rounds" not in path.read_text():
            continue
        plans = plan_pipeline(load_pipeline(path, [f"run.dir={tmp_path}"]))
        assert [p.round.name for p in plans] == ["teacher", "student"]
        assert plans[1].config.teacher is not None
        assert isinstance(plans[1].config.method[0].name, str)


def test_student_only_sees_its_own_multi_exit_model(teacher_run: Path, tmp_path: Path) -> None:
    setup = build_setup(_student(tmp_path, "t", "kd", f"teacher.run={teacher_run}"))
    teacher = setup.objective.slots["teacher"].model
    assert isinstance(teacher, MultiExitModel) and not teacher.training
    assert {spec.field for spec in teacher.head_specs.values()} == {"proj"}  # CDS's heads kept
