"""Export of the deployable classifier: TorchScript, ONNX, safetensors match the trained model."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import onnx
import pytest
import torch

from auxilia.cli import main as cli
from auxilia.config import load_config
from auxilia.engine import train
from auxilia.engine.export import ExportError, count_params, example_batch, export_run
from auxilia.engine.reload import load_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A deep-supervision run of a few steps: heads on s1 and s2 beside the main classifier."""
    root = tmp_path_factory.mktemp("export")
    config = load_config(None, [f"run.dir={root}", "run.name=ds", "run.progress=off",
                                "run.tensorboard=false", "run.plot=false", "train.steps=3",
                                "data.batch_size=64", "method=deep_supervision"])
    return train(config).run_dir


@pytest.fixture(scope="module")
def reference(run_dir: Path) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """A batch of 8 images, the trained model's ``final`` logits, stripped and trained params."""
    setup, _ = load_run(run_dir, device="cpu")
    x = example_batch(setup, size=8)
    with torch.no_grad():
        logits = setup.model(x)["final"]["logits"]
    return x, logits, count_params(setup.model.strip()), count_params(setup.model)


def _export(run_dir: Path, fmt: str, out: Path, capsys: pytest.CaptureFixture) -> str:
    assert cli(["export", str(run_dir), "--format", fmt, "--out", str(out)]) == 0
    return capsys.readouterr().out


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_matches_the_final_exit(run_dir, reference, tmp_path, capsys) -> None:
    x, logits, stripped, trained = reference
    out = _export(run_dir, "torchscript", tmp_path / "m.pt", capsys)
    assert f"{stripped:,} exported, {trained:,} trained" in out
    loaded = torch.jit.load(str(tmp_path / "m.pt"))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), logits, rtol=1e-6, atol=1e-6)
    assert not any(name.startswith("heads.") for name, _ in loaded.named_parameters())


def test_onnx_graph_is_valid_and_holds_no_head(run_dir, reference, tmp_path, capsys) -> None:
    _export(run_dir, "onnx", tmp_path / "m.onnx", capsys)
    graph = onnx.load(str(tmp_path / "m.onnx"))
    onnx.checker.check_model(graph)
    assert not [i.name for i in graph.graph.initializer if "heads" in i.name]
    (inp,) = graph.graph.input
    assert inp.type.tensor_type.shape.dim[0].dim_param == "batch"  # dynamic batch axis
    ops = [node.op_type for node in graph.graph.node]
    assert ops.count("Gemm") == 1  # the main classifier; each auxiliary head would add one
    assert ops.count("Conv") == 3 and [o.name for o in graph.graph.output] == ["logits"]


def test_onnxruntime_matches_the_final_exit(run_dir, reference, tmp_path, capsys) -> None:
    ort = pytest.importorskip("onnxruntime")
    x, logits, _, _ = reference
    _export(run_dir, "onnx", tmp_path / "m.onnx", capsys)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(["logits"], {"images": x.numpy()})  # batch 8, traced with 2
    torch.testing.assert_close(torch.from_numpy(got), logits, rtol=1e-4, atol=1e-4)


def test_state_dict_holds_the_stripped_model_only(run_dir, reference, tmp_path, capsys) -> None:
    from safetensors.torch import load_file

    x, logits, stripped, trained = reference
    _export(run_dir, "state_dict", tmp_path / "m.safetensors", capsys)
    state = load_file(str(tmp_path / "m.safetensors"))
    assert state and not [k for k in state if k.startswith("heads.")]
    fresh, _ = load_run(run_dir, device="cpu")
    model = fresh.model.strip()
    for p in model.parameters():
        torch.nn.init.zeros_(p)
    model.load_state_dict(state, strict=True)
    params = dict(model.named_parameters())
    assert sum(v.numel() for k, v in state.items() if k in params) == stripped < trained
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), logits, rtol=0, atol=0)
    card = json.loads((tmp_path / "m.json").read_text())
    assert card["files"] == {"state_dict": "m.safetensors"}
    assert card["num_classes"] == 10 and card["input_shape"] == ["batch", 1, 8, 8]
    assert card["class_names"][0] == "0" and len(card["mean"]) == len(card["std"]) == 1
    assert card["params"] == stripped and card["params_trained"] == trained


def test_default_path_sidecar_and_overwrite(run_dir, capsys) -> None:
    checkpoint = run_dir / "checkpoints" / "best.pt"
    assert cli(["export", str(checkpoint), "--format", "torchscript"]) == 0
    assert cli(["export", str(run_dir), "--format", "onnx"]) == 0
    capsys.readouterr()
    card = json.loads((run_dir / "export" / "model.json").read_text())
    assert card["files"] == {"torchscript": "model.pt", "onnx": "model.onnx"}
    assert cli(["export", str(run_dir), "--format", "onnx"]) == 2
    err = capsys.readouterr().err
    assert "model.onnx already exists" in err and "--overwrite" in err
    before = (run_dir / "export" / "model.onnx").stat().st_mtime_ns
    assert cli(["export", str(run_dir), "--format", "onnx", "--overwrite"]) == 0
    assert (run_dir / "export" / "model.onnx").stat().st_mtime_ns != before
    # another checkpoint may not silently take over the sidecar of this one
    assert cli(["export", str(run_dir), "--format", "state_dict", "--checkpoint", "last"]) == 2
    assert "describes another checkpoint" in capsys.readouterr().err


