"""The training loop's parts: the device and precision, one step, one epoch, the evaluation
with its test-time views, and the model, optimizer and loaders that :func:`pipetrace.train.fit`
puts together (the learning-rate range test, :mod:`pipetrace.lr_find`, runs the same steps).
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from . import checkpoint as ckpt_io
from .config import TrainConfig
from .data import Batch, LoaderConfig, make_loader, to_model_input
from .distributed import (
    DistInfo,
    RankRecord,
    ShardSampler,
    all_reduce_sum,
    check_same_everywhere,
    gather_to_main,
    run_on_main,
)
from .errors import Predictions
from .finetune import FreezePlan
from .model import ModelConfig, build_model, head_keys
from .optim import Lookahead
from .prepare import (
    DataSetup,
    dataset_digest,
    first_images,
    prepare_data,
)
from .records import Observer, WeightsReport
from .trace import BatchProbe, batch_tracer, data_flow, step_record
from .transforms import BatchAugment, Preprocess
from .weights import fetch_weights, load_weights


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# -- set-up --------------------------------------------------------------------------------------

def resolve_device(name: str, dist: DistInfo = DistInfo()) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and dist.enabled:
        # under torchrun each process owns the GPU of its local rank (init_distributed has
        # bound NCCL to it); "cuda:0" on every rank would put all ranks on one GPU
        name = f"cuda:{dist.local_rank}"
    return torch.device(name)


def check_device_exists(device: torch.device) -> None:
    """One line instead of CUDA's traceback when the device asked for is not there."""
    if device.type != "cuda":
        return
    if not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} was asked for, but PyTorch sees no CUDA GPU "
                         "here (torch.cuda.is_available() is False): use --device cpu, or auto")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ValueError(f"device {str(device)!r} does not exist: PyTorch sees {count} GPU(s), "
                         f"cuda:0 to cuda:{count - 1}")


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """Mixed precision dtype: bf16 where the hardware does it natively, fp16 on older GPUs."""
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    if device.type == "cuda":
        # native bf16 from Ampere (compute capability 8) on; is_bf16_supported() also says
        # yes where bf16 is only emulated (V100, T4), which is slow: fp16 + GradScaler there
        major, _ = torch.cuda.get_device_capability(device)
        return torch.bfloat16 if major >= 8 else torch.float16
    # CPUs with AVX512-BF16 / AMX run bf16 convolutions several times faster than fp32.
    return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of one epoch's shuffling and augmentation: resume needs nothing else.

    Each process of a distributed run draws its own augmentation (rank 0: the 1-process seed).
    """
    return seed * 1_000_003 + epoch + rank * 1_000_000_007


# -- one epoch -----------------------------------------------------------------------------------

PROGRESS_SECONDS = 0.2  # observers hear about batches this often (and at an epoch's last step)


@dataclass
class _Sums:
    """Loss, correct and count summed on the device; synchronised once per epoch."""

    loss: torch.Tensor
    correct: torch.Tensor
    count: torch.Tensor

    @classmethod
    def zeros(cls, device) -> _Sums:
        z = lambda: torch.zeros((), dtype=torch.float64, device=device)  # noqa: E731
        return cls(z(), z(), z())

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        n = labels.shape[0]
        self.loss += loss.detach().double() * n
        self.correct += (logits.argmax(1) == labels).sum()
        self.count += n

    def reduce(self, dist: DistInfo) -> tuple[float, float, int]:
        t = all_reduce_sum(torch.stack([self.loss, self.correct, self.count]), dist).tolist()
        return t[0] / max(t[2], 1), t[1] / max(t[2], 1), int(t[2])


@dataclass
class _Loop:
    """The pieces a step needs, built once."""

    model: nn.Module
    opt: torch.optim.Optimizer
    sched: object
    criterion: nn.Module
    device: torch.device
    amp: torch.dtype | None
    scaler: torch.amp.GradScaler | None
    pre: Preprocess
    channels_last: bool
    augment: BatchAugment
    step_reached: int = 0  # steps finished in the current epoch (where a Ctrl-C landed)
    eval_modules: tuple[nn.Module, ...] = ()  # kept in eval mode while training (frozen BN)
    lookahead: Lookahead | None = None  # the weights' average the model is pulled back to


def _autocast(loop: _Loop):
    if loop.amp is None:
        return contextlib.nullcontext()
    return torch.autocast(loop.device.type, dtype=loop.amp)


def train_mode(loop: _Loop) -> None:
    """The model in training mode, but for the layers the frozen phase keeps in eval mode."""
    loop.model.train()
    for m in loop.eval_modules:
        m.eval()


def train_step(loop: _Loop, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, loss, backward and one optimizer step on a model-input batch; (loss, logits)."""
    with _autocast(loop):
        logits = loop.model(x)
        loss = loop.criterion(logits.float(), y)
    loop.opt.zero_grad(set_to_none=True)
    if loop.scaler is not None:
        loop.scaler.scale(loss).backward()
        loop.scaler.step(loop.opt)
        loop.scaler.update()
    else:
        loss.backward()
        loop.opt.step()
    return loss, logits


