"""`pipetrace quiz`: the run's quiz in the terminal, interactive or with the answers."""

from __future__ import annotations

import sys

from .console import clean, make_console


def run_quiz(doc: dict, *, answers: bool = False, stdin=None, console=None) -> int:
    """Ask each question (or print it with its answer); return 0."""
    console = console or make_console()
    stdin = stdin or sys.stdin
    quiz = doc.get("quiz", [])
    score = 0
    for n, q in enumerate(quiz, start=1):
        console.print(f"\n[bold]{n}. {clean(q['question'])}[/]")
        for i, c in enumerate(q["choices"]):
            console.print(f"   {'ABCDEFG'[i]}. {clean(c)}")
        right = "ABCDEFG"[q["answer"]]
        if answers:
            console.print(f"   Answer: {right}. {clean(q['choices'][q['answer']])} — "
                          f"{clean(q['explanation'])}")
            continue
        console.print("   Your answer: ", end="")
        reply = (stdin.readline() or "").strip().upper()[:1]
        if reply == right:
            score += 1
            console.print(f"   [green]Correct.[/] {clean(q['explanation'])}")
        else:
            console.print(f"   [red]Not quite[/]: the answer is {right}. {clean(q['explanation'])}")
    if not answers:
        console.print(f"\nScore: {score} / {len(quiz)}")
    return 0
