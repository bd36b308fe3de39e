"""Seeds per purpose: initialisation independent of the method, scoped deterministic mode."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Iterator

import pytest
import torch

from auxilia.config import load_config
from auxilia.engine import train
from auxilia.engine.setup import build_setup
from auxilia.models.heads import HeadSpec
from auxilia.models.multi_exit import MultiExitModel
from auxilia.models.registry import create_backbone
from auxilia.seeding import (
    CUBLAS_WORKSPACE,
    derive_seed,
    determinism_summary,
    deterministic_mode,
    seeded,
)

METHODS = ("supervised", "deep_supervision", "cds", "byot")


def _switches() -> tuple[object, ...]:
    """Every global switch :func:`deterministic_mode` touches."""
    cudnn = torch.backends.cudnn
    return (torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
            cudnn.deterministic, cudnn.benchmark, os.environ.get(CUBLAS_WORKSPACE))


@pytest.fixture
def default_switches(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[object, ...]]:
    """torch's defaults (nothing deterministic, the variable unset), put back after the test."""
    saved = _switches()
    monkeypatch.delenv(CUBLAS_WORKSPACE, raising=False)
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = False, False
    yield _switches()
    torch.use_deterministic_algorithms(bool(saved[0]), warn_only=bool(saved[1]))
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]


def test_derive_seed_is_stable_and_distinct_per_purpose() -> None:
    # a fixed value: the seed must not change between processes, machines or versions
    assert derive_seed(0, "backbone") == 6945249848029835854
    purposes = [("backbone",), ("classifier",), ("train",), ("head", "s1__logits"),
                ("head", "s2__logits"), ("view", "x_lb", 0), ("view", "x_lb", 1),
                ("view", "x_lb2", 0), ("1",), (1,), ("ab", "c"), ("a", "bc"), ()]
    seeds = [derive_seed(0, *p) for p in purposes]
    assert len(set(seeds)) == len(seeds)
    assert all(0 <= s < 2**63 for s in seeds)
    assert derive_seed(1, "backbone") != derive_seed(0, "backbone")
    with pytest.raises(TypeError, match="str or int"):
        derive_seed(0, True)  # type: ignore[arg-type]


def test_seeded_draws_a_fixed_stream_and_leaves_the_outer_rng_untouched() -> None:
    torch.manual_seed(123)
    expected_outside = torch.rand(4)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    with seeded(7):
        inside = torch.rand(4)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(torch.rand(4), expected_outside)
    with seeded(7):
        assert torch.equal(torch.rand(4), inside)
    torch.manual_seed(7)
    assert torch.equal(torch.rand(4), inside)


def _setup(method: str, *extra: str):
    config = load_config(None, [f"method={method}", "train.device=cpu", "data.batch_size=32",
                                *extra])
    return build_setup(config)


def test_every_method_starts_from_the_same_backbone_classifier_and_training_stream() -> None:
    models, streams = {}, {}
    for method in METHODS:
        models[method] = _setup(method).model
        streams[method] = torch.get_rng_state()  # what dropout & co. draw from in training
    reference = models["supervised"]
    for method, model in models.items():
        assert torch.equal(streams[method], streams["supervised"]), method  # heads drew none
        for (name, a), b in zip(reference.backbone.state_dict().items(),
                                model.backbone.state_dict().values(), strict=True):
            assert torch.equal(a, b), f"{method}: backbone.{name}"
        for name, a in reference.classifier.state_dict().items():
            assert torch.equal(a, model.classifier.state_dict()[name]), f"{method}: {name}"


def test_training_draws_from_its_own_seeded_stream() -> None:
    torch.manual_seed(99)  # whatever came before the build does not reach training
    setup = _setup("deep_supervision", "seed=3")
    drawn = torch.rand(4)
    torch.manual_seed(derive_seed(3, "train"))
    assert torch.equal(drawn, torch.rand(4))
    assert setup.model.init_seed == 3


def test_a_heads_init_does_not_depend_on_the_other_heads() -> None:
    s1 = HeadSpec("s1", "logits", "classifier", (("hidden", 16),))
    s2 = HeadSpec("s2", "logits", "classifier", (("hidden", 16),))
    backbone = create_backbone("resnet8", in_chans=3)
    alone = MultiExitModel(backbone, 10, [s1], init_seed=0)
    both = MultiExitModel(backbone, 10, [s2, s1], init_seed=0)
    later = MultiExitModel(backbone, 10, [], init_seed=0)
    later.attach(s2)
    later.attach(s1)
    for model in (both, later):
        for (name, a), b in zip(alone.heads[s1.key].state_dict().items(),
                                model.heads[s1.key].state_dict().values(), strict=True):
            assert torch.equal(a, b), name
        assert torch.equal(alone.classifier.weight, model.classifier.weight)


def test_without_init_seed_heads_draw_from_the_global_rng() -> None:
    spec = HeadSpec("s1", "logits", "classifier")
    backbone = create_backbone("resnet8", in_chans=3)
    torch.manual_seed(0)
    first = MultiExitModel(backbone, 10, [spec])
    second = MultiExitModel(backbone, 10, [spec])  # the stream has moved on
    assert not torch.equal(first.heads[spec.key].fc.weight, second.heads[spec.key].fc.weight)


