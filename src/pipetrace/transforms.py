"""Stage 3: torchvision transforms, built in one place from the preprocessing contract.

Two chains give the same tensors:

* the *classic* chain is the seed's literally: a PIL image through torchvision v2
  (Resize -> CenterCrop -> ToImage -> ToDtype(float32, scale=True) -> Normalize), per image;
* the *fast* chain keeps uint8 through the per-image part (v2 Resize/CenterCrop on a uint8
  tensor, antialiased like PIL) and converts and normalizes whole batches at once in
  :func:`normalize_batch`, which is where the classic chain spends most of its time.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.nn.functional as nnf
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, 0-1 scale
IMAGENET_STD = (0.229, 0.224, 0.225)
AUGMENTS = ("none", "flip", "crop-flip", "rrc")


@dataclass(frozen=True)
class Preprocess:
    """The preprocessing contract; it travels with the model (cf. timm's ``PretrainedCfg``)."""

    size: int = 224  # side of the square tensor the model sees, pixels
    crop_pct: float = 0.875  # eval: resize the short side to size / crop_pct, centre-crop size
    mean: tuple[float, ...] = IMAGENET_MEAN  # per channel, 0-1 scale, in colour_order
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"  # resize filter, antialiased when shrinking (as PIL)
    colour_order: str = "RGB"  # channel order of the model's input tensor
    value_scale: str = "0-1"  # range before Normalize (ToDtype(scale=True) divides by 255)
    layout: str = "NCHW"  # tensor layout the model takes

    @property
    def resize_size(self) -> int:
        """Short side after the eval resize, before the centre crop."""
        return round(self.size / self.crop_pct)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        known = {f for f in cls.__dataclass_fields__}
        clean = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in known}
        return cls(**clean)


def pretrained_contract(size: int, resize_size: int, *, mean, std,
                        interpolation: str) -> Preprocess:
    """The contract of pretrained weights from their metadata: resize the short side to
    ``resize_size``, centre-crop ``size`` (e.g. torchvision's ``weights.transforms()``)."""
    return Preprocess(size=int(size), crop_pct=int(size) / int(resize_size),
                      mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std),
                      interpolation=str(interpolation).lower())


def interpolation_mode(name: str) -> v2.InterpolationMode:
    return v2.InterpolationMode[name.upper()]


# -- the classic chain: per image, PIL -> float tensor ---------------------------------------------

def crop_padding(size: int, crop_pad: int | None) -> int:
    """crop-flip's translation range in pixels: ``crop_pad``, or size / 8 (4 px at 32)."""
    return max(1, size // 8) if crop_pad is None else crop_pad


def _geometry(pre: Preprocess, augment: str, *, train: bool, crop_pad: int | None = None) -> list:
    """Resize/crop/flip steps shared by both chains (they work on PIL images and tensors)."""
    interp = interpolation_mode(pre.interpolation)
    if train and augment == "rrc":
        steps = [v2.RandomResizedCrop(pre.size, interpolation=interp, antialias=True)]
    else:
        steps = [v2.Resize(pre.resize_size, interpolation=interp, antialias=True),
                 v2.CenterCrop(pre.size)]
    if train and augment == "crop-flip":
        steps.append(v2.RandomCrop(pre.size, padding=crop_padding(pre.size, crop_pad),
                                   padding_mode="reflect"))
    if train and augment in ("flip", "crop-flip", "rrc"):
        steps.append(v2.RandomHorizontalFlip())
    return steps


def classic_transform(pre: Preprocess, *, train: bool = False, augment: str = "none",
                      crop_pad: int | None = None) -> v2.Compose:
    """PIL RGB image -> (3, size, size) float32 normalized tensor, the seed's stage 3."""
    return v2.Compose([
        *_geometry(pre, augment, train=train, crop_pad=crop_pad),
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(pre.mean), std=list(pre.std)),
    ])


def reference_transform(pre: Preprocess) -> v2.Compose:
    """torchvision's own eval chain on a PIL image (the oracle our chains are tested against)."""
    return classic_transform(pre, train=False)


# -- the fast chain: per image in uint8, batch-level float conversion ------------------------------

def fast_transform(pre: Preprocess, *, train: bool = False, augment: str = "none") -> v2.Compose:
    """(3, H, W) uint8 tensor -> (3, size, size) uint8 tensor: resize/crop only.

    Flips and padded crops are left to :func:`augment_batch`, which does them per batch.
    """
    steps = _geometry(pre, "rrc" if (train and augment == "rrc") else "none", train=train)
    return v2.Compose(steps)


