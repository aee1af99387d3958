"""The terminal view: the seed's tables and chart, printed with rich from the run's records.

Nothing here computes a metric; it formats records. Every string that comes from a dataset
or a checkpoint goes through :func:`clean` (no rich markup, no terminal escape sequences).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ..batch_view import BatchView
from ..errors import ErrorAnalysis
from ..layers import LayerTrace
from ..ops import OpTrace
from ..pipeline import SEED_STAGES
from ..records import EpochRecord, LRFinderResult, Observer, TrainResult, WeightsReport
from ..trace import DataFlow
from ..transforms import Preprocess
from .console import clean, make_console  # noqa: F401 (make_console: for the commands)

if TYPE_CHECKING:
    from ..export import OnnxCheck
    from ..skew import SkewReport


def stage_table(flow: DataFlow, title: str = "Data flow") -> Table:
    """One row per step of the traced flow, in the order it ran; the order line as caption."""
    t = Table(title=title, title_justify="left", show_lines=False, caption_justify="left",
              caption=clean(f"{flow.order} Times: {flow.timing}."))
    for col in ("#", "step", "seed stage", "library", "input", "operation", "output", "µs/img"):
        t.add_column(col, overflow="fold")
    for s in flow.stages:
        seed = f"{s.seed} {SEED_STAGES.get(s.seed, '')}" + (" (batch)" if s.scope == "batch" else "")
        out = clean(s.output.short()) + (f"\n{clean(s.note)}" if s.note else "")
        t.add_row(str(s.index), clean(s.name), seed, clean(s.library), clean(s.input.short()),
                  clean(s.operation), out, f"{s.micros_per_item:,.1f}")
    return t


def print_findings(console: Console, findings) -> None:
    """Each finding in two lines (title and evidence, then the fix), or that there are none."""
    for f in findings:
        console.print(f"[{'red' if f.severity == 'error' else 'yellow'}]{f.severity}[/] "
                      f"(stage {clean(f.stage)}) {clean(f.title)}: {clean(f.evidence)}\n"
                      f"  fix: {clean(f.fix)}")
    if not findings:
        console.print("Checks: no problems found.")


def batch_table(view: BatchView) -> Table:
    """The images of a batch view: which file, which class, what the model got."""
    t = Table(title=f"The batch the model sees — augmentation {clean(view.augment)}, seed "
              f"{view.seed}", title_justify="left")
    for col in ("#", "class", "file", "as trained on", "as evaluated"):
        t.add_column(col, overflow="fold")
    for k, (path, label) in enumerate(zip(view.paths, view.labels, strict=True)):
        a = view.train_pictures[k]
        b = view.eval_pictures[k] if view.eval_pictures else None
        t.add_row(str(view.indices[k]), clean(label), clean(display_name(path)),
                  f"{a.shape[0]} x {a.shape[1]}, mean {a.mean():.0f}",
                  "-" if b is None else f"{b.shape[0]} x {b.shape[1]}, mean {b.mean():.0f}")
    return t


def print_error_summary(console: Console, e: ErrorAnalysis, run_dir: str, rows: int = 5,
                        *, model: str = "") -> None:
    """After training: accuracy and calibration in one line, the worst confusions and the
    likeliest label errors (the rest: `pipetrace errors RUN_DIR`); ``model``: which model
    made the predictions (the prediction trace may show another: best.pt)."""
    worst = ", ".join(f"{clean(a)} -> {clean(b)} ({n})" for a, b, n in e.most_confused[:3])
    by = f" ({clean(model)})" if model else ""
    console.print(_headline(e, f"validation images{by}")
                  + (f"; most confused: {worst}" if worst else ""))
    if e.label_issues:
        console.print(f"Likely label errors: {len(e.label_issues)}, first: "
                      + ", ".join(f"{clean(display_name(x.path))} given {clean(x.given)}, looks "
                                  f"like {clean(x.predicted)} ({x.p_predicted:.2f})"
                                  for x in e.label_issues[:rows]))
    console.print(f"All of it: pipetrace errors {clean(run_dir)} (tables or --json), "
                  "predictions.csv, report.html")


def _headline(e: ErrorAnalysis, what: str) -> str:
    """'Errors on N <what>: accuracy ..., macro F1 ..., expected calibration error ...'."""
    top5 = f", top-5 {e.top5_accuracy:.3f}" if e.top5_accuracy is not None else ""
    return (f"Errors on {e.images:,} {what}: accuracy {e.accuracy:.3f}{top5}, macro F1 "
            f"{e.macro_f1:.3f}, expected calibration error {e.ece:.3f}")


SPLIT_WORDS = {"val": "validation images", "train": "training images", "test": "test images",
               "all": "images (every split)"}


def print_left_out(console: Console, folders: Sequence[str],
                   unreadable: Sequence[tuple[str, str]]) -> None:
    """What an evaluation did not score, before its numbers: class folders the checkpoint
    has no class for (a renamed or extra class: its images are not in the accuracy), and
    unreadable files."""
    if folders:
        names = ", ".join(repr(clean(os.path.basename(f))) for f in folders[:8])
        more = f" and {len(folders) - 8} more" if len(folders) > 8 else ""
        console.print(f"[yellow]warning:[/] {len(folders)} class folder(s) left out, not "
                      f"scored: the checkpoint has no class named {names}{more} "
                      f"(under {clean(os.path.dirname(folders[0]))}); rename them to its "
                      "class names to score them")
    if unreadable:
        console.print(f"[yellow]warning:[/] {len(unreadable)} unreadable file(s) skipped: "
                      f"{clean(unreadable[0][0])}: {clean(unreadable[0][1])}"
                      + (f" and {len(unreadable) - 1} more" if len(unreadable) > 1 else ""))


def print_errors(console: Console, e: ErrorAnalysis, *, rows: int = 12) -> None:
    """The error analysis: accuracy and calibration, per-class metrics, the most-confused
    pairs, the worst images and the likely label errors."""
    console.print(_headline(e, SPLIT_WORDS.get(e.split, f"{clean(e.split)} images")))
    t = Table(title="Per class", title_justify="left")
    for col in ("class", "precision", "recall", "F1", "support"):
        t.add_column(col, justify="left" if col == "class" else "right")
    for c in e.per_class:
        t.add_row(clean(c.name), f"{c.precision:.3f}", f"{c.recall:.3f}", f"{c.f1:.3f}",
                  f"{c.support:,}")
    console.print(t)
    if e.most_confused:
        console.print("Most confused (true -> predicted): " + ", ".join(
            f"{clean(a)} -> {clean(b)} ({n})" for a, b, n in e.most_confused[:rows]))
    for title, items, second in (("Worst predictions (highest loss)", e.top_losses, "predicted"),
                                 ("Likely label errors", e.label_issues, "suggested")):
        t = Table(title=title, title_justify="left")
        for col in ("file", "given", "p(given)", second, f"p({second})", "loss"):
            t.add_column(col, overflow="fold")
        for x in items[:rows]:
            t.add_row(clean(x.path), clean(x.given), f"{x.p_given:.3f}",  # a file to open
                      clean(x.predicted), f"{x.p_predicted:.3f}", f"{x.loss:.3f}")
        console.print(t)
    thresholds = ", ".join(f"{clean(c)} {t:.3f}" for c, t in e.label_thresholds.items())
    console.print(f"Label errors: {clean(e.method)}; a_y per class: {thresholds or 'none'}; "
                  f"{len(e.label_issues)} found.")


def _triple(v: Sequence[float]) -> str:
    return "(" + ", ".join(f"{x:.3f}" for x in v) + ")"


def contract_text(pre: Preprocess) -> str:
    """'resize the short side to 256 (bilinear), centre-crop 224, mean (...), std (...)'."""
    geometry = (f"resize the short side to {pre.resize_size} ({pre.interpolation}), centre-crop "
                f"{pre.size}" if pre.resize_size != pre.size else
                f"resize to {pre.size} ({pre.interpolation})")
    return (f"{geometry}, {pre.colour_order} {pre.value_scale}, mean {_triple(pre.mean)}, "
            f"std {_triple(pre.std)}")


def contract_line(pre: Preprocess, weights: WeightsReport | None) -> str:
    """The evaluation contract of a run, and whose it is."""
    if weights is not None and weights.preprocess is not None:
        whose = ("the weights' own" if weights.preprocess == pre else
                 "set by this run, not the weights' (see the findings)")
        return f"Preprocessing: {contract_text(pre)} — {whose}, {clean(weights.source)}"
    return f"Preprocessing: {contract_text(pre)} — from this run's configuration"


def weights_line(weights: WeightsReport) -> str:
    return f"Weights: {clean(weights.source)} ({clean(weights.file)}): {clean(weights.summary())}"


def epoch_table(records: Sequence[EpochRecord]) -> Table:
    t = Table(title="Training trace", title_justify="left")
    for col in ("epoch", "loss ↓", "acc ↑", "val loss", "val acc ↑", "lr", "s", "img/s"):
        t.add_column(col, justify="right")
    t.add_column("observation", overflow="fold", ratio=1)
    for r in records:
        t.add_row(*epoch_cells(r), ("head only · " if r.frozen else "") + clean(r.observation))
    return t


def epoch_cells(r: EpochRecord) -> list[str]:
    f = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    return [str(r.epoch), f(r.train_loss, ".3f"), f(r.train_acc, ".3f"), f(r.val_loss, ".3f"),
            f(r.val_acc, ".3f"), f(r.lr, ".2e"), f(r.seconds, ".1f"), f(r.images_per_s, ",.0f")]


def ascii_chart(values: Sequence[float], *, label: str = "Loss", width: int = 40) -> str:
    """The seed's chart: one bar of '*' per epoch, longest for the largest value."""
    finite = [v for v in values if v == v and abs(v) != float("inf")]
    top = max(finite, default=1.0) or 1.0
    lines = [label]
    for i, v in enumerate(values, start=1):
        n = round(width * v / top) if v in finite else 0
        lines.append(f"{i:>3} {v:>7.3f} |{'*' * max(n, 0)}")
    return "\n".join(lines)


