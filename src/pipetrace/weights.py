"""A run's initial weights: pretrained by name (torchvision, timm) or from a file.

``fetch_weights(model, spec)`` turns ``--weights`` into tensors and the preprocessing
contract they were trained with:

* a torchvision weights name for a torchvision model (``DEFAULT``, ``IMAGENET1K_V1``,
  ``ResNet50_Weights.IMAGENET1K_V2``), downloaded once into the torch hub cache through
  torchvision's weights API; the contract comes from ``weights.transforms()``;
* ``DEFAULT`` for a ``timm/<name>`` model: timm's own pretrained weights (Hugging Face
  cache), the contract from its ``pretrained_cfg`` (``resolve_model_data_config``);
* a file: a state dict (bare, or under ``state_dict`` / ``model``) or a pipetrace checkpoint
  (whose contract comes with it). A bare file named as torchvision names its download
  (``resnet18-f37072fd.pth``) is recognised, and gets those weights' contract.

``load_weights(model, pretrained, head)`` puts them into a model built for this dataset's
classes: the classifier head (the tensors whose shape depends on the class count) is left
new, every other tensor must load, or the run is refused in one line.
"""

from __future__ import annotations

import os
import re
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from . import checkpoint as ckpt_io
from .model import TIMM_PREFIX, build_timm_model, import_timm
from .records import WeightsReport
from .transforms import Preprocess, pretrained_contract

# "DEFAULT", "IMAGENET1K_V1", "ResNet18_Weights.IMAGENET1K_V1": a name, not a file
WEIGHTS_NAME = re.compile(r"^(?:[A-Za-z0-9]+_Weights\.)?[A-Z][A-Z0-9_]*$")
COUNTER = "num_batches_tracked"  # batch-norm step counters: PyTorch fills them if absent


class WeightsError(ValueError):
    """Weights that cannot be had or used; ``str()`` is one line saying what to do."""


@dataclass
class Pretrained:
    """Tensors to start from, where they came from, and the contract they expect."""

    state: dict[str, torch.Tensor]
    source: str  # "torchvision ResNet18_Weights.IMAGENET1K_V1", "timm ...", "file", "pipetrace checkpoint"
    file: str  # the file read (a download: its place in the cache)
    preprocess: Preprocess | None  # the contract the weights were trained with (None: unknown)


def is_weights_name(spec: str) -> bool:
    return bool(WEIGHTS_NAME.match(spec)) and not Path(spec).exists()


def fetch_weights(model: str, spec: str) -> Pretrained:
    """``--weights`` for ``model``: a name to download (or find in the cache) or a file."""
    if is_weights_name(spec):
        if model.startswith(TIMM_PREFIX):
            return _timm_weights(model.removeprefix(TIMM_PREFIX), spec)
        return _torchvision_weights(model, spec)
    return _file_weights(model, spec)


# -- torchvision -----------------------------------------------------------------------------------

def torchvision_weights_enum(model: str):
    """The weights enum of a torchvision model, or None (built-in or unknown models)."""
    import torchvision

    try:
        return torchvision.models.get_model_weights(model)
    except (ValueError, KeyError):
        return None


def hub_cache_file(url: str) -> Path:
    """Where torch.hub keeps (and looks for) the download of ``url``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def torchvision_contract(weights) -> Preprocess:
    """The evaluation preprocessing a torchvision weights entry was trained with."""
    t = weights.transforms()
    return pretrained_contract(t.crop_size[0], t.resize_size[0], mean=t.mean, std=t.std,
                               interpolation=t.interpolation.value)


def _torchvision_weights(model: str, spec: str) -> Pretrained:
    enum = torchvision_weights_enum(model)
    if enum is None:
        raise WeightsError(f"{model!r} has no pretrained weights by name: --weights {spec} needs "
                           "a torchvision classification model (resnet18, efficientnet_b0, ...) "
                           "or timm/<name>; for other models pass a file")
    name = spec.split(".")[-1]
    if spec.count(".") and spec.split(".")[0] != enum.__name__:
        raise WeightsError(f"--weights {spec} is not for {model} (its weights are {enum.__name__})")
    if name not in enum.__members__:
        raise WeightsError(f"unknown weights {spec!r} for {model}: choose "
                           f"{', '.join(enum.__members__)}, or pass a file")
    weights = enum[name]
    cached = hub_cache_file(weights.url)
    try:
        state = weights.get_state_dict(progress=True, check_hash=True, weights_only=True)
    except (urllib.error.URLError, OSError) as exc:  # offline, refused, timed out, disk full
        reason = getattr(exc, "reason", None) or exc
        raise WeightsError(
            f"cannot download {weights!r} ({weights.url}): {str(reason).splitlines()[0]}. "
            f"Offline? Put that file at {cached} (the torch hub cache), or pass --weights FILE "
            "(a state dict or a pipetrace checkpoint)") from None
    except Exception as exc:  # a damaged cached file, a hash that does not match
        raise WeightsError(f"cannot read {weights!r} from {cached}: "
                           f"{str(exc).splitlines()[0][:200]}; delete the file to download it "
                           "again") from None
    return Pretrained(_tensors(state, cached), f"torchvision {weights!r}", str(cached),
                      torchvision_contract(weights))


def recognise_download(model: str, path: Path):
    """The torchvision weights entry whose download has this file's name, or None."""
    enum = torchvision_weights_enum(model)
    for w in (enum or ()):
        if os.path.basename(urlparse(w.url).path) == path.name:
            return w
    return None


