"""Train/serve skew: a user's own preprocessing against the checkpoint's evaluation pipeline.

The user writes a function that takes an image file path and returns what their app feeds
the model: a tensor or array, (3, H, W), (1, 3, H, W), (H, W, 3) or (1, H, W, 3). For each
image we run it and the checkpoint's pipeline, measure the difference, and *test
hypotheses*: the reference is rebuilt with every combination of the classic bugs (channel
order, scale, normalization count, layout, resize/crop/EXIF variants) and the hypothesis
that reproduces the user's tensor most closely is the diagnosis. Nothing is guessed from
summary statistics; a bug is named only when planting it reproduces the user's numbers.
"""

from __future__ import annotations

import itertools
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import cv2
import numpy as np
import torch
from torchvision.transforms import v2

from .checks import exif_orientation
from .images import bgr_to_rgb
from .pipeline import decoded_rgb
from .predict import LoadedModel
from .transforms import Preprocess, fast_transform, hwc_to_chw, interpolation_mode
from .usercode import UserCodeError as SkewInputError  # the name callers catch
from .usercode import load_user_function  # noqa: F401 (re-exported)

MATCH_LEVELS = 2.0  # RMS difference below this many grey levels (0-255 steps) is a match
TIE_LEVELS = 0.5  # hypotheses within half a grey level of the best: the simplest one wins

# Each bug: (title, fix), formatted with the contract (size, resize, mean, std, interp, other).
BUGS: dict[str, tuple[str, str]] = {
    "bgr": ("channel order swapped (BGR instead of RGB)",
            "convert OpenCV's BGR with cv2.cvtColor(img, cv2.COLOR_BGR2RGB) first"),
    "no-normalize": ("missing normalization",
                     "apply Normalize(mean={mean}, std={std}), the checkpoint's statistics"),
    "double-normalize": ("normalization applied twice",
                         "normalize once: (x - mean) / std after scaling to 0-1, not again"),
    "0-255": ("0-255 scale (pixels not divided by 255)",
              "scale to 0-1 before normalizing: x / 255.0, or v2.ToDtype(torch.float32, "
              "scale=True)"),
    "hwc": ("HWC layout (channels last)",
            "give the model (3, H, W): tensor.permute(2, 0, 1) or array.transpose(2, 0, 1)"),
    "resize-cv2": ("different resize: OpenCV cv2.resize (bilinear, no antialiasing) instead "
                   "of the antialiased {interp} resize (PIL / torchvision)",
                   "resize as in training: v2.Resize({resize}, antialias=True) then "
                   "v2.CenterCrop({size}), on a PIL image or uint8 tensor"),
    "resize-nearest": ("different resize: nearest-neighbour instead of {interp}",
                       "resize with {interp} interpolation, antialiased"),
    "interpolation": ("different resize: {other} instead of {interp} interpolation",
                      "resize with {interp} interpolation, antialiased"),
    "squash": ("different resize: stretched to {size} x {size} (aspect ratio lost) instead of "
               "short side {resize} + centre crop",
               "v2.Resize({resize}) (short side) then v2.CenterCrop({size})"),
    "crop": ("different crop: short side {other} + centre crop instead of {resize}",
             "v2.Resize({resize}) (short side) then v2.CenterCrop({size})"),
    "no-crop": ("no centre crop: resized to short side {resize} but not cropped to {size}",
                "add v2.CenterCrop({size}) after the resize"),
    "exif": ("EXIF orientation ignored (the picture is turned relative to training)",
             "apply it: ImageOps.exif_transpose(img) with PIL (cv2.imread already does)"),
    "unexplained": ("a difference that none of the known bugs reproduces",
                    "compare your steps with the contract: {contract}"),
}


def as_tensor(out: object, where: str) -> torch.Tensor:
    """The user's return value -> a 3-D CPU tensor, its dtype and layout kept."""
    if isinstance(out, torch.Tensor):
        t = out.detach().cpu().as_subclass(torch.Tensor)
    elif isinstance(out, np.ndarray):
        if out.dtype == object or not np.issubdtype(out.dtype, np.number):
            raise SkewInputError(f"{where} returned an array of {out.dtype}, expected numbers")
        t = torch.from_numpy(np.ascontiguousarray(out))
    else:
        raise SkewInputError(f"{where} returned {type(out).__name__}; return the tensor or "
                             "array you feed the model")
    if t.ndim == 4 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 3:
        raise SkewInputError(f"{where} returned shape {tuple(t.shape)}; expected one image: "
                             "(3, H, W), (1, 3, H, W), (H, W, 3) or (1, H, W, 3)")
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise SkewInputError(f"{where} returned {bad:,} NaN or infinite value(s) of "
                             f"{t.numel():,}; the model would see them too")
    return t


