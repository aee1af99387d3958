"""The data pipeline, declared once: the stages that take one file to the model's input.

Each loader path is one :class:`Pipeline`, its stages in the order they run:

* ``fast``: read the file -> decode (OpenCV, BGR) -> resize/crop the uint8 BGR array
  (torchvision) -> BGR to RGB straight into the image's slot of the batch (OpenCV); then,
  where the model is: to the device -> convert and normalize the whole batch at once ->
  batch augmentation (flips, translations);
* ``classic``: the seed's chain, literally: read -> decode -> BGR to RGB (OpenCV) -> PIL
  image -> each torchvision v2 transform in turn -> copied into the batch; then to the device;
* :func:`seed_pipeline`: the classic chain with one of the classic bugs planted in it.

The loader (:mod:`pipetrace.data`) runs these stage objects; the tracer
(:mod:`pipetrace.trace`) wraps the very same objects to time each call and summarize what
went in and what came out; :mod:`pipetrace.skew` decodes and converts with them. Nothing else
restates the pipeline, so the trace cannot drift from what runs.

Three kinds of stage, by where they run and how they are called:

* per image (``Pipeline.per_image``): ``fn(x) -> y``, in a worker or the main process;
* the placing stage (``Pipeline.place``): ``fn(x, out)`` writes one image into its slot of
  the batch buffer and returns what the slot now holds (the fast path converts BGR to RGB
  on the way: the small resized array, not the full decode);
* per batch (:func:`batch_stages`): ``fn(x, generator) -> y`` on the whole batch, on the
  model's device.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

import cv2
import numpy as np
import torch
from torchvision.transforms import v2

from .images import (
    NO_SUCH_FILE,
    ImageLoadError,
    LoadLimits,
    check_header,
    decode_bgr,
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

PATHS = ("fast", "classic")
PLANTS = ("bgr", "no-normalize", "double-normalize", "hwc", "0-255", "uint8")
SEED_STAGES = {1: "load", 2: "convert", 3: "transform", 4: "batch", 5: "train"}


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline: what does the work, what it takes and what it gives."""

    name: str  # a short noun phrase, e.g. "Decode", "Resize + crop"
    seed: int  # the seed's stage it belongs to (SEED_STAGES): 1 load ... 4 batch
    library: str  # who does the work: "Python", "OpenCV", "PIL", "torchvision", "PyTorch"
    fn: Callable  # the work itself (see the module docstring for the three call styles)
    takes: str  # what it expects, e.g. "(H, W, 3) uint8 BGR"
    gives: str  # what it returns
    swaps_channels: bool = False  # reverses the colour order (BGR <-> RGB)
    opaque: bool = False  # what it does to the colour order is unknown (a user's callable)

    @property
    def operation(self) -> str:
        """The call as the object describes itself (torchvision transforms: their repr)."""
        return describe(self.fn)


def describe(fn: Callable) -> str:
    """A callable's own description: ``repr`` for objects, the qualified name for functions."""
    if isinstance(fn, functools.partial):
        args = ", ".join([*map(repr, fn.args), *(f"{k}={v!r}" for k, v in fn.keywords.items())])
        return f"{describe(fn.func)}({args})"
    if getattr(fn, "__module__", None) == "cv2":
        return f"cv2.{fn.__name__}"
    if isinstance(fn, types.FunctionType | types.BuiltinFunctionType):
        return f"{fn.__module__}.{fn.__qualname__}"
    if type(fn).__repr__ is not object.__repr__:
        return repr(fn)
    return getattr(fn, "__qualname__", type(fn).__name__)


@dataclass(frozen=True)
class Pipeline:
    """One loader path, as the loader runs it: per-image stages, then the placing stage."""

    path: str  # "fast", "classic", or "seed+<plant>" for a planted bug
    per_image: tuple[Stage, ...]  # file -> one image, in order
    place: Stage  # one image -> its slot of the batch buffer

    @property
    def stages(self) -> tuple[Stage, ...]:
        return (*self.per_image, self.place)


# -- the stages' callables: small objects that describe themselves ---------------------------------

