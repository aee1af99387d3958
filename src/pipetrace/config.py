"""What a training run is configured with: :class:`TrainConfig` and the named presets.

This module holds data only, so the trainer and its helpers (``optim``, ``prepare``,
``runfolder``) and the views can all import it without a circle back into ``train.py``.

Each field of :class:`TrainConfig` is declared with :func:`setting`: its default, the one
line that documents it, and what it allows (choices or a range). That one declaration is
what ``TrainConfig`` validates itself against (``__post_init__``: one line naming the field,
the value and what is allowed) and what ``pipetrace train --help`` prints, so the help, the
checks and the defaults cannot drift apart (docs/architecture.md says why metadata rather
than the comments).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from .images import MAX_IMAGE_PIXELS

PRESETS: dict[str, dict] = {
    # The built-in shapes at the seed's 224 x 224 (see `pipetrace demo`).
    "demo": dict(model="pipenet-s", epochs=5, batch_size=32, image_size=224, crop_pct=1.0,
                 optimizer="adamw", lr=2e-3, schedule="onecycle", augment="flip"),
    # CIFAR-10 from JPEG files on a CPU: an airbench-style recipe (see docs/performance.md).
    # lr x weight_decay = 0.002 per step, as airbench94 (whose loss is summed, not averaged);
    # airbench's lookahead from the start, its whitening bias frozen after 3 epochs, and its
    # translated test-time views at the end: 90.8% after 10 epochs (90.3% after 12 without).
    "cifar": dict(model="cifarnet", epochs=10, batch_size=1024, image_size=32, crop_pct=1.0,
                  optimizer="sgd", lr=1.5, momentum=0.85, weight_decay=0.00133,
                  schedule="onecycle", warmup_pct=0.23, lr_start=0.2, lr_end=0.07,
                  label_smoothing=0.2, augment="crop-flip", crop_pad=2, tta=True, tta_shift=1,
                  lookahead_from=0, stem_bias_epochs=3),
    # Real photos: fine-tune ImageNet weights (fastai's fine_tune): one epoch trains the new
    # head on the frozen network, then all layers, the pretrained ones at a tenth of the rate.
    # Size, crop, interpolation, mean and std come from the weights (224, 256, bilinear).
    "photos": dict(model="resnet18", weights="DEFAULT", epochs=10, batch_size=32,
                   optimizer="adamw", lr=1e-3, schedule="cosine", augment="rrc",
                   freeze_epochs=1, backbone_lr_scale=0.1),
}

MAX_IMAGE_SIZE = 4096  # pixels: a square input side above this is a typo, not a model input
MAX_RESIZE = 2 * MAX_IMAGE_SIZE  # the eval resize before the crop (size / crop_pct), pixels
MAX_SEED = 2**63 - 1  # what torch.manual_seed takes
MAX_LR = 1e6  # far above any rate that trains; float32 steps overflow long before 1e38


@dataclass(frozen=True)
class Allowed:
    """What one field accepts: a set of choices, or a numeric range (ends open or closed)."""

    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: ``low`` itself is not allowed
    high_open: bool = False
    pattern: str = ""  # a regular expression the whole string must match (e.g. "cuda:N")
    pattern_text: str = ""  # how the pattern reads in words
    optional: bool = False  # None is allowed (it means "derive it")

    def describe(self, kind: type) -> str:
        """'one of: sgd, adamw', 'an integer >= 1', 'a number in (0, 1]' ..."""
        if self.choices:
            text = "one of: " + ", ".join(self.choices)
            if self.pattern_text:
                text += f" or {self.pattern_text}"
        elif kind is bool:
            text = "true or false"
        elif kind is str:
            text = "text"
        else:
            noun = "an integer" if kind is int else "a number"
            num = (lambda v: str(int(v))) if kind is int else (lambda v: f"{v:g}")
            lo = None if self.low is None else num(self.low)
            hi = None if self.high is None else num(self.high)
            if lo is not None and hi is not None:
                text = (f"{noun} in {'(' if self.low_open else '['}{lo}, {hi}"
                        f"{')' if self.high_open else ']'}")
            elif lo is not None:
                text = f"{noun} {'>' if self.low_open else '>='} {lo}"
            elif hi is not None:
                text = f"{noun} {'<' if self.high_open else '<='} {hi}"
            else:
                text = noun
        return text + (" (or none)" if self.optional else "")

    def admits(self, value: Any, kind: type) -> bool:
        if value is None:
            return self.optional
        if kind is bool:
            return isinstance(value, bool)
        if kind is str:
            return isinstance(value, str) and (
                not (self.choices or self.pattern) or value in self.choices
                or bool(self.pattern and re.fullmatch(self.pattern, value)))
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if kind is int and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None
                    and (value > self.high or (self.high_open and value == self.high)))


def setting(default: Any, doc: str, **allowed: Any):
    """A config field: its default, its one-line documentation, and what it allows."""
    return field(default=default, metadata={"doc": doc, "allowed": Allowed(**allowed)})


KINDS = {"int": int, "float": float, "str": str, "bool": bool}


def field_kind(f) -> type:
    """The field's scalar type, from its annotation ('int | None' -> int)."""
    return KINDS[str(f.type).split("|")[0].strip()]


