"""The stage trace: what each stage of the data flow took in, did, and gave out.

Every record is measured from the objects that really flowed (shapes, dtypes, ranges,
per-channel statistics, time), never filled from a template. Channel order is *checked*,
not assumed, wherever an independent PIL decode of the same file is at hand.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps

from . import images
from .transforms import Preprocess, classic_transform, denormalize


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

    def short(self) -> str:
        """One line: ``3 x 224 x 224 float32 CHW RGB [-2.12, 2.64]``."""
        if self.layout == "bytes":
            return f"file, {self.nbytes:,} bytes"
        dims = " x ".join(str(d) for d in self.shape)
        rng = "" if self.min is None else f" [{_fmt(self.min)}, {_fmt(self.max)}]"
        order = "" if self.channel_order == "?" else f" {self.channel_order}"
        return f"{dims} {self.dtype} {self.layout}{order}{rng}"


def _fmt(v: float) -> str:
    return f"{v:.0f}" if float(v).is_integer() else f"{v:.3g}"


@dataclass(frozen=True)
class StageRecord:
    """One stage of the data flow, as it really ran."""

    index: int  # 1-5, the seed's stage number
    name: str  # "Load image", "Convert format", ...
    library: str  # "OpenCV", "OpenCV + PIL", "torchvision", "PyTorch"
    operation: str  # the calls made, e.g. "cv2.imdecode(IMREAD_COLOR)"
    input: Summary
    output: Summary
    micros_per_item: float  # wall time per image, microseconds
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    def _repr_html_(self) -> str:  # Jupyter: the report's data-flow table, one row
        from .report.notebook import stages_html

        return stages_html([self])


def summarize(obj, *, channel_order: str = "?", layout: str | None = None) -> Summary:
    """Measure an object of the pipeline: bytes, an HWC array, a PIL image or a tensor."""
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


def _timed(fn: Callable, *args, repeat: int = 1):
    """Run fn(*args) ``repeat`` times (after one warm-up call when repeat > 1); return
    (last result, mean microseconds per call)."""
    if repeat > 1:
        fn(*args)
    sync = torch.cuda.synchronize if torch.cuda.is_initialized() else lambda: None
    sync()  # GPU work is asynchronous: time what ran, not what was queued
    t0 = time.perf_counter()
    for _ in range(repeat):
        out = fn(*args)
    sync()
    return out, (time.perf_counter() - t0) / repeat * 1e6


PLANTS = ("bgr", "no-normalize", "double-normalize", "hwc", "0-255", "uint8")


def seed_chain(pre: Preprocess, plant: str | None = None) -> list:
    """The seed's stage-3 chain (v2), optionally with a classic bug planted in it."""
    from torchvision.transforms import v2

    chain = list(classic_transform(pre, train=False).transforms)  # geometry, ToImage, ToDtype, Normalize
    if plant == "no-normalize":
        chain = chain[:-1]
    elif plant == "double-normalize":
        chain = [*chain, chain[-1]]
    elif plant == "0-255":
        chain = [*chain[:-3], v2.ToImage(), v2.ToDtype(torch.float32, scale=False)]
    elif plant == "uint8":
        chain = chain[:-2]
    return chain


def trace_image(path: str, pre: Preprocess, *, batch: int = 1, repeat: int = 3,
                limits: images.LoadLimits = images.LoadLimits(), plant: str | None = None
                ) -> tuple[list[StageRecord], dict]:
    """Stages 1-4 of the seed's chain for one real image, measured.

    Returns the four records and the stage outputs (``bgr``, ``rgb``, ``pil``, ``tensor``,
    ``batch``, ``reference_rgb``) for pictures and checks. Stage 4 stacks ``batch`` copies.
    ``plant`` puts one classic bug into the chain (see ``PLANTS``) to show how it is caught.
    """
    if plant is not None and plant not in PLANTS:
        raise ValueError(f"unknown bug to plant {plant!r}; choose from {PLANTS}")
    from torchvision.transforms import v2

    data = images.read_bytes(path)
    bgr, t1 = _timed(images.decode_bgr, data, path, repeat=repeat)
    reference = pil_reference_rgb(data)
    convert = (lambda a: a.copy()) if plant == "bgr" else images.bgr_to_rgb
    rgb, t2a = _timed(convert, bgr, repeat=repeat)
    pil, t2b = _timed(images.rgb_to_pil, rgb, repeat=repeat)
    chain = seed_chain(pre, plant)
    transform = v2.Compose(chain)
    tensor, t3 = _timed(lambda p: transform(p).as_subclass(torch.Tensor), pil, repeat=repeat)
    if plant == "hwc":
        tensor = tensor.permute(1, 2, 0)
    stacked, t4 = _timed(lambda t: torch.stack([t] * batch), tensor, repeat=repeat)
    order1 = detect_channel_order(bgr, reference)
    order2 = detect_channel_order(np.asarray(pil), reference)
    steps = " -> ".join(type(t).__name__ for t in chain)
    op2 = ("PIL.Image.fromarray (cvtColor skipped!)" if plant == "bgr"
           else "cv2.cvtColor(COLOR_BGR2RGB) + PIL.Image.fromarray")
    records = [
        StageRecord(1, "Load image", "OpenCV", "read bytes + cv2.imdecode(IMREAD_COLOR)",
                    summarize(data), summarize(bgr, channel_order=order1), t1,
                    "NumPy array, height x width x channels; OpenCV's order is BGR"),
        StageRecord(2, "Convert format", "OpenCV + PIL", op2,
                    summarize(bgr, channel_order=order1), summarize(pil, channel_order=order2),
                    t2a + t2b, "channels reversed to RGB; now a PIL image torchvision accepts"),
        StageRecord(3, "Apply transformations", "torchvision", f"transforms.v2: {steps}"
                    + (" + permute(1, 2, 0)" if plant == "hwc" else ""),
                    summarize(pil, channel_order=order2),
                    summarize(tensor, channel_order=order2), t3,
                    f"channels first; scaled to 0-1, then normalized with mean "
                    f"{_triple(pre.mean)} and std {_triple(pre.std)}" if plant is None else
                    f"planted bug: {plant}"),
        StageRecord(4, "Batch images", "PyTorch", f"torch.stack of {batch} image(s)",
                    summarize(tensor, channel_order=order2),
                    summarize(stacked, channel_order=order2), t4 / batch,
                    "N x C x H x W: the model's input"),
    ]
    outputs = {"bgr": bgr, "rgb": rgb, "pil": pil, "tensor": tensor, "batch": stacked,
               "reference_rgb": reference, "data": data}
    return records, outputs


