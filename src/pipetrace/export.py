"""ONNX export: the model with its preprocessing contract in the metadata, checked on real images.

The file carries what a serving app needs to feed it correctly (``metadata_props``: class
names, the ``Preprocess`` contract, the model config), so the contract travels with the
model outside PyTorch too. After writing, onnxruntime runs the file on real images through
the checkpoint's evaluation pipeline and is compared with PyTorch: the largest logit
difference and whether the top-1 class is the same for every image.

The exporter is torch's TorchScript-based one (``dynamo=False``): the newer torch.export
path needs ``onnxscript``, which is not a dependency, and these CNNs need nothing it adds.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .data import LoaderConfig, make_loader, to_model_input
from .files import write_bytes_atomic
from .predict import LoadedModel

OPSET = 17  # ONNX opset; 17 is read by every onnxruntime since 1.11
OPSETS = range(7, 21)  # what torch's TorchScript exporter (dynamo=False) writes: 7 to 20
FORMAT = "pipetrace-onnx/1"  # 1: classes, preprocess, model_config, input, output
INPUT, OUTPUT = "input", "logits"


def metadata(lm: LoadedModel) -> dict[str, str]:
    """The ``metadata_props`` written into the file: every value is a string (JSON)."""
    pre = lm.preprocess
    return {
        "pipetrace.format": FORMAT,
        "pipetrace.classes": json.dumps(lm.classes),
        "pipetrace.preprocess": json.dumps(pre.to_dict()),
        "pipetrace.model_config": json.dumps(lm.model_config.to_dict()),
        "pipetrace.input": (f"{INPUT}: (N, 3, {pre.size}, {pre.size}) float32, {pre.colour_order}, "
                            f"scaled to 0-1 then normalized with mean {list(pre.mean)} and std "
                            f"{list(pre.std)}; resize short side to {pre.resize_size} "
                            f"({pre.interpolation}, antialiased), centre-crop {pre.size}"),
        "pipetrace.output": f"{OUTPUT}: (N, {len(lm.classes)}) float32, before softmax",
    }


def export_onnx(lm: LoadedModel, path: str | os.PathLike, *, opset: int = OPSET) -> str:
    """Write ``lm``'s model as ONNX with a dynamic batch axis and the contract; return path."""
    import onnx

    if opset not in OPSETS:
        raise ValueError(f"opset {opset} (--opset): torch's exporter writes ONNX opsets "
                         f"{OPSETS.start} to {OPSETS.stop - 1} (default {OPSET})")
    x = torch.zeros(1, 3, lm.preprocess.size, lm.preprocess.size)
    buf = io.BytesIO()
    lm.model.eval()
    with warnings.catch_warnings():
        # torch warns that the TorchScript exporter is the legacy one; we choose it (docstring).
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export",
                                category=DeprecationWarning)
        try:
            torch.onnx.export(lm.model, (x,), buf, dynamo=False, opset_version=opset,
                              input_names=[INPUT], output_names=[OUTPUT],
                              dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
        except torch.onnx.errors.OnnxExporterError as exc:  # e.g. an op the opset lacks
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"cannot export {lm.source} as ONNX opset {opset}: "
                             f"{reason}") from None
    model = onnx.load_from_string(buf.getvalue())
    del model.metadata_props[:]
    for key, value in metadata(lm).items():
        model.metadata_props.add(key=key, value=value)
    model.producer_name = "pipetrace"
    onnx.checker.check_model(model, full_check=True)
    write_bytes_atomic(path, model.SerializeToString())
    return os.fspath(path)


def read_metadata(path: str | os.PathLike) -> dict:
    """The pipetrace metadata of an ONNX file, JSON values decoded."""
    import onnx

    props = {p.key: p.value for p in onnx.load(os.fspath(path), load_external_data=False)
             .metadata_props}
    out: dict = {}
    for key, value in props.items():
        if key.startswith("pipetrace."):
            short = key.removeprefix("pipetrace.")
            try:
                out[short] = json.loads(value) if short in ("classes", "preprocess",
                                                            "model_config") else value
            except ValueError:
                out[short] = value
    return out


@dataclass(frozen=True)
class OnnxCheck:
    """onnxruntime against PyTorch on real images."""

    path: str
    images: int  # images compared
    max_abs_diff: float  # largest |logit difference| over all images and classes
    top1_same: int  # images whose top-1 class is the same in both
    unreadable: list[tuple[str, str]]  # (file, reason) skipped

    @property
    def ok(self) -> bool:
        return self.images > 0 and self.top1_same == self.images

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


@torch.no_grad()
def check_onnx(lm: LoadedModel, path: str | os.PathLike, images: list[str], *,
               batch_size: int = 50) -> OnnxCheck:
    """Run the ONNX file with onnxruntime and the PyTorch model on the same eval batches."""
    import onnxruntime as ort

    session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    loader = make_loader(lm.dataset(images), LoaderConfig(batch_size=batch_size),
                         shuffle=False)
    n = same = 0
    worst = 0.0
    bad: list[tuple[str, str]] = []
    for batch in loader:
        bad += [(images[i], reason) for i, reason in batch.bad]
        if len(batch) == 0:
            continue
        x = to_model_input(batch.images, lm.preprocess).contiguous()  # (N, 3, S, S) float32
        ours = lm.model(x).float().numpy()
        theirs = session.run([OUTPUT], {INPUT: x.numpy()})[0]
        worst = max(worst, float(np.abs(ours - theirs).max()))
        same += int((ours.argmax(1) == theirs.argmax(1)).sum())
        n += len(batch)
    return OnnxCheck(os.fspath(path), n, worst, same, bad)
