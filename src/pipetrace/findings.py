"""The one record of a problem found, by every check: the cross-library checks of a run
(``checks.py``), the dataset doctor (``doctor.py``) and the checks ``train`` runs before its
first epoch. Data only, so producers and views import it without importing each other."""

from __future__ import annotations

from dataclasses import asdict, dataclass

SEVERITIES = ("error", "warning", "info")


@dataclass(frozen=True)
class Finding:
    """One problem: what, where, the evidence, a one-line fix, and the files concerned."""

    check: str  # "channel-order", "layout", "scale", "leakage", "placeholder", "class-order", ...
    severity: str  # "error", "warning" or "info"
    stage: str  # "1 load", "2 convert", "3 transform", "4 batch", "5 train" or "dataset"
    title: str
    evidence: str
    fix: str
    paths: tuple[str, ...] = ()  # files or folders it is about (dataset checks)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["paths"] = list(self.paths)
        return d

    def _repr_html_(self) -> str:
        from .report.notebook import findings_html

        return findings_html([self])
