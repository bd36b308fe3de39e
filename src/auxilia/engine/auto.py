"""Defaults that fit the data: the model and input size when the config names neither.

``model.name: auto`` (the default) and ``data.image_size: auto`` (the default) are resolved
before anything is built, from the training images' shape (read from a few file headers for
image folders and CSVs, without decoding) and the training device:

| training images | device | model | input size |
|---|---|---|---|
| at most 16 px | any | ``small_cnn`` | native |
| 17-36 px, one channel | any | ``small_cnn`` | native |
| 17-36 px, RGB | any | ``resnet20`` | native |
| larger than 36 px | CPU | ``resnet20`` | 32 px |
| larger than 36 px | GPU | ``resnet18`` (3x3 stem) | 64 px |
| 64 px or larger | GPU, weights at hand | ``timm/resnet18.a1_in1k``, pretrained | 224 px |

The last row (:func:`auxilia.models.pretrained.gpu_pretrained_choice`) needs the weights in the
Hugging Face cache, or a machine online; without them the row above applies. A named timm model
with ``model.pretrained=true`` and ``data.image_size: auto`` trains at its pretraining size.

"Native" is the median side when the images differ in size (they must share one to be
stacked). A named model still gets its input size from the table (``data.image_size=native``
keeps the images' own); a named size picks the model by the same table. The resolved config
is what the run folder and its checkpoints record. Every command resolves through
:func:`resolve_for` (``train``, ``compare``, ``rounds``, the Python API; ``eval`` and
``export`` read the resolved config their run recorded).
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch

from auxilia.config import Config
from auxilia.data import folders
from auxilia.data.config import DataConfig
from auxilia.data.raw import DataError
from auxilia.data.storage import peek_sides
from auxilia.data.types import DatasetSplits
from auxilia.engine.device import pick_device
from auxilia.models.pretrained import gpu_pretrained_choice, pretrained_input_size
from auxilia.models.scaled import preset_for
from auxilia.run_names import default_run_name

__all__ = ["AUTO", "choose", "native_shape", "resolve", "resolve_auto", "resolve_for"]

AUTO = "auto"
SMALL, CPU_SIZE, GPU_SIZE = 36, 32, 64

_ARRAY_SHAPES = {"digits": (1, 8), "mnist": (1, 28), "fashion_mnist": (1, 28), "kmnist": (1, 28),
                 "cifar10": (3, 32), "cifar100": (3, 32), "svhn": (3, 32), "stl10": (3, 96)}


def choose(channels: int, side: int, gpu: bool, size_given: bool) -> tuple[str, int | None]:
    """The table above: ``(model name, input size or None for native)``."""
    if side <= 16 or (side <= SMALL and channels == 1):
        return "small_cnn", None
    if side <= SMALL or size_given:
        return "resnet20", None
    return ("resnet18", GPU_SIZE) if gpu else ("resnet20", CPU_SIZE)


def _train_files(cfg: DataConfig) -> list[Path]:
    if cfg.source == "folder" and cfg.root is not None:
        root = Path(cfg.root).expanduser()
        skip = folders._unlabeled_inside(root, cfg)  # an unlabeled folder is no class
        splits = folders.split_folders(root, skip)
        if "train" in splits:
            return folders._scan_classes(splits["train"], None)[1]
        return folders._scan_classes(root, None, skip=skip)[1]
    if cfg.source == "csv" and cfg.csv is not None:
        path = Path(cfg.csv.train).expanduser()
        path = Path(cfg.root) / path if cfg.root and not path.is_absolute() else path
        return folders._read_csv(path, cfg, "train", None)[0]
    return []


def native_shape(cfg: DataConfig) -> tuple[int, int, bool] | None:
    """``(channels, median side, sizes differ)`` of the training images, or None if unknown.

    Array datasets have a known shape; for image files a few headers are read (evenly spread
    over the training files). Problems with the data are left to the loader to report.
    """
    if cfg.source in _ARRAY_SHAPES:
        channels, side = _ARRAY_SHAPES[cfg.source]
        return channels, side, False
    try:
        files = _train_files(cfg)
    except (DataError, OSError):
        return None
    sides = peek_sides(files)
    if not sides:
        return None
    return (1 if cfg.grayscale else 3), int(statistics.median(sides)), len(set(sides)) > 1


def resolve_auto(config: Config, gpu: bool, shape: tuple[int, int, bool] | None = None
                 ) -> tuple[Config, str | None]:
    """Replace ``auto`` in ``model.name`` and ``data.image_size`` by what fits the data.

    The input size follows the table above whether or not the model is named: naming a model
    does not mean training it at the images' native size (``data.image_size=native`` does).

    Args:
        config: a validated config.
        gpu: whether training runs on a GPU.
        shape: the images' ``(channels, side, sizes differ)``; read with :func:`native_shape`
            when None.

    Returns:
        ``(resolved config, a line saying what was chosen and how to choose otherwise)``; the
        line is None when nothing was automatic, or the images' shape is unknown.
    """
    model_auto = config.model.name == AUTO
    size_auto = config.data.image_size == AUTO
    if not model_auto and not size_auto:
        return config, None
    shape = shape if shape is not None else native_shape(config.data)
    if shape is None:  # unknown images: the loader will say what is wrong with the data
        return _with(config, "small_cnn" if model_auto else config.model.name,
                     "native" if size_auto else config.data.image_size), None
    channels, side, differ = shape
    scale = config.model.scale  # a scaled zoo model is never swapped for a timm one
    if model_auto and size_auto and gpu and scale is None and (
            pick := gpu_pretrained_choice(channels, side)):
        return _with(config, pick.name, pick.size, pretrained=True), pick.reason
    note = ""
    if size_auto:
        name, size = choose(channels, side, gpu, size_given=False)
        if size is None and differ:
            size = side  # one size is needed to stack them: the median side
        size, note = _model_size(config, model_auto, size, side)
    else:  # a named size (or native) picks the model
        size = config.data.size
        name, _ = choose(channels, size or side, gpu, size_given=True)
    name = name if model_auto else config.model.name
    line = _line(name, size, shape, gpu, model_auto, size_auto)
    if note:
        line = line.replace(f" at {size}x{size} ", f" at {size}x{size} ({note}) ")
    return _with(config, name, size if size is not None else "native"), line


def _model_size(config: Config, model_auto: bool, size: int | None, side: int
                ) -> tuple[int | None, str]:
    """The automatic input size once the model has its say: a pretrained timm model's
    pretraining size, an EfficientNet preset's published side (``B_TABLE``), then
    ``model.scale``'s ``gamma**phi`` on the result (native images: on their side).

    Returns:
        ``(size or None for native, a note for the auto line or "")``.
    """
    named = None if model_auto else config.model.name
    note = ""
    if named and config.model.pretrained and (trained_at := pretrained_input_size(named)):
        size, note = trained_at, "its pretraining size"  # fine-tuned at their own size
    elif named and (preset := preset_for(named)):
        size, note = preset.resolution, "its published resolution"
    scale = config.model.scale
    if scale is not None and scale.multipliers().resolution != 1:  # gamma**phi on that size
        size = scale.resolution(size or side)
        note = f"model.scale: x{scale.multipliers().resolution:.3g}" + (
            f" on {note}" if note else "")
    return size, note


def _line(name: str, size: int | None, shape: tuple[int, int, bool], gpu: bool,
          model_auto: bool, size_auto: bool) -> str:
    """``auto: model M at SxS for ... images, training on CPU; choose with ...``."""
    channels, side, differ = shape
    shown = f"{size}x{size}" if size else f"{side}x{side} (native)"
    keys = " and ".join(key for key, auto in (("model.name=...", model_auto),
                                               ("data.image_size=...", size_auto)) if auto)
    return (f"auto: model {name} at {shown} for {'mostly ' if differ else ''}{side}x{side} "
            f"{'grey' if channels == 1 else 'RGB'} images, training on {'GPU' if gpu else 'CPU'}"
            f"; choose with {keys}")


def _with(config: Config, model: str, size: int | str, pretrained: bool | None = None
          ) -> Config:
    data = config.data.model_copy(update={"image_size": size})
    update: dict[str, object] = {"name": model}
    if pretrained is not None:
        update["pretrained"] = pretrained
    return config.model_copy(update={"model": config.model.model_copy(update=update),
                                     "data": data})


def resolve_for(config: Config, data: DatasetSplits | None, device: torch.device
                ) -> tuple[Config, str | None]:
    """The one resolution every command uses: :func:`resolve_auto` for ``device``, and the
    run's folder name fixed in ``run.name``.

    The images' shape is read from the data's files (:func:`native_shape`), so a run resolves
    the same way whether it loads its data itself or is handed splits loaded from the resolved
    config (a sweep's shared data). Splits already loaded at another size (the Python API's
    ``data=``) keep their size: the model is chosen for it.

    An unnamed run is named from what the user set (:func:`auxilia.run_names.default_run_name`
    with the model ``auto`` chose), not from what ``auto`` filled in, and the name is recorded
    in the resolved config, so the run's ``config.yaml`` names its own folder.
    """
    resolved, line = _resolve_auto_for(config, data, device.type == "cuda")
    if resolved.run.name is None:
        named = config.model_copy(update={"model": config.model.model_copy(
            update={"name": resolved.model.name})})
        resolved = resolved.model_copy(update={"run": resolved.run.model_copy(
            update={"name": default_run_name(named)})})
    return resolved, line


def _resolve_auto_for(config: Config, data: DatasetSplits | None, gpu: bool
                      ) -> tuple[Config, str | None]:
    if AUTO not in (config.model.name, config.data.image_size):
        return config, None
    resolved, line = resolve_auto(config, gpu)
    if data is None or data.image_shape[1] == _loaded_side(resolved, data):
        return resolved, line
    channels, side, _ = data.image_shape
    sized = config.model_copy(update={"data": config.data.model_copy(
        update={"image_size": side})})
    return resolve_auto(sized, gpu, shape=(channels, side, False))


def _loaded_side(config: Config, data: DatasetSplits) -> int:
    """The side ``config`` loads its images at (``data``'s own for ``native``)."""
    return config.data.size or data.image_shape[1]


def resolve(config: Config) -> tuple[Config, str | None]:
    """:func:`resolve_for` on the device ``train.device`` names, before any data is loaded."""
    return resolve_for(config, None, pick_device(config.train.device))
