"""The key insight: a few sentences about this run, generated from its trace."""

from __future__ import annotations

from ..ops import join_summary
from .quiz import first_image_step, flow_steps, model_input

NEXT_STEP = {  # one per observations.KINDS: what the last epoch's observation suggests
    "converged": "it has converged: a harder dataset, a smaller model or fewer epochs would "
                 "show more",
    "improving": "it was still improving at the end: more epochs would likely help",
    "slowing": "progress was slowing: a few more epochs at a lower learning rate may add a little",
    "plateau": "it reached a plateau: try a lower learning rate, more augmentation or a larger "
               "model",
    "mixed": "loss and accuracy disagreed in the last epoch: train a few more epochs to see "
             "which way it goes",
    "setback": "the last epoch made it worse: if that repeats, lower the learning rate",
    "overfitting": "it is overfitting: add augmentation or weight decay, use more data, or stop "
                   "at the best epoch (best.pt)",
    "underfitting": "it is underfitting: use a larger model, a higher learning rate or more "
                    "epochs",
    "validation spike": "the validation loss spiked: check that it recovers; a lower learning "
                        "rate or larger batches steady batch norm",
    "validation at chance": "validation stays near chance while training learns: check that "
                            "both splits use the same preprocessing and the same class folders",
    "learning rate too high": "the loss rose from the start: lower the learning rate "
                              "(`pipetrace lr-find DATA` suggests one)",
    "unstable": "training was unstable: lower the learning rate or lengthen the warm-up",
    "diverging": "training diverged: lower the learning rate and check the inputs for NaN",
    "starting to learn": "one epoch is not enough: train for more",
}


def make_insight(doc: dict) -> list[str]:
    out: list[str] = []
    steps = flow_steps(doc)
    decoded, batch = first_image_step(steps, seed=1), model_input(steps)
    if decoded is not None and batch is not None:
        images = [s for s in steps if s["scope"] == "image"]
        out.append(
            f"{decoded['library']} decoded each file into a {decoded['output']['layout']} "
            f"{decoded['output']['channel_order']} array; it entered the batch as "
            f"{images[-1]['output']['channel_order']}, and the model received batches of "
            f"{' x '.join(map(str, batch['shape']))} {batch['dtype']}. "
            f"{doc['data_flow']['order']}")
    epochs = (doc.get("training") or {}).get("epochs", [])
    if epochs:
        first, last = epochs[0], epochs[-1]
        acc = last["val_acc"] if last["val_acc"] is not None else last["train_acc"]
        which = "validation" if last["val_acc"] is not None else "training"
        out.append(f"Over {len(epochs)} epoch(s) the training loss went from "
                   f"{first['train_loss']:.3f} to {last['train_loss']:.3f} and {which} accuracy "
                   f"reached {acc:.3f}.")
        kind = last.get("observation_kind", "")
        if kind in NEXT_STEP:
            out.append(f"What to try next: {NEXT_STEP[kind]}.")
    findings = doc.get("findings", [])
    problems = [f for f in findings if f["severity"] in ("error", "warning")]
    if problems:
        out.append(f"The checks raised {len(problems)} problem(s), first: "
                   f"{problems[0]['title']} — {problems[0]['fix']}.")
    else:
        out.append("The cross-library checks (channel order, layout, scale, normalization) "
                   "found no problem in what the model received.")
    pred = doc.get("prediction")
    if pred:
        truth = pred.get("true_class")
        verdict = "" if truth is None else (" (correct)" if truth == pred["predicted"]
                                            else f" (the true class is {truth})")
        out.append(f"The traced image was classified as {pred['predicted']} with probability "
                   f"{pred['top_k'][0][1]:.2f}{verdict}.")
        ops = [o for o in pred.get("ops") or [] if o["op"] != "input"]
        if ops:
            joins = [o["kind"] for o in ops if o["join"]]
            met = (f"; branches met {len(joins)} times ({join_summary(joins)})" if joins
                   else "; it is a single chain: no branches met")
            out.append(f"Its forward pass ran {len(ops)} operations in "
                       f"{len(pred.get('calls') or [])} module calls{met}.")
    return out
