"""Short training runs on the real datasets beside the repository (skipped when absent)."""

from __future__ import annotations

import pytest

import auxilia


@pytest.mark.slow
def test_mnist_through_torchvision_layout(shared_data, tmp_path) -> None:
    result = auxilia.train({"data": {"source": "mnist", "root": str(shared_data),
                                     "train_subset": 6000, "batch_size": 128},
                            "train": {"steps": 150}, "optim": {"lr": 0.05},
                            "run": {"dir": str(tmp_path), "progress": "off", "plot": False}})
    assert result.summary["best_val"]["test"]["final/top1"] >= 90.0


@pytest.mark.slow
def test_cifar10_jpeg_folders_through_folder_source(shared_data, tmp_path) -> None:
    root = shared_data / "cifar10-jpg"
    if not (root / "train").is_dir():
        pytest.skip(f"{root}/train not found")
    result = auxilia.train(
        {"data": {"source": "folder", "root": str(root), "train_subset": 5000,
                  "val_fraction": 0.02, "batch_size": 128},
         "model": {"name": "resnet8"}, "method": "deep_supervision",
         "train": {"steps": 80, "amp": True}, "optim": {"lr": 0.1},
         "run": {"dir": str(tmp_path), "progress": "off", "plot": False}},
        model__channels_last=True)
    summary = result.summary
    assert summary["params"]["deployed"] < summary["params"]["total"]
    assert summary["best_val"]["test"]["final/top1"] >= 25.0  # chance is 10%