# -- hypotheses ----------------------------------------------------------------------------------

def tv_resize_size(h: int, w: int, size: int) -> tuple[int, int]:
    """(H, W) after torchvision's ``Resize(size)``: short side ``size``, long side truncated."""
    if h <= w:
        return size, int(size * w / h)
    return int(size * h / w), size


def _other_interpolation(pre: Preprocess) -> str:
    return "bicubic" if pre.interpolation == "bilinear" else "bilinear"


def _other_resize(pre: Preprocess) -> int:
    """The resize an app with the other common crop (0.875 vs none) would use."""
    return round(pre.size / (0.875 if pre.crop_pct != 0.875 else 1.0))


def resize_kernels(pre: Preprocess) -> dict[tuple[str, ...], Callable]:
    """bugs -> function((H, W, 3) uint8 RGB, (h, w)) -> (3, h, w) uint8: how an app resizes."""
    def antialiased(mode: str):
        return lambda rgb, hw: v2.functional.resize(hwc_to_chw(rgb), list(hw),
                                                    interpolation_mode(mode), antialias=True)

    return {
        (): antialiased(pre.interpolation),
        ("resize-cv2",): lambda rgb, hw: hwc_to_chw(
            cv2.resize(rgb, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)),
        ("resize-nearest",): lambda rgb, hw: v2.functional.resize(
            hwc_to_chw(rgb), list(hw), v2.InterpolationMode.NEAREST),
        ("interpolation",): antialiased(_other_interpolation(pre)),
    }


def framings(pre: Preprocess, h: int, w: int) -> dict[tuple[str, ...], tuple[tuple, int | None]]:
    """bugs -> ((h, w) to resize an H x W picture to, centre crop side or None)."""
    other_resize = _other_resize(pre)
    return {
        (): (tv_resize_size(h, w, pre.resize_size), pre.size),
        ("squash",): ((pre.size, pre.size), None),
        ("crop",): (tv_resize_size(h, w, other_resize), pre.size),
        ("no-crop",): (tv_resize_size(h, w, pre.resize_size), None),
    }


