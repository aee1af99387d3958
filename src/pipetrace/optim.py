"""The optimizer and its per-step learning-rate schedule."""

from __future__ import annotations

import math
import re
import warnings
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from .config import TrainConfig


def build_optimizer(cfg: TrainConfig, model: nn.Module, total_steps: int, *,
                    pretrained: frozenset[str] = frozenset()):
    """Optimizer and a per-step LR schedule.

    A model may define its own groups (``param_groups(lr, weight_decay)``, as timm models
    define ``no_weight_decay()``); otherwise norms and biases get no weight decay.
    ``pretrained`` names the parameters that came from pretrained weights: with
    ``cfg.backbone_lr_scale`` != 1 they learn at ``lr x backbone_lr_scale`` (discriminative
    rates), in groups after the head's, so ``param_groups[0]`` keeps the head's rate.
    """
    if hasattr(model, "param_groups"):
        groups = model.param_groups(cfg.lr, cfg.weight_decay)
    else:
        decay, no_decay = [], []
        for p in model.parameters():
            if p.requires_grad:
                (decay if p.ndim > 1 else no_decay).append(p)
        groups = [{"params": decay, "weight_decay": cfg.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
    if pretrained and cfg.backbone_lr_scale != 1.0:
        groups = split_backbone_groups(groups, model, pretrained, cfg.lr, cfg.backbone_lr_scale)
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    elif cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(groups, lr=cfg.lr)
    else:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}: use 'sgd' or 'adamw'")
    total_steps = max(total_steps, 1)
    warmup = max(1, int(cfg.warmup_pct * total_steps))
    if cfg.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=total_steps + 1,
            pct_start=min(0.9, max(cfg.warmup_pct, 2 / total_steps)),  # >= 2 warm-up steps
            anneal_strategy="linear", cycle_momentum=False, div_factor=1 / cfg.lr_start,
            final_div_factor=cfg.lr_start / cfg.lr_end)
    elif cfg.schedule == "cosine":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warmup, 0.5 * (
            1 + math.cos(math.pi * min(1.0, max(0, s - warmup) / max(1, total_steps - warmup))))))
    elif cfg.schedule == "constant":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    else:
        raise ValueError(f"unknown schedule {cfg.schedule!r}: onecycle, cosine or constant")
    return opt, sched


def split_backbone_groups(groups: list[dict], model: nn.Module, pretrained: frozenset[str],
                          lr: float, scale: float) -> list[dict]:
    """Each group split in two: its new parameters, then its pretrained ones at ``scale`` x
    its rate (head groups first). Empty halves are left out."""
    names = {id(p): n for n, p in model.named_parameters()}
    head, backbone = [], []
    for g in groups:
        mine = [p for p in g["params"] if names.get(id(p)) not in pretrained]
        theirs = [p for p in g["params"] if names.get(id(p)) in pretrained]
        rate = g.get("lr", lr)
        if mine:
            head.append({**g, "params": mine, "lr": rate})
        if theirs:
            backbone.append({**g, "params": theirs, "lr": rate * scale})
    return head + backbone


def resume_schedule(sched, saved: dict, step: int, *, same_plan: bool) -> None:
    """Put the schedule at ``step``: the saved one, or this new plan's (more epochs, or a
    different number of steps per epoch after a change of process count)."""
    if same_plan and saved["last_epoch"] == step:
        sched.load_state_dict(saved)
        return
    sched.last_epoch = step - 1
    with warnings.catch_warnings():  # moving to `step`, not training: no optimizer step due
        warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler"))
        sched.step()


class Lookahead:
    """An average of the weights that the model is pulled back to every ``every`` steps.

    hlb-cifar10's and airbench's "lookahead": from the start of epoch ``start_epoch`` an
    exponential moving average of every float tensor of the state dict (weights and batch-norm
    statistics) is kept; every ``every`` steps it moves towards the model by ``1 - rho`` and
    the model is set to it. ``rho`` rises with the cube of the run's progress, to
    ``decay ** every`` at the last step: the model moves fast early and is averaged strongly at
    the end. At each epoch's end the model equals the average, so a resumed run starts the
    average again from the model's weights and continues exactly.
    """

    def __init__(self, model: nn.Module, *, start_epoch: int, total_steps: int,
                 decay: float = 0.95, every: int = 5, power: float = 3.0):
        self.tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
        self.start_epoch, self.total_steps = start_epoch, max(total_steps, 1)
        self.decay, self.every, self.power = decay, every, power
        self.average: list[torch.Tensor] | None = None

    def start(self, epoch: int) -> None:
        """Call before epoch ``epoch`` (0-based): the average begins at ``start_epoch``."""
        if self.average is None and epoch >= self.start_epoch:
            self.average = [t.detach().clone() for t in self.tensors]

    @torch.no_grad()
    def step(self, step: int) -> None:
        """Call after optimizer step ``step`` (1-based, counted over the whole run)."""
        if self.average is None or step % self.every:
            return
        rho = self.decay ** self.every * min(1.0, step / self.total_steps) ** self.power
        for avg, t in zip(self.average, self.tensors, strict=True):
            avg.lerp_(t, 1 - rho)
            t.copy_(avg)

    @torch.no_grad()
    def end_epoch(self) -> None:
        """Set the model to the average (what is evaluated and saved)."""
        if self.average is not None:
            for avg, t in zip(self.average, self.tensors, strict=True):
                t.copy_(avg)
