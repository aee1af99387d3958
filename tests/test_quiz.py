"""The quiz: questions whose right answers come from the trace; `pipetrace quiz` in a terminal."""

from __future__ import annotations

import copy
import io
import json

import pytest

from conftest import run_cli
from pipetrace.report.quiz import QUESTIONS, TEMPLATES, make_quiz
from pipetrace.report.quizcli import run_quiz
from pipetrace.report.terminal import make_console


@pytest.fixture(scope="module")
def demo_doc(demo_run) -> dict:
    return json.loads((demo_run / "trace.json").read_text(encoding="utf-8"))


def right_answers(doc: dict) -> dict[str, str]:
    """Template -> its right answer on ``doc`` (every template that applies)."""
    return {t.__name__: d.right for t in TEMPLATES if (d := t(doc)) is not None}


def full_doc(demo_doc: dict) -> dict:
    """The demo's trace with a per-class accuracy that differs between classes, so every
    template applies to it."""
    doc = copy.deepcopy(demo_doc)
    doc["training"]["per_class_accuracy"] = [0.9, 0.5, 0.8, 0.7]
    return doc


def test_the_demo_quiz_is_the_one_its_trace_gives(demo_doc):
    quiz = demo_doc["quiz"]
    assert len(quiz) == QUESTIONS
    assert quiz == [q.to_dict() for q in make_quiz(demo_doc)]  # derived, deterministic
    answers = right_answers(demo_doc)
    for q in quiz:
        assert 2 <= len(q["choices"]) <= 4 and len(set(q["choices"])) == len(q["choices"])
        assert 0 <= q["answer"] < len(q["choices"]) and q["explanation"]
        assert q["choices"][q["answer"]] == answers[q["topic"]]
    steps = demo_doc["data_flow"]["stages"]
    decode = step(demo_doc, "Decode")
    assert answers["loader_library"] == decode["library"] == "OpenCV"
    assert answers["batch_shape"] == " x ".join(map(str, steps[-2]["output"]["shape"]))
    assert answers["conversion_order"] == "Resize + crop"  # the fast path resizes first
    assert answers["probability_layer"] == demo_doc["prediction"]["layers"][-1]["kind"]
    assert answers["classifier_input"] == "flatten"  # the built-in CNN: pool -> flatten -> fc
    assert answers["branch_joins"] == "0"  # ... and a single chain: no branches meet


def step(doc, name):
    return next(s for s in doc["data_flow"]["stages"] if s["name"] == name)


def _output(name, key, value):
    def change(doc):
        step(doc, name)["output"][key] = value
    return change


def _model_input(key, value):
    def change(doc):
        [s for s in doc["data_flow"]["stages"] if s["seed"] < 5][-1]["output"][key] = value
    return change


def _slow_stage(doc):
    first = min(doc["data_flow"]["stages"], key=lambda s: s["micros_per_item"])
    first["micros_per_item"] = 1e9


def _convert_after_read(doc):
    steps = doc["data_flow"]["stages"]
    k = next(i for i, s in enumerate(steps) if s["seed"] == 2)
    steps.insert(1, steps.pop(k))  # the conversion now runs right after reading


def _fc_reads_pooling(doc):
    pred = doc["prediction"]
    fc = next(r for r in pred["layers"] if r["kind"] == "fully connected")
    pool = next(r for r in reversed(pred["layers"][:fc["index"] - 1]) if r["kind"] == "pooling")
    fc["inputs"] = [pool["index"]]


def _two_joins(doc):
    for op in doc["prediction"]["ops"][3:5]:
        op["join"] = True


def _losses_rise(doc):
    for i, e in enumerate(doc["training"]["epochs"]):
        e["train_loss"] = 0.5 + 0.1 * i


def _best_epoch_first(doc):
    doc["training"]["epochs"][0]["val_acc"] = 2.0


def _a_finding(doc):
    doc["findings"] = [*doc["findings"], {"check": "aaa-planted", "severity": "warning",
                                           "stage": "dataset", "title": "x", "evidence": "",
                                           "fix": "", "paths": []}]


def _set(*path_and_value):
    *path, value = path_and_value

    def change(doc):
        d = doc
        for p in path[:-1]:
            d = d[p]
        d[path[-1]] = value(d[path[-1]]) if callable(value) else value
    return change


def _predicted_other(doc):
    pred = doc["prediction"]
    pred["predicted"] = next(c for c in pred["classes"] if c != pred["predicted"])


def _last_layer(doc):
    doc["prediction"]["layers"][-1]["kind"] = "sigmoid"
    doc["prediction"]["layers"] = [layer for layer in doc["prediction"]["layers"]
                                   if layer["kind"] != "softmax"]