# -- timm ------------------------------------------------------------------------------------------

def _timm_weights(name: str, spec: str) -> Pretrained:
    if spec != "DEFAULT":
        raise WeightsError(f"timm models take --weights DEFAULT (the pretrained tag is part of "
                           f"the name, e.g. timm/{name.split('.')[0]}.a1_in1k), or a file")
    import_timm()
    from timm.data import resolve_model_data_config

    try:
        net = build_timm_model(name, pretrained=True)  # with its own head
    except OSError as exc:  # huggingface_hub: offline (LocalEntryNotFoundError), refused
        from huggingface_hub.constants import HF_HUB_CACHE

        raise WeightsError(
            f"cannot download the timm weights of {name!r}: {str(exc).splitlines()[0][:200]} "
            f"Offline? Fetch them where there is a network (timm.create_model({name!r}, "
            f"pretrained=True)) and copy the Hugging Face cache to {HF_HUB_CACHE}, or pass "
            "--weights FILE") from None
    cfg = resolve_model_data_config(net)
    size = cfg["input_size"][-1]
    contract = pretrained_contract(size, int(size / cfg["crop_pct"]), mean=cfg["mean"],
                                   std=cfg["std"], interpolation=cfg["interpolation"])
    hub = net.pretrained_cfg.get("hf_hub_id") or net.pretrained_cfg.get("url") or name
    return Pretrained(_tensors(net.state_dict(), hub), f"timm {name}", str(hub), contract)


# -- files -----------------------------------------------------------------------------------------

def _file_weights(model: str, spec: str) -> Pretrained:
    path = Path(spec)
    data = ckpt_io.read_checkpoint_file(path)
    if isinstance(data, dict) and data.get("format") == ckpt_io.FORMAT:
        ckpt = ckpt_io.checkpoint_from(data, path)
        return Pretrained(_tensors(ckpt["model_state"], path), "pipetrace checkpoint", str(path),
                          Preprocess.from_dict(ckpt["preprocess"]))
    if isinstance(data, dict):
        for key in ("state_dict", "model_state", "model"):  # Lightning, ..., timm/DeiT
            if isinstance(data.get(key), dict):
                data = data[key]
                break
    state = _tensors(data, path)
    known = recognise_download(model, path)
    if known is not None:
        return Pretrained(state, f"torchvision {known!r} (by its file name)", str(path),
                          torchvision_contract(known))
    return Pretrained(state, "file", str(path), None)


def _tensors(data, path) -> dict[str, torch.Tensor]:
    """A state dict of tensors, finite, with a common DDP/compile prefix removed."""
    if not isinstance(data, dict) or not data or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()):
        raise ckpt_io.CheckpointError(path, "holds no state dict (a mapping of names to tensors)")
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in data):
            data = {k.removeprefix(prefix): v for k, v in data.items()}
    ckpt_io.check_finite(data, path)
    return dict(data)


# -- into the model --------------------------------------------------------------------------------

def load_weights(model: nn.Module, pretrained: Pretrained, head: tuple[str, ...],
                 model_name: str) -> WeightsReport:
    """Load ``pretrained`` into ``model``; the head may stay new, nothing else may.

    Refuses in one line (naming the file and how many tensors matched) when a tensor outside
    the head does not load: weights of another architecture would otherwise train on from a
    half-random network without a word.
    """
    own = model.state_dict()
    fits = {k for k, v in pretrained.state.items() if k in own and own[k].shape == v.shape}
    needed = [k for k in own if k not in head and not k.endswith(COUNTER)]
    missing = [k for k in needed if k not in fits]
    if missing:
        example = next((k for k in pretrained.state if k not in fits), None)
        theirs = f", the weights {example!r}" if example else ""
        raise ckpt_io.CheckpointError(
            pretrained.file,
            f"matched {sum(k in fits for k in needed)} of the {len(needed)} tensors {model_name} "
            f"needs outside its classifier head ({len(own)} in all): the weights are for another "
            f"architecture or class layout (the model has {missing[0]!r}{theirs})")
    taken, skipped = ckpt_io.load_state_into(model, pretrained.state, pretrained.file,
                                             strict=False)
    return WeightsReport(
        source=pretrained.source, file=pretrained.file, total=len(own), loaded=tuple(taken),
        head=tuple(head), new=tuple(k for k in own if k not in set(taken)),
        skipped=tuple(skipped), preprocess=pretrained.preprocess)