def dims(shape: Sequence[int]) -> str:
    return " x ".join(str(d) for d in shape)


def rows_text(rows: Sequence[int]) -> str:
    """The records a row read: '10, 5' (0, a tensor no record made, is '?')."""
    return ", ".join(str(i) if i else "?" for i in rows)


def _columns(t: Table, names: Sequence[str], fold: Sequence[str]) -> None:
    """Short columns keep their width; only the ``fold`` ones wrap when the table is too wide."""
    for col in names:
        t.add_column(col, overflow="fold", no_wrap=col not in fold,
                     justify="right" if col in ("params", "µs") else "left")


def layer_table(trace: LayerTrace, title: str = "Prediction trace") -> Table:
    """One row per module call at the trace's depth, and per operation outside them."""
    joins = any(r.join for r in trace.layers)  # a chain (the seed's CNN) needs no such column
    t = Table(title=title, title_justify="left")
    _columns(t, ("layer", "name", "kind", "from", "output shape", "params", "statistic", "µs",
                 *(("branches join",) if joins else ())), fold=("name", "statistic",
                                                                "branches join"))
    for r in trace.layers:
        t.add_row(str(r.index), clean(r.name), clean(r.kind), rows_text(r.inputs),
                  dims(r.output_shape), f"{r.params:,}", clean(r.stat), f"{r.micros:,.0f}",
                  *((clean(r.join),) if joins else ()))
    return t


