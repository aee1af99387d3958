"""Stage 4: a ``torch.utils.data`` dataset and loader that batch images into (N, 3, H, W).

A file that cannot be loaded never kills a run: the dataset returns its error instead of a
tensor, :func:`collate` drops it from the batch and lists it in ``Batch.bad``, and the
trainer counts and reports it (``on_bad_image="error"`` raises instead). A file that
disappears or changes (size or modification time) after the dataset was built is skipped
the same way, with that reason.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .images import (
    NO_SUCH_FILE,
    CheckedFile,
    ImageLoadError,
    LoadLimits,
    bgr_to_rgb,
    check_file,
    decode_bgr,
    read_bytes,
    read_file,
    rgb_to_pil,
)
from .transforms import (
    BatchAugment,
    Preprocess,
    classic_transform,
    fast_transform,
    hwc_to_chw,
    is_final_size,
    normalize_batch,
)

LOADER_PATHS = ("fast", "classic")


@dataclass(frozen=True)
class LoaderConfig:
    """How stage 4 batches images."""

    batch_size: int = 32  # images per batch (per process under DDP)
    workers: int = 0  # DataLoader worker processes; 0 loads in the main process
    path: str = "fast"  # "fast" (uint8 + batch normalize) or "classic" (the seed's chain)
    channels_last: bool = False  # hand the model NHWC-strided batches
    pin_memory: bool | None = None  # None: pin when CUDA is available
    on_bad_image: str = "skip"  # "skip" (count and list) or "error" (raise ImageLoadError)
    limits: LoadLimits = field(default_factory=LoadLimits)  # pixel and aspect limits


def decode_fast_bgr(data: bytes, path: str, pre: Preprocess, transform, limits: LoadLimits,
                    header: tuple[str, int, int] | None = None) -> np.ndarray:
    """Stages 1 and 3 of the fast path: file bytes -> (size, size, 3) uint8 BGR array.

    Stage 3 runs before stage 2: resizing works per channel, so resizing BGR and then
    swapping the channels gives the same bytes, on size x size pixels, not the full image.
    """
    bgr = decode_bgr(data, path, limits=limits, min_side=pre.resize_size, header=header)
    if is_final_size(bgr.shape[0], bgr.shape[1], pre):  # no tensor round trip (CIFAR)
        return bgr
    return transform(hwc_to_chw(bgr)).permute(1, 2, 0).numpy()


def decode_fast(data: bytes, path: str, pre: Preprocess, transform, limits: LoadLimits,
                header: tuple[str, int, int] | None = None) -> torch.Tensor:
    """Stages 1-3 of the fast path: file bytes -> (3, size, size) uint8 RGB tensor."""
    return hwc_to_chw(bgr_to_rgb(decode_fast_bgr(data, path, pre, transform, limits, header)))


def decode_classic(data: bytes, path: str, transform, limits: LoadLimits) -> torch.Tensor:
    """Stages 1-3 as the seed draws them: OpenCV -> RGB -> PIL -> torchvision -> float32."""
    pil = rgb_to_pil(bgr_to_rgb(decode_bgr(data, path, limits=limits)))
    return transform(pil).as_subclass(torch.Tensor)  # (3, S, S) float32, normalized


def load_fast(path: str, pre: Preprocess, transform, limits: LoadLimits) -> torch.Tensor:
    """:func:`decode_fast` of a file."""
    return decode_fast(read_bytes(path), path, pre, transform, limits)


def load_classic(path: str, transform, limits: LoadLimits) -> torch.Tensor:
    """:func:`decode_classic` of a file."""
    return decode_classic(read_bytes(path), path, transform, limits)


def file_stamp(path: str) -> tuple[int, int] | None:
    """(size in bytes, modification time in ns) of a file, or None when it is gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


