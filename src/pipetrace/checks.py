"""Checks for the classic cross-library bugs; each problem becomes a :class:`Finding`.

The checks work on measured facts (arrays, tensors, or their :class:`~pipetrace.trace.Summary`),
so they run on one image, on a batch a user hands in (:func:`inspect_batch`), or on the
statistics sampled during training (:func:`run_checks`).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image

from .doctor import check_class_order  # a dataset check: doctor.py, with the others
from .findings import SEVERITIES, Finding
from .images import display_path
from .pipeline import SEED_STAGES as SEED_STAGE_NAMES
from .trace import DataFlow, Summary, summarize
from .transforms import Preprocess

__all__ = ["SEVERITIES", "Finding", "check_class_order", "inspect_batch", "run_checks"]


# -- channel order and EXIF (stages 1-2) ---------------------------------------------------------

def exif_orientation(data: bytes) -> int:
    """The EXIF orientation tag (1 = upright) of an image file's bytes; 1 when absent."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return int(im.getexif().get(0x0112, 1) or 1)
    except Exception:
        return 1


def check_exif_orientation(data: bytes, name: str = "image") -> list[Finding]:
    """OpenCV applies EXIF orientation; PIL, ImageFolder and torchvision.io do not."""
    o = exif_orientation(data)
    if o in (0, 1):
        return []
    turn = {3: "rotated 180°", 6: "rotated 90° clockwise", 8: "rotated 90° counter-clockwise"}
    return [Finding("exif", "warning", "1 load", f"EXIF orientation {o} in {name}",
                    f"the file asks to be {turn.get(o, 'mirrored or rotated')}; OpenCV (and "
                    "pipetrace) apply it, PIL's Image.open, torchvision's ImageFolder and "
                    "torchvision.io do not: the same file gives different tensors per loader",
                    "load the same way in training and serving; with PIL call "
                    "ImageOps.exif_transpose(img)")]


# -- the model's input (stages 3-4) --------------------------------------------------------------

def check_layout(s: Summary, where: str = "4 batch") -> list[Finding]:
    if s.layout in ("HWC", "NHWC"):
        return [Finding("layout", "error", where, f"Tensor is {s.layout}, the model expects "
                        f"{'CHW' if s.layout == 'HWC' else 'NCHW'}",
                        f"shape {tuple(s.shape)}: channels ({s.shape[-1]}) are the last "
                        "dimension, as NumPy/OpenCV/PIL keep them",
                        "permute: x.permute(2, 0, 1) for one image, x.permute(0, 3, 1, 2) for "
                        "a batch (or use torchvision's ToImage())")]
    return []


def check_scale(s: Summary, where: str = "4 batch") -> list[Finding]:
    if s.dtype.startswith("uint8"):
        return [Finding("scale", "error", where, "uint8 pixels reach the model",
                        f"dtype {s.dtype}, range [{s.min:.0f}, {s.max:.0f}]",
                        "convert with ToDtype(torch.float32, scale=True) (or ToTensor) and "
                        "then Normalize")]
    if s.min is not None and s.min >= 0 and s.max > 2.0 and s.max <= 255.0 and s.max > 20:
        return [Finding("scale", "error", where, "Float tensor still in the 0-255 range",
                        f"range [{s.min:.3g}, {s.max:.3g}] with no negative values: pixels were "
                        "converted to float without dividing by 255, and not normalized",
                        "use ToDtype(torch.float32, scale=True) (it divides by 255), then "
                        "Normalize(mean, std)")]
    return []


def normalized_bounds(pre: Preprocess) -> tuple[np.ndarray, np.ndarray]:
    """The per-channel range Normalize(mean, std) can produce from 0-1 pixels."""
    mean, std = np.array(pre.mean), np.array(pre.std)
    return (0 - mean) / std, (1 - mean) / std


def check_normalization(s: Summary, pre: Preprocess, where: str = "4 batch") -> list[Finding]:
    """Skipped or doubled Normalize, judged from the batch's range against what is possible."""
    if s.min is None or s.dtype.startswith("uint8") or len(s.mean) != len(pre.mean):
        return []
    if s.min >= 0 and s.max > 2.0:  # un-normalized 0-255 floats: check_scale's finding
        return []
    lo, hi = normalized_bounds(pre)
    if s.min >= 0 and s.max <= 1.0 + 1e-6 and lo.min() < -0.5:
        return [Finding("normalization", "error", where, "Normalize was skipped",
                        f"values lie in [{s.min:.3g}, {s.max:.3g}]: the 0-1 range of "
                        f"ToDtype/ToTensor, while Normalize(mean={_r(pre.mean)}, "
                        f"std={_r(pre.std)}) would give [{lo.min():.2f}, {hi.max():.2f}]",
                        "add Normalize(mean, std) after the float conversion, with the "
                        "statistics the model was trained with")]
    margin = 0.25 * (hi - lo).max()
    if s.min < lo.min() - margin or s.max > hi.max() + margin:
        twice = s.max < 50
        return [Finding("normalization", "error", where,
                        "Normalize applied twice (or with the wrong statistics)" if twice
                        else "Normalize applied to 0-255 values",
                        f"values reach [{s.min:.3g}, {s.max:.3g}], outside "
                        f"[{lo.min():.2f}, {hi.max():.2f}], the widest range Normalize("
                        f"mean={_r(pre.mean)}, std={_r(pre.std)}) can give for 0-1 pixels",
                        "normalize exactly once, after ToDtype(float32, scale=True)" if twice
                        else "scale to 0-1 first: ToDtype(torch.float32, scale=True)")]
    return []


