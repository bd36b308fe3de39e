from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from auxilia.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


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