class FileRef(NamedTuple):
    """What stage 1 starts from: a file and what the dataset knew of it when it was built."""

    path: str
    stamp: tuple[int, int] | None  # (size, mtime_ns) when scanned; None: not checked
    header: tuple[str, int, int] | None  # (format, width, height) already checked, or None


class Encoded(NamedTuple):
    """A file's bytes, on their way to the decoder."""

    data: bytes
    path: str
    header: tuple[str, int, int] | None


class ReadFile:
    """FileRef -> Encoded: one read of the whole file; refused if it changed since the scan."""

    def __call__(self, ref: FileRef) -> Encoded:
        try:
            data, stamp = read_file(ref.path)
        except ImageLoadError as exc:  # a file seen when the dataset was built is gone now
            if exc.reason == NO_SUCH_FILE and ref.stamp is not None:
                raise ImageLoadError(ref.path, "file disappeared since the dataset was "
                                     "scanned") from None
            raise
        if ref.stamp is not None and stamp != ref.stamp:
            raise ImageLoadError(ref.path, "file changed since the dataset was scanned (size "
                                 "or modification time differ)")
        return Encoded(data, ref.path, ref.header)

    def __repr__(self) -> str:
        return "os.read (whole file)"


class Decode:
    """Encoded -> (H, W, 3) uint8 BGR with ``cv2.imdecode``; DCT-reduced when ``min_side``."""

    def __init__(self, limits: LoadLimits, min_side: int | None = None):
        self.limits = limits
        self.min_side = min_side

    def __call__(self, enc: Encoded) -> np.ndarray:
        return decode_bgr(enc.data, enc.path, limits=self.limits, min_side=self.min_side,
                          header=enc.header)

    def __repr__(self) -> str:
        if self.min_side:  # which flag a file gets depends on its size: see the output shape
            return f"cv2.imdecode(IMREAD_COLOR; JPEG DCT-scaled to short side >= {2 * self.min_side})"
        return "cv2.imdecode(IMREAD_COLOR)"


class ResizeCrop:
    """(H, W, 3) uint8 array -> (size, size, 3) uint8 array with torchvision's uint8 kernels.

    Works per channel, so it runs on OpenCV's BGR array as well as on RGB; an image that is
    already size x size (and not cropped) passes through untouched.
    """

    def __init__(self, pre: Preprocess, transform: v2.Compose):
        self.pre = pre
        self.transform = transform
        # Resize + CenterCrop run as torchvision's kernels (v2.functional) on the plain
        # tensor: the same bytes without the transform objects' dispatch, which cost about
        # as much as the crop on a photo (random crops keep the objects: they draw).
        steps = transform.transforms
        self.kernels = (steps[0], steps[1]) if (
            len(steps) == 2 and type(steps[0]) is v2.Resize
            and type(steps[1]) is v2.CenterCrop) else None

    def __call__(self, hwc: np.ndarray) -> np.ndarray:
        if is_final_size(hwc.shape[0], hwc.shape[1], self.pre):
            return hwc
        return self.chw(hwc_to_chw(hwc)).permute(1, 2, 0).numpy()

    def chw(self, chw: torch.Tensor) -> torch.Tensor:
        """The same on a (3, H, W) uint8 tensor, on whatever device it is."""
        if is_final_size(chw.shape[-2], chw.shape[-1], self.pre):
            return chw
        if self.kernels is None:
            return self.transform(chw)
        resize, crop = self.kernels
        chw = v2.functional.resize_image(chw, resize.size, interpolation=resize.interpolation,
                                         antialias=resize.antialias)
        return v2.functional.center_crop_image(chw, crop.size)

    def __repr__(self) -> str:
        steps = " -> ".join(map(repr, self.transform.transforms))
        return f"{steps} on the uint8 array (none when already {self.pre.size} x {self.pre.size})"


class BGRToRGB:
    """(H, W, 3) uint8 BGR -> a new RGB array (or into ``out``) with ``cv2.cvtColor``."""

    def __call__(self, bgr: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=out)

    def __repr__(self) -> str:
        return "cv2.cvtColor(COLOR_BGR2RGB)"


class CopyInto:
    """Copy one image into its batch slot (what ``torch.stack`` does, one image at a time)."""

    def __call__(self, x, out):
        if isinstance(out, np.ndarray):
            np.copyto(out, np.asarray(x))
            return out
        return out.copy_(torch.as_tensor(x))

    def __repr__(self) -> str:
        return "copy into the batch (torch.stack)"


