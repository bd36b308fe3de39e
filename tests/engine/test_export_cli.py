"""The README's export commands on a fresh run, and failed exports that leave nothing behind."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

from auxilia.cli import main as cli
from auxilia.config import load_config
from auxilia.engine import export as export_module
from auxilia.engine import train
from auxilia.engine.export import example_batch
from auxilia.engine.reload import load_run

REPO = Path(__file__).resolve().parents[2]
FORMATS = {"torchscript": ".pt", "onnx": ".onnx", "state_dict": ".safetensors"}


def _auxilia(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the ``auxilia`` command of this Python's environment, as the README does."""
    script = Path(sys.executable).with_name("auxilia")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "auxilia.cli"]
    return subprocess.run([*command, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_the_readme_export_commands_match_the_trained_model(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")  # the test extra's; auxilia itself never needs it
    trained = _auxilia("train", str(REPO / "configs" / "demo.yaml"), "train.steps=3",
                       "run.progress=off", "run.tensorboard=false", "run.plot=false",
                       cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    for fmt, suffix in FORMATS.items():
        done = _auxilia("export", "runs/demo", "--format", fmt, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert f"exported {fmt} to runs/demo/export/model{suffix}" in done.stdout
    export = tmp_path / "runs" / "demo" / "export"
    assert sorted(p.name for p in export.iterdir()) == [
        "model.json", "model.onnx", "model.pt", "model.safetensors"]

    setup, _ = load_run(tmp_path / "runs" / "demo", device="cpu")
    x = example_batch(setup, size=5)  # another batch size than the exporter's example of 2
    with torch.no_grad():
        expected = setup.model(x)["final"]["logits"]
    session = ort.InferenceSession(str(export / "model.onnx"), providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(["logits"], {"images": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(onnx_logits), expected, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        traced = torch.jit.load(str(export / "model.pt"))(x)
        stripped = setup.model.strip().eval()
        stripped.load_state_dict(safetensors.torch.load_file(str(export / "model.safetensors")))
        torch.testing.assert_close(traced, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(stripped(x), expected, rtol=0, atol=0)


# ----------------------------------------------------------------------------- failed exports


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A deep-supervision run of three steps that never gets a default ``export/`` folder."""
    root = tmp_path_factory.mktemp("failed-export")
    config = load_config(None, [f"run.dir={root}", "run.name=ds", "run.progress=off",
                                "run.tensorboard=false", "run.plot=false", "train.steps=3",
                                "data.batch_size=64", "method=deep_supervision"])
    return train(config).run_dir


def _failing(exception: BaseException):
    """A writer that writes part of its file, then raises ``exception``."""
    def write(*args: object, **kwargs: object) -> bytes:
        for arg in args:
            if isinstance(arg, str | Path):  # torch.onnx.export's path
                Path(arg).write_bytes(b"\x00" * 1000)
            elif hasattr(arg, "write"):  # torch.jit.save's file
                arg.write(b"\x00" * 1000)
        raise exception
    return write


def _break_writer(monkeypatch: pytest.MonkeyPatch, fmt: str, exception: BaseException) -> None:
    """Make the library call that writes ``fmt`` fail half-way."""
    owner, name = {"torchscript": (torch.jit, "save"), "onnx": (torch.onnx, "export"),
                   "state_dict": (safetensors.torch, "save")}[fmt]
    monkeypatch.setattr(owner, name, _failing(exception))


def _left_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize(("exception", "code"), [
    (RuntimeError("exporter failed"), 2), (OSError(errno.ENOSPC, "No space left on device"), 2),
    (KeyboardInterrupt(), 130)])
def test_a_failed_export_leaves_no_export_folder(run_dir, monkeypatch, capsys, fmt, exception,
                                                 code) -> None:
    before = _left_in(run_dir)
    _break_writer(monkeypatch, fmt, exception)
    assert cli(["export", str(run_dir), "--format", fmt]) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ("SIGINT" in err if code == 130 else "error:" in err)
    assert _left_in(run_dir) == before and not (run_dir / "export").exists()


def test_a_missing_package_leaves_nothing(run_dir, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError
    assert cli(["export", str(run_dir), "--format", "onnx"]) == 2
    err = capsys.readouterr().err
    assert "--format onnx needs the onnx package" in err and "pip install" in err
    assert not (run_dir / "export").exists()


def test_an_unwritable_target_leaves_the_new_folders_out(run_dir, tmp_path, monkeypatch,
                                                         capsys) -> None:
    target = tmp_path / "new" / "deeper" / "model.onnx"
    replace = os.replace

    def refuse(src: str | Path, dst: str | Path) -> None:
        if Path(dst) == target:
            raise PermissionError(errno.EACCES, "Permission denied")
        replace(src, dst)

    monkeypatch.setattr(os, "replace", refuse)
    assert cli(["export", str(run_dir), "--format", "onnx", "--out", str(target)]) == 2
    assert f"cannot write {target}: Permission denied" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_folder_that_existed_is_kept_with_the_other_formats(run_dir, tmp_path, monkeypatch,
                                                               capsys) -> None:
    folder = tmp_path / "exports"
    folder.mkdir()
    assert cli(["export", str(run_dir), "--format", "state_dict", "--out", f"{folder}/"]) == 0
    kept = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert sorted(kept) == ["model.json", "model.safetensors"]
    _break_writer(monkeypatch, "onnx", RuntimeError("exporter failed"))
    assert cli(["export", str(run_dir), "--format", "onnx", "--out", f"{folder}/"]) == 2
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == kept
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli(["export", str(run_dir), "--format", "onnx", "--out", f"{empty}/"]) == 2
    assert empty.is_dir() and list(empty.iterdir()) == []
    capsys.readouterr()


def test_a_failed_sidecar_puts_the_previous_export_back(run_dir, tmp_path, monkeypatch,
                                                        capsys) -> None:
    target = tmp_path / "m.pt"
    args = ["export", str(run_dir), "--format", "torchscript", "--out", str(target)]
    assert cli([*args, "--checkpoint", "last"]) == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    inode = target.stat().st_ino  # the very file comes back, not a rewrite of it

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export_module, "_write_sidecar", full)
    assert cli([*args, "--overwrite"]) == 2  # the model is replaced, then its sidecar fails
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert target.stat().st_ino == inode
    fresh = tmp_path / "fresh.pt"
    assert cli(["export", str(run_dir), "--format", "torchscript", "--out", str(fresh)]) == 2
    assert not fresh.exists() and {p.name for p in tmp_path.iterdir()} == set(before)
    capsys.readouterr()