def op_table(trace: OpTrace, title: str = "Every operation") -> Table:
    """One row per recorded operation, in execution order, with the records it read;
    ⊕ marks an operation where branches join, "(in place)" one that changed its input."""
    t = Table(title=f"{title} (⊕: branches join)", title_justify="left")
    _columns(t, ("#", "module", "op", "kind", "from", "output shape", "params", "statistic",
                 "µs"), fold=("module", "statistic"))
    for r in trace.records:
        t.add_row(str(r.index), clean(r.module), clean(r.op) + (" (in place)" if r.inplace else ""),
                  clean(r.kind) + (" ⊕" if r.join else ""), rows_text(r.inputs),
                  dims(r.output_shape), f"{r.params:,}", clean(r.stat), f"{r.micros:,.0f}")
    return t


def top_k_lines(trace: LayerTrace, width: int = 30) -> str:
    lines = []
    for c, p in trace.top_k:
        lines.append(f"  {clean(c):<16} {p:6.3f} {'█' * round(p * width)}")
    return "\n".join(lines)


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def skew_table(report: SkewReport) -> Table:
    t = Table(title=f"Skew check — {clean(report.function)} vs the checkpoint's evaluation "
              "pipeline", title_justify="left")
    for col in ("image", "your tensor", "max |Δ|", "mean |Δ|", "diagnosis",
                "class: checkpoint / yours"):
        t.add_column(col, overflow="fold")
    for i in report.images:
        shape = " x ".join(str(d) for d in i.user_shape)
        diagnosis = ", ".join(i.bugs) if i.bugs else "matches"
        if i.bugs and i.matches:
            diagnosis += " (negligible)"
        if i.note:
            diagnosis += f" ({i.note})"
        t.add_row(clean(display_name(i.path)), f"{shape} {i.user_dtype}", _num(i.max_abs),
                  _num(i.mean_abs), clean(diagnosis),
                  f"{clean(i.reference_class)} / {clean(i.user_class or 'refused')}")
    return t


