"""The quiz: multiple-choice questions whose right answers come from this run's trace."""

from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Question:
    question: str
    choices: list[str]
    answer: int  # index of the right choice
    explanation: str  # shown after answering, with the evidence from the trace

    def to_dict(self) -> dict:
        return asdict(self)


def _ask(question: str, right: str, wrong: list[str], why: str) -> Question:
    """Shuffle the choices deterministically (same trace, same quiz)."""
    choices = [right, *[w for w in dict.fromkeys(wrong) if w != right][:3]]
    rng = random.Random(hashlib.sha256(question.encode()).digest())
    rng.shuffle(choices)
    return Question(question, choices, choices.index(right), why)


def _dims(shape) -> str:
    return " x ".join(str(d) for d in shape)


def flow_steps(doc: dict) -> list[dict]:
    """The traced steps of the document's data flow, in the order they ran."""
    return (doc.get("data_flow") or {}).get("stages", [])


def first_image_step(steps: list[dict], seed: int) -> dict | None:
    """The first step of seed stage ``seed`` whose output is an image (not bytes)."""
    return next((s for s in steps if s["seed"] == seed
                 and s["output"]["layout"] not in ("bytes", "file")), None)


def model_input(steps: list[dict]) -> dict | None:
    """What the model received: the output of the last step before stage 5."""
    before = [s for s in steps if s["seed"] < 5]
    return before[-1]["output"] if before else None


def _graph_questions(pred: dict) -> list[Question]:
    """Questions about the recorded graph: what fed the classifier, how often branches met."""
    qs: list[Question] = []
    rows = pred["layers"]
    fc = next((r for r in rows if r["kind"] == "fully connected"), None)
    if fc is not None and fc["inputs"] and fc["inputs"][0]:
        src = rows[fc["inputs"][0] - 1]
        qs.append(_ask(f"What produced the tensor that the first fully connected layer "
                       f"({fc['name']}) read?", src["kind"],
                       ["pooling", "convolution", "softmax", "ReLU", "flatten"],
                       f"In the recorded graph, row {fc['index']} ({fc['name']}) read the "
                       f"{_dims(src['output_shape'])} output of row {src['index']}, "
                       f"{src['name']} ({src['kind']})."))
    ops = pred.get("ops") or []
    if ops:
        joins = [o for o in ops if o["join"]]
        n = len(joins)
        where = (f" first in {joins[0]['module'] or 'the forward'} ({joins[0]['kind']}, "
                 f"operation {joins[0]['index']})" if joins else "")
        qs.append(_ask("How many times did two branches of the network meet (a residual add, a "
                       "concatenation) on this image's way through the model?", str(n),
                       [str(n + 1), str(max(n - 1, 0)), str(2 * n + 2), "0", "1"],
                       f"{n} of the {sum(o['op'] != 'input' for o in ops)} recorded operations "
                       f"read the outputs of two or more earlier operations{where}."))
    return qs


def make_quiz(doc: dict) -> list[Question]:
    """At least three questions about what the pipeline really did."""
    qs: list[Question] = []
    steps = flow_steps(doc)
    decoded = first_image_step(steps, seed=1)
    if decoded is not None:
        lib = decoded["library"]
        qs.append(_ask("Which library decoded the image files in this run?", lib,
                       ["PIL", "torchvision", "NumPy", "OpenCV"],
                       f"Step {decoded['index']} ran {decoded['operation']} ({lib}), giving a "
                       f"{_dims(decoded['output']['shape'])} {decoded['output']['dtype']} "
                       "array."))
        order = decoded["output"]["channel_order"]
        if order in ("RGB", "BGR"):
            entering = [s for s in steps if s["scope"] == "image"][-1]
            qs.append(_ask("In which channel order did the decoder hand over the pixels?", order,
                           ["RGB", "BGR", "RGBA", "HSV"],
                           f"Checked against an independent PIL decode of the same file: "
                           f"{order}. The image entered the batch as "
                           f"{entering['output']['channel_order']} (step {entering['index']}, "
                           f"{entering['name']})."))
    batch = model_input(steps)
    if batch is not None and len(batch["shape"]) == 4:
        n, c, h, w = batch["shape"]
        qs.append(_ask("What shape did a training batch have when it reached the model?",
                       _dims(batch["shape"]),
                       [_dims([n, h, w, c]), _dims([c, h, w]), _dims([h, w, c, n]),
                        _dims([n, c, h // 2 or 1, w // 2 or 1])],
                       f"The batch stages handed the model {n} images of {c} x {h} x {w}: "
                       "N x C x H x W."))
    pred = doc.get("prediction")
    if pred:
        kinds = [layer["kind"] for layer in pred["layers"]]
        prob_layer = "softmax" if "softmax" in kinds else kinds[-1]
        qs.append(_ask("Which layer turned the model's scores into probabilities?", prob_layer,
                       ["ReLU", "pooling", "fully connected", "convolution"],
                       f"The last layer ({prob_layer}) output sums to 1; its top class was "
                       f"{pred['predicted']} at {pred['top_k'][0][1]:.2f}."))
        qs.extend(_graph_questions(pred))
    epochs = (doc.get("training") or {}).get("epochs", [])
    if len(epochs) >= 2:
        first, last = epochs[0]["train_loss"], epochs[-1]["train_loss"]
        fell = last < first
        right = "It fell" if fell else "It did not fall"
        qs.append(_ask("What did the training loss do over the epochs?", right,
                       ["It fell", "It did not fall", "It stayed exactly the same",
                        "It became NaN"],
                       f"Epoch 1: {first:.3f}; epoch {epochs[-1]['epoch']}: {last:.3f}."))
    return qs
