"""report/: the versioned trace document, the page rendered from it alone, and escaping."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from markupsafe import escape

from conftest import run_cli
from pipetrace.checks import Finding
from pipetrace.errors import ImageError
from pipetrace.report.document import VERSION, load_document
from pipetrace.report.html import render_html

DOC = Path(__file__).resolve().parents[1] / "docs" / "trace-format.md"


# -- the documented schema ---------------------------------------------------------------------

def documented_keys() -> dict[str, set[str]]:
    """Path -> keys, from docs/trace-format.md: each '### `path`' heading's table, and the
    '## Top-level keys' table under the path ''."""
    tables: dict[str, set[str]] = {}
    paths: list[str] = []
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            paths = [""] if line == "## Top-level keys" else (
                re.findall(r"`([^`]+)`", line) if line.startswith("### ") else [])
            for p in paths:
                tables[p] = set()
        elif paths and (m := re.match(r"\| `([^`]+)` \|", line)):
            for p in paths:
                tables[p].add(m.group(1))
    return tables


def objects_at(doc, path: str) -> list[dict]:
    """The objects at a documented path ('training.epochs[]' -> every epoch record)."""
    found = [doc]
    for part in filter(None, path.split(".")):
        name, items = part.removesuffix("[]"), part.endswith("[]")
        found = [o[name] for o in found if o.get(name) is not None]
        if items:
            found = [x for lst in found for x in lst]
    return found


MAY_BE_EMPTY = {"findings[]": Finding, "errors.label_issues[]": ImageError}  # lists a clean
# run leaves empty (the demo's labels are right, and its model finds no label error)


def test_the_trace_holds_exactly_the_documented_keys(demo_run):
    doc = json.loads((demo_run / "trace.json").read_text(encoding="utf-8"))
    tables = documented_keys()
    assert len(tables) >= 20 and all(tables.values())
    for path, keys in tables.items():
        objects = objects_at(doc, path)
        if path in MAY_BE_EMPTY and not objects:  # a clean run has none: the record's fields
            assert keys == {f.name for f in dataclasses.fields(MAY_BE_EMPTY[path])}
            continue
        assert objects, f"nothing at {path!r} in the demo's trace"
        for obj in objects:
            assert set(obj) == keys, f"{path}: documented {sorted(keys ^ set(obj))} differ"
    assert doc["format"] == "pipetrace-trace" and doc["version"] == VERSION


def test_load_document_refuses_other_files_and_newer_versions(tmp_path):
    path = tmp_path / "trace.json"
    path.write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match="is not a pipetrace trace"):
        load_document(path)
    path.write_text(json.dumps({"format": "pipetrace-trace", "version": VERSION + 1}))
    with pytest.raises(ValueError, match=f"trace format {VERSION + 1}, newer"):
        load_document(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read trace"):
        load_document(path)


# -- regeneration --------------------------------------------------------------------------------

def test_report_is_regenerated_identically_from_trace_json_alone(demo_run, tmp_path):
    alone = tmp_path / "copy"
    alone.mkdir()
    shutil.copy(demo_run / "trace.json", alone / "trace.json")  # no checkpoint, no dataset
    proc = run_cli("report", str(alone))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"Wrote {alone / 'report.html'}"
    original = (demo_run / "report.html").read_bytes()
    assert (alone / "report.html").read_bytes() == original
    proc = run_cli("report", str(alone / "trace.json"), "--out", str(tmp_path / "again.html"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "again.html").read_bytes() == original


def test_report_of_a_missing_trace_is_one_error_line(tmp_path):
    proc = run_cli("report", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.startswith("pipetrace: error: cannot read trace")
    assert len(proc.stderr.splitlines()) == 1


# -- a self-contained page -----------------------------------------------------------------------

class Page(HTMLParser):
    """Tags with their attributes, and the text a reader sees (entities decoded)."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def assert_inert(page: Page) -> None:
    """One script (the page's own), no inline handlers, nothing fetched from anywhere; the
    only links are <a href="file://..."> to the dataset's own files (the label issues)."""
    assert [t for t, _ in page.tags].count("script") == 1
    attrs = [(t, k, v or "") for t, a in page.tags for k, v in a.items()]
    assert [(t, k) for t, k, _ in attrs if k.startswith("on")] == []
    assert [(t, k, v[:40]) for t, k, v in attrs
            if k in ("src", "href", "action", "srcset", "poster", "formaction")
            and not v.startswith("data:image/png;base64,")
            and not (t == "a" and k == "href" and v.startswith("file:///"))] == []


