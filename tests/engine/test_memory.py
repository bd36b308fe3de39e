"""Memory estimates: a run that cannot fit is refused before it allocates; others are not."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from auxilia.cli import main
from auxilia.config import ConfigError, load_config
from auxilia.data import host_memory
from auxilia.data.raw import DataError
from auxilia.engine import memory, train
from auxilia.engine.batches import make_batch
from auxilia.engine.optim import build_optimizer
from auxilia.engine.setup import build_setup, step_views
from auxilia.engine.stepper import forward_all
from auxilia.models.multi_exit import MultiExitModel
from auxilia.models.registry import create_backbone
from auxilia.terms import Progress

GiB = 2**30


@pytest.fixture
def little_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine has 21 GiB free, whatever it really has."""
    monkeypatch.setattr(memory, "available_bytes", lambda device, cgroup=None: 21 * GiB)
    monkeypatch.setattr(host_memory, "cpu_available_bytes", lambda cgroup=None: 21 * GiB)


def _model(name: str = "resnet8", image_size: int = 32) -> MultiExitModel:
    return MultiExitModel(create_backbone(name, in_chans=3, image_size=image_size), 10)


# --------------------------------------------------------------------------- refusals


def test_a_huge_image_size_is_refused_before_decoding(tiny_config: Any, little_memory: None,
                                                      tmp_path: Path) -> None:
    """digits at 4096x4096 would be 28 GiB as uint8 (and a float32 copy while resizing)."""
    start = time.perf_counter()
    with pytest.raises(DataError) as err:
        train(tiny_config("data.image_size=4096"))
    assert time.perf_counter() - start < 10
    message = str(err.value)
    assert message.startswith("digits resized to data.image_size=4096: 1,797 images of "
                              "1x4096x4096 need 28 GiB in memory as uint8 (and "), message
    assert message.endswith("more while converting), but 21 GiB is available; lower "
                            "data.image_size (or load fewer images)")
    assert "\n" not in message and not (tmp_path / "runs").exists()


