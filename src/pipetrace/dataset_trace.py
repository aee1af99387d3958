"""Trace a dataset: one file through one of pipetrace's pipelines (:func:`trace_image`), or
one item of any user's dataset through its real transform objects, as the dataset's own
``__getitem__`` runs them, then (given a DataLoader) the collate into a batch
(:func:`trace_dataset`).

Nothing is re-run on the side. For the one call ``dataset[index]``, each transform object of
the dataset's ``transform`` (a torchvision v1 or v2 ``Compose``, an albumentations ``Compose``
called as ``transform(image=...)``, or a plain callable) and, where there is one, its
``loader`` (torchvision's ImageFolder) is replaced in place by a proxy that hands the call to
a :class:`~pipetrace.trace.StageTracer` and back to the object; the originals are restored
when the call returns or raises. The channel order is measured against an independent PIL
decode of the item's source file when the dataset says which file that is (``samples``,
``imgs``, ``files``, ``paths``), and the batch's colour means against the mean colour of the
dataset's files (:func:`pipetrace.checks.channel_reference`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from .checks import (
    ChannelReference,
    Finding,
    channel_reference,
    check_channel_stats,
    check_flow,
)
from .data import ImageDataset, TraceRequest, to_model_input
from .images import LoadLimits, read_bytes
from .pipeline import Stage, image_pipeline, library_of, seed_pipeline, transform_stages
from .trace import (
    TIMING_WARM,
    DataFlow,
    StageTracer,
    batch_tracer,
    data_flow,
    flow_of,
    pil_reference_rgb,
)
from .transforms import Preprocess
from .usercode import UserCodeError, load_user_function


@dataclass(frozen=True)
class DatasetTrace:
    """The data flow of one item of a user's dataset (and its batch), and what it shows."""

    flow: DataFlow
    findings: list[Finding]
    preprocess: Preprocess  # the statistics read from the chain's Normalize (or ImageNet's)
    reference: ChannelReference | None = None  # the colour reference the batch was held to
    dataset: str = ""  # the dataset's class
    classes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "classes": self.classes,
                "preprocess": self.preprocess.to_dict(), "data_flow": self.flow.to_dict(),
                "reference": self.reference.to_dict() if self.reference else None,
                "findings": [f.to_dict() for f in self.findings]}


class _KeywordCall:
    """albumentations' call style: ``t(image=..., ...)`` -> dict, as a one-argument call."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, data: dict) -> dict:
        return self.transform(**data)

    def __repr__(self) -> str:
        return repr(self.transform)


class _Observed:
    """Stands in for one transform (or loader) during the traced call and hands it back."""

    def __init__(self, stage: Stage, tracer: StageTracer):
        self._stage, self._tracer = stage, tracer
        self._keyword = Stage(stage.name, stage.seed, stage.library, _KeywordCall(stage.fn),
                              stage.takes, stage.gives)

    def __call__(self, *args, **kwargs):
        if kwargs and not args:
            return self._tracer.call(self._keyword, kwargs)
        if len(args) == 1 and not kwargs:
            return self._tracer.call(self._stage, args[0])
        return self._stage.fn(*args, **kwargs)  # another call style: runs, unrecorded

    def __getattr__(self, name):  # the Compose may read the transform's attributes
        return getattr(self._stage.fn, name)


@contextlib.contextmanager
def observing(dataset, tracer: StageTracer) -> Iterator[None]:
    """Wrap the dataset's loader and each of its transform objects for the ``with`` block."""
    undo = []
    transform = getattr(dataset, "transform", None)
    loader = getattr(dataset, "loader", None)
    if transform is None and not callable(loader):
        raise UserCodeError(
            f"cannot see inside {type(dataset).__name__}: it has no 'transform' attribute (or "
            "'loader'); give the dataset its transforms as .transform, or trace a chain with "
            "pipetrace.trace_transforms(chain, image)")
    try:
        steps = getattr(transform, "transforms", None) if transform is not None else None
        if isinstance(steps, list):  # a Compose: each object in place, the Compose's own loop
            original = list(steps)
            steps[:] = [_Observed(transform_stages([t])[0], tracer) for t in original]
            undo.append(lambda: steps.__setitem__(slice(None), original))
        elif transform is not None:
            dataset.transform = _Observed(transform_stages([transform])[0], tracer)
            undo.append(lambda: setattr(dataset, "transform", transform))
        if callable(loader):
            dataset.loader = _Observed(Stage("Load image (dataset.loader)", 1, library_of(loader),
                                             loader, "file path", "image"), tracer)
            undo.append(lambda: setattr(dataset, "loader", loader))
        yield
    finally:
        for restore in reversed(undo):
            restore()


def source_files(dataset) -> list[str] | None:
    """The dataset's image files, in index order, when it lists them."""
    for name in ("samples", "imgs", "files", "paths", "image_paths"):
        items = getattr(dataset, name, None)
        if isinstance(items, list | tuple) and items:
            first = items[0][0] if isinstance(items[0], list | tuple) else items[0]
            if isinstance(first, str | os.PathLike):
                return [os.fspath(i[0] if isinstance(i, list | tuple) else i) for i in items]
    return None


