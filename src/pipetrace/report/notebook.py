"""The notebook view: records, traces, findings and a finished run as HTML in Jupyter.

The records' ``_repr_html_`` methods call these functions, which render the same template
partials as ``report.html`` (``templates/partials/``: the data-flow table, the epoch table,
the findings, the layer table), with the same autoescaping: a class name is text here too.
A small stylesheet, scoped to ``.pipetrace``, keeps the tables readable in a notebook.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

from markupsafe import escape

from .html import _environment

STYLE = """<style>
.pipetrace table { border-collapse: collapse; font-size: .9em; margin: 4px 0 10px; }
.pipetrace th, .pipetrace td { border-bottom: 1px solid #d0d7de; padding: 3px 7px;
  text-align: left; vertical-align: top; }
.pipetrace td.n { text-align: right; font-variant-numeric: tabular-nums; }
.pipetrace .caption, .pipetrace .muted { color: #57606a; font-size: .88em; }
.pipetrace .finding { border-left: 4px solid #d0d7de; padding: 4px 10px; margin: 6px 0; }
.pipetrace .finding.error { border-color: #c92a2a; }
.pipetrace .finding.warning { border-color: #f08c00; }
.pipetrace .finding.info { border-color: #1f6feb; }
.pipetrace .thumb { width: 64px; image-rendering: pixelated; } .pipetrace .phone { display: none; }
</style>"""


def _partial(name: str, **context) -> str:
    return _environment().get_template(f"partials/{name}.html.j2").render(**context)


def _wrap(*parts: str) -> str:
    return STYLE + '<div class="pipetrace">' + "".join(parts) + "</div>"


def _heading(text: str) -> str:
    return f"<h4>{escape(text)}</h4>"


def epochs_html(records: Sequence) -> str:
    """EpochRecords (or their dicts) as the report's training-trace table."""
    rows = [r if isinstance(r, dict) else asdict(r) for r in records]
    return _wrap(_partial("epochs", epochs=rows))


def stages_html(stages: Sequence) -> str:
    """StageRecords as the report's data-flow table (pictures included)."""
    from ..pipeline import SEED_STAGES
    from .build import stage_dict

    flow = {"stages": [stage_dict(s) for s in stages],
            "seed_stages": {str(k): v for k, v in SEED_STAGES.items()}}
    return _wrap(_partial("stages", flow=flow))


def flow_html(flow) -> str:
    """A DataFlow as the report's data-flow section: its order line and its table."""
    from .build import flow_block

    block = flow_block(flow)
    return _wrap(f'<p class="caption">{escape(block["order"])} Times: '
                 f'{escape(block["timing"])}.</p>', _partial("stages", flow=block))


def findings_html(findings: Sequence) -> str:
    """Findings as the report's finding boxes."""
    rows = [f if isinstance(f, dict) else f.to_dict() for f in findings]
    return _wrap(_partial("findings", findings=rows))


def layers_html(trace) -> str:
    """A LayerTrace as the report's prediction-trace table, then its top classes."""
    top = ", ".join(f"{c} {p:.3f}" for c, p in trace.top_k)
    return _wrap(_partial("layers", layers=[r.to_dict() for r in trace.layers]),
                 f"<p>Top classes: {escape(top)}</p>")


def run_html(result) -> str:
    """A finished run (TrainResult): what trained on what, the data flow, the epochs, the
    findings recorded before the first epoch, and where it stopped."""
    ds, cfg = result.dataset, result.config
    head = (f"{cfg.model} ({result.params:,} parameters) on {ds.get('root', cfg.data)}: "
            f"{ds.get('train_images', 0):,} training and {ds.get('val_images', 0):,} "
            f"validation images, {len(result.classes)} classes ({', '.join(result.classes)}); "
            f"run folder {result.run_dir}")
    parts = [_heading("pipetrace run"), f"<p>{escape(head)}</p>"]
    if result.flow is not None:
        from .build import flow_block

        parts += [_heading("Data flow"), f'<p class="caption">{escape(result.flow.order)}</p>',
                  _partial("stages", flow=flow_block(result.flow))]
    parts += [_heading("Training trace"),
              _partial("epochs", epochs=[asdict(r) for r in result.records])]
    if result.stopped:
        parts.append(f'<p class="finding error">Stopped: {escape(result.stopped)}</p>')
    parts += [_heading("Dataset checks"), _partial("findings", findings=[
        f.to_dict() for f in result.findings])]
    return _wrap(*parts)


def dataset_report_html(report) -> str:
    """`pipetrace check`'s DatasetReport: counts per split and class, then the findings."""
    rows = "".join(f"<tr><td>{escape(s.name)}</td><td>{escape(c)}</td><td class='n'>{n}</td>"
                   f"<td class='n'>{s.skipped[c]}</td></tr>"
                   for s in report.splits for c, n in s.loaded.items())
    counts = report.status_counts()
    head = (f"{report.root}: layout {report.layout}, {len(report.classes)} classes; "
            f"{counts['loaded']} loaded, {counts['skipped']} skipped, {counts['ignored']} "
            f"ignored")
    return _wrap(_heading("pipetrace check"), f"<p>{escape(head)}</p>",
                 "<table><tr><th>split</th><th>class</th><th>loaded</th><th>skipped</th></tr>"
                 f"{rows}</table>",
                 _partial("findings", findings=[f.to_dict() for f in report.findings]))
