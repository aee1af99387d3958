"""PNG plots for the run folder, drawn with matplotlib (Agg: no display needed)."""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import cv2
import matplotlib.pyplot as plt
import numpy as np

from ..batch_view import BatchView
from ..text import printable


def curves_png(epochs: Sequence[dict]) -> bytes:
    """Loss and accuracy per epoch, train and validation, side by side."""
    xs = [e["epoch"] for e in epochs]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=100)
    ax_loss.plot(xs, [e["train_loss"] for e in epochs], "o-", label="train")
    ax_acc.plot(xs, [e["train_acc"] for e in epochs], "o-", label="train")
    if any(e.get("val_loss") is not None for e in epochs):
        ax_loss.plot(xs, [e["val_loss"] for e in epochs], "s--", label="validation")
        ax_acc.plot(xs, [e["val_acc"] for e in epochs], "s--", label="validation")
    ax_loss.set(title="Loss", xlabel="epoch")
    ax_acc.set(title="Accuracy", xlabel="epoch", ylim=(0, 1))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig)


def confusion_png(confusion: Sequence[Sequence[int]], classes: Sequence[str]) -> bytes:
    """The confusion matrix, rows = true class, columns = predicted."""
    n = len(classes)
    size = min(2 + 0.45 * n, 12)
    fig, ax = plt.subplots(figsize=(size + 1, size), dpi=100)
    im = ax.imshow(confusion, cmap="Blues")
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true",
           title="Confusion matrix (validation)")
    labels = [plain_label(c) for c in classes]
    ax.set_xticklabels(labels, rotation=45, ha="right")
    ax.set_yticklabels(labels)
    top = max((max(r) for r in confusion), default=0)
    if n <= 20:
        for i, row in enumerate(confusion):
            for j, v in enumerate(row):
                ax.text(j, i, str(v), ha="center", va="center",
                        color="white" if v > top / 2 else "black", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig)


def plain_label(s: str) -> str:
    """A class name shown literally: no mathtext from '$', no broken bytes, controls and
    bidi characters as visible escapes (matplotlib would quote them raw in its warnings)."""
    return printable(s).replace("$", r"\$")


def _save(fig) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():  # a name in a script the font lacks: drawn as boxes
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from")
        fig.tight_layout()
        fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def grid_picture(view: BatchView, *, cell: int = 96, pad: int = 4) -> np.ndarray:
    """One (H, W, 3) uint8 picture: per image a pair (as trained on | as evaluated), or the
    one picture when there is no evaluation view; four images a row, in the view's order."""
    pairs = (list(zip(view.train_pictures, view.eval_pictures, strict=True))
             if view.eval_pictures else [(p,) for p in view.train_pictures])
    cols = 4
    rows = max(1, -(-len(pairs) // cols))
    per = len(pairs[0]) if pairs else 1  # pictures per image: 2 (trained, evaluated) or 1
    w = cols * (per * cell + (per + 1) * pad) + pad
    h = rows * (cell + 2 * pad) + pad
    grid = np.full((h, w, 3), 255, np.uint8)
    for k, pics in enumerate(pairs):
        r, c = divmod(k, cols)
        y = pad + r * (cell + 2 * pad)
        x = pad + c * (per * cell + (per + 1) * pad)
        for j, pic in enumerate(pics):
            tile = cv2.resize(pic, (cell, cell), interpolation=cv2.INTER_AREA)
            grid[y:y + cell, x + j * (cell + pad):x + j * (cell + pad) + cell] = tile
    return grid


def lr_find_png(result) -> bytes:
    """A range test: raw and smoothed loss against the rate (log scale), with the landmarks."""
    s = result.suggested
    lrs = result.lrs[: len(s.smoothed)]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(result.lrs, result.losses, color="0.75", lw=1, label="loss per step")
    ax.plot(lrs, s.smoothed, lw=2, label="smoothed (running median)")
    ax.axvline(s.lr, color="tab:green", ls="--", label=f"suggestion {s.lr:.1e}")
    ax.axvline(s.minimum, color="tab:orange", ls=":", label=f"lowest loss {s.minimum:.1e}")
    if s.steepest is not None:
        ax.axvline(s.steepest, color="tab:purple", ls=":", label=f"steepest {s.steepest:.1e}")
    if s.divergence is not None:
        ax.axvline(s.divergence, color="tab:red", ls=":", label=f"diverges {s.divergence:.1e}")
    top = min(max(s.smoothed), 2 * s.smoothed[0])
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss",
           title="Learning-rate range test", ylim=(min(s.smoothed) * 0.9, top * 1.05))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig)
