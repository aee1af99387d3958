"""The quiz: questions whose right answers come from the trace; `pipetrace quiz` in a terminal."""

from __future__ import annotations

import copy
import io
import json

import pytest

from conftest import run_cli
from pipetrace.report.quiz import make_quiz
from pipetrace.report.quizcli import run_quiz
from pipetrace.report.terminal import make_console


@pytest.fixture(scope="module")
def demo_doc(demo_run) -> dict:
    return json.loads((demo_run / "trace.json").read_text(encoding="utf-8"))


def right_answers(doc: dict) -> dict[str, str]:
    """First words of each question -> its right choice, from a fresh quiz of ``doc``."""
    return {" ".join(q.question.split()[:3]): q.choices[q.answer] for q in make_quiz(doc)}


def test_the_demo_quiz_is_the_one_its_trace_gives(demo_doc):
    quiz = demo_doc["quiz"]
    assert len(quiz) >= 3
    assert quiz == [q.to_dict() for q in make_quiz(demo_doc)]  # derived, deterministic
    for q in quiz:
        assert 2 <= len(q["choices"]) <= 4 and len(set(q["choices"])) == len(q["choices"])
        assert 0 <= q["answer"] < len(q["choices"]) and q["explanation"]
    steps = demo_doc["data_flow"]["stages"]
    decode = next(s for s in steps if s["name"] == "Decode")
    model_input = [s for s in steps if s["seed"] < 5][-1]["output"]
    epochs = demo_doc["training"]["epochs"]
    assert right_answers(demo_doc) == {
        "Which library decoded": decode["library"],  # OpenCV
        "In which channel": decode["output"]["channel_order"],  # BGR
        "What shape did": " x ".join(map(str, model_input["shape"])),  # 32 x 3 x 224 x 224
        "Which layer turned": demo_doc["prediction"]["layers"][-1]["kind"],  # softmax
        "What produced the": "flatten",  # the built-in CNN: pool -> flatten -> fc
        "How many times": "0",  # ... and a single chain: no branches meet
        "What did the": "It fell" if epochs[-1]["train_loss"] < epochs[0]["train_loss"]
        else "It did not fall",
    }


def test_a_different_trace_gives_different_right_answers(demo_doc):
    doc = copy.deepcopy(demo_doc)
    steps = doc["data_flow"]["stages"]
    decode = next(s for s in steps if s["name"] == "Decode")
    decode["library"] = "PIL"
    decode["output"]["channel_order"] = "RGB"
    [s for s in steps if s["seed"] < 5][-1]["output"]["shape"] = [8, 3, 32, 32]
    for e, loss in zip(doc["training"]["epochs"], (0.5, 0.6, 0.7, 0.8, 0.9), strict=False):
        e["train_loss"] = loss  # rising
    before, after = right_answers(demo_doc), right_answers(doc)
    assert after == {**before, "Which library decoded": "PIL", "In which channel": "RGB",
                     "What shape did": "8 x 3 x 32 x 32", "What did the": "It did not fall"}
    assert before["Which library decoded"] == "OpenCV" and before["What did the"] == "It fell"


def test_the_graph_questions_follow_the_recorded_graph(demo_doc):
    """Rewire the trace as a ResNet's would be (fc fed by the pooling, two joins): the right
    answers move with it."""
    doc = copy.deepcopy(demo_doc)
    pred = doc["prediction"]
    fc = next(r for r in pred["layers"] if r["kind"] == "fully connected")
    pool = next(r for r in reversed(pred["layers"][:fc["index"] - 1]) if r["kind"] == "pooling")
    fc["inputs"] = [pool["index"]]
    for op in pred["ops"][3:5]:
        op["join"] = True
    answers = right_answers(doc)
    assert answers["What produced the"] == "pooling" and answers["How many times"] == "2"
    why = next(q for q in make_quiz(doc) if q.question.startswith("How many times"))
    assert f"operation {pred['ops'][3]['index']}" in why.explanation


def test_a_run_without_prediction_or_history_still_has_three_questions(demo_doc):
    doc = {**demo_doc, "prediction": None,
           "training": {**demo_doc["training"], "epochs": demo_doc["training"]["epochs"][:1]}}
    assert len(make_quiz(doc)) == 3


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