def test_an_image_size_no_machine_holds_is_refused_through_the_cli(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Not patched: 1,797 images of 100,000² bytes are 16 TiB, more than any machine has."""
    start = time.perf_counter()
    code = main(["train", f"run.dir={tmp_path / 'runs'}", "data.image_size=100000"])
    assert time.perf_counter() - start < 20
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("error: digits resized to data.image_size=100000: 1,797 images"), err
    assert not (tmp_path / "runs").exists()


def test_a_huge_batch_is_refused_before_the_run_folder(tiny_config: Any, tmp_path: Path) -> None:
    """Not patched: 10 million 64x64 digits per step need terabytes on any machine."""
    start = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        train(tiny_config("data.image_size=64", "data.batch_size=10000000"))
    assert time.perf_counter() - start < 20
    message = str(err.value)
    assert message.startswith("data.image_size=64 with data.batch_size=10000000 and 1 view "
                              "needs about "), message
    assert " for one training step (estimated), but " in message
    assert message.endswith("is available (CPU memory); lower data.image_size or "
                            "data.batch_size")
    assert "\n" not in message and not (tmp_path / "runs").exists()


def test_the_message_counts_the_objectives_views(tiny_config: Any, little_memory: None) -> None:
    config = tiny_config("data.image_size=64", "data.batch_size=100000", "method=cds")
    with pytest.raises(ConfigError, match=r"data.batch_size=100000 and 2 views needs about "
                                          r"[\d,]+ GiB for one training step"):
        build_setup(config)


def test_a_huge_eval_batch_is_refused(tiny_config: Any, little_memory: None) -> None:
    config = tiny_config("data.image_size=64", "data.eval_batch_size=10000000")
    with pytest.raises(ConfigError, match=r"^data.image_size=64 with data.eval_batch_size="
                                          r"10000000 needs about [\d,]+ GiB for one evaluation "
                                          r"batch \(estimated\), but 21 GiB is available"):
        build_setup(config)


# --------------------------------------------------------------------------- no false alarms


def test_evaluation_only_needs_an_evaluation_batch(tiny_config: Any, little_memory: None) -> None:
    """``auxilia eval``/``export`` of a run trained on a bigger machine is not refused."""
    config = tiny_config("data.image_size=64", "data.batch_size=100000")
    with pytest.raises(ConfigError, match="for one training step"):
        build_setup(config)
    assert build_setup(config, training=False).data.image_shape == (1, 64, 64)


def test_amp_halves_the_activation_estimate(monkeypatch: pytest.MonkeyPatch) -> None:
    model, shape = _model(), (3, 32, 32)
    per_sample = memory.forward_bytes(model, shape)
    assert per_sample is not None
    config = load_config(None, ["data.batch_size=4096"])
    params = sum(p.numel() * 4 for p in model.parameters())
    need = memory.step_bytes(per_sample, shape, 4096, 1, params,
                             memory.optimizer_copies(config, torch.device("cpu")))
    monkeypatch.setattr(memory, "available_bytes", lambda device, cgroup=None: int(need * 0.7))
    with pytest.raises(ConfigError, match="for one training step"):
        memory.check_step_memory(config, model, shape, 1, torch.device("cpu"))
    amp = load_config(None, ["data.batch_size=4096", "train.amp=true"])
    memory.check_step_memory(amp, model, shape, 1, torch.device("cpu"))


def test_a_normal_run_is_unaffected(tiny_config: Any) -> None:
    result = train(tiny_config("train.steps=3"))
    assert result.summary["steps"] == 3


def test_a_cifar_resnet_step_is_estimated_in_hundreds_of_mib(little_memory: None) -> None:
    """ResNet-20 on 32x32, batch 128: about 1.9 MiB of activations per image."""
    config = load_config(None, ["data.batch_size=128"])
    model = _model("resnet20")
    per_sample = memory.forward_bytes(model, (3, 32, 32))
    assert per_sample is not None
    params = sum(p.numel() * 4 for p in model.parameters())
    need = memory.step_bytes(per_sample, (3, 32, 32), 128, 1, params,
                             memory.optimizer_copies(config, torch.device("cpu")))
    assert 100 * 2**20 < need < 2 * GiB, need
    memory.check_step_memory(config, model, (3, 32, 32), 1, torch.device("cpu"))


def test_an_estimate_that_fails_skips_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    class ReadsValues(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * float(x.sum())  # needs data: impossible on the meta device

    monkeypatch.setattr(memory, "available_bytes", lambda device, cgroup=None: 0)
    config = load_config()
    assert memory.forward_bytes(ReadsValues(), (1, 8, 8)) is None
    memory.check_step_memory(config, ReadsValues(), (1, 8, 8), 1, torch.device("cpu"))
    with pytest.raises(ConfigError):  # the same check refuses a model it can estimate
        memory.check_step_memory(config, _model(), (3, 32, 32), 1, torch.device("cpu"))


def test_unknown_free_memory_skips_the_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "available_bytes", lambda device, cgroup=None: None)
    monkeypatch.setattr(host_memory, "cpu_available_bytes", lambda cgroup=None: None)
    host_memory.check_decoded_size(10**9, 3, 4096, 4096, "images")
    memory.check_step_memory(load_config(), _model(), (3, 32, 32), 1, torch.device("cpu"))


# --------------------------------------------------------------------------- the estimate


def test_the_estimate_touches_no_weight_and_allocates_nothing() -> None:
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    per_sample = memory.forward_bytes(model, (3, 32, 32))
    assert per_sample is not None and 0 < per_sample.largest < per_sample.total
    for key, value in model.state_dict().items():  # BatchNorm statistics did not move
        assert torch.equal(value, before[key]), key
        assert value.device.type == "cpu"


def test_forward_bytes_counts_what_a_real_forward_creates() -> None:
    """Same count on real tensors: the meta forward sees every operator a real one runs."""
    model = _model()
    per_sample = memory.forward_bytes(model, (3, 32, 32))
    x = torch.zeros(2, 3, 32, 32)
    with memory._CountOutputs() as counter:
        model(x)
    assert per_sample is not None and per_sample.total == counter.total // 2
    assert per_sample.total > 4 * 16 * 32 * 32 * 2  # at least the first conv and its BN


def test_the_estimate_is_within_3x_of_a_measured_step(tiny_config) -> None:
    """One real training step of resnet8 on 32x32 digits, batch 256: what autograd keeps for
    the backward pass (every saved tensor's storage, counted once), the batch and the
    parameters with their gradient and momentum copies, against the estimate (~300 MiB).

    Saved tensors are what a step holds at its peak; counting them is exact and, unlike the
    process's resident memory, independent of the allocator's caching."""
    config = tiny_config("model.name=resnet8", "data.image_size=32", "data.batch_size=256",
                         "train.device=cpu")
    setup = build_setup(config)
    optimizer = build_optimizer(setup.model, config.optim)
    batch = make_batch(setup, torch.arange(256))
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        outputs = forward_all({"student": setup.model}, setup.objective.inputs(), batch)
        loss = setup.objective(outputs, batch, Progress(0, 10, 10))["loss"]
    loss.backward()
    optimizer.step()
    params = sum(p.numel() * 4 for p in setup.model.parameters())
    copies = memory.optimizer_copies(config, setup.device)
    measured = sum(storages.values()) + batch["x_lb"].nbytes + params * (1 + copies)
    per_sample = memory.forward_bytes(setup.model, setup.data.image_shape)
    assert per_sample is not None
    estimate = memory.step_bytes(per_sample, setup.data.image_shape, 256, 1, params, copies)
    assert measured > 100 * 2**20, measured  # a step large enough to stand out
    assert measured / 3 < estimate < measured * 3, (measured, estimate)


# --------------------------------------------------------------------------- free memory


def test_free_cpu_memory_is_read() -> None:
    free = memory.available_bytes(torch.device("cpu"))
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert free is not None and 0 < free <= total


def test_a_cgroup_limit_lowers_the_free_memory(tmp_path: Path) -> None:
    (tmp_path / "memory.max").write_text(f"{GiB}\n")
    (tmp_path / "memory.current").write_text(f"{GiB // 2}\n")
    (tmp_path / "memory.stat").write_text(f"anon 1\ninactive_file {GiB // 4}\nactive_file 9\n")
    assert memory.available_bytes(torch.device("cpu"), tmp_path) == 3 * GiB // 4
    (tmp_path / "memory.max").write_text("max\n")  # unlimited: /proc/meminfo decides
    assert memory.available_bytes(torch.device("cpu"), tmp_path) > GiB // 4


def test_decoded_size_names_what_and_how_much(little_memory: None) -> None:
    host_memory.check_decoded_size(1000, 3, 32, 32, "cifar")  # 3 MB: fine
    with pytest.raises(DataError) as err:
        host_memory.check_decoded_size(100_000, 3, 512, 512, "folder data.root=/x at 512x512")
    assert str(err.value) == ("folder data.root=/x at 512x512: 100,000 images of 3x512x512 "
                              "need 73 GiB in memory as uint8, but 21 GiB is available; lower "
                              "data.image_size (or load fewer images)")


# --------------------------------------------------------------------------- every model


def _objective_setup(method: str, *extra: str) -> Any:
    labels = ["data.labels_per_class=5"] if method == "mean_teacher" else []
    config = load_config(None, [f"method={method}", "train.device=cpu", "data.batch_size=2",
                                "data.eval_batch_size=2", "model.name=resnet20",
                                "data.image_size=32", *labels, *extra])
    return build_setup(config)


def _estimate(setup: Any, device: str = "cpu") -> memory.StepEstimate:
    views = step_views(setup.objective, setup.config.data.batch_size)
    estimate = memory.estimate_step(setup.config, setup.model, setup.data.image_shape, views,
                                    torch.device(device), setup.objective)
    assert estimate is not None
    return estimate


@pytest.mark.parametrize("method", ["dml", "mean_teacher"])
def test_a_run_whose_student_fits_but_not_its_slots_is_refused(
        method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The student's step alone fits in the memory left; with the peer (DML: weights,
    gradient, momentum, activations) or the EMA model (weights, a no-grad forward) it does
    not. The refusal names every model's share."""
    setup = _objective_setup(method)
    full = _estimate(setup)
    free = full.parts["student"] + 1
    monkeypatch.setattr(memory, "available_bytes", lambda device, cgroup=None: free)
    config, model, shape = setup.config, setup.model, setup.data.image_shape
    own = int(memory.model_batches(setup.objective, "student", 2))  # the student's views
    memory.check_step_memory(config, model, shape, own, torch.device("cpu"))  # student only
    views = step_views(setup.objective, 2)
    slot = "peer" if method == "dml" else "ema"
    with pytest.raises(ConfigError) as err:
        memory.check_step_memory(config, model, shape, views, torch.device("cpu"),
                                 objective=setup.objective)
    message = str(err.value)
    assert "\n" not in message
    assert re.fullmatch(rf"data.image_size=32 with data.batch_size=2 and {views} views needs "
                        rf"about \d+ MiB for one training step \(estimated: student \d+ MiB, "
                        rf"{slot} \d+ MiB\), but \d+ MiB is available \(CPU memory\); lower "
                        r"data.image_size or data.batch_size", message), message


def test_build_setup_counts_the_slots(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check as runs call it: a DML run refused where supervised at the same size fits."""
    supervised = _estimate(_objective_setup("supervised"))
    dml = _estimate(_objective_setup("dml"))
    free = (supervised.total + dml.total) // 2
    monkeypatch.setattr(memory, "available_bytes", lambda device, cgroup=None: free)
    _objective_setup("supervised")
    with pytest.raises(ConfigError, match=r"\(estimated: student \d+ MiB, peer \d+ MiB\)"):
        _objective_setup("dml")


def test_an_ema_model_adds_its_weights_and_a_no_grad_forward() -> None:
    """Mean Teacher's EMA model: one model's weights more than its student (no gradient, no
    optimizer state) plus what an evaluation-like forward of its views holds, far less than
    a trained model's share."""
    mean_teacher, supervised = _objective_setup("mean_teacher"), _objective_setup("supervised")
    model = mean_teacher.model
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    estimate = _estimate(mean_teacher)
    shape = mean_teacher.data.image_shape
    per_sample = memory.forward_bytes(model, shape)
    assert per_sample is not None
    images = 2 * memory.model_batches(mean_teacher.objective, "ema", 2)
    forward = memory.eval_bytes(per_sample, shape, int(images))
    assert weights <= estimate.parts["ema"] <= weights + forward
    assert estimate.parts["ema"] < estimate.parts["student"] / 2
    assert estimate.total >= _estimate(supervised).total + weights


def test_prediction_banks_count_where_they_move_to(monkeypatch: pytest.MonkeyPatch) -> None:
    """Temporal Ensembling's bank (N x classes floats, several copies): already allocated on
    the CPU, moved to a GPU after the check, so counted there."""
    setup = _objective_setup("temporal_ensembling", "data.labels_per_class=5")
    banks = sum(b.numel() * b.element_size() for b in setup.objective.buffers())
    assert banks >= len(setup.data.unlabeled) * setup.data.num_classes * 4
    assert _estimate(setup, "cpu").parts["term state"] == 0
    assert _estimate(setup, "cuda").parts["term state"] == banks
