"""Stage 5: train a CNN on batches and record the true epoch-by-epoch trace.

``fit(cfg)`` is the whole job: scan the dataset, build the loaders and the model, then a
plain ``for epoch in range(...)`` loop that returns an :class:`EpochRecord` per epoch,
writes ``metrics.jsonl``/``metrics.csv`` and the ``last``/``best`` checkpoints as each epoch
ends, and tells observers (the terminal view, TensorBoard) what happened.
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
from .batch_view import batch_view
from .checks import run_checks
from .config import PRESETS, TrainConfig
from .data import Batch, LoaderConfig, make_loader, to_model_input
from .distributed import (
    DistInfo,
    RankRecord,
    ShardSampler,
    all_reduce_sum,
    barrier,
    broadcast_buffers,
    check_same_everywhere,
    gather_objects,
    run_on_main,
)
from .errors import Predictions, analyse
from .finetune import FreezePlan, plan_freeze
from .model import ModelConfig, build_model, count_parameters, head_keys
from .observations import observe
from .optim import Lookahead, build_optimizer, resume_schedule
from .prepare import (
    DatasetRefused,
    DataSetup,
    dataset_digest,
    first_images,
    name_bad,
    prepare_data,
)
from .records import EpochRecord, LRFinderResult, Observer, TrainResult, WeightsReport
from .runfolder import (
    claim,
    make_checkpoint,
    refuse_if_taken,
    remove_stale_temp_files,
    set_rng_state,
    write_config,
    write_metrics,
    write_predictions,
)
from .trace import BatchProbe, batch_tracer, data_flow, step_record
from .transforms import BatchAugment, Preprocess
from .weights import fetch_weights, load_weights

__all__ = ["PRESETS", "DatasetRefused", "EpochRecord", "Observer", "TrainConfig", "TrainResult",
           "TrainingDiverged", "evaluate", "fit", "train_one_epoch"]

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
    (N,) losses, in dataset order, every rank's images) for the error analysis.

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
    return {"loss": loss, "acc": acc, "count": n, "bad": bad,
            "confusion": confusion.view(num_classes, num_classes).cpu().tolist(),
            "per_image": _in_dataset_order(gather_objects(rows, dist), num_classes)}


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


# -- the run -------------------------------------------------------------------------------------

def fit(cfg: TrainConfig, *, observers: Sequence[Observer] = (), resume: bool = False,
        epochs: int | None = None, dist: DistInfo = DistInfo()) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.data``; write the run folder; return the trace.

    With ``resume=True`` the run continues from ``cfg.out/last.pt``: later epochs match an
    uninterrupted run with the same seed (each epoch's shuffle and augmentation are seeded
    from the seed and the epoch number; RNG states travel in the checkpoint). ``epochs``
    changes the saved plan's epoch count (to train longer); the learning-rate schedule is
    then re-planned over the new total and continues from the step reached.

    The run folder is claimed for the whole run (``runfolder.claim``: a second writer fails
    at once); a new run refuses a folder that already holds one; a resumed run first removes
    the temp files a killed save left behind.

    Under torchrun (``dist.enabled``) every process calls this; rank 0 alone reads the
    checkpoint, writes files and tells the observers.
    """
    if not resume and not cfg.data:
        raise ValueError("no dataset given: name the dataset folder (pipetrace train "
                         "DATA_DIR, or TrainConfig(data=...))")
    check_device_exists(resolve_device(cfg.device, dist))  # before anything is written
    if not dist.is_main:
        return _fit(cfg, observers=(), resume=resume, epochs=epochs, dist=dist)
    with claim(cfg.out) as run:
        if resume:
            remove_stale_temp_files(run)
        else:
            refuse_if_taken(run)
        return _fit(cfg, observers=observers, resume=resume, epochs=epochs, dist=dist)