class ImageDataset(Dataset):
    """(path, label) samples -> (image, label, index, error) items for :func:`collate`."""

    def __init__(self, samples: list[tuple[str, int]], pre: Preprocess, *, train: bool = False,
                 augment: str = "none", path: str = "fast", limits: LoadLimits = LoadLimits(),
                 on_bad_image: str = "skip", crop_pad: int | None = None,
                 checked: list[CheckedFile] | None = None):
        if path not in LOADER_PATHS:
            raise ValueError(f"unknown loader path {path!r}; choose from {LOADER_PATHS}")
        self.samples = samples
        self.pre = pre
        self.path = path
        self.limits = limits
        self.on_bad_image = on_bad_image
        self.train = train
        self.augment = augment
        # (size, mtime_ns) of each file now, compared again when it is read; with `checked`
        # (from check_files) the header is known for those very bytes and not parsed again
        self.headers = [c[:3] for c in checked] if checked is not None else None
        if checked is not None:
            self.stamps = [c.stamp for c in checked]
        else:
            self.stamps = [file_stamp(p) for p, _ in samples]
        if path == "fast":
            self.transform = fast_transform(pre, train=train, augment=augment)
        else:
            self.transform = classic_transform(pre, train=train, augment=augment,
                                               crop_pad=crop_pad)

    def __len__(self) -> int:
        return len(self.samples)

    def _read(self, i: int) -> bytes:
        file = self.samples[i][0]
        try:
            data, stamp = read_file(file)
        except ImageLoadError as exc:  # a file seen when the dataset was built is gone now
            if exc.reason == NO_SUCH_FILE and self.stamps is not None and self.stamps[i]:
                raise ImageLoadError(file, "file disappeared since the dataset was "
                                     "scanned") from None
            raise
        if self.stamps is not None and stamp != self.stamps[i]:
            raise ImageLoadError(file, "file changed since the dataset was scanned (size or "
                                 "modification time differ)")
        return data

    def _header(self, i: int) -> tuple[str, int, int] | None:
        return self.headers[i] if self.headers else None

    def load(self, i: int) -> torch.Tensor:
        """Image ``i`` through stages 1-3: (3, S, S) uint8 (fast) or float32 (classic)."""
        file = self.samples[i][0]
        if self.path == "fast":
            return decode_fast(self._read(i), file, self.pre, self.transform, self.limits,
                               self._header(i))
        return decode_classic(self._read(i), file, self.transform, self.limits)

    def __getitem__(self, i: int):
        try:
            item = self.load(i)
            if self.path == "fast":  # HWC: the fast collate stacks into NHWC memory
                item = item.permute(1, 2, 0)
            return item, self.samples[i][1], i, None
        except ImageLoadError as exc:
            if self.on_bad_image == "error":
                raise
            return None, self.samples[i][1], i, str(exc)

    def __getitems__(self, indices: list[int]):
        """A whole batch at once (the DataLoader calls this when it exists): the fast path
        writes each image straight into one (N, S, S, 3) buffer - OpenCV's BGR to RGB
        conversion lands in its batch slot - instead of one tensor per image and a stack."""
        if self.path != "fast":
            return [self[i] for i in indices]
        size = self.pre.size
        buf = np.empty((len(indices), size, size, 3), np.uint8)
        kept, bad = [], []
        for i in indices:
            try:
                bgr = decode_fast_bgr(self._read(i), self.samples[i][0], self.pre,
                                      self.transform, self.limits, self._header(i))
                cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=buf[len(kept)])  # stage 2, in place
                kept.append(i)
            except ImageLoadError as exc:
                if self.on_bad_image == "error":
                    raise
                bad.append((i, str(exc)))
        images = torch.from_numpy(buf[: len(kept)]).permute(0, 3, 1, 2)  # NCHW view, NHWC memory
        labels = torch.tensor([self.samples[i][1] for i in kept], dtype=torch.int64)
        return Batch(images, labels, torch.tensor(kept, dtype=torch.int64), bad)


@dataclass
class Batch:
    """One batch: images (N, 3, H, W) uint8 (fast) or float32 (classic), and what was dropped."""

    images: torch.Tensor
    labels: torch.Tensor  # (N,) int64
    indices: torch.Tensor  # (N,) int64, positions in the dataset
    bad: list[tuple[int, str]]  # (dataset index, error message) of the files skipped

    def pin_memory(self) -> Batch:
        return Batch(self.images.pin_memory(), self.labels.pin_memory(), self.indices, self.bad)

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __reduce__(self):
        # From a worker process each tensor's storage crosses through its own shared-memory
        # file (a file descriptor sent, mapped, closed); the two small (N,) tensors are
        # cheaper sent by value: +8% images/s at batch 256 and +26% at batch 32 with 2
        # workers on CIFAR-10. The images still travel through shared memory.
        return (_rebuild_batch, (self.images, self.labels.cpu().numpy(),
                                 self.indices.cpu().numpy(), self.bad))


def _rebuild_batch(images: torch.Tensor, labels: np.ndarray, indices: np.ndarray,
                   bad: list[tuple[int, str]]) -> Batch:
    return Batch(images, torch.from_numpy(labels), torch.from_numpy(indices), bad)