class ToPIL:
    def __call__(self, rgb: np.ndarray):
        return rgb_to_pil(rgb)

    def __repr__(self) -> str:
        return "PIL.Image.fromarray"


class Identity:
    """A stage that does nothing (a planted bug: the conversion it replaces is skipped)."""

    def __init__(self, what: str):
        self.what = what

    def __call__(self, x):
        return x

    def __repr__(self) -> str:
        return f"nothing ({self.what} skipped)"


class Permute:
    def __init__(self, *dims: int):
        self.dims = dims

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)

    def __repr__(self) -> str:
        return f"Tensor.permute{self.dims}"


# -- the declared paths ----------------------------------------------------------------------------

READ = Stage("Read file", 1, "Python", ReadFile(), "file path", "bytes")


def _load_stages(limits: LoadLimits, min_side: int | None = None) -> list[Stage]:
    return [READ, Stage("Decode", 1, "OpenCV", Decode(limits, min_side), "bytes",
                        "(H, W, 3) uint8 BGR")]


def fast_pipeline(pre: Preprocess, *, train: bool = False, augment: str = "none",
                  limits: LoadLimits = LoadLimits()) -> Pipeline:
    """The fast path: uint8 all the way to the batch; BGR converted after the resize.

    Resizing works per channel, so resizing BGR and then swapping the channels gives the
    same bytes as the seed's order, on size x size pixels instead of the full decode.
    Flips and padded crops run later, on the whole batch (:func:`batch_stages`).
    """
    return Pipeline("fast", (
        *_load_stages(limits, min_side=pre.resize_size),
        Stage("Resize + crop", 3, "torchvision",
              ResizeCrop(pre, fast_transform(pre, train=train, augment=augment)),
              "(H, W, 3) uint8", "(size, size, 3) uint8"),
    ), Stage("BGR to RGB, into the batch", 2, "OpenCV", BGRToRGB(), "(size, size, 3) uint8 BGR",
             "its slot of the (N, size, size, 3) uint8 RGB batch", swaps_channels=True))


def device_decode_pipeline(pre: Preprocess, *, limits: LoadLimits = LoadLimits()) -> Pipeline:
    """The fast path with the JPEG decode moved to where the model is: a worker reads each
    file and checks its header; the bytes go into the batch, and the batch stages decode
    them all at once (``torchvision.io.decode_jpeg``, nvJPEG on a GPU), resize and crop
    there (:func:`batch_stages` with ``encoded=True``). JPEG files only: another format is
    skipped as unreadable, with that reason. Training augmentation is the batch-level
    kind (flips, translations), as on the fast path."""
    return Pipeline("fast+device-decode", (
        READ,
        Stage("Check JPEG header", 1, "pipetrace", JpegBytes(limits), "bytes", "JPEG bytes"),
    ), Stage("Bytes into the batch", 4, "PyTorch", IntoRow(), "JPEG bytes",
             "its row of the (N, 8 + max L) uint8 batch of encoded files"))


class JpegBytes:
    """Encoded -> the same bytes, their header checked and JPEG (nothing decoded)."""

    def __init__(self, limits: LoadLimits):
        self.limits = limits

    def __call__(self, enc: Encoded) -> Encoded:
        header = enc.header or check_header(enc.data, enc.path, self.limits)
        if header[0] != "jpeg":
            raise ImageLoadError(enc.path, f"a {header[0].upper()} file: decoding on the device "
                                 "reads JPEG files only (without --decode-on-device every "
                                 "format is read)")
        return enc._replace(header=header)

    def __repr__(self) -> str:
        return "images.check_header (JPEG only; limits, end marker)"


class IntoRow:
    """One file's bytes into its row of an :class:`EncodedRows` batch buffer."""

    def __call__(self, enc: Encoded, out: _Row) -> Encoded:
        out.put(np.frombuffer(enc.data, np.uint8))
        return enc

    def __repr__(self) -> str:
        return "bytes into the batch (length first, zero-padded rows)"