def geometries(rgb: np.ndarray, data: bytes, pre: Preprocess
               ) -> Iterator[tuple[tuple[str, ...], torch.Tensor]]:
    """(bugs, (3, h, w) uint8 RGB): every resize kernel x framing, and ignored EXIF."""
    frames = framings(pre, rgb.shape[0], rgb.shape[1])
    for (kernel_bugs, resize), (frame_bugs, (hw, crop)) in itertools.product(
            resize_kernels(pre).items(), frames.items()):
        out = resize(rgb, hw)
        yield kernel_bugs + frame_bugs, v2.functional.center_crop(out, [crop, crop]) if crop else out
    if exif_orientation(data) not in (0, 1):
        raw = cv2.imdecode(np.frombuffer(data, np.uint8),
                           cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if raw is not None:
            yield ("exif",), fast_transform(pre)(hwc_to_chw(bgr_to_rgb(raw)))


# (bugs, bgr, scale 255, how many times normalized), simplest first
VALUE_BUGS = [
    (tuple(b for b, on in (("bgr", bgr), ("0-255", s255),
                           ("no-normalize", n == 0), ("double-normalize", n == 2)) if on),
     bgr, s255, n)
    for bgr, s255, n in itertools.product((False, True), (False, True), (1, 0, 2))
]


def value_bug_affine(pre: Preprocess, s255: bool, norms: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (a, b): the planted chain maps a 0-1 pixel p to a * p + b.

    An app normalizes with the contract's statistics in the contract's channel order, also
    when its channels are swapped; each Normalize maps v -> (v - mean) / std.
    """
    mean, std = np.asarray(pre.mean, np.float64), np.asarray(pre.std, np.float64)
    a, b = np.full(3, 255.0 if s255 else 1.0), np.zeros(3)
    for _ in range(norms):
        a, b = a / std, (b - mean) / std
    return a, b


@dataclass(frozen=True)
class Fit:
    bugs: tuple[str, ...]  # () = the contract itself
    rms: float  # root mean square of (user - hypothesis), in the user's tensor units
    levels: float  # the same in grey levels (0-255 steps) of the hypothesis
    unit: float  # one grey level in the hypothesis' units (mean over channels)


def fit_hypotheses(user: torch.Tensor, sources: list[tuple[tuple[str, ...], torch.Tensor]],
                   pre: Preprocess) -> list[Fit]:
    """Score every (layout x resize/crop x values) hypothesis against the user's tensor.

    ``sources`` are (bugs, (3, h, w) float 0-1 RGB): the checkpoint pipeline's own output
    (de-normalized) and the resize/crop alternatives. Each value hypothesis is a per-channel
    affine map of a source (after an optional channel swap), so its squared error follows in
    closed form from the moments of the user's tensor and the source: no tensor is built
    per hypothesis.
    """
    fits = []
    for layout_bugs, chw in (((), user), (("hwc",), user.permute(2, 0, 1))):
        if chw.shape[0] != 3:
            continue
        u = chw.double().reshape(3, -1).numpy()  # (3, N), read as the model would
        u1, u2 = u.sum(1), (u * u).sum(1)  # (3,)
        for geo_bugs, src in sources:
            if src.shape != chw.shape:
                continue
            s = src.double().reshape(3, -1).numpy()
            n = s.shape[1]
            s1, s2, x = s.sum(1), (s * s).sum(1), u @ s.T  # (3,), (3,), (3 user, 3 source)
            for value_bugs, bgr, s255, norms in VALUE_BUGS:
                a, b = value_bug_affine(pre, s255, norms)
                p = [2, 1, 0] if bgr else [0, 1, 2]  # source channel behind each user channel
                sse = (u2 + a * a * s2[p] + b * b * n - 2 * a * x[[0, 1, 2], p] - 2 * b * u1
                       + 2 * a * b * s1[p]).clip(min=0)  # (3,) per user channel
                level = a / 255  # one grey level in this hypothesis' units, per channel
                fits.append(Fit(value_bugs + layout_bugs + geo_bugs,
                                float(np.sqrt(sse.sum() / (3 * n))),
                                float(np.sqrt((sse / level**2).sum() / (3 * n))),
                                float(level.mean())))
    return fits


def choose(fits: list[Fit]) -> Fit | None:
    """The simplest hypothesis within ``TIE_LEVELS`` grey levels of the best fit."""
    if not fits:
        return None
    best = min(fits, key=lambda f: f.rms)
    close = [f for f in fits if f.rms <= best.rms + TIE_LEVELS * best.unit]
    return min(close, key=lambda f: len(f.bugs))  # min keeps the first (simplest) of equals


def bug_sizes(fits: list[Fit], chosen: Fit) -> dict[str, float | None]:
    """How much each bug of ``chosen`` matters: the RMS error, in ``chosen``'s grey levels,
    of the same hypothesis without that bug (None: without it the shape does not fit)."""
    rms_by_bugs: dict[frozenset, float] = {}
    for f in fits:
        key = frozenset(f.bugs)
        rms_by_bugs[key] = min(f.rms, rms_by_bugs.get(key, f.rms))
    sizes: dict[str, float | None] = {}
    for bug in chosen.bugs:
        rms = rms_by_bugs.get(frozenset(chosen.bugs) - {bug})
        sizes[bug] = None if rms is None else rms / chosen.unit
    return sizes


# -- the check -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ImageSkew:
    """One image: the user's tensor against the checkpoint's pipeline."""

    path: str
    user_shape: tuple[int, ...]  # after dropping a leading batch dimension of 1
    user_dtype: str
    max_abs: float | None  # |user - reference|, user's units; None when the shapes differ
    mean_abs: float | None
    bugs: tuple[str, ...]  # the hypothesis that reproduces the user's tensor; () = none needed
    sizes: dict[str, float | None]  # per bug: RMS grey levels the hypothesis is off without it
    residual: float | None  # RMS of (user - that hypothesis), grey levels
    reference_class: str
    user_class: str | None  # None: the model refused the user's tensor
    note: str = ""

    @property
    def matches(self) -> bool:
        """No bug, or only bugs too small to matter (under ``MATCH_LEVELS`` on their own)."""
        return all((self.sizes.get(b) or float("inf")) < MATCH_LEVELS for b in self.bugs)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SkewReport:
    """The skew check over several images."""

    function: str  # the --preprocess spec
    checkpoint: str
    preprocess: Preprocess
    images: list[ImageSkew]

    @property
    def agreement(self) -> float:
        """Share of images whose predicted class is the same with the user's tensor."""
        same = sum(i.user_class == i.reference_class for i in self.images)
        return same / len(self.images) if self.images else 1.0

    @property
    def skew(self) -> bool:
        return self.agreement < 1.0 or any(not i.matches for i in self.images)

    def diagnoses(self) -> list[tuple[tuple[str, ...], int]]:
        """(bugs, number of images) for each diagnosis found, most frequent first."""
        return Counter(i.bugs for i in self.images if i.bugs).most_common()

    def typical_size(self, bugs: tuple[str, ...], bug: str) -> float | None:
        """Median size of ``bug`` (grey levels RMS) over the images diagnosed with ``bugs``."""
        values = [i.sizes.get(bug) for i in self.images if i.bugs == bugs]
        values = [v for v in values if v is not None]
        return float(np.median(values)) if values else None

    def to_dict(self) -> dict:
        return {"format": "pipetrace-skew", "version": 1,  # 1: first format
                "function": self.function, "checkpoint": self.checkpoint,
                "preprocess": self.preprocess.to_dict(), "skew": self.skew,
                "agreement": self.agreement,
                "diagnoses": [{"bugs": list(b), "images": n,
                               "sizes": [self.typical_size(b, k) for k in b],
                               "titles": [bug_text(k, self.preprocess)[0] for k in b],
                               "fixes": [bug_text(k, self.preprocess)[1] for k in b]}
                              for b, n in self.diagnoses()],
                "images": [i.to_dict() for i in self.images]}


def bug_text(key: str, pre: Preprocess) -> tuple[str, str]:
    """(title, fix) of one bug, with the contract's numbers filled in."""
    title, fix = BUGS[key]
    other = {"interpolation": _other_interpolation(pre),
             "crop": str(_other_resize(pre))}.get(key, "")
    values = dict(size=pre.size, resize=pre.resize_size, interp=pre.interpolation, other=other,
                  mean=tuple(round(m, 4) for m in pre.mean),
                  std=tuple(round(s, 4) for s in pre.std), contract=pre.to_dict())
    return title.format(**values), fix.format(**values)


@torch.no_grad()
def _predict(lm: LoadedModel, x: torch.Tensor) -> tuple[str | None, str]:
    """Class the model gives a (3, H, W) or (H, W, 3) tensor, as an app would call it."""
    try:
        logits = lm.model(x.float().unsqueeze(0))  # cast to float32, as any working app must
    except RuntimeError as exc:
        return None, f"the model refuses this tensor: {str(exc).splitlines()[0][:120]}"
    return lm.classes[int(logits.argmax(1))], ""


def check_image(lm: LoadedModel, fn: Callable[[str], object], path: str, name: str = "function"
                ) -> ImageSkew:
    """Run the user's function and the checkpoint's pipeline on one file, and diagnose."""
    pre = lm.preprocess
    try:
        out = fn(path)
    except Exception as exc:  # the user's code can raise anything; report it as bad input
        raise SkewInputError(f"{name} raised on {path!r}: {type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    user = as_tensor(out, name)
    ref = lm.input_for(path)[0]  # (3, S, S) float32, normalized
    mean = torch.tensor(pre.mean).view(3, 1, 1)
    std = torch.tensor(pre.std).view(3, 1, 1)
    data, rgb = decoded_rgb(path)  # the pipeline's load + convert stages at full size, as apps do
    sources = [((), ref * std + mean)]  # the pipeline's own output, back to 0-1 RGB
    sources += [(bugs, g.float() / 255) for bugs, g in geometries(rgb, data, pre)]
    fits = fit_hypotheses(user, sources, pre)
    best = choose(fits)
    note, sizes = "", {}
    if best is None:
        bugs, residual = ("unexplained",), None
        note = f"no hypothesis has the shape {tuple(user.shape)}"
    elif best.levels > MATCH_LEVELS:
        bugs, residual = ("unexplained",), best.levels
        note = (f"closest: {', '.join(best.bugs) or 'the contract'} "
                f"({best.levels:.1f} grey levels off)")
    else:
        bugs, residual, sizes = best.bugs, best.levels, bug_sizes(fits, best)
    same_shape = tuple(user.shape) == tuple(ref.shape)
    diff = (user.float() - ref).abs() if same_shape else None
    ref_class, _ = _predict(lm, ref)
    user_class, refused = _predict(lm, user)
    return ImageSkew(path, tuple(user.shape), str(user.dtype).removeprefix("torch."),
                     float(diff.max()) if diff is not None else None,
                     float(diff.mean()) if diff is not None else None,
                     bugs, sizes, residual, ref_class, user_class,
                     "; ".join(n for n in (note, refused) if n))


def check_skew(lm: LoadedModel, fn: Callable[[str], object], paths: list[str], *,
               name: str = "function") -> SkewReport:
    """The skew check of ``fn`` (file path -> model input) over ``paths``."""
    if not paths:
        raise SkewInputError("no images to compare on: give image files or folders")
    return SkewReport(name, lm.source, lm.preprocess,
                      [check_image(lm, fn, os.fspath(p), name) for p in paths])
