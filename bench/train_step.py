"""Training-loop overhead: pipetrace's `train_one_epoch` against a bare PyTorch loop.

    python bench/train_step.py [DATA_DIR]        (make bench-step)

Same model (cifarnet, same initial weights), same batches (CIFAR-10 JPEGs decoded once
into memory, 32 batches of 256), same optimizer and schedule, same mixed precision, same
batch-level augmentation. The bare loop is what one would write by hand: normalize, augment,
forward, loss, backward, step. pipetrace's loop adds its bookkeeping (loss/accuracy sums on
the device, sampled input statistics, progress events). Target: <= 5% slower.
"""

from __future__ import annotations

import copy
import statistics
import sys
import time

import torch
from torch import nn

from common import data_dir, save
from pipetrace.data import ImageDataset, LoaderConfig, make_loader, to_model_input
from pipetrace.distributed import DistInfo
from pipetrace.loop import _Loop, resolve_amp, train_one_epoch
from pipetrace.model import ModelConfig, build_model
from pipetrace.optim import build_optimizer
from pipetrace.scan import scan_image_folder
from pipetrace.trace import BatchProbe
from pipetrace.train import PRESETS, Observer, TrainConfig
from pipetrace.transforms import BatchAugment, Preprocess

BATCHES, BATCH = 32, 256


def batches(root) -> list:
    pre = Preprocess(size=32, crop_pct=1.0)
    samples = scan_image_folder(root).samples[: BATCHES * BATCH * 4 : 4]
    return list(make_loader(ImageDataset(samples, pre), LoaderConfig(batch_size=BATCH),
                            shuffle=False))


class Quiet(Observer):
    """A progress observer that does nothing (the CLI's would draw a bar)."""


def pipetrace_epoch(model, data, cfg, pre) -> float:
    device = torch.device("cpu")
    opt, sched = build_optimizer(cfg, model, len(data))
    loop = _Loop(model, opt, sched, nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
                 device, resolve_amp("auto", device), None, pre, True,
                 BatchAugment.for_preset(cfg.augment, pre.size, cfg.crop_pad))
    t0 = time.perf_counter()
    train_one_epoch(loop, data, epoch=1, seed=0, probe=BatchProbe(every=cfg.trace_every),
                    observers=(Quiet(),), dist=DistInfo(), step0=0)
    return time.perf_counter() - t0


def bare_epoch(model, data, cfg, pre) -> float:
    opt, sched = build_optimizer(cfg, model, len(data))
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    augment = BatchAugment.for_preset(cfg.augment, pre.size, cfg.crop_pad)
    gen = torch.Generator().manual_seed(0)
    model.train()
    t0 = time.perf_counter()
    for b in data:
        x = to_model_input(b.images, pre, channels_last=True, augment=augment, generator=gen)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = criterion(model(x).float(), b.labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return time.perf_counter() - t0


def main(argv):
    root = data_dir(argv, "cifar10") / "train"
    data = batches(root)
    cfg = TrainConfig(**{**PRESETS["cifar"], "batch_size": BATCH})
    pre = Preprocess(size=32, crop_pct=1.0)
    torch.manual_seed(0)
    base = build_model(ModelConfig("cifarnet", 10)).to(memory_format=torch.channels_last)
    times = {"pipetrace": [], "bare": []}
    for i in range(6):  # alternate, first pair is warm-up
        for name, fn in (("pipetrace", pipetrace_epoch), ("bare", bare_epoch)):
            t = fn(copy.deepcopy(base), data, cfg, pre)
            if i:
                times[name].append(t)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["pipetrace"] / med["bare"]
    n = BATCHES * BATCH
    for k, v in times.items():
        print(f"{k:<10} {n / med[k]:,.0f} img/s (epoch {med[k]:.2f} s, min {min(v):.2f}, "
              f"max {max(v):.2f})")
    print(f"pipetrace loop / bare loop time: {ratio:.3f} (target <= 1.05)")
    print(f"wrote {save('train_step', {'times_s': times, 'median_s': med, 'ratio': ratio})}")


if __name__ == "__main__":
    main(sys.argv)