def display_name(path: str, parts: int = 3) -> str:
    """The last ``parts`` components of a path (class folder and file, say)."""
    return "/".join(path.replace("\\", "/").split("/")[-parts:])


def print_skew(console: Console, report: SkewReport) -> None:
    from ..skew import MATCH_LEVELS, bug_text

    console.print(skew_table(report))
    n = len(report.images)
    for bugs, count in report.diagnoses():
        console.print(f"Diagnosis ({count} of {n} images):", markup=False)
        for key in bugs:
            title, fix = bug_text(key, report.preprocess)
            size = report.typical_size(bugs, key)
            effect = "changes the layout" if size is None else f"{size:.3g} grey levels RMS"
            if size is not None and size < MATCH_LEVELS:
                effect += ", too small to matter"
            console.print(f"  {title} ({effect})\n    fix: {fix}", markup=False)
    same = round(report.agreement * n)
    console.print(f"Predicted class agrees on {same} of {n} images ({report.agreement:.0%}).")
    console.print("[red]Skew found.[/]" if report.skew else
                  f"No skew: your tensors match the checkpoint's within {MATCH_LEVELS:g} grey "
                  "levels and give the same classes.")


def print_onnx_check(console: Console, check: OnnxCheck, *, opset: int) -> None:
    console.print(f"Wrote {clean(check.path)} (opset {opset}, dynamic batch axis) with the "
                  "class names and the preprocessing contract in its metadata.")
    console.print(f"onnxruntime vs PyTorch on {check.images} images: max |logit difference| "
                  f"{check.max_abs_diff:.2g}, same top-1 on {check.top1_same} of {check.images}.")
    for path, reason in check.unreadable[:5]:
        console.print(f"  skipped {clean(path)}: {clean(reason)}")
    if not check.ok:
        console.print("[red]The ONNX model disagrees with PyTorch.[/]")


def rank_table(result: TrainResult) -> Table:
    """One row per process of a torchrun job: its share of the last epoch and its speed."""
    t = Table(title="Processes (last epoch)", title_justify="left")
    for col in ("rank", "host", "images", "img/s", "loader img/s", "waiting for data"):
        t.add_column(col, justify="left" if col == "host" else "right")
    for r in result.ranks:
        t.add_row(str(r.rank), clean(r.host), f"{r.images:,}", f"{r.images_per_s:,.0f}",
                  f"{r.loader_images_per_s:,.0f}", f"{r.data_share:.0%}")
    return t


def layout_line(result: TrainResult) -> str:
    """'Distributed: 2 processes (gloo), batch 16 per process x 2 = 32 global'."""
    d, batch = result.dist, result.config.batch_size
    return (f"Distributed: {processes(d.world_size)} ({d.backend}), batch {batch} per process "
            f"x {d.world_size} = {batch * d.world_size} global")


def processes(n: int) -> str:
    return f"{n} process" if n == 1 else f"{n} processes"


