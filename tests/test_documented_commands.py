"""Every command shown in the README and in the docs' quick starts runs, at a tiny budget.

Each ```bash block of README.md, and of every docs page that carries the quick-start marker
below, is read command by command. An ``auxilia ...`` command runs through the real command
line (``auxilia.cli.main``, what the ``auxilia`` script calls) exactly as written, with only
``train.steps=1`` appended to ``train``, ``rounds`` and ``compare`` (and ``train.time=null``
before it where the command sets a wall-clock budget, which steps may not be given with: the
budget's path is tested where it is built); ``make TARGET`` runs the
``auxilia`` commands of that target's recipe in the Makefile the same way. The commands of one
page run in order in one scratch folder holding a copy of ``configs/`` and ``my_photos/``, a
small folder of JPEG photos in class folders (the placeholder the docs use for the reader's own
images), so a run folder one command writes is there for the next. A block that cannot run
here (it needs a GPU or a download) is marked ``<!-- not run: why -->`` on the line before its
fence; the skipped commands are counted and reported with their reasons.
"""

from __future__ import annotations

import re
import shlex
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from auxilia.cli import main

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART_MARKER = "<!-- commands: every bash block of this page is run"
NOT_RUN = re.compile(r"<!--\s*not run:\s*(.+?)\s*-->")
TRAINS = ("train", "rounds", "compare")
CLASSES = ("cat", "dog", "bird")


@dataclass(frozen=True)
class Command:
    """One documented command: where it is written, its words, and why it is not run (if so)."""

    where: str
    words: tuple[str, ...]
    not_run: str | None = None


def run_pages() -> list[Path]:
    """README.md and every docs page marked as a quick start."""
    docs = sorted(p for p in (ROOT / "docs").glob("*.md") if QUICKSTART_MARKER in p.read_text())
    return [ROOT / "README.md", *docs]


def shown(page: Path) -> str:
    """The page's path relative to the repository (its name when it lies elsewhere)."""
    return str(page.relative_to(ROOT)) if page.is_relative_to(ROOT) else page.name


def bash_commands(page: Path) -> list[Command]:
    """The commands of the page's ```bash blocks, continuation lines joined, comments dropped."""
    commands: list[Command] = []
    lines = page.read_text().splitlines()
    index = 0
    while index < len(lines):
        if lines[index].strip() != "```bash":
            index += 1
            continue
        before = next((ln for ln in reversed(lines[:index]) if ln.strip()), "")
        marked = NOT_RUN.search(before)
        start, index = index + 1, index + 1
        while lines[index].strip() != "```":
            index += 1
        line, first = "", start
        for number in range(start, index):
            if not line:
                first = number
            line += lines[number].removesuffix("\\") + " "
            if lines[number].endswith("\\"):
                continue  # a continuation line: the command goes on
            words = tuple(shlex.split(line, comments=True))
            if words:
                where = f"{shown(page)}:{first + 1}"
                commands.append(Command(where, words, marked.group(1) if marked else None))
            line = ""
        index += 1
    return commands


