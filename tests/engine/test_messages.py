"""Messages that name the thing and the fix: export places and packages, config bounds in the
config's words, keys resume cannot change, and a checkpoint copied from another run."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from auxilia.cli import main as cli
from auxilia.config import ConfigError, load_config
from auxilia.config_errors import describe
from auxilia.engine import train
from auxilia.engine.checkpoint import load_checkpoint, save_checkpoint
from auxilia.engine.export_checks import FORMAT_PACKAGES
from auxilia.engine.runfolder import MARKER, RunFolder
from auxilia.engine.runidentity import ForeignCheckpointError

ROOT = Path(__file__).resolve().parents[2]
PYDANTIC_WORDS = re.compile(r"Input should|should be|pydantic|errors\.pydantic|https?://|"
                            r"greater_than|less_than|_parsing|_type\b|literal_error|"
                            r"constrained-int|literal\[|Field required|extra_forbidden")


def _base(runs: Path, name: str) -> list[str]:
    return [f"run.dir={runs}", f"run.name={name}", "run.progress=off", "run.tensorboard=false",
            "run.plot=false", "data.batch_size=64", "train.steps=2"]


def _err_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The one ``error:`` line the CLI printed, last on stderr (notes may come before it)."""
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines
    return errors[0]


def _cli_with_deadline(args: list[str], seconds: float = 60) -> int:
    """Run the CLI in a thread: a regression that opens a FIFO fails instead of hanging."""
    result: list[int] = []
    worker = threading.Thread(target=lambda: result.append(cli(args)), daemon=True)
    worker.start()
    worker.join(seconds)
    assert result, f"auxilia {' '.join(args)} did not return within {seconds} s"
    return result[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished two-step run to export."""
    runs = tmp_path_factory.mktemp("messages") / "runs"
    return train(load_config(None, _base(runs, "r"))).run_dir


# ----------------------------------------------------------------------------- export places


def _special(kind: str, tmp_path: Path) -> str:
    """A path of the given kind (``fifo``, ``socket``, ``link``) in ``tmp_path``, or as is."""
    if kind == "fifo":
        os.mkfifo(tmp_path / "pipe.pt")
        return str(tmp_path / "pipe.pt")
    if kind == "fifo-without-suffix":  # --out pipe becomes pipe.pt: that FIFO is refused too
        os.mkfifo(tmp_path / "pipe.pt")
        os.mkfifo(tmp_path / "pipe.safetensors")
        return str(tmp_path / "pipe")
    if kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(tmp_path / "sock.pt"))
        sock.close()
        return str(tmp_path / "sock.pt")
    if kind == "link-to-dev-null":
        (tmp_path / "link.pt").symlink_to("/dev/null")
        return str(tmp_path / "link.pt")
    return kind


@pytest.mark.parametrize(("out", "says"), [
    ("/dev/full", "is a character device, not a regular file or folder"),
    ("/dev/null", "is a character device"),
    ("/dev/auxilia-new-model", "is in /dev, where the kernel keeps devices"),
    ("/proc/auxilia-model.pt", "is in /proc"),
    ("/sys/auxilia-model.pt", "is in /sys"),
    ("/dev/", "is in /dev"),
    ("fifo", "is a FIFO (named pipe), not a regular file or folder"),
    ("fifo-without-suffix", "(TMP/pipe.FORMAT) is a FIFO (named pipe)"),
    ("socket", "is a socket, not a regular file or folder"),
    ("link-to-dev-null", "is a character device"),
])
def test_export_to_a_special_file_or_a_system_folder_is_refused_before_writing(
        run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], out: str,
        says: str) -> None:
    out = _special(out, tmp_path)
    before = sorted(tmp_path.iterdir())
    for fmt in ("torchscript", "state_dict"):
        args = ["export", str(run), "--format", fmt, "--out", out, "--overwrite"]
        assert _cli_with_deadline(args) == 2
        line = _err_line(capsys)
        suffix = "pt" if fmt == "torchscript" else "safetensors"
        assert f"error: --out {out}" in line
        assert says.replace("TMP", str(tmp_path)).replace("FORMAT", suffix) in line
        assert "give --out a file name in a folder of yours" in line
    assert not Path("/dev/full.pt").exists() and not Path("/dev/auxilia-new-model.pt").exists()
    assert sorted(tmp_path.iterdir()) == before  # nothing written, no temporary
    assert not (run / "export").exists()


def test_export_to_a_file_a_folder_or_a_new_path_works_as_before(
        run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    existing = tmp_path / "old.safetensors"
    existing.write_bytes(b"old")
    (tmp_path / "folder").mkdir()
    outs = [str(existing), str(tmp_path / "folder"), str(tmp_path / "new" / "sub") + "/",
            str(tmp_path / "plain")]
    if Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK):  # a tmpfs, not devices
        outs.append(f"/dev/shm/auxilia-test-{os.getpid()}")
    for out in outs:
        assert cli(["export", str(run), "--format", "state_dict", "--out", out,
                    "--overwrite"]) == 0, capsys.readouterr().err
    assert existing.read_bytes() != b"old"
    assert (tmp_path / "folder" / "model.safetensors").is_file()
    assert (tmp_path / "new" / "sub" / "model.safetensors").is_file()
    assert (tmp_path / "plain.safetensors").is_file()
    for file in Path("/dev/shm").glob(f"auxilia-test-{os.getpid()}.*"):
        file.unlink()


# ----------------------------------------------------------------------------- export packages


@pytest.mark.parametrize("fmt", ["onnx", "state_dict"])
def test_a_missing_format_package_names_the_install_command(
        run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    module, requirement = FORMAT_PACKAGES[fmt]
    monkeypatch.setitem(sys.modules, module, None)  # what `import onnx` meets when it is absent
    out = tmp_path / "out" / "m"
    assert cli(["export", str(run), "--format", fmt, "--out", str(out)]) == 2
    line = _err_line(capsys)
    assert line.startswith(f"error: --format {fmt} needs the {module} package, which this "
                           "Python cannot import")
    assert f"{sys.executable} -m pip install -c constraints.txt -e . (in the auxilia " in line
    assert f"{sys.executable} -m pip install '{requirement}'" in line
    assert not (tmp_path / "out").exists()  # refused before anything was written


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_every_export_format_needs_only_the_main_install(
        run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = pytest.importorskip("tomllib").loads((ROOT / "pyproject.toml").read_text())
    main, extras = project["project"]["dependencies"], project["project"]["optional-dependencies"]
    for _module, requirement in FORMAT_PACKAGES.values():
        assert requirement in main, (requirement, main)  # the message's range is the project's
    pins = {_name(line) for line in (ROOT / "constraints.txt").read_text().splitlines()}
    needed = ["onnx", *(_name(r) for r in importlib.metadata.requires("onnx") or []
                        if "extra ==" not in r)]
    assert all(name in pins for name in needed), [n for n in needed if n not in pins]
    # torch.onnx.export (dynamo=False) works without onnxscript and the test extra's packages
    for blocked in ("onnxscript", *(_name(r) for r in extras["test"] if _name(r) != "pytest")):
        monkeypatch.setitem(sys.modules, blocked, None)
    for fmt in ("torchscript", "onnx", "state_dict"):
        assert cli(["export", str(run), "--format", fmt, "--out", f"{tmp_path}/"]) == 0
    monkeypatch.undo()
    import onnx

    onnx.checker.check_model(onnx.load(str(tmp_path / "model.onnx")))


# ----------------------------------------------------------------------------- config wording


@pytest.mark.parametrize(("item", "line"), [
    ("data.image_size=0",
     "data.image_size: must be at least 4 (expected int >= 4, 'auto', 'native' or null, got 0)"),
    ("data.image_size=autoo", "data.image_size: must be int >= 4, 'auto', 'native' or null "
                              "(got 'autoo'); did you mean 'auto'?"),
    ("data.batch_size=0", "data.batch_size: must be at least 1 (expected int >= 1, got 0)"),
    ("data.batch_size=abc",
     "data.batch_size: must be a whole number (expected int >= 1, got 'abc')"),
    ("optim.lr=-1", "optim.lr: must be greater than 0 (expected float > 0, got -1)"),
    ("optim.lr=fast", "optim.lr: must be a number (expected float > 0, got 'fast')"),
    ("optim.lr=.inf", "optim.lr: must be a finite number, not .inf or .nan (expected float > 0, "
                      "got .inf)"),
    ("train.epochs=0", "train.epochs: must be greater than 0 (expected float > 0 or null, got 0)"),
    ("train.steps=1.5",
     "train.steps: must be a whole number (expected int > 0 or null, got 1.5)"),
    ("optim.momentum=1", "optim.momentum: must be less than 1 (expected float in [0, 1), got 1)"),
    ("schedule.min_lr_ratio=2",
     "schedule.min_lr_ratio: must be at most 1 (expected float in [0, 1], got 2)"),
    ("run.tensorboard=maybe", "run.tensorboard: must be true or false (got 'maybe')"),
    ("optim.name=adam",
     "optim.name: must be one of 'sgd', 'adamw' (got 'adam'); did you mean 'adamw'?"),
    ("run.dir=[1]", "run.dir: must be a string (got [1])"),
    ("train.log_every=null", "train.log_every: must be a whole number (expected int > 0, "
                             "got null)"),
    ("schedule.milestones=3",
     "schedule.milestones: must be a list, such as [a, b] (expected list of float, got 3)"),
    ("model.kwargs=3", "model.kwargs: must be a mapping, such as {key: value} (got 3)"),
    ("optim.betas=[0.9]", "optim.betas: must hold 2 values (expected list of 2 values "
                          "[float, float], got [0.9])"),
    ("data=3", "data: must be a mapping of its keys: augment, batch_size, center_crop, crop, ... "
               "(got 3)"),
    ("optim.lrr=1", "optim.lrr: unknown key (did you mean 'lr'?); valid keys here: betas, "
                    "decay_norm_and_bias, grad_clip, lr, momentum, name, nesterov, weight_decay"),
    ("method={name: cds, head: xx}", "method.head: must be one of 'sepconv', 'mlp' (got 'xx')"),
    # a bool is never a number (pydantic's lax mode reads true as 1)
    ("data.batch_size=true",
     "data.batch_size: must be a whole number (expected int >= 1, got true)"),
    ("train.steps=true",
     "train.steps: must be a whole number (expected int > 0 or null, got true)"),
    ("optim.lr=false", "optim.lr: must be a number (expected float > 0, got false)"),
    ("optim.betas=[0.9, true]", "optim.betas[1]: must be a number (expected float, got true)"),
    ("data.image_size=true",
     "data.image_size: must be int >= 4, 'auto', 'native' or null (got true)"),
    ("method={name: kd, temperature: true}",
     "method.temperature: must be a number (expected float > 0, got true)"),
    ("teacher.num_classes=true",
     "teacher.num_classes: must be a whole number (expected int > 0 or null, got true)"),
])
def test_bounds_and_types_speak_the_configs_language(item: str, line: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, [item])
    lines = str(err.value).splitlines()
    assert lines == ["invalid configuration:", f"  {line}"]
    assert not PYDANTIC_WORDS.search(line), line


def test_a_bool_is_refused_only_where_no_bool_is_meant() -> None:
    with pytest.raises(ValidationError, match="int_type"):  # the Python API's assignments too
        load_config(None, []).data.batch_size = True
    kept = load_config(None, ["model.pretrained=true", "model.kwargs={widths: true}",
                              "method={name: cds, supervised: false}", "data.batch_size=32.0"])
    assert (kept.model.pretrained, kept.model.kwargs, kept.method[0].supervised,
            kept.data.batch_size) == (True, {"widths": True}, False, 32)


class _Probe(BaseModel):
    """One field per common pydantic error type."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    gt: float = Field(default=1.0, gt=0)
    ge: int = Field(default=1, ge=1)
    lt: float = Field(default=0.0, lt=1)
    le: int = Field(default=0, le=9)
    flag: bool = True
    kind: Literal["a", "b"] = "a"
    text: str = "x"
    items: list[int] = Field(default_factory=list, max_length=2)
    mapping: dict[str, int] = Field(default_factory=dict)
    pair: tuple[int, int] = (1, 2)
    short: str = Field(default="abc", min_length=2)
    step: int = Field(default=4, multiple_of=2)
    either: int | Literal["auto"] = "auto"
    required: int


BAD = {"gt": 0, "ge": "x", "lt": 2.5, "le": 10, "flag": "perhaps", "kind": "c", "text": 3,
       "items": [1, 2, 3], "mapping": [1], "pair": [1], "short": "a", "step": 3, "either": "aut",
       "unknown": 1}


def test_every_common_pydantic_error_type_is_told_in_the_configs_words() -> None:
    with pytest.raises(ValidationError) as err:
        _Probe.model_validate(BAD)
    types = {e["type"] for e in err.value.errors()}
    assert types >= {"greater_than", "int_parsing", "less_than", "less_than_equal",
                     "bool_parsing", "literal_error", "string_type", "too_long", "dict_type",
                     "missing", "string_too_short", "multiple_of", "extra_forbidden"}, types
    lines = describe(err.value, _Probe)
    assert len(lines) == len(BAD) + 1  # one per key: the union's two members give one line
    for line in lines:
        assert not PYDANTIC_WORDS.search(line), line
    assert "either: must be int or 'auto' (got 'aut'); did you mean 'auto'?" in lines
    assert "required: is required (expected int)" in lines
    assert "ge: must be a whole number (expected int >= 1, got 'x')" in lines
    assert "pair: must hold 2 values (expected list of 2 values [int, int], got [1])" in lines
    assert "step: must be a multiple of 2 (expected int, got 3)" in lines
    assert "short: must have at least 2 character(s) (expected string, got 'a')" in lines
    with pytest.raises(ValidationError) as err:
        _Probe.model_validate({"required": 1, "flag": [1], "items": 3, "gt": float("nan")})
    lines = describe(err.value, _Probe)
    assert lines == ["gt: must be a finite number, not .inf or .nan (expected float > 0, "
                     "got .nan)",
                     "flag: must be true or false (got [1])",
                     "items: must be a list, such as [a, b] (expected list of int, got 3)"]


def test_a_bound_through_the_cli_is_named_without_pydantic(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["train", f"run.dir={tmp_path}", "data.image_size=0", "data.batch_size=0"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Traceback" not in err
    assert "  data.image_size: must be at least 4 (" in err
    assert "  data.batch_size: must be at least 1 (expected int >= 1, got 0)" in err
    assert not PYDANTIC_WORDS.search(err) and list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- resume keys


@pytest.mark.parametrize(("override", "says"), [
    ("run.name=other", "--resume: run.name cannot change on resume (it is the name of the run "
                       "folder RUN, which is continued); to continue the run under another "
                       "name, move its folder (mv RUN RUNS/other) and resume that; to start a "
                       "new run, leave out --resume"),
    ("run={name: other}", "--resume: run.name cannot change on resume"),
    ("run.dir=ELSEWHERE", "--resume: run.dir cannot change on resume (the run folder RUN is "
                          "continued where it is); to continue it in ELSEWHERE, move it there "
                          "(mv RUN ELSEWHERE/r) and resume that; to start a new run, leave out "
                          "--resume"),
    ("run.name=r/x", "--resume: run.name 'r/x' contains a path separator; put the folder in "
                     "run.dir instead; use a plain name such as 'my-run-1'"),
    ("run.name=.r", "--resume: run.name '.r' starts with '.'"),
])
def test_resume_refuses_keys_that_locate_the_run_folder(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], override: str, says: str) -> None:
    runs, elsewhere = tmp_path / "runs", tmp_path / "elsewhere"
    assert cli(["train", *_base(runs, "r")]) == 0
    capsys.readouterr()
    folder = runs / "r"
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    override = override.replace("ELSEWHERE", str(elsewhere))
    assert cli(["train", "--resume", str(folder), override]) == 2
    line = _err_line(capsys)
    expected = (says.replace("RUNS", str(runs)).replace("RUN", str(folder))
                .replace("ELSEWHERE", str(elsewhere)))
    assert line.startswith(f"error: {expected}"), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    assert sorted(p.name for p in runs.iterdir()) == ["r"]
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    # naming the folder being resumed is no change
    same = [f"run.name={folder.name}", f"run.dir={runs}", "run.progress=off"]
    assert cli(["train", "--resume", str(folder), *same]) == 0
    # nor in another spelling of the same place (a trailing slash, an unnormalised run.dir)
    same = [f"run.name={folder.name}/", f"run.dir={runs}/../runs/", "run.progress=off"]
    assert cli(["train", "--resume", f"{folder}/", *same]) == 0, capsys.readouterr().err
    assert sorted(p.name for p in runs.iterdir()) == ["r"]


# ----------------------------------------------------------------------------- run identity


def test_a_last_pt_copied_from_another_run_is_refused_naming_both(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    a = train(load_config(None, _base(runs, "a"))).run_dir
    b = train(load_config(None, _base(runs, "b"))).run_dir  # the same config but its name
    shutil.copy(a / "checkpoints" / "last.pt", b / "checkpoints" / "last.pt")
    copied = (b / "checkpoints" / "last.pt").read_bytes()
    assert cli(["train", "--resume", str(b), "run.progress=off"]) == 2
    line = _err_line(capsys)
    a_id, b_id = RunFolder(a).run_id(), RunFolder(b).run_id()
    assert a_id and b_id and a_id != b_id
    assert line == (
        f"error: cannot resume: {b}/checkpoints/last.pt was written by another run, "
        f"{a.resolve()} (run id {a_id[:8]}), not by {b} (run id {b_id[:8]}); resume that run "
        f"in its own folder (auxilia train --resume {a.resolve()}), or copy its whole folder "
        f"(cp -r {a.resolve()} NEW) and resume the copy; to start b over, use --overwrite")
    assert (b / "checkpoints" / "last.pt").read_bytes() == copied
    with pytest.raises(ForeignCheckpointError):
        train(load_config(None, _base(runs, "b")), resume=True)
    # eval and export read any checkpoint file: the id is checked on resume only
    assert cli(["export", str(b / "checkpoints" / "last.pt"), "--format", "state_dict",
                "--out", str(tmp_path / "m.safetensors")]) == 0
    assert cli(["eval", str(b / "checkpoints" / "last.pt"), "--split", "val",
                "--latency-batch", "2", "--thresholds", "1", "--out", str(tmp_path)]) == 0


def test_best_copied_to_last_a_copied_folder_and_overwrite_keep_resuming(
        tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    config = load_config(None, [*_base(runs, "r"), "train.eval_every=1"])
    folder = RunFolder(train(config).run_dir)
    first = folder.run_id()
    assert load_checkpoint(folder.last)["run"] == {"id": first,
                                                   "folder": str(folder.path.resolve())}
    shutil.copy(folder.best, folder.last)  # what the resume advice says to do
    assert train(config, resume=True).summary["steps"] == 2
    shutil.copytree(folder.path, runs / "copy")  # a whole folder keeps its id
    copy = load_config(None, [*_base(runs, "copy"), "train.eval_every=1"])
    assert train(copy, resume=True).summary["steps"] == 2
    train(config, overwrite=True)  # a new run: a new id, recorded by its checkpoints
    again = RunFolder(folder.path).run_id()
    assert again and again != first
    assert load_checkpoint(folder.last)["run"]["id"] == again


def test_a_checkpoint_from_before_run_ids_resumes_with_a_note(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    config = load_config(None, [*_base(runs, "r"), "train.steps=4"])
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C: last.pt written at step 1
        train(config, callbacks=[lambda step, losses: os.kill(os.getpid(), signal.SIGINT)
                                 if step == 1 else None])
    folder = RunFolder(runs / "r")
    old: dict[str, Any] = load_checkpoint(folder.last)
    del old["run"]  # as an earlier auxilia wrote it, in a folder whose marker has no id
    save_checkpoint(old, folder.last)
    folder.marker.write_text('{"auxilia": "run folder", "created": "2024-01-01T00:00:00"}\n')
    result = train(config, resume=True)
    assert result.summary["steps"] == 4
    assert any("records no run id" in note for note in result.summary["notes"])
    new_id = RunFolder(folder.path).run_id()  # the folder got an id, and the run records it
    assert new_id and load_checkpoint(folder.last)["run"]["id"] == new_id
    assert '"created": "2024-01-01T00:00:00"' in folder.marker.read_text()


def test_a_run_folder_that_lost_its_marker_takes_its_checkpoints_id(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    config = load_config(None, _base(runs, "r"))
    folder = RunFolder(train(config).run_dir)
    saved = folder.run_id()
    (folder.path / MARKER).unlink()
    assert train(config, resume=True).summary["steps"] == 2
    assert RunFolder(folder.path).run_id() == saved