def test_the_page_needs_no_network(demo_run):
    text = (demo_run / "report.html").read_text(encoding="utf-8")
    page = Page(text)
    assert_inert(page)
    (csp,) = [a["content"] for t, a in page.tags if a.get("http-equiv") == "Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'sha256-" in csp
    doc = json.loads((demo_run / "trace.json").read_text(encoding="utf-8"))
    pictures = sum(s["picture"] is not None for s in doc["data_flow"]["stages"])
    assert pictures == 6  # every image step but the file read and the training step
    shown = (pictures + 3  # + the prediction's input, Grad-CAM, feature maps
             + 2 * len(doc["batch_view"]["paths"])  # + each batch image, trained and evaluated
             + 3 * len(doc["errors"]["gallery"]))  # + each worst prediction: 3 pictures
    assert sum(t == "img" for t, _ in page.tags) == shown
    assert sum(t == "svg" for t, _ in page.tags) == 3  # loss, accuracy, reliability


@pytest.mark.parametrize("source", ["folder", "checkpoint"])
def test_markup_in_names_is_escaped(markup_runs, source):
    run, names = markup_runs[source]
    text = (run / "report.html").read_text(encoding="utf-8")
    page = Page(text)
    assert_inert(page)
    seen = "".join(page.text)
    for name in names:
        assert name not in text  # never raw
        assert str(escape(name)) in text  # as text in the page, quotes too (&#34; &#39;)
        assert name in seen  # and the reader sees it as it is
    doc = load_document(run / "trace.json")
    for name in names:  # it travelled through the trace unchanged
        assert name in json.dumps(doc, ensure_ascii=False)


def test_render_escapes_every_string_of_the_document(demo_run):
    """Put markup into every string of a real trace: the page stays inert, the text survives."""
    doc = json.loads((demo_run / "trace.json").read_text(encoding="utf-8"))
    marker = '<b onclick="x()">&amp;</b>'

    def poison(obj):
        if isinstance(obj, dict):
            return {k: poison(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [poison(v) for v in obj]
        if isinstance(obj, str) and not obj.startswith("data:image/png;base64,"):
            return obj + marker
        return obj

    page = Page(render_html(poison(doc)))
    assert_inert(page)
    assert not any(t == "b" and "onclick" in a for t, a in page.tags)
    assert "".join(page.text).count(marker) > 100


def test_a_dataset_finding_names_its_files_in_the_terminal_and_the_page(tmp_path):
    from pipetrace.report.notebook import findings_html
    from pipetrace.report.terminal import finding_line

    paths = tuple(str(tmp_path / "data" / "ants" / f"imageNotFound{i}.gif") for i in range(7))
    f = Finding("placeholder", "warning", "dataset", "likely placeholder", "its name says so",
                "delete it", paths)
    assert finding_line(f).endswith("(data/ants/imageNotFound0.gif and 6 more)")
    page = findings_html([f])
    links = re.findall(r'<a href="(file://[^"]+)">', page)
    assert links == [f"file://{p}" for p in paths[:5]] and "and 2 more" in page
    # a name that is not UTF-8 (a lone surrogate here) links to the file's own bytes
    odd = Finding("placeholder", "warning", "dataset", "t", "e", "f", ("/tmp/x/\udcffbad.jpg",))
    assert 'href="file:///tmp/x/%FFbad.jpg"' in findings_html([odd])


def test_control_and_bidi_characters_never_reach_the_page(demo_run):
    """A file name with ESC and a right-to-left override, in a finding and a label issue:
    the page shows them as escapes, never as the characters (which reorder or hide text)."""
    doc = load_document(demo_run / "trace.json")
    hostile = "/data/cats/\x1b[31mcat\u202egpj.exe.jpg"
    doc["findings"].append(Finding("placeholder", "warning", "dataset", "likely placeholder",
                                   "its name says so", "delete it", (hostile,)).to_dict())
    issue = dict(doc["errors"]["top_losses"][0], path=hostile)
    doc["errors"]["label_issues"] = [issue]
    page = render_html(doc)
    assert "\x1b" not in page and "\u202e" not in page
    assert "\\x1b[31mcat\\u202egpj.exe.jpg" in page  # shown, as escapes


def test_the_reliability_bins_show_their_counts_cut_to_four_characters():
    from pipetrace.report.svg import _short_count, reliability_chart
    assert [_short_count(n) for n in (7, 999, 1_049, 9_999, 10_000, 999_999, 9_990_000,
                                      999_999_999, 1_000_000_000)] == [
        "7", "999", "1.0k", "9.9k", "10k", "999k", "9.9M", "999M", "1.0G"]  # cut, not rounded
    assert max(len(_short_count(10 ** e - 1)) for e in range(1, 13)) <= 4
    bins = [dict(low=i / 4, high=(i + 1) / 4, count=n, confidence=i / 4 + 0.1, accuracy=0.5)
            for i, n in enumerate((0, 3, 12_345, 40))]
    svg = reliability_chart(bins)
    assert re.findall(r'class="xl count"[^>]*>([^<]*)<', svg) == ["3", "12k", "40"]
    assert svg.count('class="bin"') == 3  # the empty bin has neither bar nor count


def test_a_symlink_loop_named_by_a_finding_still_gets_a_link(tmp_path):
    """A dataset's symlink loop is a finding the page links to; resolving the link raised
    RuntimeError and lost the whole page after training (found in a new-user trial)."""
    from urllib.parse import quote

    from pipetrace.report.html import file_uri
    (tmp_path / "x1").symlink_to(tmp_path / "x2")
    (tmp_path / "x2").symlink_to(tmp_path / "x1")
    assert file_uri(str(tmp_path / "x1")) == "file://" + quote(str(tmp_path / "x1"))
    assert file_uri("rel/a b.jpg") == "file://" + quote(os.path.abspath("rel/a b.jpg"))


@pytest.mark.parametrize("edit", [
    lambda d: d["training"]["epochs"][0].__setitem__("train_loss", "abc"),
    lambda d: d["training"].__setitem__("epochs", None),
    lambda d: d.__setitem__("findings", [{"a": 1}]),
    lambda d: d.pop("training"),
    lambda d: d.__setitem__("quiz", "x"),
    lambda d: d["quiz"][0].__setitem__("answer", 999),
])
def test_a_trace_edited_by_hand_is_refused_in_one_line_not_a_traceback(demo_run, tmp_path,
                                                                      capsys, edit):
    """report and quiz render only what a run wrote; anything else (found in a new-user
    trial: a number made text, a section removed, an answer out of range) is one line."""
    from pipetrace.cli import main
    doc = json.loads((demo_run / "trace.json").read_text())
    edit(doc)
    path = tmp_path / "trace.json"
    path.write_text(json.dumps(doc))
    codes = [main(["report", str(path), "--out", str(tmp_path / "r.html")]),
             main(["quiz", "--answers", str(path)])]
    err = capsys.readouterr().err
    assert 2 in codes and set(codes) <= {0, 2}, codes
    assert "Traceback" not in err and all(
        "does not hold what a run writes" in line for line in err.strip().splitlines()), err


def test_a_trace_nested_too_deep_is_refused_in_one_line(tmp_path, capsys):
    from pipetrace.cli import main
    (tmp_path / "trace.json").write_text("[" * 100_000)
    assert main(["quiz", str(tmp_path / "trace.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read trace" in err


def test_each_view_names_the_model_its_numbers_come_from(demo_run):
    """The prediction trace follows best.pt, the error analysis is the last epoch's
    predictions (last.pt): a run whose best epoch came early showed both without a word, and
    they contradicted each other (a new-user trial)."""
    doc = json.loads((demo_run / "trace.json").read_text())
    out = " ".join((demo_run / "stdout.txt").read_text().split())
    served = os.path.basename(doc["prediction"]["checkpoint"])
    assert served == "best.pt"
    assert f"Prediction trace — {doc['prediction']['image']}, by {served}" in out
    epochs = len(doc["training"]["epochs"])
    assert doc["errors"]["epoch"] == epochs  # recorded by the loop when it evaluated
    assert f"validation images (by last.pt, the model after epoch {epochs}): accuracy" in out
    page = (demo_run / "report.html").read_text()
    assert f"by <code>{served}</code>, the model the run serves" in page
    assert f"the model after the last epoch ({epochs}), which made these predictions" in page


def test_a_trace_written_before_errors_had_an_epoch_still_renders(demo_run, tmp_path):
    """errors.epoch came within format 3: a trace without it renders, without the number."""
    from pipetrace.report.build import rerender
    doc = json.loads((demo_run / "trace.json").read_text())
    del doc["errors"]["epoch"]
    (tmp_path / "trace.json").write_text(json.dumps(doc))
    page = Path(rerender(tmp_path / "trace.json")).read_text()
    assert "the model after the last epoch, which made these predictions" in page