def print_training(console: Console, result: TrainResult) -> None:
    """The end of a run: the epoch table, the loss chart, per-class accuracy, skipped files,
    and under torchrun the processes' layout and speed."""
    console.print(epoch_table(result.records))
    if result.dist.enabled and result.ranks:
        console.print(layout_line(result), markup=False)
        console.print(rank_table(result))
    console.print(ascii_chart([r.train_loss for r in result.records]), markup=False)
    if result.confusion:
        accs = result.per_class_accuracy
        parts = [f"{clean(c)} {a:.2f}" if a is not None else f"{clean(c)} -"
                 for c, a in zip(result.classes, accs, strict=True)]
        console.print("Per-class validation accuracy: " + ", ".join(parts))
    if result.bad_files:
        console.print(f"[yellow]Skipped {len(result.bad_files)} unreadable file(s):[/]")
        for _path, reason in result.bad_files[:10]:
            console.print(f"  {clean(reason)}")
        if len(result.bad_files) > 10:
            console.print(f"  ... and {len(result.bad_files) - 10} more (see trace.json)")
    if result.stopped and result.stopped != "interrupted":  # the CLI says where it stopped
        console.print(f"[red]Stopped: {clean(result.stopped)}[/]")


def finding_line(f) -> str:
    """'warning: <title> — <fix> (<first file> and N more)', for a rich console (names
    escaped)."""
    colour = {"error": "red", "warning": "yellow"}.get(f.severity, "cyan")
    where = ""
    if f.paths:
        more = f" and {len(f.paths) - 1} more" if len(f.paths) > 1 else ""
        where = f" ({clean(display_name(f.paths[0]))}{more})"
    return f"[{colour}]{f.severity}[/]: {clean(f.title)} — {clean(f.fix)}{where}"