def train_one_epoch(loop: _Loop, loader, *, epoch: int, seed: int, probe: BatchProbe,
                    observers: Sequence[Observer], dist: DistInfo, step0: int) -> dict:
    """One pass over the training loader; returns loss, accuracy, counts and timing."""
    train_mode(loop)
    gen = torch.Generator().manual_seed(epoch_seed(seed, epoch, dist.rank))
    sums = _Sums.zeros(loop.device)
    bad: list[tuple[int, str]] = []
    flow = None
    t0 = time.perf_counter()
    data_time = 0.0
    steps = len(loader)
    t_data = time.perf_counter()
    t_shown = -math.inf
    loop.step_reached = 0
    for step, batch in enumerate(loader):
        batch: Batch
        bad.extend(batch.bad)
        if len(batch) == 0:
            continue
        # a traced batch (the first of the run) is observed through its batch stages and step
        tracer = batch_tracer(batch.trace, loop.pre) if batch.trace is not None else None
        x = to_model_input(batch.images, loop.pre, device=loop.device, observer=tracer,
                           channels_last=loop.channels_last, augment=loop.augment, generator=gen)
        y = batch.labels.to(loop.device, non_blocking=True)
        data_time += time.perf_counter() - t_data
        if probe.wants(step0 + step):
            probe.record(step0 + step, x, loop.pre.colour_order)
        t_step = time.perf_counter()
        loss, logits = train_step(loop, x, y)
        loop.sched.step()
        if loop.lookahead is not None:
            loop.lookahead.step(step0 + step + 1)
        if tracer is not None:
            step_rec = step_record(x, logits, loss, time.perf_counter() - t_step, loop.model,
                                   loop.opt, order=tracer.order)
            flow = data_flow(loader.dataset.pipeline.path, batch.trace, tracer.records,
                             [step_rec])
        sums.add(loss, logits, y)
        loop.step_reached = step + 1
        now = time.perf_counter()
        if observers and (now - t_shown >= PROGRESS_SECONDS or step == steps - 1):
            t_shown = now  # by time, not by step count: a slow epoch still moves
            rate = float(sums.count) * dist.world_size / (now - t0)
            for o in observers:
                o.on_batch_end(epoch, step + 1, steps, float(loss.detach()), rate)
        t_data = time.perf_counter()
    if loop.lookahead is not None:
        loop.lookahead.end_epoch()  # evaluated and saved: the average
    mine = RankRecord.measure(dist, int(sums.count), time.perf_counter() - t0, data_time)
    loss, acc, n = sums.reduce(dist)
    seconds = time.perf_counter() - t0
    return {"loss": loss, "acc": acc, "count": n, "seconds": seconds, "data_seconds": data_time,
            "bad": bad, "rank": mine, "flow": flow}


@torch.no_grad()
def evaluate(model: nn.Module, loader, pre: Preprocess, *, device, amp=None, channels_last=True,
             tta: bool = False, tta_shift: int = 0, num_classes: int,
             dist: DistInfo = DistInfo()) -> dict:
    """Loss, accuracy and confusion matrix over the whole validation set (all ranks), and
    each image's probabilities and loss (``per_image``: dataset indices, (N, C) probabilities,
    (N,) losses, in dataset order, every rank's images) for the error analysis, on rank 0
    (None on the others: only rank 0 writes them).

    ``tta``: logits averaged over the image and its mirror; ``tta_shift``: half the weight
    goes to the views translated by that many pixels up-left and down-right (airbench)."""
    model.eval()
    sums = _Sums.zeros(device)
    rows = []
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
    bad = []
    ctx = torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()
    for batch in loader:
        bad.extend(batch.bad)
        if len(batch) == 0:
            continue
        x = to_model_input(batch.images, pre, device=device, channels_last=channels_last)
        y = batch.labels.to(device, non_blocking=True)
        with ctx:
            logits = tta_logits(model, x, flip=tta, shift=tta_shift)
        losses = nn.functional.cross_entropy(logits, y, reduction="none")
        sums.add(losses.mean(), logits, y)
        confusion += torch.bincount(y * num_classes + logits.argmax(1),
                                    minlength=num_classes * num_classes)
        rows.append((batch.indices.numpy(), logits.softmax(1).cpu().numpy(),
                     losses.cpu().numpy()))
    loss, acc, n = sums.reduce(dist)
    confusion = all_reduce_sum(confusion, dist)
    per_rank = gather_to_main(rows, dist)
    return {"loss": loss, "acc": acc, "count": n, "bad": bad,
            "confusion": confusion.view(num_classes, num_classes).cpu().tolist(),
            "per_image": None if per_rank is None else _in_dataset_order(per_rank, num_classes)}