def test_unknown_format_names_the_valid_ones(run_dir, tmp_path) -> None:
    with pytest.raises(ExportError, match="torchscript, onnx, state_dict"):
        export_run(run_dir, "tflite", tmp_path / "m.tflite")


# ----------------------------------------------------------------------------- file names


def test_out_must_end_in_the_format_suffix(run_dir, tmp_path, capsys) -> None:
    # the sidecar is <stem>.json: a model written as model.json would be overwritten by it
    assert cli(["export", str(run_dir), "--format", "torchscript", "--out",
                str(tmp_path / "model.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "must end in .pt for --format torchscript, not .json" in err
    assert "--out " + str(tmp_path / "model.pt") in err
    with pytest.raises(ExportError, match=r"must end in \.onnx for --format onnx, not \.pt"):
        export_run(run_dir, "onnx", tmp_path / "m.pt")
    assert list(tmp_path.iterdir()) == []


def test_out_without_a_suffix_gets_it_and_a_trailing_slash_is_a_new_folder(
        run_dir, tmp_path) -> None:
    result = export_run(run_dir, "state_dict", tmp_path / "plain")
    assert result.path == tmp_path / "plain.safetensors" and result.path.is_file()
    assert result.sidecar == tmp_path / "plain.json"
    result = export_run(run_dir, "state_dict", f"{tmp_path / 'new' / 'sub'}/")
    assert result.path == tmp_path / "new" / "sub" / "model.safetensors" and result.path.is_file()
    assert json.loads(result.sidecar.read_text())["files"] == {"state_dict": "model.safetensors"}


@pytest.mark.parametrize("content", ["my notes\n", '{"a": 1}\n', "[1, 2]\n",
                                     '{"source": "x", "files": {}}\n'])
def test_a_sidecar_auxilia_did_not_write_is_kept_unless_overwrite(
        run_dir, tmp_path, capsys, content) -> None:
    sidecar = tmp_path / "m.json"
    sidecar.write_text(content)
    args = ["export", str(run_dir), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert err.strip() == (f"error: {sidecar} exists and is not an auxilia export description; "
                           "pass --overwrite to replace it or --out to export elsewhere")
    assert sidecar.read_text() == content and sorted(tmp_path.iterdir()) == [sidecar]
    assert cli([*args, "--overwrite"]) == 0
    assert json.loads(sidecar.read_text())["files"] == {"torchscript": "m.pt"}


def test_nothing_is_written_before_everything_is_checked(run_dir, tmp_path) -> None:
    from auxilia.engine.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="no run folder or checkpoint"):
        export_run(tmp_path / "nope", "onnx", f"{tmp_path / 'a'}/")
    bad = tmp_path / "bad.pt"
    bad.write_bytes((run_dir / "checkpoints" / "best.pt").read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=r"bad\.pt"):
        export_run(bad, "torchscript", tmp_path / "b" / "m.pt")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "m.onnx").write_bytes(b"someone's model")
    with pytest.raises(ExportError, match=r"m\.onnx already exists; pass --overwrite"):
        export_run(run_dir, "onnx", tmp_path / "c" / "m.onnx")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ExportError, match=r"file\.txt is a file, not a folder"):
        export_run(run_dir, "onnx", tmp_path / "file.txt" / "d" / "m.onnx")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["bad.pt", "c", "file.txt", "m.onnx"]
    assert (tmp_path / "c" / "m.onnx").read_bytes() == b"someone's model"


# ----------------------------------------------------------------------------- failed writes


def _torn_torchscript(m, f, _extra_files=None) -> None:
    f.write(b"\x00" * 1000)  # part of the file gets out, then the disk is full
    raise OSError(errno.ENOSPC, "No space left on device")


def _torn_onnx(model, args, f, **kwargs) -> None:
    Path(f).write_bytes(b"\x00" * 1000)
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize(("fmt", "suffix", "writer", "torn"), [
    ("torchscript", ".pt", "jit", _torn_torchscript), ("onnx", ".onnx", "onnx", _torn_onnx)])
def test_a_write_failing_half_way_keeps_the_previous_export(
        run_dir, tmp_path, capsys, monkeypatch, fmt, suffix, writer, torn) -> None:
    target, sidecar = tmp_path / f"m{suffix}", tmp_path / "m.json"
    args = ["export", str(run_dir), "--format", fmt, "--out", str(target), "--overwrite"]
    assert cli(args) == 0
    before = target.read_bytes(), sidecar.read_bytes()
    monkeypatch.setattr(getattr(torch, writer), "save" if writer == "jit" else "export", torn)
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == (f"error: [Errno 28] cannot write {target}: No space "
                                            "left on device; the previous file is unchanged")
    assert (target.read_bytes(), sidecar.read_bytes()) == before
    assert sorted(tmp_path.iterdir()) == [sidecar, target]  # no temporary left behind