def duration(seconds: float) -> str:
    """'0:01:05' (h:mm:ss)."""
    s = max(0, round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def lr_find_chart(result: LRFinderResult, *, width: int = 64, height: int = 12) -> str:
    """The smoothed loss against the rate on a log scale: '*' the curve, '|' the suggestion,
    'v' the lowest loss, 'x' where it diverged (losses above twice the first are clipped)."""
    s = result.suggested
    sm, lrs = s.smoothed, result.lrs[: len(s.smoothed)]
    lo, hi = min(sm), min(max(sm), 2 * sm[0])
    hi = hi if hi > lo else lo + 1e-9
    a, span = math.log10(lrs[0]), (math.log10(lrs[-1]) - math.log10(lrs[0])) or 1.0

    def col(lr: float) -> int:
        return round((math.log10(lr) - a) / span * (width - 1))

    def row(v: float) -> int:
        return height - 1 - round((min(v, hi) - lo) / (hi - lo) * (height - 1))

    grid = [[" "] * width for _ in range(height)]
    if 0 <= col(s.lr) < width:
        for r in grid:
            r[col(s.lr)] = "|"
    for lr, v in zip(lrs, sm, strict=True):
        grid[row(v)][col(lr)] = "*"
    grid[row(lo)][col(s.minimum)] = "v"
    if s.divergence is not None:
        grid[0][col(s.divergence)] = "x"
    lines = [f"{hi:>8.3f} ┤{''.join(grid[0])}",
             *(f"{'':>8} │{''.join(r)}" for r in grid[1:-1]),
             f"{lo:>8.3f} ┤{''.join(grid[-1])}",
             f"{'':>10}{lrs[0]:<{width - 7}.0e}{lrs[-1]:.0e}",
             f"{'':>10}learning rate (log scale); | suggestion {s.lr:.1e}, v lowest loss"
             + (", x divergence" if s.divergence is not None else "")]
    return "\n".join(lines)


def print_lr_find(console: Console, result: LRFinderResult) -> None:
    held = result.held
    console.print(f"Learning-rate range test: {len(result.lrs)} steps of {held['model']} at "
                  f"batch {held['batch_size']}, {held['optimizer']}"
                  + (f" (momentum {held['momentum']:g})" if held.get("momentum") is not None
                     else "") + f", weight decay {held['weight_decay']:g}; stopped at "
                  f"{result.stopped}.", markup=False)
    console.print("Smoothed loss (running median):\n" + lr_find_chart(result), markup=False)
    console.print(f"Suggested learning rate: {result.lr:.2e} ({result.suggested.rule})",
                  markup=False)
    console.print(result.suggested.reason, markup=False)


class TerminalObserver(Observer):
    """Progress over batches (only on a terminal, refreshed by time, with the time left in
    the epoch and in the run) and one line per epoch as it ends."""

    def __init__(self, console: Console):
        self.console = console
        self.progress: Progress | None = None
        self.task = None
        self.t0 = time.perf_counter()
        self.steps_done = 0  # steps of this session (a resumed run counts from its restart)
        self.steps_left = 0
        self.epoch_steps = 0

    def on_train_start(self, info: dict) -> None:
        ds, cfg = info["dataset"], info["config"]
        start = info.get("start_epoch", 0)
        if start:
            where = (f"continuing with epoch {start + 1} of {cfg.epochs}" if start < cfg.epochs
                     else f"all {cfg.epochs} epochs are done: nothing to train (--epochs N "
                     "trains it longer)")
            self.console.print(f"Resuming {clean(cfg.out)} from last.pt after epoch {start}: "
                               f"{where}")
        self.console.print(
            f"Training [bold]{clean(cfg.model)}[/] ({info['params']:,} parameters) on "
            f"{ds['train_images']:,} images, validating on {ds['val_images']:,} "
            f"({clean(ds['val_source'])}); {ds['classes']} classes; device {info['device']}, "
            f"mixed precision {info['amp']}, batch {cfg.batch_size}"
            + (f" x {processes(info['dist'].world_size)} = "
               f"{cfg.batch_size * info['dist'].world_size} global ({info['dist'].backend})"
               if info["dist"].enabled else ""))
        if (index := ds.get("index") or {}).get("path"):
            self.console.print(f"Dataset index {clean(index['path'])}: {index['known']:,} "
                               f"answers from it, {index['checked']:,} files read",
                               markup=False)
        if info.get("weights") is not None:
            self.console.print(weights_line(info["weights"]), markup=False)
        if info.get("freeze_epochs"):
            n, bn = info["freeze_epochs"], cfg.frozen_bn
            self.console.print(
                f"Fine-tuning: {n} epoch(s) train the new head only (pretrained layers frozen, "
                f"their batch norm {'in eval mode' if bn == 'eval' else 'still re-estimating'}"
                f"), then all layers, the pretrained ones at {cfg.backbone_lr_scale:g} x lr",
                markup=False)
        if info.get("lr_find") is not None and info.get("start_epoch", 0) == 0:
            self.console.print(f"Learning rate {info['lr_find'].lr:.2e} from a range test: "
                               f"{info['lr_find'].suggested.reason}", markup=False)
        findings = info.get("findings", [])
        if findings:
            self.console.print(f"Dataset checks before the first epoch: {len(findings)} "
                               "finding(s) (all in trace.json and report.html)")
            for f in findings:
                self.console.print("  " + finding_line(f))
        self.t0 = time.perf_counter()
        self.steps_left = max(cfg.epochs - start, 0) * info.get("steps_per_epoch", 0)
        if self.console.is_terminal:
            self.progress = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(),
                                     TextColumn("{task.completed}/{task.total}"),
                                     TextColumn("loss {task.fields[loss]:.3f}"),
                                     TextColumn("{task.fields[rate]:,.0f} img/s"),
                                     TimeRemainingColumn(), TextColumn("{task.fields[eta]}"),
                                     console=self.console, transient=True,
                                     refresh_per_second=5)
            self.progress.start()

    def run_eta(self, step: int) -> str:
        """'run 0:03:10 left' from this session's average time per step (validation in)."""
        done = self.steps_done + step
        if not done:
            return ""
        left = (time.perf_counter() - self.t0) / done * max(self.steps_left - done, 0)
        return f"(run {duration(left)} left)"

    def on_batch_end(self, epoch, step, steps, loss, images_per_s) -> None:
        if self.progress is None:
            return
        self.epoch_steps = steps
        eta = self.run_eta(step)
        if self.task is None:
            self.task = self.progress.add_task("train", total=steps, epoch=epoch, loss=loss,
                                               rate=images_per_s, eta=eta)
        self.progress.update(self.task, completed=step, total=steps, epoch=epoch, loss=loss,
                             rate=images_per_s, eta=eta)

    def on_epoch_end(self, record: EpochRecord) -> None:
        if self.progress is not None and self.task is not None:
            self.steps_done += self.epoch_steps
            self.progress.remove_task(self.task)
            self.task = None
        cells = epoch_cells(record)
        self.console.print(
            f"epoch {cells[0]:>3}  loss {cells[1]}  acc {cells[2]}  val loss {cells[3]}  "
            f"val acc {cells[4]}  {cells[6]} s  {cells[7]} img/s  "
            f"{'head only · ' if record.frozen else ''}{record.observation}",
            markup=False)

    def on_train_end(self, result: TrainResult) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