def make_target_commands(target: str) -> list[list[str]]:
    """The ``auxilia`` commands (without the word ``auxilia``) of a Makefile target's recipe."""
    recipe = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)*)",
                       (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert recipe, f"the docs run `make {target}`, which the Makefile does not define"
    words = [shlex.split(line) for line in recipe.group(1).splitlines()]
    return [w[1:] for w in words if w and w[0] == "$(BIN)/auxilia"]


def to_argv(command: Command) -> list[list[str]]:
    """What ``main`` runs for a documented command; fails for one it cannot run."""
    name, *rest = command.words
    if name == "auxilia":
        return [rest]
    if name == "make" and len(rest) == 1:
        return make_target_commands(rest[0])
    raise AssertionError(f"{command.where}: cannot run `{' '.join(command.words)}`: a documented "
                         "command is `auxilia ...` or `make TARGET`, or its block is marked "
                         "<!-- not run: why --> on the line before the fence")


def tiny_budget(argv: list[str]) -> list[str]:
    """The overrides that shrink a training command to one step; none for other commands."""
    if not argv or argv[0] not in TRAINS:
        return []
    timed = any(word.startswith("train.time=") for word in argv)
    return [*(["train.time=null"] if timed else []), "train.steps=1"]


def write_photos(root: Path) -> None:
    """A small folder of JPEG photos: train/ and test/ class folders, each class its own tint.

    48x48 pixels are larger than ``auto`` takes as they are, so the commands go through the
    resize a user's photos go through (to 32x32 on a CPU); 24 training images per class leave
    the quick start's ``labels_per_class=10`` and ``val_per_class=10`` some unlabeled images.
    """
    rng = np.random.default_rng(0)
    for split, count in (("train", 24), ("test", 4)):
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for k in range(count):
                pixels = rng.integers(0, 160, (48, 48, 3), dtype=np.uint8)
                pixels[..., label] += 90  # each class leans to its own colour
                Image.fromarray(pixels).save(folder / f"{name}_{k}.jpg", quality=90)


@pytest.mark.slow
@pytest.mark.parametrize("page", run_pages(), ids=shown)
def test_every_documented_command_runs(page: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    commands = bash_commands(page)
    assert sum(c.words[0] == "auxilia" for c in commands) >= 3, f"{page}: too few commands found"
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    write_photos(tmp_path / "my_photos")
    monkeypatch.chdir(tmp_path)
    ran, skipped = [], [c for c in commands if c.not_run]
    for command in commands:
        if command.not_run:
            continue
        argvs = to_argv(command)
        if not argvs:
            skipped.append(Command(command.where, command.words, "runs no auxilia command"))
        for argv in argvs:
            full = [*argv, *tiny_budget(argv)]
            started = time.perf_counter()
            code = main(full)
            output = capsys.readouterr()
            assert code == 0, (f"{command.where}: `auxilia {shlex.join(full)}` exited {code}\n"
                               f"{output.out[-3000:]}\n{output.err[-3000:]}")
            ran.append(f"{time.perf_counter() - started:5.1f} s  auxilia {shlex.join(full)}")
    report = [f"{shown(page)}: ran {len(ran)} commands, skipped {len(skipped)}",
              *ran, *(f"skipped {c.where} `{shlex.join(c.words)}`: {c.not_run}" for c in skipped)]
    with capsys.disabled():
        print("\n" + "\n".join(report))
    if skipped:
        warnings.warn("; ".join(report[:1] + report[1 + len(ran):]), stacklevel=1)


def test_commands_are_read_from_blocks_with_markers_and_continuations(tmp_path: Path) -> None:
    probe = tmp_path / "page.md"
    probe.write_text("text\n\n```bash\nauxilia train a=1 \\\n    b=2   # a comment\n\n"
                     "make demo\n```\n\n<!-- not run: needs a GPU -->\n```bash\n"
                     "auxilia train model.name=big\n```\n```python\nauxilia.train()\n```\n")
    commands = [(c.where, c.words, c.not_run) for c in bash_commands(probe)]
    assert commands == [("page.md:4", ("auxilia", "train", "a=1", "b=2"), None),
                        ("page.md:7", ("make", "demo"), None),
                        ("page.md:12", ("auxilia", "train", "model.name=big"), "needs a GPU")]


def test_the_budget_shrinks_training_commands_only() -> None:
    assert tiny_budget(["train", "data.root=x"]) == ["train.steps=1"]
    assert tiny_budget(["compare", "-", "train.time=15m"]) == ["train.time=null", "train.steps=1"]
    assert tiny_budget(["export", "runs/x", "--format", "onnx"]) == []


def test_make_demo_runs_the_makefiles_auxilia_command() -> None:
    demo = make_target_commands("demo")
    assert demo and all(argv[0] == "train" for argv in demo)
    assert make_target_commands("test") == []
    with pytest.raises(AssertionError, match="cannot run `pip install x`"):
        to_argv(Command("README.md:1", ("pip", "install", "x")))
