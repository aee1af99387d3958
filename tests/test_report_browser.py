"""The HTML report in a real browser (headless Chromium over its DevTools protocol).

Every test opens a page from a real run and checks what a reader gets: each section filled
with this run's numbers, no request beyond the file itself, no console error (CSP violations
included), a working quiz, a layout that fits a phone and paper, and dataset or checkpoint
strings that stay text. Why the DevTools protocol and not Selenium: ``tests/browser.py``.
"""

from __future__ import annotations

import json
import re
import struct

import pytest

from browser import Browser, Page, find_browser
from pipetrace.report.quiz import GROUPS
from pipetrace.report.svg import _short_count

LAPTOP = dict(width=1280, height=900)
PHONE = dict(width=390, height=844, mobile=True)
SECTIONS = ("data-flow", "batch", "findings", "training", "errors", "prediction", "quiz",
            "insight")

# What the page shows, gathered in one evaluation: text per section, table rows, pictures.
PAGE_CONTENT = """(() => {
  const all = (s, root = document) => [...root.querySelectorAll(s)];
  const text = e => e.textContent.replace(/\\s+/g, ' ').trim();
  const rows = s => all(s).slice(1).map(r => all('td', r).map(text));
  return {
    header: text(document.querySelector('header')),
    sections: Object.fromEntries(all('section').map(s => [s.id, text(s)])),
    stageRows: rows('#data-flow table.stages tr'),
    pictures: all('img').map(i => [i.closest('section').id, i.complete && i.naturalWidth > 0,
                                   i.getAttribute('src').slice(0, 22)]),
    epochRows: rows('#training table.wide tr'),
    chartLines: all('#training svg.chart').map(s => all('polyline', s).length),
    confusion: all('#training table.confusion tr').slice(1).map(
        r => all('td', r).map(td => Number(td.textContent))),
    layerRows: rows('#prediction table.wide tr'),
    topK: all('#prediction table.topk tr').map(
        r => [text(r.cells[0]), Number(r.querySelector('meter').value)]),
    questions: all('#quiz .question').map(
        d => [text(d.querySelector('p b')), all('button.choice', d).map(text)]),
    insight: all('#insight p').map(text),
  };
})()"""

# Elements that stick out of the viewport sideways, outside the tables' scroll containers.
OVERFLOW = """(() => [...document.querySelectorAll('body *')]
  .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1 && !e.closest('.scroll'))
  .map(e => e.tagName + '.' + e.className))()"""

