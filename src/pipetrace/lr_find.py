"""The learning-rate range test (Leslie Smith's, as fastai's ``lr_find``) and its suggestion.

``find_lr(cfg)`` trains a copy of the run's model for a few dozen steps while the learning
rate grows exponentially from ``start_lr`` to ``end_lr``, and stops once the smoothed loss
diverges. Everything else is the run's own: model and initial weights (the head-only phase
when fine-tuning), optimizer and its parameter groups (a group at 64 x the rate stays at
64 x), momentum, weight decay, batch size, loss, augmentation and precision; a rate found
with other settings would not be the run's rate.

``suggest_lr(lrs, losses)`` is a pure function of the curve. It reports three landmarks of
the smoothed loss — where it falls fastest, where it is lowest, where it diverges (past
its lowest, 4 x the lowest or back above its start) — and chooses **a tenth of the
divergence point**. Why that one: the divergence is the sharpest landmark (the loss shoots
up within a few steps), while the bottom of a flat valley wanders with the noise and the
steepest point is a derivative of noise, which is the usual complaint about fastai's and
Lightning's suggestions (on planted curves, tests/test_lr_find.py: divergence within 0.05
decades of the truth, minimum and steepest point up to 0.5). Without a divergence in the
range, the lowest loss stands in for it, and the reason says so.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from .config import TrainConfig
from .data import to_model_input
from .distributed import DistInfo
from .finetune import plan_freeze
from .loop import (
    enter_phase,
    epoch_seed,
    make_loaders,
    make_loop,
    resolve_amp,
    resolve_device,
    seed_everything,
    start_model,
    train_mode,
    train_step,
    wrap_for_ddp,
)
from .optim import build_optimizer
from .records import LRFinderResult, LRSuggestion, WeightsReport
from .transforms import Preprocess


@dataclass(frozen=True)
class RangeTest:
    """How the range test ramps the learning rate and when it stops."""

    start_lr: float = 1e-6  # the first step's learning rate
    end_lr: float = 100.0  # the last one, if the loss has not diverged before (it stops there)
    steps: int = 100  # optimizer steps, at rates spaced evenly on a log scale
    window: int = 9  # steps in the running median that smooths the loss
    diverge: float = 4.0  # diverged: the smoothed loss this x its lowest (or back above its start); the ramp stops there


def smooth(losses, window: int) -> np.ndarray:
    """A running median over ``window`` steps, then a running mean over ``window // 2``.

    The median shrugs off single bad batches and, unlike a moving average, does not smear
    the explosion at the end of the ramp back onto the valley before it (an exponential
    average trails the curve by ``beta / (1 - beta)`` steps: 49 for fastai's 0.98, half of
    a 100-step ramp, which moves every landmark); the mean makes it smooth enough for a
    slope. Both windows are centred, shrinking at the ends.
    """
    x = np.asarray(losses, dtype=float)
    med = np.array([np.median(x[max(0, i - window // 2): i + window // 2 + 1])
                    for i in range(len(x))])
    h = max(window // 4, 1)
    return np.array([med[max(0, i - h): i + h + 1].mean() for i in range(len(x))])


def diverged(loss: float, lowest: float, start: float, factor: float) -> bool:
    """Past its lowest point, the (smoothed) loss is ``factor`` x the lowest, or, after
    falling by 5% at least, back above where it started: worse than not training at all.

    The second test is the one a classifier's loss meets: once training falls apart its
    cross-entropy settles near chance (ln K), seldom at 4 x its lowest.
    """
    return loss > factor * lowest or (lowest < 0.95 * start and loss > start)


def _e(x: float) -> str:
    return f"{x:.1e}"


def suggest_lr(lrs, losses, *, window: int = RangeTest.window,
               diverge: float = RangeTest.diverge) -> LRSuggestion:
    """The suggestion read from a range test's curve: a tenth of the rate where the smoothed
    loss diverges (else of the rate at its lowest), with the landmarks and the reasons.

    ``lrs`` rise; ``losses`` are the raw losses of the same steps (non-finite ones end
    the curve).
    """
    lrs = np.asarray(lrs, dtype=float)
    raw = np.asarray(losses, dtype=float)
    if len(lrs) != len(raw) or len(lrs) < 3:
        raise ValueError(f"a range test needs 3 or more (rate, loss) pairs, got {len(raw)}")
    n = int(np.argmax(~np.isfinite(raw))) if not np.isfinite(raw).all() else len(raw)
    if n < 3:
        raise ValueError("the loss was not finite from the range test's first steps: check "
                         "the inputs, or lower start_lr")
    lrs, sm = lrs[:n], smooth(raw[:n], window)
    low = int(np.argmin(sm))
    above = np.nonzero([diverged(v, sm[low], sm[0], diverge) for v in sm[low:]])[0]
    at = low + int(above[0]) if len(above) else None  # the first diverged step
    divergence = float(lrs[at]) if at is not None else None
    slope = np.gradient(sm, np.log(lrs))  # change of the loss per e-fold of the rate
    skip = min(len(sm) // 10, max(low - 1, 0))  # the average's first steps are mostly noise
    falls = slope[skip:low + 1]
    steepest = float(lrs[skip + int(np.argmin(falls))]) if len(falls) and falls.min() < 0 else None
    minimum = float(lrs[low])
    if low <= skip or sm[low] > 0.98 * sm[0]:
        return LRSuggestion(float(lrs[0]), "the loss never fell: the range's first rate",
                            f"The smoothed loss never fell below its start ({sm[0]:.3g}) "
                            f"between {_e(lrs[0])} and {_e(lrs[-1])}: there is no rate to read "
                            f"from this curve; chose {_e(lrs[0])}, the lowest rate tried. Check "
                            "the data and the model, or widen the range.",
                            minimum, steepest, divergence, tuple(sm))
    lr = (divergence if divergence is not None else minimum) / 10
    landmarks = [f"steepest descent at {_e(steepest)}"] if steepest else []
    landmarks.append(f"loss lowest at {_e(minimum)} ({sm[low]:.3g}, from {sm[0]:.3g} at the "
                     "start)")
    if at is not None:
        limit = (f"{diverge:g} x its lowest" if sm[at] > diverge * sm[low] else
                 f"back above its start, {sm[0]:.3g}")
        landmarks.append(f"it diverges ({limit}) from {_e(divergence)}")
        rule = "a tenth of the divergence point"
        why = ("the divergence is the sharpest landmark of the curve (the loss shoots up within "
               "a few steps, where the bottom of a flat valley wanders with the noise), and a "
               "decade below it training is stable")
    else:
        ending = (f"rises to {sm[-1]:.3g} by" if sm[-1] > 1.1 * sm[low] else
                  "is still near its lowest at")
        landmarks.append(f"it {ending} {_e(lrs[-1])}, the end of the range, without diverging")
        rule = "a tenth of the rate at the lowest loss (no divergence in the range)"
        why = ("with no divergence to go by, the lowest loss stands in for it: there the loss "
               "stops improving, too high to train at")
    said = "; ".join(landmarks)
    here = int(np.argmin(np.abs(np.log(lrs) - math.log(lr))))  # the step nearest the choice
    per_decade = -slope[here] * math.log(10)
    there = (f"at {_e(lr)} the loss is {sm[here]:.3g} and falls {per_decade:.2g} per tenfold rate"
             if per_decade > 0 and lr >= lrs[0] else
             f"at {_e(lr)} the loss is {sm[here]:.3g} and not falling" if lr >= lrs[0] else
             f"{_e(lr)} is below the range tested")
    reason = f"{said[0].upper()}{said[1:]}. Chose {_e(lr)}, {rule}: {why}; {there}."
    if at is None and sm[-1] <= 1.1 * sm[low]:
        reason += " A higher end_lr would show where the loss turns."
    return LRSuggestion(lr, rule, reason, minimum, steepest, divergence, tuple(sm))


def find_lr(cfg: TrainConfig, test: RangeTest = RangeTest()) -> LRFinderResult:
    """Set up ``cfg``'s run (data, model, initial weights) and range-test its rate."""
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    amp = resolve_amp(cfg.amp, device)
    setup, model, _, weights = start_model(cfg, None)
    model, _ = wrap_for_ddp(model, cfg, device, DistInfo())
    loader, _, _ = make_loaders(cfg, setup, device)
    return range_test(cfg, model, weights, loader, device, amp, setup.preprocess, test)