def normalize_stats(transform) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) of the last Normalize in a chain (torchvision or albumentations), 0-1 scale."""
    found = None
    for t in getattr(transform, "transforms", [transform]):
        mean, std = getattr(t, "mean", None), getattr(t, "std", None)
        if "Normalize" in type(t).__name__ and mean is not None and std is not None:
            try:
                found = (tuple(float(v) for v in mean), tuple(float(v) for v in std))
            except TypeError:  # a scalar mean: the same for every channel
                found = ((float(mean),) * 3, (float(std),) * 3)
    return found


def trace_dataset(dataset, index: int = 0, *, loader=None, reference: bool = True
                  ) -> DatasetTrace:
    """Trace item ``index`` of a map-style dataset (or of ``DataLoader.dataset``).

    One record per real transform object (plus the dataset's loader when it has one), then
    the collate into a batch when ``loader`` (or ``dataset``) is a DataLoader. The findings
    run on what came out; ``reference=False`` skips the colour reference of the dataset's
    files (it reads up to 64 of them).
    """
    from torch.utils.data import DataLoader

    if isinstance(dataset, DataLoader):
        loader, dataset = dataset, dataset.dataset
    if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        raise UserCodeError(f"{type(dataset).__name__} is not a map-style dataset (it needs "
                            "__getitem__ and __len__)")
    if not 0 <= index < len(dataset):
        raise UserCodeError(f"index {index} is out of range: the dataset has {len(dataset)} "
                            "items")
    transform = getattr(dataset, "transform", None)
    stats = normalize_stats(transform)
    pre = Preprocess(mean=stats[0], std=stats[1]) if stats else Preprocess()
    tracer = StageTracer(stats=(pre.mean, pre.std))
    files = source_files(dataset)
    if files:
        tracer.source = files[index]
        with contextlib.suppress(Exception):  # unreadable by PIL: the order is not measured
            tracer.reference = pil_reference_rgb(read_bytes(files[index]))
    dataset[index]  # warm-up: the traced call's times are then those of a warm pipeline
    with observing(dataset, tracer):
        dataset[index]
    records = list(tracer.records)
    if loader is not None:
        indices = next(iter(loader.batch_sampler)) if loader.batch_sampler is not None \
            else [index]
        items = [dataset[i] for i in indices]
        collate = loader.collate_fn
        batch = StageTracer(scope="batch", order=tracer.order, stats=(pre.mean, pre.std))
        batch.call(Stage(f"Collate ({getattr(collate, '__name__', type(collate).__name__)})", 4,
                         library_of(collate), collate, "list of items", "a batch"), items)
        records += batch.records
    flow = flow_of("dataset", tracer.source, records, timing=TIMING_WARM)
    ref = channel_reference(files, source=f"{min(len(files), 64)} of the dataset's files") \
        if reference and files else None
    findings = check_flow(flow, pre)
    model_input = flow.model_input()
    if ref is not None and model_input is not None and flow.image_order() == "?":
        # the order could not be measured on the item itself: hold the batch's colours to
        # the dataset's (a batch of one class, e.g. all sky, can fool this: it is the fallback)
        findings += check_channel_stats(model_input, pre, ref)
    classes = list(getattr(dataset, "classes", []) or [])
    return DatasetTrace(flow, findings, pre, ref, type(dataset).__name__,
                        [str(c) for c in classes])


def trace_image(path: str, pre: Preprocess, *, plant: str | None = None, loader: str = "seed",
                batch: int = 1, limits: LoadLimits = LoadLimits()
                ) -> tuple[DataFlow, torch.Tensor]:
    """One real file through one of pipetrace's pipelines, traced as the loader runs it.

    ``loader``: "seed" (the seed's chain, with ``plant``: one classic bug planted in it, see
    ``pipeline.PLANTS``), "fast" or "classic". Stage 4 batches ``batch`` loads of the file.
    Returns the flow and the model input it produced.
    """
    if loader == "seed":
        pipeline = seed_pipeline(pre, plant, limits=limits)
    elif plant is not None:
        raise ValueError("a bug can only be planted in the seed's chain (loader 'seed')")
    else:
        pipeline = image_pipeline(pre, loader, limits=limits)
    ds = ImageDataset([(path, -1)], pre, pipeline=pipeline, limits=limits, on_bad_image="error")
    fast = pipeline.path == "fast"  # the batch stages of the path that loaded the batch
    to_model_input(ds.__getitems__([0] * batch).images, pre, fast=fast)  # warm-up
    b = ds.__getitems__(TraceRequest([0] * batch))
    tracer = batch_tracer(b.trace, pre)
    x = to_model_input(b.images, pre, observer=tracer, fast=fast)
    return data_flow(pipeline.path, b.trace, tracer.records, timing=TIMING_WARM), x


def load_factory(spec: str):
    """``MODULE:FACTORY`` -> what ``FACTORY()`` returns (a Dataset or a DataLoader)."""
    factory = load_user_function(spec)
    try:
        return factory()
    except Exception as exc:  # the user's code can raise anything: one line, exit 2
        raise UserCodeError(f"{spec} raised {type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}") from None

