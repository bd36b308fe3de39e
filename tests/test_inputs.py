"""Inputs that are named: config encodings, special files, seeds and devices.

Every refusal is one line naming the thing and the fix. Reading a FIFO or ``/dev/zero`` would
block or never end, so those tests run the code in a daemon thread (in-process) or in a child
process (the CLI), both with a deadline: a regression fails instead of hanging the suite.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from auxilia.cli import main
from auxilia.config import ConfigError, load_config, read_yaml
from auxilia.engine import train
from auxilia.engine.checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint
from auxilia.engine.device import pick_device
from auxilia.models.weights import read_state_dict
from auxilia.paths import regular_file

DEADLINE_S = 60


def _within(fn: Callable[[], Any]) -> BaseException | None:
    """Runs ``fn`` in a daemon thread and returns what it raised (None if nothing); fails the
    test if it is still running after the deadline (it blocked on a FIFO or reads forever)."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            fn()
            outcome.append(None)
        except BaseException as err:
            outcome.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(DEADLINE_S)
    if thread.is_alive():
        pytest.fail(f"still running after {DEADLINE_S} s: it opened or read a special file")
    return outcome[0]


def _one_line(err: BaseException | None, *parts: str) -> str:
    assert err is not None, "nothing was raised"
    message = str(err)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, (part, message)
    return message


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "pipe"
    os.mkfifo(path)
    return path


# --------------------------------------------------------------------------- encodings


TEXT = "seed: 7\nrun: {name: café-ü}\n"


@pytest.mark.parametrize("encode", [
    lambda t: t.encode("utf-8"),
    lambda t: b"\xef\xbb\xbf" + t.encode("utf-8"),
    lambda t: t.encode("utf-16"),  # with a BOM, in the machine's byte order
    lambda t: b"\xfe\xff" + t.encode("utf-16-be"),
    lambda t: b"\xff\xfe" + t.encode("utf-16-le"),
    lambda t: t.encode("utf-32"),
    lambda t: b"\x00\x00\xfe\xff" + t.encode("utf-32-be"),
], ids=["utf-8", "utf-8-bom", "utf-16", "utf-16-be-bom", "utf-16-le-bom", "utf-32",
        "utf-32-be-bom"])
def test_utf8_and_bom_marked_encodings_are_read(tmp_path: Path, encode: Any) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(encode(TEXT))
    config = load_config(path)
    assert config.seed == 7 and config.run.name == "café-ü"


@pytest.mark.parametrize(("data", "byte", "position"), [
    (TEXT.encode("latin-1"), 0xE9, TEXT.index("é")),
    (TEXT.encode("utf-16-le"), 0x00, 1),  # UTF-16 without a BOM
    (TEXT.encode("utf-16-be"), 0x00, 0),
    (TEXT.encode("utf-32-le"), 0x00, 1),
    (b"\xef\xbb\xbf" + TEXT.encode("cp1252"), 0xE9, 3 + TEXT.index("é")),
], ids=["latin-1", "utf-16-le-no-bom", "utf-16-be-no-bom", "utf-32-no-bom", "bom-then-cp1252"])
def test_other_encodings_name_the_file_byte_and_position(tmp_path: Path, data: bytes, byte: int,
                                                         position: int) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(data)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == (f"{path}: not UTF-8 text (byte 0x{byte:02x} at position "
                              f"{position}); save it as UTF-8")


def test_binary_junk_and_broken_utf16_are_named(tmp_path: Path) -> None:
    junk = tmp_path / "junk.yaml"
    junk.write_bytes(random.Random(0).randbytes(4096))
    with pytest.raises(ConfigError) as err:
        load_config(junk)
    _one_line(err.value, f"{junk}: not UTF-8 text (byte 0x", "; save it as UTF-8")
    odd = tmp_path / "odd.yaml"
    odd.write_bytes("seed: 1\n".encode("utf-16") + b"\x00")  # a BOM, then a dangling byte
    with pytest.raises(ConfigError) as err:
        load_config(odd)
    _one_line(err.value, f"{odd}: not UTF-16 text despite its byte-order mark (byte 0x00 at "
                         f"position {odd.stat().st_size - 1}); save it as UTF-8")