def _fit(cfg: TrainConfig, *, observers: Sequence[Observer], resume: bool,
         epochs: int | None, dist: DistInfo) -> TrainResult:
    t_start = time.perf_counter()
    observers = tuple(observers) if dist.is_main else ()
    run = Path(cfg.out)
    state = None
    if resume:  # read on rank 0 (the node that wrote it), handed to the others
        state = run_on_main(lambda: ckpt_io.load_checkpoint(run / "last.pt"), dist)
        # Resume continues the saved plan (epochs, schedule); only where it runs may change.
        cfg = replace(TrainConfig.from_dict(state["train_config"]), out=cfg.out,
                      workers=cfg.workers, device=cfg.device)
        if epochs is not None:
            if epochs < state["epoch"]:
                raise ValueError(f"cannot resume {str(run)!r} for {epochs} epochs: it has "
                                 f"already trained {state['epoch']}")
            cfg = replace(cfg, epochs=epochs)
    if dist.is_main:
        run.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device, dist)
    if dist.enabled and cfg.sync_bn and device.type != "cuda":
        raise ValueError("sync_bn needs CUDA devices (PyTorch's SyncBatchNorm has no CPU "
                         "kernel); on CPU each process normalizes over its own batch")
    amp = resolve_amp(cfg.amp, device)
    setup, model, model_cfg, weights = start_model(cfg, state, dist)
    pre, classes = setup.preprocess, setup.classes
    model, net = wrap_for_ddp(model, cfg, device, dist)  # `net` trains, `model` is saved
    train_loader, val_loader, train_sampler = make_loaders(cfg, setup, device, dist)
    steps_per_epoch = len(train_loader)
    freeze = plan_freeze(model, weights, epochs=cfg.freeze_epochs, frozen_bn=cfg.frozen_bn)
    lr_found = LRFinderResult.from_dict(state["lr_find"]) if state and state.get("lr_find") else None
    if cfg.lr_find and not state:
        from .lr_find import find_lr_for_run  # it builds on this module's loop and step

        lr_found = find_lr_for_run(cfg, model, weights, train_loader, device, amp, pre, dist)
        cfg = replace(cfg, lr=lr_found.lr)
    pretrained = weights.pretrained if weights else frozenset()
    opt, sched = build_optimizer(cfg, model, steps_per_epoch * cfg.epochs,  # DDP shares them
                                 pretrained=pretrained)
    base_group = base_lr_group(opt, cfg.lr)  # the lr column shows this group's rate
    loop = make_loop(cfg, net, opt, sched, device, amp, pre)
    if cfg.lookahead_from is not None:
        loop.lookahead = Lookahead(model, start_epoch=cfg.lookahead_from,
                                   total_steps=steps_per_epoch * cfg.epochs,
                                   decay=cfg.lookahead_decay)
    records: list[EpochRecord] = []
    start_epoch, best_acc = 0, -1.0
    if state:
        opt.load_state_dict(state["optimizer_state"])
        resume_schedule(sched, state["scheduler_state"], state["epoch"] * steps_per_epoch,
                         same_plan=cfg.epochs == state["train_config"]["epochs"])
        if loop.scaler is not None and state.get("scaler_state"):
            loop.scaler.load_state_dict(state["scaler_state"])
        set_rng_state(state["rng"])
        start_epoch, best_acc = state["epoch"], state["best_acc"]
        records = [EpochRecord(**r) for r in state["history"]]
        if dist.is_main:  # a kill between the metrics and the checkpoint left them apart
            write_metrics(run, records)
    if dist.is_main:
        write_config(run, cfg)
    view = None
    if dist.is_main and cfg.trace_every > 0:  # trace_every=0: no stage trace at all
        train_loader.batch_sampler.trace_next()  # the run's first batch, as it really loads
        view = batch_view(setup.train_set, classes, augment=cfg.augment, crop_pad=cfg.crop_pad,
                          seed=cfg.seed)
    flow = None
    ranks: list[RankRecord] = []
    probe = BatchProbe(every=cfg.trace_every)
    info = {"config": cfg, "dataset": setup.info, "device": str(device),
            "amp": str(amp).removeprefix("torch.") if amp else "off",
            "params": count_parameters(model), "dist": dist, "start_epoch": start_epoch,
            "steps_per_epoch": steps_per_epoch, "classes": classes, "model": model,
            "findings": setup.findings,
            "weights": weights, "preprocess": pre, "lr_find": lr_found,
            "freeze_epochs": freeze.epochs if freeze.params else 0}
    for o in observers:
        o.on_train_start(info)
    bad_files = list(setup.bad_files)
    confusion: list[list[int]] = []
    last_eval = None  # the last evaluation's per-image results
    stopped, interrupted_at, epoch = "", None, start_epoch
    ckpt_kw = dict(classes=classes, pre=pre, model_cfg=model_cfg, cfg=cfg, weights=weights,
                   lr_find=lr_found)
    phase = None
    try:
        for epoch in range(start_epoch, cfg.epochs):
            t_epoch = time.perf_counter()
            if freeze.frozen_at(epoch) != phase:
                phase = freeze.frozen_at(epoch)
                enter_phase(loop, freeze, phase, model, device, dist)
            if cfg.stem_bias_epochs is not None and epoch in (start_epoch, cfg.stem_bias_epochs):
                freeze_stem_bias(loop, model, epoch >= cfg.stem_bias_epochs, device, dist)
            if loop.lookahead is not None:
                loop.lookahead.start(epoch)
            train_loader.generator.manual_seed(epoch_seed(cfg.seed, epoch, dist.rank))
            if train_sampler is not None:
                train_sampler.set_epoch(epoch)
            tr = train_one_epoch(loop, train_loader, epoch=epoch + 1, seed=cfg.seed, probe=probe,
                                 observers=observers, dist=dist, step0=epoch * steps_per_epoch)
            flow = flow or tr["flow"]
            ev = {"loss": None, "acc": None, "confusion": [], "bad": []}
            if val_loader is not None:
                broadcast_buffers(model, dist)  # every shard judged by the model rank 0 saves
                ev = evaluate(model, val_loader, pre, device=device, amp=amp,
                              channels_last=cfg.channels_last, tta=cfg.tta,
                              tta_shift=cfg.tta_shift if epoch == cfg.epochs - 1 else 0,
                              num_classes=len(classes), dist=dist)
            confusion = ev["confusion"]
            last_eval = ev.get("per_image", last_eval)
            bad_now = name_bad(setup.train_set, tr["bad"]) + name_bad(setup.val_set, ev["bad"])
            ranks, bads = zip(*gather_objects((tr["rank"], bad_now), dist), strict=True)
            ranks, bad_now = list(ranks), [b for bad in bads for b in bad]  # all processes
            bad_files.extend(b for b in bad_now if b not in bad_files)
            seconds = time.perf_counter() - t_epoch
            record = EpochRecord(
                epoch=epoch + 1, train_loss=tr["loss"], train_acc=tr["acc"],
                val_loss=ev["loss"], val_acc=ev["acc"], lr=opt.param_groups[base_group]["lr"],
                seconds=seconds, images_per_s=tr["count"] / max(tr["seconds"], 1e-9),
                bad_images=len(bad_now), frozen=phase)
            obs = observe([r.point() for r in records] + [record.point()], len(classes))
            record = replace(record, observation=obs.text, observation_kind=obs.kind)
            records.append(record)
            if not math.isfinite(tr["loss"]):
                stopped = (f"diverged: loss became {tr['loss']} in epoch {epoch + 1}; the last "
                           "good checkpoint is kept")
                if dist.is_main:
                    write_metrics(run, records)
                for o in observers:
                    o.on_epoch_end(record)
                raise TrainingDiverged(stopped)
            acc_now = record.val_acc if record.val_acc is not None else record.train_acc
            if dist.is_main:
                write_metrics(run, records)
                is_best = acc_now > best_acc
                best_acc = max(best_acc, acc_now)
                c = make_checkpoint(model=model, opt=opt, sched=sched, scaler=loop.scaler,
                                    epoch=epoch + 1, records=records, best_acc=best_acc, **ckpt_kw)
                ckpt_io.save_checkpoint(run / "last.pt", c)
                if is_best:
                    ckpt_io.save_checkpoint(run / "best.pt", c)
            barrier(dist)
            for o in observers:
                o.on_epoch_end(record)
    except KeyboardInterrupt:
        stopped = "interrupted"
        interrupted_at = (epoch + 1, loop.step_reached, steps_per_epoch)
    result = TrainResult(
        run_dir=str(run), config=cfg, classes=classes, preprocess=pre, model_config=model_cfg,
        records=records, confusion=confusion, flow=flow, probes=probe.samples, batch_view=view,
        bad_files=bad_files, params=count_parameters(model), dist=dist, ranks=ranks,
        dataset=setup.info, timing={"total_seconds": time.perf_counter() - t_start},
        stopped=stopped, interrupted_at=interrupted_at, findings=list(setup.findings),
        weights=weights, lr_find=lr_found)
    if dist.is_main:
        result.findings = run_checks(result)
        if last_eval is not None and setup.val_set is not None:
            result.predictions = predictions_of(setup.val_set, classes, last_eval)
            result.errors = analyse(result.predictions)
            write_predictions(run, result.predictions)
    for o in observers:
        o.on_train_end(result)
    return result


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