def collate(items) -> Batch:
    """Stack good items into one batch; list bad ones. An all-bad batch has N = 0.

    Fast-path items are (S, S, 3) uint8 and stack into NHWC memory (an (N, 3, S, S) view
    with channels_last strides); classic items are (3, S, S) float32. A :class:`Batch`
    already built by ``ImageDataset.__getitems__`` passes through.
    """
    if isinstance(items, Batch):
        return items
    good = [it for it in items if it[3] is None]
    bad = [(it[2], it[3]) for it in items if it[3] is not None]
    if not good:
        images = torch.empty((0, 3, 1, 1), dtype=torch.uint8)
    elif good[0][0].dtype == torch.uint8:
        images = torch.stack([it[0] for it in good]).permute(0, 3, 1, 2)
    else:
        images = torch.stack([it[0] for it in good])
    labels = torch.tensor([it[1] for it in good], dtype=torch.int64)
    indices = torch.tensor([it[2] for it in good], dtype=torch.int64)
    return Batch(images, labels, indices, bad)


def worker_init(_worker_id: int) -> None:
    """Thread settings for a DataLoader worker (used for every loader in bench/ too)."""
    # Each worker gets one core's worth of threads; otherwise workers and the main process
    # fight over the same cores (measured: 286 vs 714 images/s on the photos, 2 cores).
    torch.set_num_threads(1)
    # 0 (run sequentially), not 1: setNumThreads(1) rebuilds the thread pool inherited
    # through fork, and if the parent had used it, destroying it hangs the worker for ever
    # (pthread_cond_destroy): `train --stats dataset --workers 2` did.
    cv2.setNumThreads(0)


def make_loader(dataset: ImageDataset, cfg: LoaderConfig, *, shuffle: bool, seed: int = 0,
                sampler=None, drop_last: bool = False) -> DataLoader:
    """A DataLoader over ``dataset`` yielding :class:`Batch` objects."""
    pin = torch.cuda.is_available() if cfg.pin_memory is None else cfg.pin_memory
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=cfg.workers,
        collate_fn=collate,
        pin_memory=pin,
        drop_last=drop_last,
        worker_init_fn=worker_init if cfg.workers > 0 else None,
        # Fresh workers each epoch: their seeds then come from the generator we reseed per
        # epoch, so shuffling and per-image augmentation are the same with or without
        # workers and after a resume (persistent workers keep the first epoch's state).
        persistent_workers=False,
        prefetch_factor=4 if cfg.workers > 0 else None,
        generator=generator,
    )


def to_model_input(images: torch.Tensor, pre: Preprocess, *, device: torch.device | str = "cpu",
                   channels_last: bool = False, augment: BatchAugment | None = None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Batch -> the model's input: (N, 3, S, S) float32 normalized, on ``device``.

    uint8 batches cross to the device first (4x fewer bytes), then are normalized there.
    """
    images = images.to(device, non_blocking=True)
    if images.dtype == torch.uint8:
        x = normalize_batch(images, pre.mean, pre.std, channels_last=channels_last)
        if augment is not None:
            x = augment(x, generator)
    else:
        x = images.float()
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
    return x


def split_samples(samples: list[tuple[str, int]], fraction: float, seed: int
                  ) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """Seeded, stratified split into (train, val): ``fraction`` of each class goes to val."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"val fraction must be between 0 and 1, got {fraction}")
    rng = random.Random(seed)
    by_class: dict[int, list[tuple[str, int]]] = {}
    for s in samples:
        by_class.setdefault(s[1], []).append(s)
    train, val = [], []
    for label in sorted(by_class):
        items = by_class[label][:]
        rng.shuffle(items)
        k = max(1, round(len(items) * fraction)) if len(items) > 1 else 0
        val.extend(items[:k])
        train.extend(items[k:])
    return sorted(train), sorted(val)


def check_files(samples: list[tuple[str, int]], limits: LoadLimits = LoadLimits()
                ) -> tuple[list[tuple[str, int]], list[tuple[str, str]], list[CheckedFile]]:
    """Split samples into (readable, [(path, reason)]) from headers alone, before training;
    also return what was found for each readable file (for ``ImageDataset(checked=...)``)."""
    good, bad, checked = [], [], []
    for path, label in samples:
        try:
            checked.append(check_file(path, limits))
            good.append((path, label))
        except ImageLoadError as exc:
            bad.append((path, str(exc)))
    return good, bad, checked