# The DOM's executable surface: scripts, inline handlers, javascript: URLs, non-data images.
ACTIVE_CONTENT = """(() => {
  const all = [...document.querySelectorAll('*')];
  return {
    scripts: document.scripts.length,
    handlers: all.flatMap(e => [...e.attributes].filter(a => a.name.startsWith('on'))
                                 .map(a => e.tagName + ' ' + a.name)),
    urls: all.flatMap(e => [...e.attributes].filter(a => /^\\s*javascript:/i.test(a.value))
                             .map(a => e.tagName + ' ' + a.name)),
    images: [...document.images].map(i => i.getAttribute('src')).filter(s => !s.startsWith('data:')),
    pwned: typeof window.__pwned,
  };
})()"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    exe = find_browser()
    if exe is None:
        pytest.skip("no Chromium on PATH (chromium, chromium-browser, google-chrome); "
                    ".ci/run installs Debian's chromium package")
    b = Browser(exe, tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


@pytest.fixture
def open_page(browser):
    pages: list[Page] = []

    def _open(path, **viewport) -> Page:
        pages.append(browser.open_page(path, **viewport))
        return pages[-1]

    yield _open
    for page in pages:
        page.close()


def assert_offline_and_quiet(page: Page, path) -> None:
    """Only the file itself and its inline data: pictures were fetched; nothing went wrong."""
    elsewhere = [u for u in page.requests() if u != path.resolve().as_uri()
                 and not u.startswith("data:image/png;base64,")]
    assert elsewhere == [], elsewhere
    assert page.errors() == []
    assert page.dialogs() == []


def assert_png(data: bytes, width: int) -> None:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", data[16:24])  # IHDR
    assert w == width and h > 2000, (w, h)  # the whole page, not only the viewport
    assert len(data) > 50_000  # pictures and text, not a blank page


def test_every_section_is_filled_with_this_runs_numbers(demo_run, open_page, tmp_path):
    doc = json.loads((demo_run / "trace.json").read_text())
    report = demo_run / "report.html"
    page = open_page(report, **LAPTOP)
    seen = page.eval(PAGE_CONTENT)

    assert list(seen["sections"]) == list(SECTIONS)
    assert f"{doc['run']['model']['params']:,} parameters" in seen["header"]
    # data flow: every traced step, each with its seed stage, library, operation, picture
    steps = doc["data_flow"]["stages"]
    assert len(seen["stageRows"]) == len(steps) == 8
    for row, step in zip(seen["stageRows"], steps, strict=True):
        assert step["name"] in row[1] and f"stage {step['seed']}" in row[1]
        assert row[2] == step["library"] and row[4] == step["operation"]
        assert row[6] == f"{step['micros_per_item']:,.1f}"
    assert " × ".join(map(str, steps[-2]["output"]["shape"])) in seen["stageRows"][-2][5]
    assert doc["data_flow"]["order"] in seen["sections"]["data-flow"]
    pictures = [p for p in seen["pictures"] if p[0] == "data-flow"]
    assert len(pictures) == sum(s["picture"] is not None for s in steps) == 6
    assert all(p[1] for p in pictures)
    # findings: each one, or the all-clear
    for finding in doc["findings"]:
        assert finding["title"] in seen["sections"]["findings"]
    if not doc["findings"]:
        assert "No problems found" in seen["sections"]["findings"]
    # training: one row per epoch with its numbers, two charts, the confusion matrix
    epochs = doc["training"]["epochs"]
    assert [r[0] for r in seen["epochRows"]] == [str(e["epoch"]) for e in epochs]
    assert seen["epochRows"][-1][4] == f"{epochs[-1]['val_acc']:.3f}"
    assert seen["epochRows"][-1][-1] == epochs[-1]["observation"]
    assert seen["chartLines"] == [2, 2]  # train and validation, loss and accuracy
    assert seen["confusion"] == doc["training"]["confusion"]
    # prediction: every layer, the top classes, the three pictures
    pred = doc["prediction"]
    assert [r[1] for r in seen["layerRows"]] == [layer["name"] for layer in pred["layers"]]
    assert seen["topK"] == [[c, pytest.approx(p)] for c, p in pred["top_k"]]
    assert f"predicted {pred['predicted']}" in seen["sections"]["prediction"]
    pictures = [p for p in seen["pictures"] if p[0] == "prediction"]
    assert len(pictures) == 3 and all(p[1] for p in pictures)
    # quiz and key insight, as the trace has them
    assert len(doc["quiz"]) >= 3
    assert seen["questions"] == [
        [f"{n}. {q['question']}", [f"{'ABCD'[i]}. {c}" for i, c in enumerate(q["choices"])]]
        for n, q in enumerate(doc["quiz"], start=1)]
    assert seen["insight"] == doc["insight"]
    assert_offline_and_quiet(page, report)

    shot = page.screenshot()
    (tmp_path / "report-laptop.png").write_bytes(shot)
    assert_png(shot, LAPTOP["width"])


ERRORS_CONTENT = """(() => {
  const all = (s, root = document) => [...root.querySelectorAll(s)];
  const text = e => e.textContent.replace(/\\s+/g, ' ').trim();
  return {
    batchPictures: all('#batch figure.pair img').map(i => i.complete && i.naturalWidth > 0),
    batchLabels: all('#batch figure.pair b').map(text),
    perClass: all('#per-class tr').slice(1).map(r => all('td', r).map(text)),
    bars: all('#errors svg.chart rect.bin').length,
    binCounts: all('#errors svg.chart text.count').map(text),
    gallery: all('#errors figure.error').map(f => [all('img', f).filter(
        i => i.complete && i.naturalWidth > 0).length, text(f.querySelector('a'))]),
    issueLinks: all('#label-issues a').map(a => a.getAttribute('href')),
  };
})()"""


def test_the_batch_and_error_sections_show_this_runs_records(demo_run, open_page):
    doc = json.loads((demo_run / "trace.json").read_text())
    page = open_page(demo_run / "report.html", **LAPTOP)
    seen = page.eval(ERRORS_CONTENT)
    bv, er = doc["batch_view"], doc["errors"]
    assert len(seen["batchPictures"]) == 2 * len(bv["paths"]) and all(seen["batchPictures"])
    assert seen["batchLabels"] == bv["labels"]
    assert seen["perClass"] == [[c["name"], f"{c['precision']:.3f}", f"{c['recall']:.3f}",
                                 f"{c['f1']:.3f}", f"{c['support']:,}"] for c in er["per_class"]]
    assert seen["bars"] == sum(b["count"] > 0 for b in er["calibration"])
    assert seen["binCounts"] == [_short_count(b["count"]) for b in er["calibration"]
                                 if b["count"]]
    assert [g[1] for g in seen["gallery"]] == [x["path"].split("/")[-1] for x in er["gallery"]]
    assert all(n == 3 for n, _ in seen["gallery"])  # input, original, Grad-CAM
    assert len(seen["issueLinks"]) == min(50, len(er["label_issues"]))
    assert all(u.startswith("file:///") for u in seen["issueLinks"])
    assert_offline_and_quiet(page, demo_run / "report.html")


def test_quiz_answers_give_feedback(demo_run, open_page, tmp_path):
    doc = json.loads((demo_run / "trace.json").read_text())
    page = open_page(demo_run / "report.html", **LAPTOP)
    first = 0  # index of each question's first choice among all choices
    for n, q in enumerate(doc["quiz"]):
        pick = q["answer"] if n % 2 == 0 else (q["answer"] + 1) % len(q["choices"])
        page.click("#quiz button.choice", first + pick)
        first += len(q["choices"])
        feedback = page.eval(f"document.querySelectorAll('#quiz .feedback')[{n}].textContent")
        verdict = "Correct. " if pick == q["answer"] else "Not quite. "
        assert feedback == verdict + q["explanation"]
        marked = page.eval(f"[...document.querySelectorAll('#quiz .question')[{n}]"
                           ".querySelectorAll('button.right')].map(b => b.textContent)")
        assert marked == [f"{'ABCD'[q['answer']]}. {q['choices'][q['answer']]}"]
    assert_offline_and_quiet(page, demo_run / "report.html")
    (tmp_path / "report-quiz.png").write_bytes(page.screenshot())


def test_the_page_fits_a_phone(demo_run, open_page, tmp_path):
    page = open_page(demo_run / "report.html", **PHONE)
    assert page.eval("window.innerWidth") == PHONE["width"]  # the viewport meta is honoured
    assert page.eval("document.documentElement.scrollWidth") <= PHONE["width"]
    assert page.eval(OVERFLOW) == []
    assert page.eval("parseFloat(getComputedStyle(document.body).fontSize)") >= 14
    # the data flow is one card per stage, its column names shown beside the values
    assert page.eval("getComputedStyle(document.querySelector('table.stages tr + tr')).display") \
        == "grid"
    assert_offline_and_quiet(page, demo_run / "report.html")
    shot = page.screenshot()
    (tmp_path / "report-phone.png").write_bytes(shot)
    assert_png(shot, PHONE["width"])


def test_the_page_prints(demo_run, open_page):
    page = open_page(demo_run / "report.html", width=720, height=1000)  # A4 minus margins
    page.send("Emulation.setEmulatedMedia", media="print")
    clipped = page.eval("[...document.querySelectorAll('.scroll')]"
                        ".filter(s => s.scrollWidth > s.clientWidth + 1).length")
    assert clipped == 0  # paper cannot scroll sideways
    assert page.eval(OVERFLOW) == []
    pdf = page.pdf()
    assert pdf.startswith(b"%PDF-") and len(pdf) > 50_000
    assert_offline_and_quiet(page, demo_run / "report.html")


@pytest.mark.parametrize("source", ["folder", "checkpoint"])
@pytest.mark.parametrize("csp", [True, False], ids=["with-csp", "without-csp"])
def test_markup_in_names_stays_text(markup_runs, open_page, tmp_path, source, csp):
    """Class names from a folder or a checkpoint are shown, never run: escaping alone does it,
    the Content-Security-Policy is a second line of defence (so it is also tested without)."""
    run, names = markup_runs[source]
    report = run / "report.html"
    if not csp:
        html = report.read_text(encoding="utf-8")
        html, n = re.subn(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", html)
        assert n == 1
        report = tmp_path / "report-without-csp.html"
        report.write_text(html, encoding="utf-8")
    page = open_page(report, **LAPTOP)
    text = page.eval("document.body.innerText")
    for name in names:
        assert name in text
    assert page.eval(ACTIVE_CONTENT) == {"scripts": 1, "handlers": [], "urls": [], "images": [],
                                         "pwned": "undefined"}
    # the quiz feedback (built from a data attribute by the page's script) stays text too
    doc = json.loads((run / "trace.json").read_text())
    prediction = {t.__name__ for t in GROUPS["prediction"]}  # each names the top class
    n, q = next((n, q) for n, q in enumerate(doc["quiz"]) if q["topic"] in prediction)
    page.click("#quiz button.choice", sum(len(x["choices"]) for x in doc["quiz"][:n]) + q["answer"])
    feedback = page.eval(f"document.querySelectorAll('#quiz .feedback')[{n}].textContent")
    assert feedback == "Correct. " + q["explanation"]
    if source == "checkpoint":  # every class name there is markup, the predicted one too
        assert doc["prediction"]["predicted"] in names and doc["prediction"]["predicted"] in feedback
    assert page.eval(ACTIVE_CONTENT)["pwned"] == "undefined"
    assert_offline_and_quiet(page, report)


def test_browser_helper_sees_what_it_must_catch(open_page, tmp_path):
    """The oracle of the tests above: a page that does fetch, log and alert is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!doctype html><meta http-equiv="Content-Security-Policy" '
                   "content=\"default-src 'none'; img-src data:\">"
                   '<img src="https://example.invalid/x.png"><p>hi</p>'
                   "<script>alert(1)</script>")
    page = open_page(bad, **LAPTOP)
    assert "https://example.invalid/x.png" in page.requests()
    assert any("Content Security Policy" in e for e in page.errors())
    plain = tmp_path / "plain.html"
    plain.write_text("<!doctype html><p>x</p><script>console.error('boom'); alert('hi');"
                     "window.__pwned = 1</script>")
    page = open_page(plain, **LAPTOP)
    assert page.dialogs() == ["alert: hi"]
    assert any("boom" in e for e in page.errors())
    assert page.eval("typeof window.__pwned") == "number"