def test_deterministic_mode_sets_the_switches_and_restores_them_exactly(
        default_switches: tuple[object, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    with deterministic_mode(True):
        assert _switches() == (True, True, True, False, ":4096:8")
    assert _switches() == default_switches
    with pytest.raises(RuntimeError), deterministic_mode(True):
        raise RuntimeError("a failing run restores them too")
    assert _switches() == default_switches
    # a workspace setting of the user's own is kept inside and left as it was
    monkeypatch.setenv(CUBLAS_WORKSPACE, ":16:8")
    torch.use_deterministic_algorithms(True)  # and so is an earlier strict mode
    with deterministic_mode(True):
        assert os.environ[CUBLAS_WORKSPACE] == ":16:8"
    assert os.environ[CUBLAS_WORKSPACE] == ":16:8"
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.is_deterministic_algorithms_warn_only_enabled()
    with deterministic_mode(False):
        assert torch.are_deterministic_algorithms_enabled()


def test_build_setup_switches_no_deterministic_flag(
        default_switches: tuple[object, ...]) -> None:
    _setup("supervised", "train.deterministic=true")
    assert _switches() == default_switches


def test_a_deterministic_run_switches_on_inside_and_restores_after(
        tiny_config, default_switches: tuple[object, ...]) -> None:
    seen: list[tuple[object, ...]] = []
    result = train(tiny_config("train.steps=2", "train.deterministic=true"),
                   callbacks=[lambda step, losses: seen.append(_switches())])
    assert seen == [(True, True, True, False, ":4096:8")] * 2
    assert _switches() == default_switches
    # on the CPU no kernel lacks a deterministic version: the summary says so
    assert result.summary["determinism"] == {"deterministic": True, "mode": "warn_only",
                                             "nondeterministic_ops": []}


def _fast_switches() -> tuple[object, ...]:
    cudnn = torch.backends.cudnn
    return (cudnn.benchmark, cudnn.allow_tf32, torch.get_float32_matmul_precision(),
            torch.backends.cuda.matmul.allow_tf32, _cpu_matmul_precision())


def _cpu_matmul_precision() -> object:
    """oneDNN's float32 product precision (torch >= 2.9): the CPU's, never switched."""
    return getattr(getattr(torch.backends.mkldnn, "matmul", None), "fp32_precision", None)


def test_a_non_deterministic_run_takes_the_fast_kernels_and_restores_after(
        tiny_config, default_switches: tuple[object, ...]) -> None:
    """cuDNN's autotuner and TF32 (CUDA matrix products and convolutions) inside, the CPU's
    products untouched; the process's own settings after, whatever they were."""
    torch.backends.cudnn.allow_tf32 = False
    before = _fast_switches()
    cpu = _cpu_matmul_precision()
    assert before == (False, False, "highest", False, cpu)
    seen: list[tuple[object, ...]] = []
    result = train(tiny_config("train.steps=2", "train.deterministic=false"),
                   callbacks=[lambda step, losses: seen.append(_fast_switches())])
    assert seen == [(True, True, "high", True, cpu)] * 2
    assert _fast_switches() == before
    assert result.summary["determinism"] == {"deterministic": False, "cudnn_benchmark": True,
                                             "tf32": True}
    torch.backends.cudnn.allow_tf32 = True  # torch's default


class _WarnsInBackward(torch.autograd.Function):
    """An op whose backward warns as torch's kernels without a deterministic version do
    (``adaptive_avg_pool2d_backward_cuda`` on a GPU), from autograd's backward pass."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
        return x * 2

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        warnings.warn("adaptive_avg_pool2d_backward_cuda does not have a deterministic "
                      "implementation, but you set 'torch.use_deterministic_algorithms(True, "
                      "warn_only=True)'.", UserWarning, stacklevel=1)
        return grad * 2


def test_ops_without_a_deterministic_version_are_listed_once(
        default_switches: tuple[object, ...]) -> None:
    x = torch.ones(3, requires_grad=True)
    assert determinism_summary() == {}
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("default")
        with deterministic_mode(True) as record:
            for _ in range(3):  # every step warns; the user sees it once
                _WarnsInBackward.apply(x).sum().backward()
            warnings.warn("an unrelated warning", UserWarning, stacklevel=1)
            summary = determinism_summary()
    assert record.warned_ops == ["adaptive_avg_pool2d_backward_cuda"]
    assert summary == {"deterministic": True, "mode": "warn_only",
                       "nondeterministic_ops": ["adaptive_avg_pool2d_backward_cuda"]}
    messages = [str(w.message) for w in shown]
    assert sum("deterministic implementation" in m for m in messages) == 1, messages
    assert "an unrelated warning" in messages
    assert determinism_summary() == {}
    with warnings.catch_warnings(record=True), deterministic_mode(True) as again:
        _WarnsInBackward.apply(x).sum().backward()  # a second run in this process lists it too
    assert again.warned_ops == ["adaptive_avg_pool2d_backward_cuda"]


def _imported_env(code: str, env: dict[str, str]) -> str:
    """What ``code`` prints in a fresh interpreter with ``env``."""
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, check=True).stdout.strip()


def test_the_cublas_workspace_is_fixed_before_cuda_can_start() -> None:
    """cuBLAS reads ``CUBLAS_WORKSPACE_CONFIG`` when it makes its workspaces: importing
    auxilia sets it, before any of its code could start CUDA; a user's value is kept."""
    env = {k: v for k, v in os.environ.items() if k != CUBLAS_WORKSPACE}
    code = ("import os, torch\n"
            "import auxilia.engine, auxilia.cli\n"
            "print(os.environ.get('CUBLAS_WORKSPACE_CONFIG'), torch.cuda.is_initialized())")
    assert _imported_env(code, env) == ":4096:8 False"
    assert _imported_env(code, {**env, CUBLAS_WORKSPACE: ":16:8"}) == ":16:8 False"
