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
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from .images import CheckedFile, ImageLoadError, LoadLimits, check_file
from .pipeline import (
    PATHS,
    FileRef,
    Pipeline,
    batch_stages,
    batch_tensor,
    image_pipeline,
    new_buffer,
    run_batch,
    run_image,
)
from .trace import StageTracer, trace_first_image
from .transforms import BatchAugment, Preprocess

LOADER_PATHS = PATHS


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


def file_stamp(path: str) -> tuple[int, int] | None:
    """(size in bytes, modification time in ns) of a file, or None when it is gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


class TraceRequest(list):
    """A batch's dataset indices, marked so that the dataset traces this batch's first image
    (the mark travels to a worker process with the indices; see :func:`make_loader`)."""

    trace = True


class ImageDataset(Dataset):
    """(path, label) samples run through a declared :class:`~pipetrace.pipeline.Pipeline`.

    ``__getitems__`` builds a whole :class:`Batch` (the DataLoader calls it); ``load`` gives
    one image. Both run the pipeline's own stage objects, nothing else.
    """

    def __init__(self, samples: list[tuple[str, int]], pre: Preprocess, *, train: bool = False,
                 augment: str = "none", path: str = "fast", limits: LoadLimits = LoadLimits(),
                 on_bad_image: str = "skip", crop_pad: int | None = None,
                 checked: list[CheckedFile] | None = None, pipeline: Pipeline | None = None):
        self.samples = samples
        self.pre = pre
        self.limits = limits
        self.on_bad_image = on_bad_image
        self.train = train
        self.augment = augment
        self.pipeline = pipeline or image_pipeline(pre, path, train=train, augment=augment,
                                                   crop_pad=crop_pad, limits=limits)
        self.path = path
        # What stage 1 starts from: each file with its (size, mtime_ns) now, compared again
        # when it is read; with `checked` (from check_files) also its header, known for those
        # very bytes and not parsed again.
        if checked is not None:
            self.refs = [FileRef(p, c.stamp, c[:3]) for (p, _), c in zip(samples, checked,
                                                                        strict=True)]
        else:
            self.refs = [FileRef(p, file_stamp(p), None) for p, _ in samples]

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, i: int, observer=None) -> torch.Tensor:
        """Image ``i`` through the per-image stages: (3, S, S) uint8 (fast) or float32
        (classic), as it sits in a batch."""
        x = run_image(self.pipeline.per_image, self.refs[i], observer)
        buf = new_buffer(1, x)
        place = self.pipeline.place
        if observer is None:
            place.fn(x, buf[0])
        else:
            observer.place(place, x, buf[0])
        return batch_tensor(buf)[0]

    def __getitem__(self, i: int):
        try:
            return self.load(i), self.samples[i][1], i, None
        except ImageLoadError as exc:
            if self.on_bad_image == "error":
                raise
            return None, self.samples[i][1], i, str(exc)

    def __getitems__(self, indices: list[int]) -> Batch:
        """A whole batch at once (the DataLoader calls this): each image runs the per-image
        stages and the placing stage writes it straight into its slot of one buffer (the
        fast path's BGR to RGB conversion lands there) instead of a tensor per image and a
        stack. A :class:`TraceRequest` traces the first image that loads."""
        per_image, place = self.pipeline.per_image, self.pipeline.place.fn
        tracer = StageTracer() if getattr(indices, "trace", False) else None
        buf, kept, bad, records = None, [], [], None
        for i in indices:
            try:
                x = run_image(per_image, self.refs[i], tracer)
                if buf is None:
                    buf = new_buffer(len(indices), x)
                if tracer is None:
                    place(x, buf[len(kept)])
                else:
                    tracer.place(self.pipeline.place, x, buf[len(kept)])
                    records, tracer = trace_first_image(tracer, self.pipeline), None
                kept.append(i)
            except ImageLoadError as exc:
                if self.on_bad_image == "error":
                    raise
                bad.append((i, str(exc)))
                if tracer is not None:
                    tracer = StageTracer()  # trace the next image instead
        images = (batch_tensor(buf[: len(kept)]) if buf is not None
                  else torch.empty((0, 3, 1, 1), dtype=torch.uint8))
        labels = torch.tensor([self.samples[i][1] for i in kept], dtype=torch.int64)
        return Batch(images, labels, torch.tensor(kept, dtype=torch.int64), bad, records)


@dataclass
class Batch:
    """One batch: images (N, 3, H, W) uint8 (fast) or float32 (classic), and what was dropped."""

    images: torch.Tensor
    labels: torch.Tensor  # (N,) int64
    indices: torch.Tensor  # (N,) int64, positions in the dataset
    bad: list[tuple[int, str]]  # (dataset index, error message) of the files skipped
    trace: list | None = None  # StageRecords of the first image, when the batch was traced

    def pin_memory(self) -> Batch:
        return Batch(self.images.pin_memory(), self.labels.pin_memory(), self.indices, self.bad,
                     self.trace)

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __reduce__(self):
        # From a worker process each tensor's storage crosses through its own shared-memory
        # file (a file descriptor sent, mapped, closed); the two small (N,) tensors are
        # cheaper sent by value: +8% images/s at batch 256 and +26% at batch 32 with 2
        # workers on CIFAR-10. The images still travel through shared memory.
        return (_rebuild_batch, (self.images, self.labels.cpu().numpy(),
                                 self.indices.cpu().numpy(), self.bad, self.trace))


def _rebuild_batch(images: torch.Tensor, labels: np.ndarray, indices: np.ndarray,
                   bad: list[tuple[int, str]], trace: list | None = None) -> Batch:
    return Batch(images, torch.from_numpy(labels), torch.from_numpy(indices), bad, trace)


def collate(items) -> Batch:
    """Stack ``__getitem__`` items into one batch and list the bad ones (N = 0 when all are
    bad); a :class:`Batch` built by ``ImageDataset.__getitems__`` passes through."""
    if isinstance(items, Batch):
        return items
    good = [it for it in items if it[3] is None]
    bad = [(it[2], it[3]) for it in items if it[3] is not None]
    images = (torch.stack([it[0] for it in good]) if good
              else torch.empty((0, 3, 1, 1), dtype=torch.uint8))
    labels = torch.tensor([it[1] for it in good], dtype=torch.int64)
    indices = torch.tensor([it[2] for it in good], dtype=torch.int64)
    return Batch(images, labels, indices, bad)


class TracingBatchSampler(BatchSampler):
    """A BatchSampler that marks the next batch for tracing after :meth:`trace_next`.

    It runs in the main process; the mark (a :class:`TraceRequest`) travels with the indices
    to whichever process loads the batch, so the first batch is traced where and as it is
    really loaded, with workers too.
    """

    def __init__(self, sampler, batch_size: int, drop_last: bool):
        super().__init__(sampler, batch_size, drop_last)
        self._trace = False

    def trace_next(self) -> None:
        self._trace = True

    def __iter__(self):
        for indices in super().__iter__():
            if self._trace:
                self._trace = False
                indices = TraceRequest(indices)
            yield indices


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
    """A DataLoader over ``dataset`` yielding :class:`Batch` objects; its ``batch_sampler``
    is a :class:`TracingBatchSampler` (``loader.batch_sampler.trace_next()`` traces the next
    batch's first image)."""
    pin = torch.cuda.is_available() if cfg.pin_memory is None else cfg.pin_memory
    generator = torch.Generator().manual_seed(seed)
    if sampler is None:
        sampler = (RandomSampler(dataset, generator=generator) if shuffle
                   else SequentialSampler(dataset))
    return DataLoader(
        dataset,
        batch_sampler=TracingBatchSampler(sampler, cfg.batch_size, drop_last),
        num_workers=cfg.workers,
        collate_fn=collate,
        pin_memory=pin,
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
                   generator: torch.Generator | None = None, observer=None,
                   fast: bool | None = None) -> torch.Tensor:
    """Batch -> the model's input: (N, 3, S, S) float32 normalized, on ``device``.

    Runs the pipeline's batch stages (``pipeline.batch_stages``): a fast-path batch (uint8;
    ``fast`` says so, else its dtype does) crosses to the device first (4x fewer bytes) and
    is normalized (and augmented) there; a classic batch is already normalized.
    """
    fast = images.dtype == torch.uint8 if fast is None else fast
    stages = batch_stages(pre, uint8=fast, device=device, channels_last=channels_last,
                          augment=augment, encoded=fast and images.ndim == 2)
    return run_batch(stages, images, generator, observer)


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


def check_files(samples: list[tuple[str, int]], limits: LoadLimits = LoadLimits(), *,
                index=None
                ) -> tuple[list[tuple[str, int]], list[tuple[str, str]], list[CheckedFile]]:
    """Split samples into (readable, [(path, reason)]) from headers alone, before training;
    also return what was found for each readable file (for ``ImageDataset(checked=...)``).
    With a :class:`~pipetrace.index.DatasetIndex`, unchanged files are answered from it."""
    good, bad, checked = [], [], []
    if index is not None:
        results = index.check_all([path for path, _ in samples], limits)
    else:
        results = []
        for path, _ in samples:
            try:
                results.append(check_file(path, limits))
            except ImageLoadError as exc:  # kept without its traceback: its frames hold
                results.append(exc.with_traceback(None))  # the file's first 256 KiB
    for sample, result in zip(samples, results, strict=True):
        if isinstance(result, ImageLoadError):
            bad.append((sample[0], str(result)))
        else:
            checked.append(result)
            good.append(sample)
    return good, bad, checked