def field_doc(f) -> str:
    return f.metadata.get("doc", "")


def field_allowed(f) -> Allowed:
    return f.metadata.get("allowed", Allowed())


class ConfigError(ValueError):
    """A config value outside what its field allows; ``str()`` is one line."""


def check_fields(cfg) -> None:
    """Raise :class:`ConfigError` for the first field of ``cfg`` whose value is not allowed."""
    for f in fields(cfg):
        value, allowed, kind = getattr(cfg, f.name), field_allowed(f), field_kind(f)
        if not allowed.admits(value, kind):
            flag = "--" + f.name.replace("_", "-")
            raise ConfigError(f"{f.name} ({flag}) cannot be {value!r}: it must be "
                              f"{allowed.describe(kind)}")


def check_setting(name: str, value: Any, flag: str) -> None:
    """Raise :class:`ConfigError` unless ``value`` is allowed for the :class:`TrainConfig`
    field ``name``: for a command that takes the same setting under its own ``flag``
    (``trace --size`` is ``image_size``)."""
    f = next(f for f in fields(TrainConfig) if f.name == name)
    allowed, kind = replace(field_allowed(f), optional=False), field_kind(f)  # given: a value
    if not allowed.admits(value, kind):
        raise ConfigError(f"{flag} cannot be {value!r}: it must be {allowed.describe(kind)}")