def tta_logits(model: nn.Module, x: torch.Tensor, *, flip: bool, shift: int) -> torch.Tensor:
    """(N, classes) float32 logits of ``x``, averaged over its test-time views: the image (and
    its mirror, ``flip``); with ``shift``, half the weight on the image translated by
    ``shift`` pixels up-left and down-right (reflect padding), each with its mirror."""
    def view(v: torch.Tensor) -> torch.Tensor:
        logits = model(v).float()
        return 0.5 * (logits + model(v.flip(-1)).float()) if flip else logits

    logits = view(x)
    if shift:
        h, w = x.shape[-2:]
        padded = nn.functional.pad(x, (shift,) * 4, mode="reflect")
        moved = (view(padded[..., :h, :w]) + view(padded[..., 2 * shift:, 2 * shift:])) / 2
        logits = 0.5 * (logits + moved)
    return logits


def _in_dataset_order(rows_per_rank: list[list], num_classes: int
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every rank's (indices, probabilities, losses) batches as three arrays by index."""
    rows = [r for rank in rows_per_rank for r in rank]
    if not rows:
        return (np.zeros(0, np.int64), np.zeros((0, num_classes), np.float32),
                np.zeros(0, np.float32))
    idx, probs, losses = (np.concatenate(parts) for parts in zip(*rows, strict=True))
    order = np.argsort(idx, kind="stable")
    return idx[order], probs[order].astype(np.float32), losses[order].astype(np.float32)


def predictions_of(dataset, classes: list[str], per_image) -> Predictions:
    """:class:`~pipetrace.errors.Predictions` from ``evaluate``'s per-image results."""
    idx, probs, losses = per_image
    samples = [dataset.samples[i] for i in idx.tolist()]
    return Predictions([p for p, _ in samples], np.array([y for _, y in samples], np.int64),
                       probs, losses, list(classes))


def base_lr_group(opt: torch.optim.Optimizer, lr: float) -> int:
    """The parameter group that runs at the configured rate (cifarnet's group 0 is its
    batch-norm biases at 64x): the one whose peak is ``lr``, else the largest group."""
    for i, g in enumerate(opt.param_groups):
        if math.isclose(g.get("max_lr", g.get("initial_lr", g["lr"])), lr, rel_tol=1e-9):
            return i
    return max(range(len(opt.param_groups)),
               key=lambda i: sum(p.numel() for p in opt.param_groups[i]["params"]))


def start_model(cfg: TrainConfig, state: dict | None, dist: DistInfo = DistInfo()
                ) -> tuple[DataSetup, nn.Module, ModelConfig, WeightsReport | None]:
    """The datasets and the model a run starts from (on the CPU, not yet wrapped).

    Initial weights are fetched first, so a failed download stops the run before the
    dataset is scanned, and their preprocessing contract shapes the datasets; the model is
    built for the dataset's classes and takes the weights (its head stays new). A resumed
    run takes contract, weights and the weights' report from its checkpoint.
    """
    pretrained = None
    if cfg.weights and not state:  # read on rank 0 (one download), handed to the others
        pretrained = run_on_main(lambda: fetch_weights(cfg.model, cfg.weights), dist)
    pre0 = Preprocess.from_dict(state["preprocess"]) if state else None
    setup = prepare_data(cfg, pre0, expected=pretrained.preprocess if pretrained else None)
    if dist.enabled:  # shards are index ranges: one file more on one node shifts them all
        check_same_everywhere(dataset_digest(setup, cfg.data), dist,
                              what=f"the dataset in {cfg.data!r}")
    if state and state["classes"] != setup.classes:
        raise ckpt_io.CheckpointError(Path(cfg.out) / "last.pt", "the dataset's classes "
                                      "changed since the checkpoint was written")
    model_cfg = ModelConfig(cfg.model, len(setup.classes))
    model = build_model(model_cfg)
    if getattr(model, "min_input_size", 0) > setup.preprocess.size:
        raise ValueError(f"{cfg.model} needs images of at least {model.min_input_size} px; "
                         f"image_size is {setup.preprocess.size}")
    weights = None
    if pretrained is not None:
        weights = load_weights(model, pretrained, head_keys(model_cfg), cfg.model)
    elif state:  # before DDP wraps it: DDP starts every rank from rank 0's weights
        model.load_state_dict(state["model_state"])
        weights = WeightsReport.from_dict(state["weights"]) if state.get("weights") else None
    elif hasattr(model, "init_from_data"):  # e.g. cifarnet's whitening stem
        model.init_from_data(first_images(setup.train_set, setup.preprocess))
    return setup, model, model_cfg, weights


def make_loaders(cfg: TrainConfig, setup: DataSetup, device: torch.device,
                 dist: DistInfo = DistInfo()):
    """(train loader, validation loader or None, the train sampler under torchrun or None)."""
    lcfg = LoaderConfig(batch_size=cfg.batch_size, workers=cfg.workers, path=cfg.loader,
                        channels_last=cfg.channels_last, on_bad_image=cfg.on_bad_image,
                        pin_memory=device.type == "cuda")
    train_sampler = None
    if dist.enabled:  # each rank a disjoint, equal share; reshuffled by set_epoch
        train_sampler = torch.utils.data.DistributedSampler(
            setup.train_set, num_replicas=dist.world_size, rank=dist.rank, shuffle=True,
            seed=cfg.seed, drop_last=True)
    shard = len(train_sampler) if train_sampler is not None else len(setup.train_set)
    train_loader = make_loader(setup.train_set, lcfg, shuffle=True, seed=cfg.seed,
                               sampler=train_sampler, drop_last=shard > cfg.batch_size)
    val_loader = None
    if setup.val_set is not None:
        val_loader = make_loader(setup.val_set, replace(lcfg, batch_size=max(cfg.batch_size, 256)),
                                 shuffle=False, sampler=ShardSampler(len(setup.val_set), dist)
                                 if dist.enabled else None)
    return train_loader, val_loader, train_sampler


def make_loop(cfg: TrainConfig, net: nn.Module, opt, sched, device: torch.device,
              amp: torch.dtype | None, pre: Preprocess) -> _Loop:
    scaler = torch.amp.GradScaler(device.type) if amp == torch.float16 else None
    augment = (BatchAugment.for_preset(cfg.augment, pre.size, cfg.crop_pad)
               if cfg.loader == "fast" else BatchAugment())
    return _Loop(net, opt, sched, nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
                 device, amp, scaler, pre, cfg.channels_last, augment)


def enter_phase(loop: _Loop, freeze: FreezePlan, frozen: bool, model: nn.Module,
                device: torch.device, dist: DistInfo) -> None:
    """Freeze (or unfreeze) the pretrained layers for the epochs that follow.

    DDP registers the parameters that need gradients when it wraps the model, so under
    torchrun the model is wrapped again after the change.
    """
    freeze.apply(frozen)
    loop.eval_modules = freeze.norms if frozen else ()
    if dist.enabled and freeze.params:
        loop.model = _ddp(model, device)


def freeze_stem_bias(loop: _Loop, model: nn.Module, frozen: bool, device: torch.device,
                     dist: DistInfo) -> None:
    """cifarnet: stop (or go on) training the whitening stem's bias (its weights never train);
    with the stem frozen, the backward pass ends at the first block. Under torchrun the model
    is wrapped again (DDP registers the parameters that need gradients when it wraps)."""
    stem = getattr(model, "stem", None)
    if stem is None or stem.bias is None or stem.bias.requires_grad == (not frozen):
        return
    stem.bias.requires_grad_(not frozen)
    if dist.enabled:
        loop.model = _ddp(model, device)


def wrap_for_ddp(model: nn.Module, cfg: TrainConfig, device: torch.device,
                  dist: DistInfo) -> tuple[nn.Module, nn.Module]:
    """(model, the module that trains it): on ``device``; under torchrun, wrapped in DDP."""
    if dist.enabled and cfg.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # shares the parameters
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if not dist.enabled:
        return model, model
    return model, _ddp(model, device)


def _ddp(model: nn.Module, device: torch.device) -> DistributedDataParallel:
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                   else None)

