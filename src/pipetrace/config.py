"""What a training run is configured with: :class:`TrainConfig` and the named presets.

This module holds data only, so the trainer and its helpers (``optim``, ``prepare``,
``runfolder``) and the views can all import it without a circle back into ``train.py``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .images import LoadLimits

PRESETS: dict[str, dict] = {
    # The built-in shapes at the seed's 224 x 224 (see `pipetrace demo`).
    "demo": dict(model="pipenet-s", epochs=5, batch_size=32, image_size=224, crop_pct=1.0,
                 optimizer="adamw", lr=2e-3, schedule="onecycle", augment="flip"),
    # CIFAR-10 from JPEG files on a CPU: an airbench-style recipe (see docs/performance.md).
    # lr x weight_decay = 0.002 per step, as airbench94 (whose loss is summed, not averaged).
    "cifar": dict(model="cifarnet", epochs=12, batch_size=1024, image_size=32, crop_pct=1.0,
                  optimizer="sgd", lr=1.5, momentum=0.85, weight_decay=0.00133,
                  schedule="onecycle", warmup_pct=0.23, lr_start=0.2, lr_end=0.07,
                  label_smoothing=0.2, augment="crop-flip", crop_pad=2, tta=True),
    # Real photos: fine-tune ImageNet weights (fastai's fine_tune): one epoch trains the new
    # head on the frozen network, then all layers, the pretrained ones at a tenth of the rate.
    # Size, crop, interpolation, mean and std come from the weights (224, 256, bilinear).
    "photos": dict(model="resnet18", weights="DEFAULT", epochs=10, batch_size=32,
                   optimizer="adamw", lr=1e-3, schedule="cosine", augment="rrc",
                   freeze_epochs=1, backbone_lr_scale=0.1),
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run depends on; saved as ``config.json`` in the run folder."""

    data: str = ""  # ImageFolder root: train/ + val/ (or test/), or class folders directly
    out: str = "runs/train"  # run folder for checkpoints, metrics, plots and the report
    model: str = "pipenet-s"  # built-in CNN, torchvision architecture name, or timm/<name> (timm extra)
    weights: str | None = None  # initial weights: a name (DEFAULT, IMAGENET1K_V1, ...: pretrained) or a file (state dict, pipetrace checkpoint)
    epochs: int = 5  # passes over the training set
    batch_size: int = 32  # images per step and process (global batch = this x world size)
    image_size: int | None = None  # side of the square model input, pixels (None: the weights' own, else 224)
    crop_pct: float | None = None  # eval: resize short side to image_size / crop_pct, centre-crop (None: the weights' own, else 0.875)
    optimizer: str = "adamw"  # "sgd" (Nesterov momentum) or "adamw"
    lr: float = 2e-3  # peak learning rate (of the head, when fine-tuning)
    lr_find: bool = False  # pick lr with a learning-rate range test before training (`--lr auto`)
    schedule: str = "onecycle"  # "onecycle", "cosine" (after linear warm-up) or "constant"
    warmup_pct: float = 0.25  # share of steps spent warming up to the peak learning rate
    lr_start: float = 0.04  # onecycle: first learning rate, as a fraction of the peak
    lr_end: float = 1.6e-4  # onecycle: last learning rate, as a fraction of the peak
    weight_decay: float = 5e-4  # L2 / decoupled weight decay
    momentum: float = 0.9  # SGD momentum
    label_smoothing: float = 0.0  # cross-entropy label smoothing, 0-1
    freeze_epochs: int = 0  # fine-tuning: first epochs train only the new head, the pretrained layers frozen
    backbone_lr_scale: float = 1.0  # fine-tuning: pretrained layers learn at lr x this (discriminative rates)
    frozen_bn: str = "eval"  # while frozen: "eval" keeps the pretrained batch-norm statistics, "train" re-estimates them
    augment: str = "flip"  # "none", "flip", "crop-flip" (pad + random crop) or "rrc"
    crop_pad: int | None = None  # crop-flip's translation in pixels (None: image_size / 8)
    workers: int = 0  # DataLoader workers per process; measure before raising (2 cores!)
    seed: int = 0  # same seed, same CPU: same metrics
    device: str = "auto"  # "auto", "cpu", "cuda" or "cuda:N"
    amp: str = "auto"  # "auto", "off", "bf16" or "fp16" mixed precision
    channels_last: bool = True  # NHWC memory format (faster convolutions on CPU and GPU)
    val_fraction: float = 0.1  # held out of train when there is no val/ or test/ folder
    stats: str = "auto"  # normalization statistics: "auto" (the weights' own, else ImageNet's), "imagenet" or "dataset"
    loader: str = "fast"  # "fast" (uint8 + batch normalize) or "classic" (the seed's chain)
    tta: bool = False  # evaluate on the image and its mirror, average the logits
    trace_every: int = 50  # trace the first batch, then sample the model input every N steps (0: off)
    on_bad_image: str = "skip"  # "skip" (count and list) or "error"
    max_bad_fraction: float = 0.1  # refuse to start if more files than this are unreadable
    sync_bn: bool = False  # SyncBatchNorm under DDP
    max_image_pixels: int = LoadLimits().max_pixels  # refuse larger images from the header

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """A saved configuration; fields it lacks (older runs) take their defaults."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict:
        return asdict(self)


