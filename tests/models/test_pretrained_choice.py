"""``auto``'s pretrained backbone on a GPU: the pretraining size, and whether weights can be had.

No test reaches the internet: offline ones assert that nothing is asked at all, and the online
one runs its lookups in a child process whose Hub (``HF_ENDPOINT``) is a server of the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import huggingface_hub
import pytest
from huggingface_hub import constants

from auxilia.models.pretrained import (
    GPU_MODEL,
    gpu_pretrained_choice,
    pretrained_input_size,
    weights_available,
    weights_cached,
)


@pytest.mark.parametrize(("name", "size"), [
    ("timm/resnet18.a1_in1k", 224), ("timm/resnet18", 224),  # timm's default weights
    ("timm/vit_base_patch16_384.augreg_in21k_ft_in1k", 384),
    ("timm/botnet50ts_256", None),  # an architecture timm has no weights for
    ("timm/resnet18.no_such_tag", None), ("resnet18", None), ("small_cnn", None)])
def test_the_pretraining_size_comes_from_timm(name: str, size: int | None) -> None:
    assert pretrained_input_size(name) == size


@pytest.fixture
def no_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty Hugging Face cache, and a Hub that fails the test if anything asks it."""
    def asked(*args: object, **kwargs: object) -> None:
        raise AssertionError("the Hub was asked while offline")

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", asked)


@pytest.mark.usefixtures("no_hub")
def test_offline_and_not_cached_is_no_choice_without_asking_the_hub() -> None:
    assert constants.HF_HUB_OFFLINE  # tests/conftest.py
    assert not weights_cached(GPU_MODEL) and not weights_available(GPU_MODEL)
    assert gpu_pretrained_choice(3, 200) is None


@pytest.mark.usefixtures("no_hub")
@pytest.mark.parametrize(("channels", "side"), [(3, 63), (3, 32), (4, 224), (2, 128)])
def test_images_that_do_not_qualify_keep_the_usual_choice(channels: int, side: int) -> None:
    assert gpu_pretrained_choice(channels, side) is None


class _Hub(BaseHTTPRequestHandler):
    """A Hub that has ResNet-18's ``pytorch_model.bin`` only and drops ResNet-50's requests."""

    seen: ClassVar[list[str]] = []

    def do_HEAD(self) -> None:
        self.seen.append(self.path)
        if "resnet50" in self.path:
            self.close_connection = True  # no answer at all, as a broken proxy
            return
        if self.path.endswith("/pytorch_model.bin"):
            self.send_response(200)
            self.send_header("X-Repo-Commit", "0" * 40)
            self.send_header("ETag", '"abc"')
            self.send_header("Content-Length", "46000000")
        else:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hub() -> Iterator[str]:
    """The URL of a local :class:`_Hub`."""
    _Hub.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_online_the_hub_is_asked_once_per_weight_file(hub: str, tmp_path: Path) -> None:
    script = ("import json; from auxilia.models.pretrained import *; print(json.dumps(["
              "weights_available(GPU_MODEL), weights_available('timm/resnet50.a1_in1k'), "
              "gpu_pretrained_choice(3, 200)]))")
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub, "NO_PROXY": "127.0.0.1",
           "HF_HUB_CACHE": str(tmp_path / "hub")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    resnet18, resnet50, choice = json.loads(done.stdout)
    assert resnet18 and not resnet50
    assert choice[:3] == [GPU_MODEL, True, 224] and choice[3].startswith(f"auto: {GPU_MODEL}")
    files = "/timm/resnet18.a1_in1k/resolve/main/model.safetensors", (
        "/timm/resnet18.a1_in1k/resolve/main/pytorch_model.bin")
    # timm's order: the safetensors file, then the PyTorch one; the unanswered one is not retried
    assert _Hub.seen == [*files, "/timm/resnet50.a1_in1k/resolve/main/model.safetensors", *files]