def test_cli_names_a_latin1_config_in_one_line(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "latin.yaml"
    path.write_bytes(TEXT.encode("latin-1"))
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {path}: not UTF-8 text (byte 0xe9 at position {TEXT.index('é')}); "
                   "save it as UTF-8\n")


def test_yaml_errors_are_one_line_with_the_place(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("seed: 1\noptim: {lr: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    _one_line(err.value, f"{path}: not valid YAML: ", "line 3, column 1")


# --------------------------------------------------------------------------- special files


def test_regular_file_accepts_files_and_links_to_them(tmp_path: Path) -> None:
    target = tmp_path / "real.yaml"
    target.write_text("seed: 1\n")
    link = tmp_path / "link.yaml"
    link.symlink_to(target)
    assert regular_file(target, "config file") == target
    assert regular_file(str(link), "config file") == link  # the user's spelling is kept
    assert read_yaml(link) == {"seed": 1}


def test_regular_file_names_what_is_wrong(tmp_path: Path, fifo: Path) -> None:
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "gone")
    link_to_fifo = tmp_path / "to-pipe"
    link_to_fifo.symlink_to(fifo)
    cases: list[tuple[Path | str, type[Exception], str]] = [
        (tmp_path / "nope.pt", FileNotFoundError, f"weights file not found: {tmp_path}/nope.pt"),
        (dangling, FileNotFoundError, f"(a symbolic link to the missing {tmp_path}/gone)"),
        (tmp_path, IsADirectoryError, f"weights file {tmp_path} is a directory, not a file"),
        (fifo, OSError, f"weights file {fifo} is a FIFO (named pipe), not a regular file; "
                        "give the path of a regular file"),
        (link_to_fifo, OSError, "is a FIFO (named pipe)"),
        ("/dev/null", OSError, "weights file /dev/null is a character device"),
        ("/dev/zero", OSError, "weights file /dev/zero is a character device"),
        ("a\0b", OSError, "cannot read weights file a"),
    ]
    for path, kind, part in cases:
        err = _within(lambda p=path: regular_file(p, "weights file"))  # type: ignore[misc]
        assert type(err) is kind, (path, err)
        _one_line(err, part)
        err = _within(lambda p=path: regular_file(p, "config file", ConfigError))  # type: ignore[misc]
        assert isinstance(err, ConfigError), (path, err)


def test_a_socket_is_not_a_file(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        _one_line(_within(lambda: regular_file(path, "image")), f"image {path} is a socket")


def test_an_unreadable_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("seed: 1\n")
    monkeypatch.setattr(os, "access", lambda p, mode: False)  # as root every file is readable
    err = _within(lambda: regular_file(path, "config file", ConfigError))
    assert isinstance(err, ConfigError)
    _one_line(err, f"cannot read config file {path}: permission denied; fix its permissions")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may read every file")
def test_really_unreadable_files_are_named(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("seed: 1\n")
    path.chmod(0)
    _one_line(_within(lambda: read_yaml(path)), "cannot read config file", "permission denied")
    closed = tmp_path / "closed"
    closed.mkdir()
    closed.chmod(0)
    try:
        _one_line(_within(lambda: read_yaml(closed / "c.yaml")), "cannot read config file",
                  "permission denied on a folder above it")
    finally:
        closed.chmod(0o700)


def test_readers_refuse_special_files_without_opening_them(tmp_path: Path, fifo: Path) -> None:
    """A FIFO nobody writes to would block the open forever; /dev/zero would never end."""
    for path in (fifo, Path("/dev/zero")):
        _one_line(_within(lambda p=path: read_yaml(p)), f"config file {path} is a")  # type: ignore[misc]
        err = _within(lambda p=path: read_state_dict(p))  # type: ignore[misc]
        assert type(err) is OSError
        _one_line(err, f"weights file {path} is a")
        err = _within(lambda p=path: load_checkpoint(p))  # type: ignore[misc]
        assert isinstance(err, CheckpointError)
        _one_line(err, f"checkpoint {path} is a")
    err = _within(lambda: read_state_dict(tmp_path / "none.pt"))
    assert isinstance(err, FileNotFoundError)  # the documented contract still holds


def test_resolve_checkpoint_checks_files_of_run_folders(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    os.mkfifo(run / "checkpoints" / "best.pt")
    err = _within(lambda: resolve_checkpoint(run))
    assert isinstance(err, CheckpointError)
    _one_line(err, f"checkpoint {run}/checkpoints/best.pt is a FIFO")
    err = _within(lambda: resolve_checkpoint(run, "last"))
    _one_line(err, f"{run} has no checkpoints/last.pt: last.pt is missing; use --checkpoint best")
    err = _within(lambda: resolve_checkpoint("/dev/null"))
    assert isinstance(err, CheckpointError)
    _one_line(err, "checkpoint /dev/null is a character device")


def _cli(*args: str, cwd: Path, stdin: int | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("AUXILIA_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "auxilia.cli", *args], cwd=cwd, env=env,
                          stdin=stdin, capture_output=True, text=True, timeout=DEADLINE_S)


@pytest.mark.parametrize("case", ["train-stdin-pipe", "weights-dev-zero", "eval-dev-null"])
def test_cli_refuses_special_files_in_one_line(tmp_path: Path, case: str) -> None:
    """Through the real CLI, in a child process with a deadline (a hang fails the test).

    FIFOs given by name are refused in-process above; ``/dev/stdin`` needs its own process.
    """
    args = {"train-stdin-pipe": ["train", "/dev/stdin"],
            "weights-dev-zero": ["train", f"run.dir={tmp_path / 'runs'}",
                                 "model.weights=/dev/zero"],
            "eval-dev-null": ["eval", "/dev/null"]}[case]
    expected = {"train-stdin-pipe": "config file /dev/stdin is a FIFO (named pipe)",
                "weights-dev-zero": "weights file /dev/zero is a character device",
                "eval-dev-null": "checkpoint /dev/null is a character device"}[case]
    result = _cli(*args, cwd=tmp_path, stdin=subprocess.PIPE if "stdin" in case else None)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"error: {expected}, not a regular file;"), result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------- seeds


@pytest.mark.parametrize("key", ["seed", "data.split_seed"])
@pytest.mark.parametrize("value", ["-1", "4294967296", "99999999999999999999", "true", "1.5",
                                   "'7'"])
def test_seeds_outside_numpys_range_are_named(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"{key}={value}"])
    lines = str(err.value).splitlines()
    assert lines[0] == "invalid configuration:" and len(lines) == 2, lines
    assert lines[1].startswith(f"  {key}: ") and "int in [0, 4294967295]" in lines[1], lines


def test_the_largest_seeds_train(tiny_config: Any) -> None:
    config = tiny_config("seed=4294967295", "data.split_seed=4294967295", "train.steps=2")
    assert (config.seed, config.data.split_seed) == (2**32 - 1, 2**32 - 1)
    assert train(config).summary["steps"] == 2


# --------------------------------------------------------------------------- devices


def _unavailable_devices() -> list[str]:
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    names = ["gpu", "tpu", "", " cpu", "CUDA", "cpu:0", "mps:0", "cuda:-1", f"cuda:{count}",
             "cuda:7" if count <= 7 else "cuda:99"]
    if count == 0:
        names.append("cuda")
    if not torch.backends.mps.is_available():
        names.append("mps")
    return names


@pytest.mark.parametrize("name", _unavailable_devices())
def test_unknown_or_unavailable_devices_are_named(name: str) -> None:
    with pytest.raises(ConfigError) as err:
        pick_device(name)
    _one_line(err.value, f"train.device={name!r}: ",
              "; valid: auto, cpu, cuda, cuda:N (N < the number of GPUs), mps")


def test_device_hints() -> None:
    with pytest.raises(ConfigError, match=r"'gpu': not a device \(did you mean 'cuda'\?\)"):
        pick_device("gpu")
    with pytest.raises(ConfigError, match=r"'cpu:0': not a device \(did you mean 'cpu'\?\)"):
        pick_device("cpu:0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available here; use train.device=cpu"):
            pick_device("cuda:0")


def test_valid_devices_are_accepted() -> None:
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type in ("cpu", "cuda")
    if torch.cuda.is_available():
        last = torch.cuda.device_count() - 1
        assert pick_device(f"cuda:{last}") == torch.device("cuda", last)


def test_a_bad_device_stops_before_any_run_folder(tiny_config: Any, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train.device='gpu'"):
        train(tiny_config("train.device=gpu"))
    assert not (tmp_path / "runs").exists()
