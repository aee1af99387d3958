"""The HTML view: one self-contained page rendered from the trace document alone.

The template is a package file rendered by jinja2 with autoescaping on, so class names,
file names and paths from a dataset or checkpoint always arrive as text. A strict
Content-Security-Policy (no network, no inline handlers, only the page's own script by
hash) is a second line of defence.
"""

from __future__ import annotations

import base64
import hashlib
import os
from importlib import resources

import jinja2
from markupsafe import Markup

from ..text import printable_lines
from ..transforms import Preprocess
from .svg import line_chart, reliability_chart
from .terminal import contract_text

SCRIPT = """
document.querySelectorAll('.question').forEach(function (q) {
  var feedback = q.querySelector('.feedback');
  q.querySelectorAll('button.choice').forEach(function (b) {
    b.addEventListener('click', function () {
      var right = b.dataset.right === '1';
      q.querySelectorAll('button.choice').forEach(function (o) {
        o.classList.remove('picked');
        if (o.dataset.right === '1') { o.classList.toggle('right', true); }
      });
      b.classList.add('picked');
      b.classList.toggle('wrong', !right);
      feedback.textContent = (right ? 'Correct. ' : 'Not quite. ') + q.dataset.explanation;
      feedback.className = 'feedback ' + (right ? 'ok' : 'bad');
    });
  });
});
"""


def file_uri(path: str) -> str:
    """A ``file://`` link to a local file (percent-encoded: a name cannot become markup or
    another scheme). The path is made absolute, not resolved: a symlink loop in a dataset
    (a finding) would make ``Path.resolve`` raise and lose the page."""
    from urllib.parse import quote

    return "file://" + quote(os.fsencode(os.path.abspath(path)), safe="/")  # the name's bytes


def _visible(value):
    """Every text the page prints, with control, bidi and zero-width characters shown as
    escapes (newlines kept): a file name cannot reorder or hide what the page says (the
    markup in it is escaped by autoescape; what is already Markup, the charts, is ours)."""
    if isinstance(value, str) and not isinstance(value, Markup) and not value.isprintable():
        return printable_lines(value)  # isprintable(): no control, format or surrogate code
    return value


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(
            lambda name: resources.files("pipetrace.report").joinpath("templates", name)
            .read_text(encoding="utf-8")),
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
        finalize=_visible)
    env.filters["dims"] = lambda shape: " × ".join(str(d) for d in shape)
    env.filters["num"] = lambda v, spec=".3f": "–" if v is None else format(v, spec)
    env.filters["contract"] = lambda d: contract_text(Preprocess.from_dict(d))
    env.filters["file_uri"] = file_uri
    return env


def render_html(doc: dict) -> str:
    """The report page for one trace document (deterministic: same document, same bytes)."""
    epochs = (doc.get("training") or {}).get("epochs", [])
    charts = {}
    if epochs:
        xs = [e["epoch"] for e in epochs]
        charts["loss"] = Markup(line_chart(xs, {
            "train": [e["train_loss"] for e in epochs],
            "validation": [e["val_loss"] for e in epochs]}, title="Loss by epoch"))
        charts["acc"] = Markup(line_chart(xs, {
            "train": [e["train_acc"] for e in epochs],
            "validation": [e["val_acc"] for e in epochs]}, title="Accuracy by epoch",
            y_range=(0.0, 1.0)))
    errors = doc.get("errors")
    if errors:
        charts["reliability"] = Markup(reliability_chart(errors["calibration"]))
    script_hash = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()
    return _environment().get_template("report.html.j2").render(
        doc=doc, charts=charts, script=Markup(SCRIPT), script_hash=script_hash)