def hwc_to_chw(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 array -> (3, H, W) uint8 tensor view (no copy; channels-last strides)."""
    return torch.from_numpy(rgb).permute(2, 0, 1)


def is_final_size(height: int, width: int, pre: Preprocess) -> bool:
    """True when an image needs no per-image resize or crop: already size x size, no crop."""
    return (height, width) == (pre.size, pre.size) and pre.crop_pct == 1.0


def resize_uint8(img: torch.Tensor, pre: Preprocess, transform: v2.Compose) -> torch.Tensor:
    """Apply the per-image fast transform, skipping it when the image is already final size."""
    return img if is_final_size(*img.shape[-2:], pre) else transform(img)


def normalize_batch(x: torch.Tensor, mean, std, *, channels_last: bool = False) -> torch.Tensor:
    """(N, 3, H, W) uint8 in 0-255 -> float32 normalized, in one multiply and one add.

    Equals ``Normalize(mean, std)(ToDtype(float32, scale=True)(x))`` to float rounding.
    Broadcasting over a channel dimension of 3 is slow when it is innermost (NHWC memory),
    so an NHWC batch (the fast loader's) bound for a channels_last model is treated as rows
    of W x 3 values with the per-channel factors tiled along the row: 3-4x faster.
    """
    if x.dtype != torch.uint8:
        raise TypeError(f"normalize_batch expects uint8 0-255, got {x.dtype}")
    n, c, h, w = x.shape
    if channels_last and c > 1 and x.is_contiguous(memory_format=torch.channels_last):
        scale, shift = _normalize_factors(tuple(mean), tuple(std), w, x.device)
        rows = x.permute(0, 2, 3, 1).reshape(n * h, w * c)  # NHWC memory as (N*H, W*C) rows
        out = rows.to(torch.float32).mul_(scale).add_(shift)
        return out.view(n, h, w, c).permute(0, 3, 1, 2)  # (N, C, H, W), channels_last
    # Otherwise reorder the uint8 bytes (4x cheaper than reordering floats) and go NCHW.
    scale, shift = _normalize_factors(tuple(mean), tuple(std), 1, x.device)
    out = x.contiguous().to(torch.float32).mul_(scale.view(1, -1, 1, 1))
    out = out.add_(shift.view(1, -1, 1, 1))
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out


@functools.lru_cache(maxsize=16)
def _normalize_factors(mean: tuple, std: tuple, repeats: int, device: torch.device
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (1 / (255 std), -mean / std), tiled ``repeats`` times, on the batch's
    device; made once per contract, width and device (building these small tensors for
    every batch cost ~50 us, 1.6 us an image at batch 32)."""
    s = torch.tensor(std, dtype=torch.float32)
    scale = 1.0 / (255.0 * s)
    shift = -torch.tensor(mean, dtype=torch.float32) / s
    return scale.repeat(repeats).to(device), shift.repeat(repeats).to(device)


def denormalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """Undo Normalize for display: (…, 3, H, W) float -> uint8 0-255, same layout."""
    m = torch.tensor(mean, dtype=x.dtype).view(-1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(-1, 1, 1)
    return (x * s + m).mul(255).round().clamp(0, 255).to(torch.uint8)


# -- batch-level augmentation on float tensors (cf. airbench's batch_flip_lr / batch_crop) ---------

def batch_flip_lr(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip a random half of the images left-right: (N, C, H, W) -> new tensor."""
    flip = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)  # CPU generator
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def batch_crop(x: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random translation by up to ``pad`` pixels with reflect padding, per image."""
    n, _, h, w = x.shape
    padded = nnf.pad(x, (pad, pad, pad, pad), mode="reflect")
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    out = torch.empty_like(x)
    rows = padded.new_empty((n, x.shape[1], h, w + 2 * pad))
    # Group images by shift: 2 * (2 * pad + 1) slicing ops instead of one per image.
    for s in range(2 * pad + 1):
        idx = (dy == s).nonzero().flatten()
        if len(idx):
            rows[idx] = padded[idx, :, s:s + h, :]
    for s in range(2 * pad + 1):
        idx = (dx == s).nonzero().flatten()
        if len(idx):
            out[idx] = rows[idx, :, :, s:s + w]
    return out


@dataclass(frozen=True)
class BatchAugment:
    """The batch-level half of a training preset: flips and padded crops on float batches."""

    augment: str = "none"  # one of AUGMENTS
    pad: int = 0  # crop-flip: translation range in pixels

    @classmethod
    def for_preset(cls, augment: str, size: int, crop_pad: int | None = None) -> BatchAugment:
        if augment not in AUGMENTS:
            raise ValueError(f"unknown augmentation preset {augment!r}; choose from {AUGMENTS}")
        return cls(augment=augment,
                   pad=crop_padding(size, crop_pad) if augment == "crop-flip" else 0)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.augment == "crop-flip":
            x = batch_crop(x, self.pad, generator)
        if self.augment != "none":
            x = batch_flip_lr(x, generator)
        return x


def with_dataset_stats(pre: Preprocess, mean, std) -> Preprocess:
    """Return a copy of the contract with the dataset's own statistics."""
    return replace(pre, mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std))


def channel_stats(batches) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (0-1 scale) over an iterable of (N, 3, H, W) uint8 batches."""
    total = torch.zeros(3, dtype=torch.float64)
    total_sq = torch.zeros(3, dtype=torch.float64)
    count = 0
    for x in batches:
        xf = x.to(torch.float64) / 255.0
        total += xf.sum(dim=(0, 2, 3))
        total_sq += (xf * xf).sum(dim=(0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    if count == 0:
        raise ValueError("no images to compute statistics from")
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(1e-12).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())