class _Row(NamedTuple):
    rows: EncodedRows
    i: int

    def put(self, x: np.ndarray) -> None:
        self.rows.items[self.i] = x


class EncodedRows:
    """A batch buffer of encoded files of different lengths; as a tensor (``pack``) each row
    is the file's length (8 bytes, little-endian int64), its bytes, then zeros."""

    def __init__(self, n: int):
        self.items: list[np.ndarray | None] = [None] * n

    def __getitem__(self, i):
        if isinstance(i, slice):
            out = EncodedRows(0)
            out.items = self.items[i]
            return out
        return _Row(self, i)

    def pack(self) -> torch.Tensor:
        width = 8 + max((len(x) for x in self.items), default=0)
        rows = np.zeros((len(self.items), width), np.uint8)
        for row, x in zip(rows, self.items, strict=True):
            row[:8] = np.frombuffer(np.int64(len(x)).tobytes(), np.uint8)
            row[8:8 + len(x)] = x
        return torch.from_numpy(rows)


def unpack_rows(rows: torch.Tensor) -> list[torch.Tensor]:
    """(N, 8 + L) uint8 rows of :meth:`EncodedRows.pack` -> N 1-D uint8 tensors (views)."""
    lengths = rows[:, :8].contiguous().view(torch.int64).flatten().tolist()
    return [rows[i, 8:8 + n] for i, n in enumerate(lengths)]


# Transforms of these libraries keep the colour order, except the ones named here.
ORDER_KEEPING_LIBRARIES = ("torchvision", "albumentations", "pipetrace", "PIL")
ORDER_CHANGING = ("ChannelShuffle", "RandomChannelPermutation", "ToGray", "Grayscale",
                  "RandomGrayscale", "ToRGB", "ToSepia", "FromFloat", "Lambda")


def transform_stages(chain: Sequence) -> list[Stage]:
    """One stage per transform object, in order, named by its class; what a transform of
    another library (or a plain function) does to the colour order is not assumed."""
    return [Stage(getattr(t, "__name__", type(t).__name__), 3, library_of(t), t,
                  "PIL image or tensor", "PIL image or tensor", opaque=not keeps_order(t))
            for t in chain]


def keeps_order(t) -> bool:
    """True for a transform known to leave the colour channels' order alone."""
    return (library_of(t) in ORDER_KEEPING_LIBRARIES
            and not isinstance(t, types.FunctionType | types.MethodType)
            and type(t).__name__ not in ORDER_CHANGING)


def library_of(obj) -> str:
    """The library an object comes from, by its class's top-level module."""
    owner = obj if isinstance(obj, types.FunctionType | types.BuiltinFunctionType) else type(obj)
    mod = (owner.__module__ or "").split(".")[0]
    return {"torchvision": "torchvision", "torch": "PyTorch", "PIL": "PIL", "cv2": "OpenCV",
            "albumentations": "albumentations", "pipetrace": "pipetrace"}.get(mod, mod)


def classic_pipeline(pre: Preprocess, *, train: bool = False, augment: str = "none",
                     crop_pad: int | None = None, limits: LoadLimits = LoadLimits(),
                     chain: Sequence | None = None, path: str = "classic") -> Pipeline:
    """The seed's chain: OpenCV decode -> BGR to RGB -> PIL -> each torchvision transform."""
    if chain is None:
        chain = classic_transform(pre, train=train, augment=augment, crop_pad=crop_pad).transforms
    return Pipeline(path, (
        *_load_stages(limits),
        Stage("BGR to RGB", 2, "OpenCV", BGRToRGB(), "(H, W, 3) uint8 BGR",
              "(H, W, 3) uint8 RGB", swaps_channels=True),
        Stage("To PIL image", 2, "PIL", ToPIL(), "(H, W, 3) uint8 RGB", "PIL image, mode RGB"),
        *transform_stages(chain),
    ), Stage("Into the batch", 4, "PyTorch", CopyInto(), "(3, size, size) float32",
             "its slot of the (N, 3, size, size) float32 batch"))


