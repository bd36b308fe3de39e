"""Export of the deployable classifier: TorchScript, ONNX, safetensors match the trained model."""

from __future__ import annotations

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