def _r(v: Sequence[float]) -> str:
    return "(" + ", ".join(f"{x:.3f}" for x in v) + ")"


@dataclass(frozen=True)
class ChannelReference:
    """Per-channel mean of the dataset's images, decoded independently (PIL, RGB, 0-1)."""

    mean: tuple[float, float, float]  # R, G, B
    source: str  # what it was measured on, for the finding's evidence

    def to_dict(self) -> dict:
        return asdict(self)


def channel_reference(paths: Sequence[str], *, max_files: int = 64,
                      source: str | None = None) -> ChannelReference | None:
    """The mean colour of up to ``max_files`` files (evenly spaced), decoded with PIL at a
    reduced size; None when none can be read. Independent of any pipeline under test."""
    paths = list(paths)
    chosen = paths[:: max(1, len(paths) // max_files)][:max_files]
    sums, n = np.zeros(3), 0
    for path in chosen:
        try:
            with Image.open(path) as im:
                im.draft("RGB", (64, 64))  # JPEG: decode at 1/8 scale; colour means survive
                arr = np.asarray(im.convert("RGB").resize((32, 32)), np.float64) / 255
        except Exception:  # an unreadable file is simply not part of the reference
            continue
        sums += arr.reshape(-1, 3).mean(0)
        n += 1
    if n == 0:
        return None
    return ChannelReference(tuple(float(v) for v in sums / n),
                            f"a PIL decode of {source or f'{n} files'}")


def pixel_means(s: Summary, pre: Preprocess) -> np.ndarray | None:
    """A batch's per-channel means on the 0-1 pixel scale (undoing Normalize or 0-255)."""
    if len(s.mean) != 3 or s.min is None:
        return None
    m = np.asarray(s.mean, np.float64)
    if s.dtype.startswith("uint8") or (s.max > 1.5 and s.min >= 0):
        return m / 255
    if s.min < -0.01:  # normalized: undo it with the contract's statistics
        return m * np.asarray(pre.std) + np.asarray(pre.mean)
    return m


def check_channel_stats(s: Summary, pre: Preprocess, ref: ChannelReference,
                        where: str = "4 batch") -> list[Finding]:
    """A BGR/RGB swap, from the batch's colour means against an independent reference: a
    swap trades the red and blue means, so the reversed means fit the reference better."""
    m = pixel_means(s, pre)
    if m is None or s.layout not in ("NCHW", "CHW"):
        return []
    r = np.asarray(ref.mean)
    gap = abs(r[0] - r[2])
    if gap < 0.02:  # red and blue about equal in this data: a swap cannot be told
        return []
    straight, swapped = np.abs(m - r).sum(), np.abs(m[::-1] - r).sum()
    if straight - swapped < gap:
        return []
    return [Finding("channel-order", "error", where, "Colour channels look swapped (BGR vs RGB)",
                    f"the batch's mean colour {_r(m)} (red, green, blue) matches {ref.source} "
                    f"{_r(r)} only with red and blue reversed (distance {swapped:.3f} "
                    f"reversed, {straight:.3f} as it is)",
                    "convert OpenCV's BGR with cv2.cvtColor(img, cv2.COLOR_BGR2RGB) before "
                    "Image.fromarray or torch.from_numpy")]


def inspect_batch(x: torch.Tensor, pre: Preprocess = Preprocess(), *, where: str = "4 batch",
                  reference: ChannelReference | None = None) -> list[Finding]:
    """Check a tensor about to enter the model: layout, dtype/scale and normalization, and,
    with a ``reference`` (:func:`channel_reference`), the channel order."""
    return check_summary(summarize(x), pre, where=where, reference=reference)


def check_summary(s: Summary, pre: Preprocess, *, where: str = "4 batch",
                  reference: ChannelReference | None = None) -> list[Finding]:
    """:func:`inspect_batch` on a recorded :class:`~pipetrace.trace.Summary`."""
    found = check_layout(s, where) + check_scale(s, where) + check_normalization(s, pre, where)
    if reference is not None:
        found += check_channel_stats(s, pre, reference, where)
    return found


def check_flow(flow: DataFlow, pre: Preprocess) -> list[Finding]:
    """The checks of a traced data flow: the channel order of the image as it entered the
    batch (measured against a PIL decode of the file), then what the model received."""
    findings = []
    order = flow.image_order()
    if order in ("RGB", "BGR") and order != pre.colour_order:
        last = [s for s in flow.stages if s.scope == "image"][-1]
        findings.append(Finding(
            "channel-order", "error", f"{last.seed} {SEED_STAGE_NAMES.get(last.seed, '')}",
            f"Colour channels are in {order} order when the image enters the batch",
            f"after step {last.index} ({last.name}) the image matches an independent PIL decode "
            f"of {display_path(flow.source)} only with its channels reversed; the model's "
            f"contract says {pre.colour_order}",
            "convert with cv2.cvtColor(img, cv2.COLOR_BGR2RGB) before Image.fromarray or "
            "torch.from_numpy"))
    s = flow.model_input()
    if s is not None:
        findings += check_summary(s, pre)
    return findings


# -- configuration (training vs serving, class order) --------------------------------------------

def check_train_eval_skew(train: Preprocess, serve: Preprocess) -> list[Finding]:
    """The serving contract must equal the training one in statistics, order, scale, size."""
    diffs = []
    for name in ("mean", "std", "colour_order", "value_scale", "size", "interpolation", "layout"):
        a, b = getattr(train, name), getattr(serve, name)
        if (np.allclose(a, b, atol=1e-4) if name in ("mean", "std") else a == b):
            continue
        diffs.append(f"{name}: training {a}, serving {b}")
    if not diffs:
        return []
    return [Finding("skew", "error", "3 transform", "Training and serving preprocess differently",
                    "; ".join(diffs),
                    "build the serving pipeline from the checkpoint's contract "
                    "(pipetrace predict does) instead of re-typing the numbers")]


# -- a whole run -----------------------------------------------------------------------------------

def check_pretrained_contract(expected: Preprocess, used: Preprocess,
                              source: str) -> list[Finding]:
    """Pretrained weights were trained with ``expected``; a run that overrides it (``--image-size``,
    ``--crop-pct``, ``--stats``) is allowed, and told what the weights expect."""
    def geometry(p: Preprocess) -> str:
        return f"resize {p.resize_size} ({p.interpolation}), crop {p.size}"

    def stats(p: Preprocess) -> str:
        return f"mean {_r(p.mean)}, std {_r(p.std)}"

    differ = []
    if (expected.size, expected.resize_size, expected.interpolation) != (
            used.size, used.resize_size, used.interpolation):
        differ.append(f"{geometry(expected)} where this run uses {geometry(used)}")
    normalization = not (np.allclose(expected.mean, used.mean, atol=1e-4)
                         and np.allclose(expected.std, used.std, atol=1e-4))
    if normalization:
        differ.append(f"{stats(expected)} where this run uses {stats(used)}")
    if not differ:
        return []
    return [Finding(
        "pretrained-contract", "warning" if normalization else "info", "3 transform",
        "Preprocessing differs from what the pretrained weights expect",
        f"{source} was trained with " + "; and ".join(differ),
        "leave out --image-size, --crop-pct and --stats to use the weights' own preprocessing; "
        "keep them only on purpose (fine-tuning adapts, but starts from features made for "
        "the weights' inputs)")]


def run_checks(result, *, exif_sample: int = 200) -> list[Finding]:
    """Findings for a training run: those ``train`` found in the dataset before its first
    epoch (``result.findings``), then those from its recorded stages and batch statistics."""
    findings = list(result.findings)
    pre = result.preprocess
    weights = getattr(result, "weights", None)
    if weights is not None and weights.preprocess is not None:
        findings += check_pretrained_contract(weights.preprocess, pre, weights.source)
    if result.flow is not None:
        findings += check_flow(result.flow, pre)
    for probe in result.probes[1:]:  # the first probe is the batch stage 4 already checked
        s = Summary(**{**probe["summary"], "shape": tuple(probe["summary"]["shape"]),
                       "mean": tuple(probe["summary"]["mean"]),
                       "std": tuple(probe["summary"]["std"])})
        found = check_normalization(s, pre, where=f"4 batch (step {probe['step']})")
        if found:
            findings += found
            break
    exif = _exif_files(result, exif_sample)
    if exif:
        findings.append(Finding(
            "exif", "info", "1 load", f"{len(exif)} of the first {exif_sample} training files "
            "carry an EXIF rotation",
            f"e.g. {exif[0]}; pipetrace applies it (as cv2.imread does); PIL and torchvision's "
            "ImageFolder would not", "serve with the same loader so the orientation matches"))
    if result.bad_files:
        findings.append(Finding(
            "bad-files", "warning", "1 load", f"{len(result.bad_files)} file(s) could not be "
            "read and were skipped", result.bad_files[0][1],
            "run `pipetrace check DATA_DIR` for the full list, then fix or remove them"))
    unique: list[Finding] = []  # a result already checked (fit does) keeps each finding once
    for f in findings:
        if f not in unique:
            unique.append(f)
    return unique


def _exif_files(result, limit: int) -> list[str]:
    from .images import read_bytes

    rotated = []
    for path in [p for p, _ in _train_samples(result)][:limit]:
        try:
            if exif_orientation(read_bytes(path)) not in (0, 1):
                rotated.append(path)
        except Exception:
            continue
    return rotated


def _train_samples(result):
    from .scan import find_splits

    try:
        return find_splits(result.config.data).train.samples
    except (OSError, ValueError):
        return []
