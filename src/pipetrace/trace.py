"""The stage trace: what each stage of the data flow took in, did, and gave out.

Tracing is an observer. :class:`StageTracer` wraps the stage objects of a declared
:class:`~pipetrace.pipeline.Pipeline` while the loader runs them (in a worker process too):
it times each call and summarizes what went in and what came out (shape, dtype, layout,
channel order, range, per-channel statistics, a digest of the bytes, a thumbnail). So the
order, the operation names and the timings in the trace are those of the code that ran;
nothing here restates the pipeline. Channel order is *measured* against an independent PIL
decode of the same file wherever the geometry allows, and carried through the stages that
declare they swap it otherwise.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import NamedTuple

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps

from .pipeline import SEED_STAGES, Encoded, FileRef, Pipeline, Stage, new_buffer
from .transforms import Preprocess, denormalize


@dataclass(frozen=True)
class Summary:
    """What an object in the pipeline is: type, shape, dtype, layout, order, range, size."""

    pytype: str  # e.g. "numpy.ndarray", "PIL.Image.Image", "torch.Tensor"
    shape: tuple[int, ...]  # as the object reports it (PIL: H x W x C for comparison)
    dtype: str  # "uint8", "float32", ...
    layout: str  # "HWC", "CHW", "NCHW", "NHWC" or "bytes"
    channel_order: str  # "RGB", "BGR" or "?" when unknown
    min: float | None = None
    max: float | None = None
    mean: tuple[float, ...] = ()  # per channel, in channel_order
    std: tuple[float, ...] = ()
    nbytes: int = 0
    digest: str = ""  # first 16 hex digits of the SHA-1 of the bytes (traced images only)

    def short(self) -> str:
        """One line: ``3 x 224 x 224 float32 CHW RGB [-2.12, 2.64]``."""
        if self.layout == "items":
            return f"{self.pytype} of {self.shape[0]} items"
        if self.layout in ("bytes", "file"):
            return f"{'file' if self.layout == 'file' else self.dtype}, {self.nbytes:,} bytes"
        dims = " x ".join(str(d) for d in self.shape)
        rng = "" if self.min is None else f" [{_fmt(self.min)}, {_fmt(self.max)}]"
        order = "" if self.channel_order == "?" else f" {self.channel_order}"
        return f"{dims} {self.dtype} {self.layout}{order}{rng}"


def _fmt(v: float) -> str:
    return f"{v:.0f}" if float(v).is_integer() else f"{v:.3g}"


@dataclass(frozen=True)
class StageRecord:
    """One stage of the data flow, as it really ran."""

    index: int  # 1-based position in the order the stages ran
    seed: int  # the seed's stage it belongs to: 1 load, 2 convert, 3 transform, 4 batch, 5 train
    name: str  # the stage's name, e.g. "Decode", or the transform's class name
    library: str  # who did the work: "Python", "OpenCV", "PIL", "torchvision", "PyTorch"
    operation: str  # the call, as the stage object describes itself
    input: Summary
    output: Summary
    micros_per_item: float  # wall time of this call per image, microseconds
    scope: str = "image"  # "image" (one file's image) or "batch" (the whole batch)
    note: str = ""
    caption: str = ""  # what the picture shows, when it needs saying
    picture: np.ndarray | None = field(default=None, repr=False, compare=False)  # (h, w, 3) uint8

    def to_dict(self) -> dict:
        """Plain data (the picture is left to the views: a PNG in trace.json)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "picture"}
        return {**d, "input": asdict(self.input), "output": asdict(self.output)}

    def _repr_html_(self) -> str:  # Jupyter: the report's data-flow table, one row
        from .report.notebook import stages_html

        return stages_html([self])


