"""Stage 5: train a CNN on batches and record the true epoch-by-epoch trace.

``fit(cfg)`` is the whole job: scan the dataset, build the loaders and the model, then a
plain ``for epoch in range(...)`` loop that returns an :class:`EpochRecord` per epoch,
writes ``metrics.jsonl``/``metrics.csv`` and the ``last``/``best`` checkpoints as each epoch
ends, and tells observers (the terminal view, TensorBoard) what happened.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from . import checkpoint as ckpt_io
from .batch_view import batch_view
from .checks import run_checks
from .config import PRESETS, TrainConfig
from .distributed import (
    DistInfo,
    RankRecord,
    barrier,
    broadcast_buffers,
    gather_objects,
    run_on_main,
)
from .errors import analyse
from .finetune import plan_freeze
from .loop import (
    TrainingDiverged,
    base_lr_group,
    check_device_exists,
    enter_phase,
    epoch_seed,
    evaluate,
    freeze_stem_bias,
    make_loaders,
    make_loop,
    predictions_of,
    resolve_amp,
    resolve_device,
    seed_everything,
    start_model,
    train_one_epoch,
    wrap_for_ddp,
)
from .lr_find import find_lr_for_run
from .model import count_parameters
from .observations import observe
from .optim import Lookahead, build_optimizer, resume_schedule
from .prepare import DatasetRefused, name_bad
from .records import EpochRecord, LRFinderResult, Observer, TrainResult
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
from .trace import BatchProbe

__all__ = ["PRESETS", "DatasetRefused", "EpochRecord", "Observer", "TrainConfig", "TrainResult",
           "TrainingDiverged", "evaluate", "fit", "train_one_epoch"]


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
    last_eval, last_eval_epoch = None, None  # the last evaluation's per-image results, epoch
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
            if ev.get("per_image") is not None:  # rank 0, with a validation set
                last_eval, last_eval_epoch = ev["per_image"], epoch + 1
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
            result.predictions_epoch = last_eval_epoch
            result.errors = analyse(result.predictions)
            write_predictions(run, result.predictions)
    for o in observers:
        o.on_train_end(result)
    return result