def seed_pipeline(pre: Preprocess, plant: str | None = None, *,
                  limits: LoadLimits = LoadLimits()) -> Pipeline:
    """The seed's eval chain, optionally with a classic bug planted in it (see ``PLANTS``)."""
    if plant is None:
        return classic_pipeline(pre, limits=limits, path="seed")
    if plant not in PLANTS:
        raise ValueError(f"unknown bug to plant {plant!r}; choose from {', '.join(PLANTS)}")
    chain = list(classic_transform(pre).transforms)  # geometry, ToImage, ToDtype, Normalize
    if plant == "no-normalize":
        chain = chain[:-1]
    elif plant == "double-normalize":
        chain = [*chain, chain[-1]]
    elif plant == "0-255":
        chain = [*chain[:-2], v2.ToDtype(torch.float32, scale=False)]
    elif plant == "uint8":
        chain = chain[:-2]
    elif plant == "hwc":
        chain = [*chain, Permute(1, 2, 0)]
    pipe = classic_pipeline(pre, limits=limits, chain=chain, path=f"seed+{plant}")
    if plant == "bgr":  # the conversion forgotten: OpenCV's BGR array goes to PIL as it is
        stages = tuple(replace(s, name="BGR to RGB (skipped)", fn=Identity("cv2.cvtColor"),
                               swaps_channels=False) if isinstance(s.fn, BGRToRGB) else s
                       for s in pipe.per_image)
        pipe = replace(pipe, per_image=stages)
    return pipe


def image_pipeline(pre: Preprocess, path: str = "fast", *, train: bool = False,
                   augment: str = "none", crop_pad: int | None = None,
                   limits: LoadLimits = LoadLimits()) -> Pipeline:
    """The pipeline of loader path ``path`` ("fast" or "classic")."""
    if path == "fast":
        return fast_pipeline(pre, train=train, augment=augment, limits=limits)
    if path == "classic":
        return classic_pipeline(pre, train=train, augment=augment, crop_pad=crop_pad,
                                limits=limits)
    raise ValueError(f"unknown loader path {path!r}; choose from {', '.join(PATHS)}")


# -- running it ------------------------------------------------------------------------------------

def run_image(stages: Sequence[Stage], x, observer=None):
    """Run per-image stages on ``x``; ``observer.call(stage, x)`` wraps each when given."""
    if observer is None:
        for stage in stages:
            x = stage.fn(x)
        return x
    for stage in stages:
        x = observer.call(stage, x)
    return x


def new_buffer(n: int, like):
    """An empty batch buffer for ``n`` items shaped and typed like ``like`` (NumPy or torch);
    for encoded files an :class:`EncodedRows`."""
    if isinstance(like, Encoded):
        return EncodedRows(n)
    if isinstance(like, np.ndarray):
        return np.empty((n, *like.shape), like.dtype)
    like = torch.as_tensor(like)
    return torch.empty((n, *like.shape), dtype=like.dtype)


def batch_tensor(buf) -> torch.Tensor:
    """The batch buffer as a tensor: an NHWC uint8 array becomes an (N, 3, H, W) view;
    encoded files become (N, 8 + max length) uint8 rows."""
    if isinstance(buf, EncodedRows):
        return buf.pack()
    if isinstance(buf, np.ndarray):
        t = torch.from_numpy(buf)
        return t.permute(0, 3, 1, 2) if t.ndim == 4 and t.shape[-1] in (1, 3) else t
    return buf