def summarize(obj, *, channel_order: str = "?", layout: str | None = None) -> Summary:
    """Measure an object of the pipeline: bytes, an HWC array, a PIL image or a tensor."""
    if isinstance(obj, FileRef):
        size = obj.stamp[0] if obj.stamp else 0
        return Summary("file", (), "-", "file", "?", nbytes=size)
    if isinstance(obj, Encoded):
        fmt = obj.header[0].upper() if obj.header else "encoded"
        return Summary("bytes", (len(obj.data),), f"{fmt} bytes", "bytes", "?",
                       nbytes=len(obj.data))
    if isinstance(obj, bytes | bytearray):
        return Summary("bytes", (len(obj),), "bytes", "bytes", "?", nbytes=len(obj))
    if isinstance(obj, Image.Image):
        arr = np.asarray(obj)
        s = summarize(arr, channel_order=channel_order, layout="HWC")
        return Summary("PIL.Image.Image", s.shape, f"{s.dtype} (mode {obj.mode})", "HWC",
                       channel_order, s.min, s.max, s.mean, s.std, s.nbytes)
    if isinstance(obj, np.ndarray):
        t = torch.from_numpy(np.array(obj))  # a copy: PIL's arrays are read-only
        lay = layout or ("HWC" if obj.ndim == 3 and obj.shape[-1] in (1, 3, 4) else
                         "HW" if obj.ndim == 2 else "?")
        s = _tensor_stats(t, lay)
        return Summary("numpy.ndarray", tuple(obj.shape), str(obj.dtype), lay, channel_order,
                       *s, obj.nbytes)
    if isinstance(obj, torch.Tensor):
        t = obj.detach().as_subclass(torch.Tensor)  # statistics where it lives: no copy
        lay = layout or guess_layout(t)
        s = _tensor_stats(t, lay)
        return Summary("torch.Tensor", tuple(t.shape), str(t.dtype).removeprefix("torch."), lay,
                       channel_order, *s, t.element_size() * t.nelement())
    raise TypeError(f"cannot summarize a {type(obj).__name__}")


def guess_layout(t: torch.Tensor) -> str:
    """Name a tensor's layout from its shape: channels are the dimension of size 3 (or 1, or 4)."""
    if t.ndim not in (3, 4):
        return {1: "N", 2: "NC"}.get(t.ndim, "?")
    first, last = t.shape[t.ndim - 3], t.shape[-1]
    names = ("CHW", "HWC") if t.ndim == 3 else ("NCHW", "NHWC")
    for sizes in ((3,), (1,), (4,)):  # 3 channels is by far the likeliest, then grey, then RGBA
        if first in sizes:
            return names[0]
        if last in sizes:
            return names[1]
    return "?"


def _tensor_stats(t: torch.Tensor, layout: str):
    """(min, max, per-channel mean, per-channel std) of an image-like tensor.

    Channels-innermost memory (HWC, NHWC, channels_last) is read as rows of C values, so no
    copy is made; sums use torch's cascaded float32 reduction (about 1e-6 relative error on a
    224 x 224 batch, 6x faster than float64: this runs on sampled training batches).
    """
    if t.numel() == 0:
        return None, None, (), ()
    cdim = {"HWC": -1, "NHWC": -1, "CHW": 0, "NCHW": 1}.get(layout)
    if cdim is None:
        rows = t.reshape(-1, 1)
    elif cdim == -1 or (t.ndim == 4 and t.is_contiguous(memory_format=torch.channels_last)):
        rows = t.movedim(cdim, -1).reshape(-1, t.shape[cdim])  # a view of (pixels, C)
    else:
        rows = t.movedim(cdim, 0).reshape(t.shape[cdim], -1).T
    if not rows.is_floating_point():
        rows = rows.to(torch.float32)
    lo, hi = torch.aminmax(rows)
    n = rows.shape[0]
    mean = rows.sum(0, dtype=torch.float32).double() / n
    sq = rows.square().sum(0, dtype=torch.float32).double() / n
    std = (sq - mean * mean).clamp_min(0).sqrt()
    return float(lo), float(hi), tuple(mean.tolist()), tuple(std.tolist())


def detect_channel_order(arr: np.ndarray, reference_rgb: np.ndarray, tol: float = 1.0) -> str:
    """Compare an (H, W, 3) array with an independent RGB decode: 'RGB', 'BGR' or '?'."""
    if arr.shape != reference_rgb.shape or arr.ndim != 3 or arr.shape[2] != 3:
        return "?"
    a = arr.astype(np.int16)
    ref = reference_rgb.astype(np.int16)
    same = np.abs(a - ref).mean()
    swapped = np.abs(a[..., ::-1] - ref).mean()
    if min(same, swapped) > 8 * tol + 2:  # neither matches (different decoders differ slightly)
        return "?"
    if abs(same - swapped) < tol / 4:  # grey image: the order cannot be told
        return "?"
    return "RGB" if same < swapped else "BGR"