def trace_model_stage(x: torch.Tensor, model=None, classes: list[str] | None = None
                      ) -> StageRecord:
    """Stage 5 for one batch: a trained model's forward pass, or one training step of a
    freshly initialised built-in CNN (to show the shapes and the cost of a step)."""
    from .model import ModelConfig, build_model

    x = x.float()
    if model is not None:
        model.eval()
        with torch.no_grad():
            out, t = _timed(model, x)
        probs = torch.softmax(out.float(), 1)  # (N, classes): what the row shows, not logits
        top = probs[0].topk(min(3, probs.shape[1]))
        names = [classes[int(i)] if classes else str(int(i)) for i in top.indices]
        text = ", ".join(f"{n} {float(p):.3f}" for n, p in zip(names, top.values, strict=True))
        return StageRecord(5, "Model forward", "PyTorch", "softmax(model(x), dim=1)",
                           summarize(x), summarize(probs), t / x.shape[0], f"top classes: {text}")
    net = build_model(ModelConfig("pipenet-s", 4))
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    target = torch.zeros(x.shape[0], dtype=torch.int64)

    def step(inp):
        loss = torch.nn.functional.cross_entropy(net(inp), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    loss, t = _timed(step, x)
    params = sum(p.numel() for p in net.parameters())
    return StageRecord(5, "Model training", "PyTorch",
                       "pipenet-s (random weights): forward, cross-entropy, backward, SGD step",
                       summarize(x), Summary("metrics", (), "float32", "-", "?"),
                       t / x.shape[0], f"one step: loss {float(loss.detach()):.3f}, {params:,} weights "
                       "updated (no trained model given: use --model RUN_DIR)")


def _triple(v: Sequence[float]) -> str:
    return "(" + ", ".join(f"{x:.3f}" for x in v) + ")"


def train_stage_record(batch_summary: Summary, *, loss: float, accuracy: float, params: int,
                       micros_per_item: float, model_name: str) -> StageRecord:
    """Stage 5 as it ran: the model's input batch and what training made of it."""
    out = Summary("metrics", (), "float32", "-", "?", min=None, max=None)
    return StageRecord(
        5, "Model training", "PyTorch", f"{model_name}: forward, cross-entropy, backward, step",
        batch_summary, out, micros_per_item,
        f"{params:,} weights updated; loss {loss:.3f}, accuracy {accuracy:.3f} (last epoch)")


@dataclass
class BatchProbe:
    """Sampled statistics of the batches the model really received during training."""

    every: int = 50  # sample the first batch, then every N-th
    samples: list[dict] = field(default_factory=list)  # {"step", "summary"}

    def wants(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def record(self, step: int, x: torch.Tensor, channel_order: str) -> None:
        self.samples.append({"step": step, "summary": asdict(summarize(x, channel_order=channel_order))})


def trace_transforms(transform, image) -> list[StageRecord]:
    """Trace any torchvision transform chain on one image: one record per transform.

    ``transform`` is a ``v2.Compose`` (or ``transforms.Compose``) or a list of callables;
    ``image`` a PIL image, an HWC array or a tensor.
    """
    steps = getattr(transform, "transforms", transform)
    records, x = [], image
    for i, step in enumerate(steps, start=1):
        before = summarize(x)
        y, micros = _timed(step, x)
        records.append(StageRecord(i, type(step).__name__, _library_of(step), repr(step),
                                   before, summarize(y), micros))
        x = y
    return records


def _library_of(obj) -> str:
    mod = type(obj).__module__.split(".")[0]
    return {"torchvision": "torchvision", "torch": "PyTorch", "PIL": "PIL", "cv2": "OpenCV"}.get(
        mod, mod)


def thumbnail(hwc: np.ndarray, max_side: int = 160) -> np.ndarray:
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


def trace_sample(dataset, batch, *, device="cpu", channels_last: bool = False,
                 augment=None) -> tuple[list[StageRecord], dict[int, np.ndarray]]:
    """Stages 1-4 as the training loader really runs them, for the first image of ``batch``.

    Stages 1-3 re-run the dataset's own functions on that image (so their outputs equal
    what the loader produced); stage 4 measures the real batch turned into model input.
    Also returns a thumbnail of the picture as it leaves each stage (stage 1's BGR array
    shown as if it were RGB, which is what mixing the orders up looks like).
    """
    from .data import to_model_input  # data imports trace's helpers; keep the cycle lazy
    from .transforms import hwc_to_chw, resize_uint8

    pre = dataset.pre
    path = dataset.samples[int(batch.indices[0])][0]
    data = images.read_bytes(path)
    fast = dataset.path == "fast"
    min_side = pre.resize_size if fast else None
    bgr, t1 = _timed(lambda d: images.decode_bgr(d, path, limits=dataset.limits,
                                                 min_side=min_side), data, repeat=3)
    full = images.decode_bgr(data, path) if fast else bgr  # a reduced decode is smaller
    reduced = full.shape != bgr.shape
    order1 = detect_channel_order(full, pil_reference_rgb(data))
    rgb, t2a = _timed(images.bgr_to_rgb, bgr, repeat=3)
    order2 = "RGB" if order1 == "BGR" else ("BGR" if order1 == "RGB" else "?")
    if fast:
        chw, t2b = _timed(hwc_to_chw, rgb, repeat=3)
        out2 = summarize(chw, channel_order=order2)
        op2 = "cv2.cvtColor(COLOR_BGR2RGB) + torch.from_numpy().permute(2, 0, 1)"
        note2 = "fast path: stays a uint8 tensor (a view, no copy); PIL is skipped"
        item, t3 = _timed(lambda c: resize_uint8(c, pre, dataset.transform), chw, repeat=3)
        in3 = out2
        note3 = ("fast path: resize/crop in uint8 (antialiased, as PIL); float conversion "
                 "and Normalize happen once per batch in stage 4")
    else:
        pil, t2b = _timed(images.rgb_to_pil, rgb, repeat=3)
        out2 = summarize(pil, channel_order=order2)
        op2 = "cv2.cvtColor(COLOR_BGR2RGB) + PIL.Image.fromarray"
        note2 = "channels reversed to RGB; now a PIL image torchvision accepts"
        item, t3 = _timed(lambda p: dataset.transform(p).as_subclass(torch.Tensor), pil,
                          repeat=3)
        in3 = out2
        note3 = (f"channels first; scaled to 0-1, normalized with mean {_triple(pre.mean)} "
                 f"and std {_triple(pre.std)}")
    steps = " -> ".join(type(t).__name__ for t in dataset.transform.transforms) or "none"
    n = len(batch)
    _, t_stack = _timed(lambda imgs: torch.stack(list(imgs)), batch.images, repeat=3)
    x, t_norm = _timed(lambda b: to_model_input(b, pre, device=device, channels_last=channels_last,
                                                augment=augment), batch.images, repeat=3)
    op4 = (f"torch.stack of {n} images" + (" + batch ToDtype/Normalize" if fast else "")
           + (f" + batch augment ({augment.augment})" if fast and augment and
              augment.augment != "none" else "")
           + (" + channels_last" if channels_last else ""))
    pictures = {1: thumbnail(bgr), 2: thumbnail(rgb), 3: thumbnail(chw_picture(item, pre)),
                4: thumbnail(chw_picture(x[0], pre))}
    return [
        StageRecord(1, "Load image", "OpenCV",
                    "read bytes + cv2.imdecode(IMREAD_" + ("REDUCED_COLOR)" if reduced else "COLOR)"),
                    summarize(data), summarize(bgr, channel_order=order1), t1,
                    "NumPy array, height x width x channels; OpenCV's order is BGR"),
        StageRecord(2, "Convert format", "OpenCV" + ("" if fast else " + PIL"), op2,
                    summarize(bgr, channel_order=order1), out2, t2a + t2b, note2),
        StageRecord(3, "Apply transformations", "torchvision", f"transforms.v2: {steps}",
                    in3, summarize(item, channel_order=pre.colour_order), t3, note3),
        StageRecord(4, "Batch images", "PyTorch", op4,
                    summarize(item, channel_order=pre.colour_order),
                    summarize(x, channel_order=pre.colour_order), (t_stack + t_norm) / n,
                    f"N x C x H x W: the model's input, {n} images"),
    ], pictures