class ToDevice:
    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)

    def __call__(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        return x.to(self.device, non_blocking=True)

    def __repr__(self) -> str:
        return f"Tensor.to({str(self.device)!r}, non_blocking=True)"


class NormalizeBatch:
    """(N, 3, H, W) uint8 -> float32 normalized: ToDtype(scale=True) + Normalize, fused."""

    def __init__(self, pre: Preprocess, channels_last: bool):
        self.mean, self.std, self.channels_last = pre.mean, pre.std, channels_last

    def __call__(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        return normalize_batch(x, self.mean, self.std, channels_last=self.channels_last)

    def __repr__(self) -> str:
        m = ", ".join(f"{v:.3f}" for v in self.mean)
        s = ", ".join(f"{v:.3f}" for v in self.std)
        return (f"(x / 255 - mean) / std in one multiply-add, mean ({m}), std ({s})"
                + (", channels_last" if self.channels_last else ""))


class AugmentBatch:
    def __init__(self, augment: BatchAugment):
        self.augment = augment

    def __call__(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        return self.augment(x, generator)

    def __repr__(self) -> str:
        pad = f", translate up to {self.augment.pad} px (reflect)" if self.augment.pad else ""
        return f"random horizontal flip of half the batch{pad}"


class DecodeOnDevice:
    """(N, 8 + L) uint8 rows of JPEG files -> (N, 3, size, size) uint8 RGB on ``device``:
    ``torchvision.io.decode_jpeg`` on the whole batch (nvJPEG on a GPU; EXIF orientation
    applied, as OpenCV does), then the fast path's resize and centre crop there."""

    def __init__(self, pre: Preprocess, device: torch.device | str):
        self.device = torch.device(device)
        self.resize_crop = ResizeCrop(pre, fast_transform(pre))

    def __call__(self, rows: torch.Tensor, generator=None) -> torch.Tensor:
        from torchvision.io import ImageReadMode, decode_jpeg

        images = decode_jpeg(unpack_rows(rows), mode=ImageReadMode.RGB, device=self.device,
                             apply_exif_orientation=True)
        return torch.stack([self.resize_crop.chw(img) for img in images])

    def __repr__(self) -> str:
        return (f"torchvision.io.decode_jpeg(batch, device={str(self.device)!r}) -> "
                f"{self.resize_crop!r}")


class ToFloat:
    def __init__(self, channels_last: bool):
        self.channels_last = channels_last

    def __call__(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        x = x.float()
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def __repr__(self) -> str:
        return "Tensor.float()" + (" + channels_last" if self.channels_last else "")


@functools.lru_cache(maxsize=64)
def batch_stages(pre: Preprocess, *, uint8: bool, device: torch.device | str = "cpu",
                 channels_last: bool = False, augment: BatchAugment | None = None,
                 encoded: bool = False) -> tuple[Stage, ...]:
    """The stages that run on a whole batch where the model is (uint8 batch: fast path;
    ``encoded``: rows of JPEG files, :func:`device_decode_pipeline`).

    Built once per contract, device and options (this is called for every batch)."""
    if encoded:
        stages = [Stage("Decode + resize on the device", 1, "torchvision",
                        DecodeOnDevice(pre, device), "(N, 8 + L) uint8 JPEG files",
                        "(N, 3, size, size) uint8 RGB on the model's device")]
    else:
        stages = [Stage("To device", 4, "PyTorch", ToDevice(device), "(N, 3, H, W) batch",
                        "the same batch on the model's device")]
    if uint8:  # cross as uint8 (4x fewer bytes), then convert and normalize there
        stages.append(Stage("Normalize batch", 3, "PyTorch", NormalizeBatch(pre, channels_last),
                            "(N, 3, H, W) uint8 0-255", "(N, 3, H, W) float32, normalized"))
        if augment is not None and augment.augment != "none":
            stages.append(Stage("Augment batch", 3, "PyTorch", AugmentBatch(augment),
                                "(N, 3, H, W) float32", "(N, 3, H, W) float32, augmented"))
    else:
        stages.append(Stage("To float", 4, "PyTorch", ToFloat(channels_last),
                            "(N, 3, H, W) float32", "(N, 3, H, W) float32"))
    return tuple(stages)


def run_batch(stages: Sequence[Stage], x: torch.Tensor, generator=None, observer=None
              ) -> torch.Tensor:
    """Run batch stages on ``x``; ``observer.call(stage, x, generator)`` wraps each."""
    if observer is None:
        for stage in stages:
            x = stage.fn(x, generator)
        return x
    for stage in stages:
        x = observer.call(stage, x, generator)
    return x


def decoded_rgb(path: str, limits: LoadLimits = LoadLimits()) -> tuple[bytes, np.ndarray]:
    """The classic pipeline's load and conversion stages on one file, at full size:
    (the file's bytes, (H, W, 3) uint8 RGB) — what an application decoding it would get."""
    pipe = classic_pipeline(Preprocess(), limits=limits)
    enc = pipe.per_image[0].fn(FileRef(path, None, None))
    upto = next(i for i, s in enumerate(pipe.per_image) if s.swaps_channels)
    return enc.data, run_image(pipe.per_image[1:upto + 1], enc)