def pil_reference_rgb(data: bytes) -> np.ndarray:
    """An independent decode with PIL (EXIF orientation applied): (H, W, 3) uint8 RGB."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))



# -- pictures --------------------------------------------------------------------------------------

def thumbnail(hwc: np.ndarray, max_side: int = 128) -> np.ndarray:
    """A small copy of an (H, W, 3) uint8 picture for reports (area-averaged when shrinking)."""
    h, w = hwc.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return np.ascontiguousarray(hwc)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(np.ascontiguousarray(hwc), size, interpolation=cv2.INTER_AREA)


def chw_picture(t: torch.Tensor, pre: Preprocess) -> np.ndarray:
    """A (3, H, W) model-side tensor as an (H, W, 3) uint8 picture (de-normalized if float)."""
    t = t.detach().cpu()
    if t.dtype != torch.uint8:
        t = denormalize(t.float(), pre.mean, pre.std)
    return t.permute(1, 2, 0).contiguous().numpy()



def display_picture(obj, stats: tuple | None = None) -> np.ndarray | None:
    """Best-effort (H, W, 3) uint8 picture of a stage's output, as its bytes would look
    shown as RGB (a BGR array shows red and blue swapped); float tensors are de-normalized
    with ``stats`` = (mean, std) when they hold negative values. None: not a picture."""
    if isinstance(obj, Image.Image):
        return np.asarray(obj.convert("RGB"))
    if isinstance(obj, np.ndarray):
        obj = torch.from_numpy(np.ascontiguousarray(obj))
    if not isinstance(obj, torch.Tensor):
        return None
    t = obj.detach().cpu().as_subclass(torch.Tensor)
    if t.ndim == 4:
        t = t[0]
    if t.ndim != 3:
        return None
    if t.shape[0] in (1, 3) and t.shape[-1] not in (1, 3):
        t = t.permute(1, 2, 0)  # CHW -> HWC
    if t.shape[-1] == 1:
        t = t.expand(-1, -1, 3)
    if t.shape[-1] != 3:
        return None
    if t.dtype != torch.uint8:
        t = t.float()
        if float(t.min()) < -0.01 and stats is not None:
            m, s = (torch.tensor(v, dtype=torch.float32) for v in stats)
            t = t * s + m
        elif float(t.max()) > 1.5:  # 0-255 floats
            t = t / 255
        t = (t * 255).round().clamp(0, 255).to(torch.uint8)
    return np.ascontiguousarray(t.numpy())


def _digest(obj) -> str:
    if isinstance(obj, Encoded):
        data = obj.data
    elif isinstance(obj, Image.Image):
        data = obj.tobytes()
    elif isinstance(obj, torch.Tensor):
        data = obj.detach().cpu().contiguous().as_subclass(torch.Tensor).numpy().tobytes()
    elif isinstance(obj, np.ndarray):
        data = np.ascontiguousarray(obj).tobytes()
    else:
        return ""
    return hashlib.sha1(data).hexdigest()[:16]


# -- the tracer ------------------------------------------------------------------------------------

def _sync() -> None:
    if torch.cuda.is_initialized():  # GPU work is asynchronous: time what ran, not what was queued
        torch.cuda.synchronize()


def _hwc_uint8(obj) -> np.ndarray | None:
    """An image-like uint8 object as an (H, W, 3) array view, for the channel-order check."""
    if isinstance(obj, Image.Image):
        return np.asarray(obj) if obj.mode == "RGB" else None
    if isinstance(obj, torch.Tensor):
        if obj.dtype != torch.uint8 or obj.ndim != 3 or obj.device.type != "cpu":
            return None
        obj = obj.as_subclass(torch.Tensor)
        obj = (obj.permute(1, 2, 0) if obj.shape[0] == 3 and obj.shape[-1] != 3 else obj).numpy()
    if isinstance(obj, np.ndarray) and obj.dtype == np.uint8 and obj.ndim == 3 \
            and obj.shape[-1] == 3:
        return obj
    return None


def measured_order(obj, reference: np.ndarray | None, stats: tuple | None = None) -> str:
    """'RGB' or 'BGR' when ``obj`` can be compared with the reference decode, else '?'.

    The reference is resized to the object's size when only the scale differs (a reduced
    decode); a crop changes the geometry, and then nothing is claimed. A float image is
    compared after undoing Normalize with ``stats`` = (mean, std)."""
    arr = _hwc_uint8(obj)
    if arr is None and isinstance(obj, torch.Tensor | np.ndarray) and reference is not None:
        arr = display_picture(obj, stats) if getattr(obj, "ndim", 0) == 3 else None
    if arr is None or reference is None:
        return "?"
    (h, w), (rh, rw) = arr.shape[:2], reference.shape[:2]
    if (h, w) != (rh, rw):
        if abs(h / w - rh / rw) > 0.015 * rh / rw or h > rh:
            return "?"
        reference = cv2.resize(reference, (w, h), interpolation=cv2.INTER_AREA)
    return detect_channel_order(arr, reference)


_FLIP = {"RGB": "BGR", "BGR": "RGB"}


class StageTracer:
    """Observes stages while they run: times each call, records what went in and came out.

    The loader calls ``call(stage, x[, generator])`` and ``place(stage, x, out)`` instead of
    the stage's function when tracing is on (see ``pipeline.run_image``); everything else
    about the run is unchanged. ``scope="batch"`` for the stages that run on a whole batch.
    """

    def __init__(self, *, scope: str = "image", order: str = "?", stats: tuple | None = None,
                 first_index: int = 1):
        self.scope = scope
        self.order = order  # channel order of what flows now, measured or carried
        self.stats = stats  # (mean, std): de-normalizes float pictures for display
        self.records: list[StageRecord] = []
        self.reference: np.ndarray | None = None  # an independent PIL decode of the file
        self.source = ""  # the traced file
        self.first_input = None  # what the first stage received
        self.rng_state: torch.Tensor | None = None  # torch's RNG when the trace began
        self.first_index = first_index
        self._memo: tuple | None = None  # (tensor, (order, version), its Summary)

    def call(self, stage: Stage, x, *args):
        if self.first_input is None:
            self.first_input, self.rng_state = x, torch.get_rng_state()
        _sync()
        t0 = time.perf_counter()
        y = stage.fn(x, *args)
        _sync()
        self._add(stage, x, y, time.perf_counter() - t0)
        return y

    def place(self, stage: Stage, x, out) -> None:
        """The placing stage: ``stage.fn(x, out)`` writes the image into its batch slot and
        returns what the slot holds."""
        t0 = time.perf_counter()
        y = stage.fn(x, out)
        self._add(stage, x, y, time.perf_counter() - t0)

    def _summary(self, obj, order: str) -> Summary:
        """:func:`summarize_any`, measured once per tensor state: a stage's output is the
        next stage's input, and a stage may return its input (to the device it is on); a
        tensor changed in place has a new ``_version`` and is measured again."""
        key = (order, getattr(obj, "_version", None))
        memo = self._memo
        if memo is not None and memo[0] is obj and memo[1] == key:
            return memo[2]
        s = summarize_any(obj, order)
        if isinstance(obj, torch.Tensor):  # NumPy arrays carry no version: always measured
            self._memo = (obj, key, s)
        return s

    def _add(self, stage: Stage, x, y, seconds: float) -> None:
        if isinstance(x, FileRef):
            self.source = x.path
        if isinstance(x, Encoded) and self.reference is None:
            try:
                self.reference = pil_reference_rgb(x.data)
            except Exception:  # PIL cannot read it: the order is carried, not measured
                self.reference = None
        x, y = image_part(x), image_part(y)  # an item (image, label) or a dict: its image
        if not self.records and self.order == "?" and self.scope == "image":
            self.order = measured_order(x, self.reference, self.stats)  # the first input
        order_in = self.order
        carried = ("?" if stage.opaque else
                   _FLIP.get(self.order, "?") if stage.swaps_channels else self.order)
        measured = (measured_order(y, self.reference, self.stats) if self.scope == "image"
                    else "?")
        self.order = measured if measured != "?" else carried
        n = y.shape[0] if self.scope == "batch" and getattr(y, "ndim", 0) == 4 else 1
        out = self._summary(y, self.order)
        if self.scope == "image":
            out = Summary(**{**asdict(out), "digest": _digest(y)})
        picture = display_picture(y, self.stats)
        caption = ""
        if picture is not None and self.order == "BGR":
            caption = "BGR bytes shown as RGB: red and blue trade places"
        elif picture is not None and out.min is not None and out.min < 0:
            caption = "de-normalized for display"
        self.records.append(StageRecord(
            self.first_index + len(self.records), stage.seed, stage.name, stage.library,
            stage.operation, self._summary(x, order_in), out, seconds * 1e6 / max(n, 1),
            self.scope, caption=caption,
            picture=thumbnail(picture) if picture is not None else None))


def image_part(obj):
    """The image inside a dataset item or a batch: ``(image, label)`` -> image, an
    albumentations dict -> its ``"image"``; anything else is itself."""
    if isinstance(obj, dict) and "image" in obj:
        return obj["image"]
    if isinstance(obj, list | tuple) and obj and not isinstance(obj, FileRef | Encoded):
        for part in obj:
            if isinstance(part, torch.Tensor | np.ndarray | Image.Image) and \
                    getattr(part, "ndim", 2) >= 2:
                return part
    return obj


def summarize_any(obj, channel_order: str = "?") -> Summary:
    """:func:`summarize`, or a one-field summary of something that is not an image."""
    if isinstance(obj, list | tuple) and not isinstance(obj, FileRef | Encoded):
        return Summary(type(obj).__name__, (len(obj),), "items", "items", "?")
    if isinstance(obj, str | os.PathLike) and os.path.isfile(obj):  # a loader's file path
        return Summary("file", (), "-", "file", "?", nbytes=os.path.getsize(obj))
    try:
        return summarize(obj, channel_order=channel_order)
    except TypeError:
        return Summary(type(obj).__module__ + "." + type(obj).__qualname__, (), "-", "-", "?")


class TracedImage(NamedTuple):
    """The trace of one image through the per-image and placing stages of a batch."""

    source: str  # the file
    records: list[StageRecord]
    seed_order_same: bool | None  # re-run in the seed's order gives the same bytes? None: n/a


def trace_first_image(tracer: StageTracer, pipeline: Pipeline) -> TracedImage:
    """Finish an image trace; if the pipeline's steps ran out of the seed's order, re-run
    them in that order on the same input (same random state) and compare the bytes."""
    same = None
    seeds = [s.seed for s in pipeline.stages]
    if seeds != sorted(seeds) and tracer.first_input is not None:
        ordered = sorted(pipeline.stages, key=lambda s: s.seed)  # stable: same-stage order kept
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(tracer.rng_state)
            x = tracer.first_input
            for stage in ordered:
                if stage is pipeline.place:
                    out = new_buffer(1, x)[0]
                    stage.fn(x, out)
                    x = out
                else:
                    x = stage.fn(x)
        same = _digest(x) == tracer.records[-1].output.digest
    return TracedImage(tracer.source, tracer.records, same)


# -- the data flow of a run ------------------------------------------------------------------------

@dataclass(frozen=True)
class DataFlow:
    """The stages one image and its batch went through, in the order they ran."""

    path: str  # the loader path that ran: "fast", "classic", "seed", "seed+bgr", "dataset"
    source: str  # the traced file ("" when unknown)
    stages: list[StageRecord]
    seed_order_same: bool | None = None  # steps re-run in the seed's order: same bytes?
    order: str = ""  # one line: how the order that ran maps onto the seed's five stages
    timing: str = "one call each"  # what the times are: which call, warm or cold

    def to_dict(self) -> dict:
        return {"path": self.path, "source": self.source, "order": self.order,
                "seed_order_same": self.seed_order_same, "timing": self.timing,
                "seed_stages": {str(k): v for k, v in SEED_STAGES.items()},
                "stages": [s.to_dict() for s in self.stages]}

    def _repr_html_(self) -> str:  # Jupyter: the report's data-flow section
        from .report.notebook import flow_html

        return flow_html(self)

    def extended(self, more: Sequence[StageRecord]) -> DataFlow:
        """The same flow with later steps (e.g. a model's forward pass) appended."""
        return flow_of(self.path, self.source, [*self.stages, *more], self.seed_order_same,
                       self.timing)

    def model_input(self) -> Summary | None:
        """What the model received: the output of the last stage before stage 5."""
        before = [s for s in self.stages if s.seed < 5]
        return before[-1].output if before else None

    def image_order(self) -> str:
        """Channel order of the image as it entered the batch."""
        images = [s for s in self.stages if s.scope == "image"]
        return images[-1].output.channel_order if images else "?"


def _dims(s: Summary) -> str:
    return " x ".join(str(d) for d in s.shape)


def order_note(stages: Sequence[StageRecord], seed_order_same: bool | None = None) -> str:
    """One line on how the stages' run order maps onto the seed's five, from the records."""
    if not stages:
        return ""
    runs = [stages[0].seed]
    for s in stages[1:]:
        if s.seed != runs[-1]:
            runs.append(s.seed)
    ran = " -> ".join(SEED_STAGES.get(n, str(n)) for n in runs)
    if runs == sorted(runs):
        return f"Ran in the seed's order: {ran}."
    clauses, latest = [], stages[0]
    for s in stages[1:]:
        if s.seed < latest.seed:
            what = f"on {_dims(s.input)}" if s.input.shape else ""
            clause = f"{s.name} (stage {s.seed}) after {latest.name} (stage {latest.seed}) {what}"
            if s.scope == "image" and seed_order_same is not None:
                clause += (", the same bytes as in the seed's order (checked on this image)"
                           if seed_order_same else
                           ", NOT the same bytes as in the seed's order (checked on this image)")
            clauses.append(clause.strip())
        if s.seed > latest.seed:
            latest = s
    return f"Ran as {ran}: " + "; ".join(clauses) + "."


TIMING_FIRST_BATCH = "one call each, on the run's first batch (first-call costs included)"
TIMING_WARM = "one call each, after one untimed warm-up call"


def data_flow(path: str, image: TracedImage, batch: Sequence[StageRecord] = (),
              more: Sequence[StageRecord] = (), *, timing: str = TIMING_FIRST_BATCH
              ) -> DataFlow:
    """Put a traced image, its batch stages and later stages (training) into one flow."""
    return flow_of(path, image.source, [*image.records, *batch, *more], image.seed_order_same,
                   timing)


def flow_of(path: str, source: str, stages: list[StageRecord], same: bool | None = None,
            timing: str = TIMING_FIRST_BATCH) -> DataFlow:
    """A flow of these records, numbered in order, with its order line."""
    stages = [s if s.index == i else replace(s, index=i) for i, s in enumerate(stages, start=1)]
    return DataFlow(path, source, stages, same, order_note(stages, same), timing)


def batch_tracer(image: TracedImage | None, pre: Preprocess) -> StageTracer:
    """A tracer for the batch stages that follow a traced image."""
    order = image.records[-1].output.channel_order if image and image.records else "?"
    return StageTracer(scope="batch", order=order, stats=(pre.mean, pre.std))


def model_stage(model, x: torch.Tensor, classes: Sequence[str], order: str = "?",
                top_k: int = 3) -> StageRecord:
    """Stage 5 for a trained model: its forward pass and softmax on the batch, observed."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            _sync()
            t0 = time.perf_counter()
            probs = torch.softmax(model(x.float()).float(), dim=1)
            _sync()
            seconds = time.perf_counter() - t0
    finally:
        model.train(was_training)
    top = probs[0].topk(min(top_k, probs.shape[1]))
    text = ", ".join(f"{classes[int(i)]} {float(p):.3f}" for p, i in zip(top.values, top.indices,
                                                                         strict=True))
    return StageRecord(0, 5, "Model forward + softmax", "PyTorch",
                       f"{type(model).__name__}(x), then softmax over {probs.shape[1]} classes",
                       summarize(x, channel_order=order), summarize(probs), seconds * 1e6 /
                       x.shape[0], "batch", note=f"probabilities of the first image: {text}")


def step_record(x: torch.Tensor, logits: torch.Tensor, loss: torch.Tensor, seconds: float,
                model, optimizer, order: str = "?") -> StageRecord:
    """Stage 5 as it ran on the traced batch: one training step (forward, loss, backward,
    optimizer step), timed by the trainer around the real calls."""
    net = getattr(model, "module", model)  # DDP wraps the model
    trained = sum(p.numel() for p in net.parameters() if p.requires_grad)
    return StageRecord(
        0, 5, "Training step", "PyTorch",
        f"{type(net).__name__}(x) -> cross-entropy -> backward -> {type(optimizer).__name__}.step",
        summarize(x, channel_order=order), summarize(logits.detach().float()),
        seconds * 1e6 / max(x.shape[0], 1), "batch",
        note=f"loss {float(loss.detach()):.3f} on this batch; {trained:,} weights updated")


def trace_transforms(transform, image) -> list[StageRecord]:
    """Trace any transform chain on one image: one record per transform object.

    ``transform`` is a torchvision v1/v2 ``Compose`` (or a list of callables); ``image`` a
    PIL image, an HWC array or a tensor.
    """
    from .pipeline import transform_stages

    tracer = StageTracer()
    x = image
    for stage in transform_stages(getattr(transform, "transforms", transform)):
        x = tracer.call(stage, x)
    return tracer.records


@dataclass
class BatchProbe:
    """Sampled statistics of the batches the model really received during training."""

    every: int = 50  # sample the first batch, then every N-th
    samples: list[dict] = field(default_factory=list)  # {"step", "summary"}

    def wants(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def record(self, step: int, x: torch.Tensor, channel_order: str) -> None:
        self.samples.append({"step": step, "summary": asdict(summarize(x, channel_order=channel_order))})