MUTATIONS = {  # template -> a change of the trace its right answer must follow
    "loader_library": lambda d: step(d, "Decode").update(library="PIL"),
    "channel_order": _output("Decode", "channel_order", "RGB"),
    "conversion_order": _convert_after_read,
    "batch_shape": _model_input("shape", [8, 3, 32, 32]),
    "batch_dtype": _model_input("dtype", "float16"),
    "normalized_range": _output("Augment batch", "max", 9.5),
    "slowest_stage": _slow_stage,
    "class_count": _set("run", "classes", lambda c: [*c, "extra"]),
    "training_images": _set("run", "dataset", "train_images", lambda n: n + 7),
    "parameter_count": _set("run", "model", "params", lambda n: n + 1),
    "input_size": _set("run", "preprocess", "size", lambda n: n + 16),
    "loss_trend": _losses_rise,
    "best_epoch": _best_epoch_first,
    "weakest_class": _set("training", "per_class_accuracy", [0.1, 0.5, 0.8, 0.7]),
    "predicted_class": _predicted_other,
    "probability_layer": _last_layer,
    "layer_count": _set("prediction", "layers", lambda layers: layers[:-2]),
    "classifier_input": _fc_reads_pooling,
    "branch_joins": _two_joins,
    "a_finding": _a_finding,
}


def test_every_answer_follows_the_trace(demo_doc):
    """Mutate the one fact a template reads: its right answer changes with it."""
    assert set(MUTATIONS) == {t.__name__ for t in TEMPLATES}  # a new template needs one too
    doc = full_doc(demo_doc)
    before = right_answers(doc)
    assert set(before) == set(MUTATIONS), set(MUTATIONS) - set(before)
    for name, mutate in MUTATIONS.items():
        changed = copy.deepcopy(doc)
        mutate(changed)
        after = right_answers(changed)
        assert after.get(name) != before[name], name


def test_two_runs_get_different_quizzes_with_shuffled_answer_positions(demo_doc):
    doc = full_doc(demo_doc)
    other = copy.deepcopy(doc)
    other["run"]["dir"] = "runs/another"
    other["meta"]["created"] = "2031-01-01T00:00:00+00:00"
    a, b = make_quiz(doc), make_quiz(other)
    assert [q.to_dict() for q in a] != [q.to_dict() for q in b]
    assert make_quiz(copy.deepcopy(doc)) == a  # the same trace, the same quiz
    topics = {t.__name__ for t in TEMPLATES}
    seen_topics, positions = set(), set()
    for i in range(200):
        for q in make_quiz(doc, seed=str(i).encode()):
            seen_topics.add(q.topic)
            if q.topic == "loader_library":
                positions.add(q.answer)
    assert seen_topics == topics  # the whole set is drawn from, not the same five
    assert len(positions) >= 3  # the right answer moves


def test_a_run_without_prediction_or_history_still_has_questions(demo_doc):
    doc = {**demo_doc, "prediction": None,
           "training": {**demo_doc["training"], "epochs": demo_doc["training"]["epochs"][:1]}}
    assert len(make_quiz(doc)) == QUESTIONS
    assert len(make_quiz({"data_flow": None, "findings": []})) == 1  # only "how many problems"


# -- `pipetrace quiz` through the real entry point -------------------------------------------------

def test_quiz_answers_flag_prints_every_answer(demo_run, demo_doc):
    proc = run_cli("quiz", str(demo_run), "--answers")
    assert proc.returncode == 0, proc.stderr
    for n, q in enumerate(demo_doc["quiz"], start=1):
        assert f"{n}. {q['question']}" in proc.stdout
        letter = "ABCD"[q["answer"]]
        assert f"Answer: {letter}. {q['choices'][q['answer']]}" in proc.stdout
    assert "Score" not in proc.stdout


def test_quiz_reads_answers_from_stdin_and_scores_them(demo_run, demo_doc):
    quiz = demo_doc["quiz"]
    letters = ["ABCD"[q["answer"]] for q in quiz]
    letters[-1] = "ABCD"[(quiz[-1]["answer"] + 1) % len(quiz[-1]["choices"])]  # one wrong
    proc = run_cli("quiz", str(demo_run / "trace.json"),
                   input="".join(f"{x.lower()}\n" for x in letters))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("Correct.") == len(quiz) - 1
    assert f"Not quite: the answer is {'ABCD'[quiz[-1]['answer']]}." in proc.stdout
    assert proc.stdout.rstrip().endswith(f"Score: {len(quiz) - 1} / {len(quiz)}")


def test_quiz_without_a_trace_is_one_error_line(tmp_path):
    proc = run_cli("quiz", str(tmp_path), input="")
    assert proc.returncode == 2
    assert proc.stderr.startswith("pipetrace: error: cannot read trace")


def test_quiz_prints_names_from_the_dataset_as_text():
    """Rich markup and terminal escapes in a class name are shown, not obeyed."""
    doc = {"quiz": [{"question": "Which class is [bold]this[/bold]?",
                     "choices": ["[red]cat[/red]", "dog\x1b[2J"], "answer": 0,
                     "explanation": "the folder was [link=x]cat[/link]"}]}
    out = io.StringIO()
    run_quiz(doc, answers=True, console=make_console(out))
    text = out.getvalue()
    assert "[bold]this[/bold]" in text and "A. [red]cat[/red]" in text
    assert "\x1b" not in text and "dog\\x1b[2J" in text
    assert "Answer: A. [red]cat[/red] — the folder was [link=x]cat[/link]" in text