DEVICE_PATTERN = r"cuda:\d+"
AUGMENT_CHOICES = ("none", "flip", "crop-flip", "rrc")  # == transforms.AUGMENTS (tested)
LOADER_CHOICES = ("fast", "classic")  # == data.LOADER_PATHS (tested)


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run depends on; saved as ``config.json`` in the run folder."""

    data: str = setting("", "ImageFolder root: train/ + val/ (or test/), or class folders "
                        "directly")
    out: str = setting("runs/train", "run folder for checkpoints, metrics, plots and the "
                       "report")
    model: str = setting("pipenet-s", "built-in CNN (pipenet-tiny, pipenet-s, pipenet-m, "
                         "cifarnet, cifarnet-s), a torchvision architecture name, or "
                         "timm/<name> (the timm extra)")
    weights: str | None = setting(None, "initial weights: a name (DEFAULT, IMAGENET1K_V1, ...: "
                                  "pretrained, from torchvision or timm) or a file (state dict "
                                  "or pipetrace checkpoint)", optional=True)
    epochs: int = setting(5, "passes over the training set", low=1)
    batch_size: int = setting(32, "images per step and process (global batch = this x world "
                              "size)", low=1)
    image_size: int | None = setting(None, "side of the square model input, pixels (none: the "
                                     "weights' own, else 224)", low=1, high=MAX_IMAGE_SIZE,
                                     optional=True)
    crop_pct: float | None = setting(None, "eval: resize short side to image_size / crop_pct, "
                                     "centre-crop (none: the weights' own, else 0.875)", low=0,
                                     high=1, low_open=True, optional=True)
    optimizer: str = setting("adamw", "sgd: with Nesterov momentum; adamw: decoupled weight decay",
                             choices=("sgd", "adamw"))
    lr: float = setting(2e-3, "peak learning rate (of the head, when fine-tuning; auto: a "
                        "learning-rate range test picks it)", low=0, low_open=True,
                        high=MAX_LR)
    lr_find: bool = setting(False, "pick lr with a learning-rate range test before training "
                            "(what --lr auto sets)")
    schedule: str = setting("onecycle", "learning-rate schedule per step (cosine: after a "
                            "linear warm-up)",
                            choices=("onecycle", "cosine", "constant"))
    warmup_pct: float = setting(0.25, "share of steps spent warming up to the peak learning "
                                "rate", low=0, high=1, high_open=True)
    lr_start: float = setting(0.04, "onecycle: first learning rate, as a fraction of the peak",
                              low=0, high=1, low_open=True)
    lr_end: float = setting(1.6e-4, "onecycle: last learning rate, as a fraction of the peak",
                            low=0, high=1, low_open=True)
    weight_decay: float = setting(5e-4, "L2 / decoupled weight decay", low=0)
    momentum: float = setting(0.9, "SGD momentum", low=0, high=1, high_open=True)
    label_smoothing: float = setting(0.0, "cross-entropy label smoothing", low=0, high=1,
                                     high_open=True)
    freeze_epochs: int = setting(0, "fine-tuning: the first epochs train only the new head, the "
                                 "pretrained layers frozen", low=0)
    backbone_lr_scale: float = setting(1.0, "fine-tuning: the pretrained layers learn at lr x "
                                       "this (discriminative rates)", low=0)
    frozen_bn: str = setting("eval", "while frozen: eval keeps the pretrained batch norm "
                             "statistics, train re-estimates them", choices=("eval", "train"))
    augment: str = setting("flip", "training augmentation (crop-flip: pad, random crop and "
                           "flip; rrc: random resized crop and flip)", choices=AUGMENT_CHOICES)
    crop_pad: int | None = setting(None, "crop-flip's translation in pixels (none: "
                                   "image_size / 8)", low=0, optional=True)
    workers: int = setting(0, "DataLoader workers per process; measure before raising (2 "
                           "cores!)", low=0)
    seed: int = setting(0, "same seed, same CPU: same metrics", low=0, high=MAX_SEED)
    device: str = setting("auto", "where to train (auto: a GPU if there is one)", choices=("auto", "cpu", "cuda"), pattern=DEVICE_PATTERN,
                          pattern_text="cuda:N")
    amp: str = setting("auto", "mixed precision (auto: bf16 where the hardware has it natively, "
                       "fp16 on older GPUs, off on CPUs without bf16)",
                       choices=("auto", "off", "bf16", "fp16"))
    channels_last: bool = setting(True, "NHWC memory format (faster convolutions on CPU and "
                                  "GPU)")
    val_fraction: float = setting(0.1, "share of each class held out of train when there is "
                                  "no val/ or test/ folder", low=0, high=1, high_open=True)
    stats: str = setting("auto", "normalization statistics (auto: the weights' own, else "
                         "ImageNet's; dataset: the training images' own mean and std)",
                         choices=("auto", "imagenet", "dataset"))
    loader: str = setting("fast", "the loader (fast: uint8 and a batch-level normalize; "
                          "classic: the seed's per-image PIL chain)", choices=LOADER_CHOICES)
    decode_on_device: bool = setting(False, "fast loader: workers only read the JPEG files and "
                                     "whole batches are decoded, resized and cropped where the "
                                     "model is (torchvision.io.decode_jpeg: nvJPEG on a GPU)")
    tta: bool = setting(False, "evaluate on the image and its mirror, average the logits")
    tta_shift: int = setting(0, "the last epoch's evaluation also averages the views "
                             "translated by this many pixels up-left and down-right, at half "
                             "the weight (airbench: 1; 0: off)", low=0, high=8)
    lookahead_from: int | None = setting(None, "from this epoch on, keep an average of the "
                                         "weights and copy it back into the model every 5 "
                                         "steps (airbench's lookahead; none: off)", low=0,
                                         optional=True)
    lookahead_decay: float = setting(0.95, "lookahead: the average's decay per step at the end "
                                     "of the run (it rises with the cube of the progress)",
                                     low=0, high=1, high_open=True)
    stem_bias_epochs: int | None = setting(None, "cifarnet: the whitening stem's bias learns for "
                                           "this many epochs, then stays (airbench: 3; none: "
                                           "always learns)", low=0, optional=True)
    trace_every: int = setting(50, "trace the first batch, then sample the model input every "
                               "N steps (0: off)", low=0)
    on_bad_image: str = setting("skip", "an unreadable file: skip it (counted and listed) or "
                                "stop with an error", choices=("skip", "error"))
    max_bad_fraction: float = setting(0.1, "refuse to start if more than this share of the "
                                      "files are unreadable", low=0, high=1)
    sync_bn: bool = setting(False, "SyncBatchNorm under DDP (GPUs)")
    dataset_index: bool = setting(True, "keep each file's header facts in an index beside the "
                                  "dataset (else in the user's cache) and reuse them while its "
                                  "size and time are unchanged")
    max_image_pixels: int = setting(MAX_IMAGE_PIXELS, "refuse larger images (width x height) "
                                    "from the header", low=1)

    def __post_init__(self) -> None:
        check_fields(self)
        if self.image_size and self.crop_pct and round(self.image_size / self.crop_pct) > MAX_RESIZE:
            raise ConfigError(f"image_size / crop_pct (--image-size {self.image_size} / "
                              f"--crop-pct {self.crop_pct:g}) = "
                              f"{self.image_size / self.crop_pct:.0f} pixels: the evaluation "
                              f"resize must stay within {MAX_RESIZE}")
        if self.decode_on_device and (self.loader != "fast" or self.augment == "rrc"):
            raise ConfigError("decode_on_device (--decode-on-device) needs --loader fast and a "
                              "batch-level augmentation (none, flip, crop-flip), not --loader "
                              f"{self.loader} --augment {self.augment}")

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """A saved configuration; fields it lacks (older runs) take their defaults."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict:
        return asdict(self)