def find_lr_for_run(cfg: TrainConfig, model: nn.Module, weights: WeightsReport | None, loader,
                    device: torch.device, amp, pre: Preprocess, dist: DistInfo,
                    test: RangeTest = RangeTest()) -> LRFinderResult:
    """``--lr auto``: the range test on a copy of the run's model, leaving the model and the
    random streams of training as they were (the run then equals one given that rate)."""
    if dist.enabled:
        raise ValueError("--lr auto does not run under torchrun: the rate depends on the global "
                         "batch; run `pipetrace lr-find DATA --batch-size <global batch>` and "
                         "pass --lr")
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        return range_test(cfg, copy.deepcopy(model), weights, loader, device, amp, pre, test)


def range_test(cfg: TrainConfig, model: nn.Module, weights: WeightsReport | None, loader,
               device: torch.device, amp, pre: Preprocess, test: RangeTest) -> LRFinderResult:
    """Train ``model`` (changed in place) for ``test.steps`` steps at rising rates."""
    if not 0 < test.start_lr < test.end_lr or test.steps < 3:
        raise ValueError(f"range test: need 0 < start_lr < end_lr and 3 or more steps, got "
                         f"{test.start_lr:g}, {test.end_lr:g}, {test.steps}")
    freeze = plan_freeze(model, weights, epochs=cfg.freeze_epochs, frozen_bn=cfg.frozen_bn)
    frozen = freeze.frozen_at(0)
    opt, _ = build_optimizer(replace(cfg, schedule="constant"), model, test.steps,
                             pretrained=weights.pretrained if weights else frozenset())
    loop = make_loop(cfg, model, opt, None, device, amp, pre)
    enter_phase(loop, freeze, frozen, model, device, DistInfo())  # one process: no re-wrap
    ratios = [g["lr"] / cfg.lr for g in opt.param_groups]
    ramp = np.geomspace(test.start_lr, test.end_lr, test.steps)
    train_mode(loop)
    gen = torch.Generator().manual_seed(epoch_seed(cfg.seed, 0))
    lrs, losses, lowest, stopped = [], [], math.inf, "the last step of the range"
    for lr, batch in zip(ramp, _batches(loader, cfg.seed), strict=False):
        for g, r in zip(opt.param_groups, ratios, strict=True):
            g["lr"] = lr * r
        x = to_model_input(batch.images, pre, device=device, channels_last=cfg.channels_last,
                           augment=loop.augment, generator=gen)
        loss, _ = train_step(loop, x, batch.labels.to(device, non_blocking=True))
        lrs.append(float(lr))
        losses.append(float(loss.detach()))
        now = float(np.median(losses[-test.window:]))  # the trailing median, live
        start = float(np.median(losses[:test.window]))
        if not math.isfinite(losses[-1]) or (len(losses) >= test.window and diverged(
                now, lowest, start, test.diverge)):
            stopped = f"the loss diverged at {_e(lr)}"
            break
        lowest = min(lowest, now)
    suggestion = suggest_lr(lrs, losses, window=test.window, diverge=test.diverge)
    held = {"model": cfg.model, "weights": weights.source if weights else None,
            "head_only": frozen, "optimizer": cfg.optimizer, "batch_size": cfg.batch_size,
            "momentum": cfg.momentum if cfg.optimizer == "sgd" else None,
            "weight_decay": cfg.weight_decay, "label_smoothing": cfg.label_smoothing,
            "augment": cfg.augment, "amp": str(amp).removeprefix("torch.") if amp else "off",
            "group_rates": [round(r, 6) for r in ratios], "steps": len(lrs),
            "start_lr": test.start_lr, "end_lr": test.end_lr}
    return LRFinderResult(tuple(lrs), tuple(losses), suggestion, stopped, held)


def _batches(loader, seed: int):
    """The loader's non-empty batches, pass after pass (a small dataset has few per epoch)."""
    for epoch in range(10**9):
        loader.generator.manual_seed(epoch_seed(seed, epoch))
        got = False
        for batch in loader:
            if len(batch):
                got = True
                yield batch
        if not got:
            return

