from __future__ import annotations

import errno
import os
import pickle
import random
import zipfile
from pathlib import Path

import pytest
import torch

from auxilia.cli import main as cli
from auxilia.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from auxilia.engine.runlog import RunFolder
from auxilia.models.weights import read_state_dict


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint({"model": {"w": torch.ones(2)}, "step": 3}, path)
    state = load_checkpoint(path)
    assert state["step"] == 3 and torch.equal(state["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary left behind


def test_failed_write_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint({"model": {}, "step": 1}, path)

    class Boom:
        def __reduce__(self):  # fails half-way through pickling
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint({"model": {}, "step": 2, "bad": Boom()}, path)
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_truncated_checkpoint_is_named(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint({"model": {"w": torch.ones(1000)}}, path)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CheckpointError, match=r"c\.pt"):
        load_checkpoint(path)


class _Payload:
    def __reduce__(self):
        return (print, ("arbitrary code ran",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickled_objects_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "x": _Payload()}, path, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    with pytest.raises(CheckpointError, match=r"evil\.pt"):
        load_checkpoint(path)
    assert "arbitrary code ran" not in capsys.readouterr().out


# ----------------------------------------------------------------------------- damaged files


def _saved(tmp_path: Path) -> tuple[Path, dict]:
    state = {"model": {"w": torch.randn(64), "b": torch.ones(3)},
             "loop": {"step": 7, "evals": [{"val/loss": 0.5}]}, "config": {"seed": 0}}
    path = tmp_path / "last.pt"
    save_checkpoint(state, path)
    return path, state


def test_random_byte_flips_are_refused_or_harmless(tmp_path: Path) -> None:
    path, state = _saved(tmp_path)
    good = path.read_bytes()
    rng = random.Random(0)
    refused = 0
    for _ in range(150):
        data = bytearray(good)
        for _ in range(rng.choice([1, 1, 3, 12])):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(data))
        try:
            loaded = load_checkpoint(path)
        except CheckpointError as err:
            assert str(path) in str(err)
            refused += 1
            continue
        # loaded: the flips hit bytes that do not matter; the content is intact (CRC-checked)
        assert loaded["loop"] == state["loop"] and loaded["config"] == state["config"]
        assert all(torch.equal(loaded["model"][k], v) for k, v in state["model"].items())
    assert refused > 75


def test_empty_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"last\.pt: the file is empty"):
        load_checkpoint(path)


@pytest.mark.parametrize("member", ["notes.txt", "archive/data.pkl", "archive/version"])
def test_a_zip_that_is_not_a_checkpoint_is_named(tmp_path: Path, member: str) -> None:
    path = tmp_path / "last.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(member, "hello")
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*last\.pt"):
        load_checkpoint(path)


def test_a_torch_file_without_model_is_named(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match=r"last\.pt is not an auxilia checkpoint"):
        load_checkpoint(path)


def test_disk_full_names_the_file_and_keeps_the_old_one(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = _saved(tmp_path)
    good = path.read_bytes()

    def fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError, match=r"cannot write .*last\.pt: No space left") as err:
        save_checkpoint({"model": {"w": torch.zeros(64)}}, path)
    assert err.value.errno == errno.ENOSPC
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_stale_temporaries_are_removed_and_never_loaded(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path / "run")
    folder.create()
    save_checkpoint({"model": {"w": torch.ones(1)}}, folder.last)
    torn = [folder.last.parent / ".last.pt.abc123.tmp", folder.path / ".summary.json.x.tmp"]
    for p in torn:
        p.write_bytes(b"PK\x03\x04 torn")
    (folder.last.parent / "keep.tmp.txt").write_text("not ours")
    assert torch.equal(load_checkpoint(folder.last)["model"]["w"], torch.ones(1))
    assert sorted(folder.remove_stale_temporaries()) == sorted(torn)
    assert not any(p.exists() for p in torn) and (folder.last.parent / "keep.tmp.txt").exists()


# ----------------------------------------------------------------------------- pickled code


class _Touch:
    """Creates a marker file when unpickled: proof that pickled code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _evil(path: Path, marker: Path, state: dict, protocol: int = 2) -> Path:
    torch.save({**state, "x": _Touch(marker)}, path, pickle_protocol=protocol)
    torch.load(path, weights_only=False).get("x").close()  # the payload is live ...
    assert marker.exists()
    marker.unlink()  # ... and auxilia must never trigger it
    return path


@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL])
@pytest.mark.parametrize("name", ["evil.pth", "evil.pt"])
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_weights_files_never_run_pickled_code(tmp_path: Path, name: str, protocol: int) -> None:
    marker = tmp_path / "pwned"
    path = _evil(tmp_path / name, marker, {"state_dict": {"w": torch.ones(2)}}, protocol)
    with pytest.raises(ValueError, match=rf"cannot read weights file .*{name}: Unpickling"
                                         r"Error: refused by the weights-only unpickler"):
        read_state_dict(path)
    assert not marker.exists()


def test_damaged_safetensors_weights_are_named(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00garbage!")
    with pytest.raises(ValueError, match=r"cannot read weights file .*w\.safetensors"):
        read_state_dict(path)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("command", [["eval"], ["export", "--format", "state_dict"],
                                     ["train", "model.weights"]])
def test_cli_refuses_malicious_files(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     command: list[str]) -> None:
    marker = tmp_path / "pwned"
    state = {"model": {"w": torch.ones(2)}, "loop": {"step": 1}, "config": {}}
    path = _evil(tmp_path / "evil.pt", marker, state)
    if command[0] == "train":
        args = ["train", f"model.weights={path}", f"run.dir={tmp_path}", "run.progress=off"]
    else:
        args = [*command[:1], str(path), *command[1:], "--out", str(tmp_path / "out")]
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(path) in err and "Traceback" not in err
    assert "refused by the weights-only unpickler: Unsupported global" in err
    assert "weights_only=False" not in err  # torch's advice to run the code is not passed on
    assert not marker.exists() and not (tmp_path / "out").exists()
