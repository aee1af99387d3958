"""Fine-tuning's frozen phase: which layers it holds still, and switching it on and off.

As fastai's ``fine_tune``: for the first ``freeze_epochs`` epochs only the new head learns
(every parameter that came from the pretrained weights has ``requires_grad`` off, so the
optimizer never touches it: no gradient, no momentum, no weight decay); then every layer
learns, the pretrained ones at ``backbone_lr_scale`` x the rate (see ``optim``).

Batch norm while frozen (``frozen_bn``): ``"eval"`` (the default, as Keras and the PyTorch
transfer-learning tutorial do) keeps the pretrained layers' running mean and variance, so
the frozen network computes exactly the features it was trained to compute and stays
bit-identical; ``"train"`` lets those statistics re-estimate on this dataset (fastai keeps
batch norm training while frozen), which moves the buffers but not the weights.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .records import WeightsReport

FROZEN_BN = ("eval", "train")


@dataclass(frozen=True)
class FreezePlan:
    """What the frozen phase holds still; empty when there is nothing pretrained to freeze."""

    epochs: int = 0  # the first epochs that train the head only
    params: tuple[nn.Parameter, ...] = ()  # the pretrained parameters that normally learn
    norms: tuple[nn.Module, ...] = ()  # pretrained batch-norm layers kept in eval mode

    def frozen_at(self, epoch: int) -> bool:
        """Is ``epoch`` (0-based) a head-only epoch?"""
        return epoch < self.epochs and bool(self.params)

    def apply(self, frozen: bool) -> None:
        for p in self.params:
            p.requires_grad_(not frozen)


def plan_freeze(model: nn.Module, weights: WeightsReport | None, *, epochs: int,
                frozen_bn: str) -> FreezePlan:
    """The plan for ``model`` whose ``weights.pretrained`` tensors came from the weights.

    Call before the phase is first applied: parameters that never learn (``requires_grad``
    already off, such as cifarnet's fixed stem) are left alone.
    """
    if frozen_bn not in FROZEN_BN:
        raise ValueError(f"frozen_bn must be one of {FROZEN_BN}, got {frozen_bn!r}")
    if weights is None or epochs <= 0:
        return FreezePlan()
    pretrained = weights.pretrained
    params = tuple(p for n, p in model.named_parameters() if n in pretrained and p.requires_grad)
    norms = ()
    if frozen_bn == "eval":
        norms = tuple(m for name, m in model.named_modules()
                      if isinstance(m, nn.modules.batchnorm._NormBase)
                      and _all_in(name, m, pretrained))
    return FreezePlan(epochs, params, norms)


def _all_in(prefix: str, module: nn.Module, names: frozenset[str]) -> bool:
    """Every tensor of ``module`` (parameters and buffers) is one of ``names``."""
    own = [f"{prefix}.{k}" for k, _ in module.state_dict().items()]
    return bool(own) and all(k in names or k.endswith("num_batches_tracked") for k in own)
