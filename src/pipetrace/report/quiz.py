"""The quiz: multiple-choice questions about what THIS run did, answered from its trace.

Each template in :data:`TEMPLATES` reads one fact of the trace document (a data-flow step's
library, order, shape, dtype or time, the classes, the curve, the findings, the prediction and
its graph) and asks about it,
with wrong choices built around the right one. ``make_quiz`` draws :data:`QUESTIONS` of the
templates that apply, one about each part of the run (:data:`GROUPS`) first, seeded by the run (so two runs get different quizzes, and the same
trace always gives the same one), and shuffles each question's choices with that seed.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass

QUESTIONS = 6  # questions per quiz (fewer when fewer templates apply)


@dataclass(frozen=True)
class Question:
    question: str
    choices: list[str]
    answer: int  # index of the right choice
    explanation: str  # shown after answering, with the evidence from the trace
    topic: str = ""  # the template that asked it (see TEMPLATES)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Draft:
    """A question before its choices are shuffled."""

    question: str
    right: str
    wrong: list[str]
    explanation: str


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


def _epochs(doc: dict) -> list[dict]:
    return (doc.get("training") or {}).get("epochs", [])


# -- the templates: doc -> Draft, or None when the trace lacks what it asks about -------------

def loader_library(doc: dict) -> Draft | None:
    s = first_image_step(flow_steps(doc), seed=1)
    if s is None:
        return None
    out = s["output"]
    return Draft("Which library decoded the image files in this run?", s["library"],
                 ["PIL", "torchvision", "NumPy", "OpenCV", "imageio"],
                 f"Step {s['index']} ran {s['operation']} ({s['library']}), giving a "
                 f"{_dims(out['shape'])} {out['dtype']} array.")


def channel_order(doc: dict) -> Draft | None:
    steps = flow_steps(doc)
    s = first_image_step(steps, seed=1)
    if s is None or s["output"]["channel_order"] not in ("RGB", "BGR"):
        return None
    order = s["output"]["channel_order"]
    entering = [x for x in steps if x["scope"] == "image"][-1]
    return Draft("In which channel order did the decoder hand over the pixels?", order,
                 ["RGB", "BGR", "RGBA", "HSV"],
                 f"Checked against an independent PIL decode of the same file: {order}. The "
                 f"image entered the batch as {entering['output']['channel_order']} (step "
                 f"{entering['index']}, {entering['name']}).")


def conversion_order(doc: dict) -> Draft | None:
    """What ran just before the BGR to RGB conversion (the fast path resizes first)."""
    steps = flow_steps(doc)
    k = next((i for i, s in enumerate(steps) if s["seed"] == 2), None)
    if not k:
        return None
    before = steps[k - 1]
    return Draft(f"Which step ran just before {steps[k]['name']!r} in this run?",
                 before["name"], [s["name"] for s in steps if s is not before],
                 f"Step {before['index']} ({before['name']}, seed stage {before['seed']}) "
                 f"handed it {_dims(before['output']['shape'])} {before['output']['dtype']}. "
                 f"{(doc.get('data_flow') or {}).get('order', '')}")


def batch_shape(doc: dict) -> Draft | None:
    s = model_input(flow_steps(doc))
    if s is None or len(s["shape"]) != 4:
        return None
    n, c, h, w = s["shape"]
    return Draft("What shape did a training batch have when it reached the model?",
                 _dims([n, c, h, w]),
                 [_dims([n, h, w, c]), _dims([c, h, w]), _dims([h, w, c, n]),
                  _dims([n, c, h // 2 or 1, w // 2 or 1])],
                 f"The batch steps handed the model {n} images of {c} x {h} x {w}: "
                 "N x C x H x W.")


def batch_dtype(doc: dict) -> Draft | None:
    s = model_input(flow_steps(doc))
    if s is None or s["min"] is None:
        return None
    dtype = s["dtype"]
    return Draft("Which dtype did the batch have when it reached the model?", dtype,
                 ["uint8", "float32", "float16", "float64", "int64"],
                 f"The model's input was a {s['pytype']} of {dtype}, range "
                 f"[{s['min']:.3g}, {s['max']:.3g}].")


def normalized_range(doc: dict) -> Draft | None:
    transforms = [s for s in flow_steps(doc) if s["seed"] == 3]
    if not transforms or transforms[-1]["output"]["min"] is None:
        return None
    s = transforms[-1]
    lo, hi = s["output"]["min"], s["output"]["max"]
    right = f"[{lo:.2f}, {hi:.2f}]"
    return Draft("What range did the values span after the last transform?", right,
                 ["[0.00, 255.00]", "[0.00, 1.00]", "[-1.00, 1.00]", f"[{lo / 2:.2f}, {hi / 2:.2f}]"],
                 f"Step {s['index']} ({s['name']}: {s['operation']}) gave "
                 f"{s['output']['dtype']} values from {lo:.3g} to {hi:.3g}.")


def slowest_stage(doc: dict) -> Draft | None:
    steps = [s for s in flow_steps(doc) if s["seed"] <= 4]
    if len(steps) < 2:
        return None
    slow = max(steps, key=lambda s: s["micros_per_item"])
    return Draft("Which step of the data flow took the most time per image?", slow["name"],
                 [s["name"] for s in steps],
                 f"{slow['name']} ({slow['library']}) took {slow['micros_per_item']:,.1f} µs per "
                 f"image, the most of the data-flow steps ({doc['data_flow']['timing']}).")


def class_count(doc: dict) -> Draft | None:
    classes = (doc.get("run") or {}).get("classes")
    if not classes:
        return None
    n = len(classes)
    return Draft("How many classes did this run's model learn to tell apart?", str(n),
                 [str(n + 1), str(max(n - 1, 1)), str(2 * n), str(n + 10)],
                 f"The checkpoint's class list: {', '.join(classes[:8])}"
                 + (", ..." if n > 8 else "") + ".")


def training_images(doc: dict) -> Draft | None:
    ds = (doc.get("run") or {}).get("dataset", {})
    if "train_images" not in ds:
        return None
    n, v = ds["train_images"], ds.get("val_images", 0)
    return Draft("How many images did this run train on (per epoch)?", f"{n:,}",
                 [f"{n + v:,}", f"{v:,}", f"{2 * n:,}", f"{n // 2:,}"],
                 f"{n:,} training images; {v:,} held for validation ({ds.get('val_source', '?')}).")


def parameter_count(doc: dict) -> Draft | None:
    model = (doc.get("run") or {}).get("model", {})
    if not model.get("params"):
        return None
    p = model["params"]
    return Draft(f"How many weights does this run's {model['name']} have?", f"{p:,}",
                 [f"{p * 10:,}", f"{max(p // 10, 1):,}", f"{p * 100:,}", f"{p * 3:,}"],
                 f"Counted from the model that trained: {p:,} parameters.")


def input_size(doc: dict) -> Draft | None:
    pre = (doc.get("run") or {}).get("preprocess")
    if not pre:
        return None
    s = pre["size"]
    return Draft("What side length, in pixels, did the model's input have?", str(s),
                 [str(v) for v in (224, 256, 32, 64, 299, 2 * s) if v != s],
                 f"The preprocessing contract saved with the model: {s} x {s}, crop_pct "
                 f"{pre['crop_pct']}.")


def loss_trend(doc: dict) -> Draft | None:
    epochs = _epochs(doc)
    if len(epochs) < 2:
        return None
    first, last = epochs[0]["train_loss"], epochs[-1]["train_loss"]
    return Draft("What did the training loss do over the epochs?",
                 "It fell" if last < first else "It did not fall",
                 ["It fell", "It did not fall", "It stayed exactly the same", "It became NaN"],
                 f"Epoch 1: {first:.3f}; epoch {epochs[-1]['epoch']}: {last:.3f}.")


def best_epoch(doc: dict) -> Draft | None:
    epochs = [e for e in _epochs(doc) if e.get("val_acc") is not None]
    if len(epochs) < 2:
        return None
    best = max(epochs, key=lambda e: e["val_acc"])
    return Draft("In which epoch was the validation accuracy highest?", str(best["epoch"]),
                 [str(e["epoch"]) for e in epochs],
                 f"Epoch {best['epoch']} reached {best['val_acc']:.3f} "
                 f"(epoch 1: {epochs[0]['val_acc']:.3f}).")


def weakest_class(doc: dict) -> Draft | None:
    accs = (doc.get("training") or {}).get("per_class_accuracy") or []
    classes = (doc.get("run") or {}).get("classes") or []
    known = [(a, c) for a, c in zip(accs, classes, strict=False) if a is not None]
    if len(known) < 2 or len({a for a, _ in known}) < 2:
        return None
    acc, name = min(known)
    return Draft("Which class had the lowest validation accuracy?", name,
                 [c for _, c in known],
                 f"{name}: {acc:.2f}; the best class reached {max(known)[0]:.2f}.")


def predicted_class(doc: dict) -> Draft | None:
    pred = doc.get("prediction")
    if not pred or len(pred.get("classes", [])) < 2:
        return None
    return Draft("Which class did the model predict for the traced validation image?",
                 pred["predicted"], list(pred["classes"]),
                 f"Top class {pred['top_k'][0][0]} at {pred['top_k'][0][1]:.2f}"
                 + (f"; its folder says {pred['true_class']}." if pred.get("true_class")
                    else "."))


def probability_layer(doc: dict) -> Draft | None:
    pred = doc.get("prediction")
    if not pred:
        return None
    kinds = [layer["kind"] for layer in pred["layers"]]
    right = "softmax" if "softmax" in kinds else kinds[-1]
    return Draft("Which layer turned the model's scores into probabilities?", right,
                 ["ReLU", "pooling", "fully connected", "convolution", "batch norm"],
                 f"The last layer ({right}) output sums to 1; its top class was "
                 f"{pred['predicted']} at {pred['top_k'][0][1]:.2f}.")


def layer_count(doc: dict) -> Draft | None:
    pred = doc.get("prediction")
    if not pred:
        return None
    n = len(pred["layers"])
    return Draft("How many layers did the prediction trace record for one image?", str(n),
                 [str(n + 2), str(max(n - 3, 1)), str(2 * n), str(n + 7)],
                 f"From the {pred['layers'][0]['kind']} ({_dims(pred['layers'][0]['output_shape'])}) "
                 f"to the {pred['layers'][-1]['kind']}: {n} records; the top class was "
                 f"{pred['predicted']}.")


def classifier_input(doc: dict) -> Draft | None:
    """What the recorded graph says fed the first fully connected layer."""
    pred = doc.get("prediction")
    rows = pred["layers"] if pred else []
    fc = next((r for r in rows if r["kind"] == "fully connected"), None)
    if fc is None or not fc.get("inputs") or not fc["inputs"][0]:
        return None
    src = rows[fc["inputs"][0] - 1]
    return Draft(f"What produced the tensor that the first fully connected layer ({fc['name']}) "
                 "read?", src["kind"], ["pooling", "convolution", "softmax", "ReLU", "flatten"],
                 f"In the recorded graph, row {fc['index']} ({fc['name']}) read the "
                 f"{_dims(src['output_shape'])} output of row {src['index']}, {src['name']} "
                 f"({src['kind']}).")


def branch_joins(doc: dict) -> Draft | None:
    """How often two branches of the network met (residual adds, concatenations)."""
    ops = (doc.get("prediction") or {}).get("ops") or []
    if not ops:
        return None
    joins = [o for o in ops if o["join"]]
    n = len(joins)
    where = (f" first in {joins[0]['module'] or 'the forward'} ({joins[0]['kind']}, operation "
             f"{joins[0]['index']})" if joins else "")
    return Draft("How many times did two branches of the network meet (a residual add, a "
                 "concatenation) on this image's way through the model?", str(n),
                 [str(n + 1), str(max(n - 1, 0)), str(2 * n + 2), "0", "1"],
                 f"{n} of the {sum(o['op'] != 'input' for o in ops)} recorded operations read "
                 f"the outputs of two or more earlier operations{where}.")


CHECK_NAMES = ("channel-order", "exif", "layout", "scale", "normalization", "skew",
               "class-order", "leakage", "duplicate", "placeholder", "empty-class", "bad-files")


def a_finding(doc: dict) -> Draft | None:
    findings = doc.get("findings", [])
    if not findings:
        return Draft("How many problems did the checks report for this run?", "none",
                     ["1", "2", "3"], "The checks (data flow, batches, dataset) found nothing.")
    raised = sorted({f["check"] for f in findings})
    f = next(f for f in findings if f["check"] == raised[0])
    return Draft("Which of these checks raised a finding in this run?", raised[0],
                 [c for c in CHECK_NAMES if c not in raised],
                 f"{f['severity']}: {f['title']}.")


# The templates by what part of the run they ask about; a quiz asks about every part the
# trace has, then fills up from all of them.
GROUPS: dict[str, tuple[Callable[[dict], Draft | None], ...]] = {
    "data flow": (loader_library, channel_order, conversion_order, batch_shape, batch_dtype,
                  normalized_range, slowest_stage),
    "dataset and model": (class_count, training_images, parameter_count, input_size),
    "training": (loss_trend, best_epoch, weakest_class),
    "prediction": (predicted_class, probability_layer, layer_count),
    "model graph": (classifier_input, branch_joins),
    "findings": (a_finding,),
}
TEMPLATES = tuple(t for group in GROUPS.values() for t in group)


def run_seed(doc: dict) -> bytes:
    """A digest of what makes this run this run: its folder, time, classes and curve."""
    identity = {"dir": (doc.get("run") or {}).get("dir"),
                "created": doc.get("meta", {}).get("created"),
                "classes": (doc.get("run") or {}).get("classes"),
                "losses": [e.get("train_loss") for e in _epochs(doc)]}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).digest()


def ask(draft: Draft, rng: random.Random, topic: str = "") -> Question:
    """The right choice and up to three distinct wrong ones, in an order drawn from ``rng``."""
    wrong = [w for w in dict.fromkeys(draft.wrong) if w != draft.right]
    choices = [draft.right, *rng.sample(wrong, min(3, len(wrong)))]
    rng.shuffle(choices)
    return Question(draft.question, choices, choices.index(draft.right), draft.explanation,
                    topic)


def make_quiz(doc: dict, *, seed: bytes | None = None, count: int = QUESTIONS) -> list[Question]:
    """``count`` questions drawn from the templates that apply to this trace: one about each
    part of the run the trace has (:data:`GROUPS`), the rest from all of them."""
    rng = random.Random(seed if seed is not None else run_seed(doc))
    drafts = {t.__name__: d for t in TEMPLATES if (d := t(doc)) is not None}
    chosen: list[str] = []
    for group in GROUPS.values():
        names = [t.__name__ for t in group if t.__name__ in drafts]
        if names and len(chosen) < count:
            chosen.append(rng.choice(names))
    rest = [name for name in drafts if name not in chosen]
    chosen += rng.sample(rest, min(count - len(chosen), len(rest)))
    order = [t.__name__ for t in TEMPLATES]
    return [ask(drafts[name], rng, name) for name in sorted(chosen, key=order.index)]
