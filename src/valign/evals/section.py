"""A report section: what a section renderer returns, and the templates it renders with.

A section renderer takes the run's data (`RunData`) and a `ReportEnv` and returns a
`Section`, or None when the run has nothing for it (the report then names it as left
out). Templates are Jinja2 files in ``valign/data/templates/report/`` (or strings)
with autoescaping on, so every model answer is escaped; plots are PNGs embedded as
``data:`` URIs, so the report opens offline.

Example:
    >>> def notes(run: RunData, env: ReportEnv) -> Section | None:
    ...     return Section("notes", "Notes", env.render_string("<p>{{ n }} stages</p>", n=len(run.stages)))
    >>> notes(RunData(Path("runs/x"), "x", None, []), ReportEnv()).html
    '<p>0 stages</p>'
"""

from __future__ import annotations

import base64
import datetime as dt
import io
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from valign.evals.rundata import RunData

__all__ = ["Section", "SectionRenderer", "ReportEnv"]


@dataclass
class Section:
    """A rendered report section: anchor id, heading and HTML body (already escaped)."""

    id: str
    title: str
    html: str


SectionRenderer = Callable[[RunData, "ReportEnv"], "Section | None"]


class ReportEnv:
    """The Jinja2 environment of the report's templates, and figure embedding.

    Example:
        >>> env = ReportEnv()
        >>> env.render_string("{{ x }} {{ y | num }} {{ z | pct }}", x="<b>", y=0.5, z=0.25)
        '&lt;b&gt; 0.50 25%'
    """

    def __init__(self) -> None:
        import jinja2

        folder = Path(str(resources.files("valign") / "data" / "templates" / "report"))
        self.jinja = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(folder)),
            autoescape=True,  # every model answer goes through here
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.jinja.filters["num"] = _num
        self.jinja.filters["pct"] = _pct
        self.jinja.filters["when"] = _when
        self.jinja.filters["duration"] = _duration

    def render(self, template: str, **context: Any) -> str:
        """Render a template file of ``data/templates/report/``."""
        return self.jinja.get_template(template).render(**context)

    def render_string(self, source: str, **context: Any) -> str:
        """Render a template given as text (autoescaped like the files)."""
        return self.jinja.from_string(source).render(**context)

    @staticmethod
    def figure(fig: Any) -> str:
        """A matplotlib figure as a ``data:image/png;base64,…`` URI (the figure is closed).

        Example:
            >>> from valign.evals.plots import pyplot
            >>> ReportEnv.figure(pyplot().figure()).startswith("data:image/png;base64,")
            True
        """
        import matplotlib.pyplot as plt

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
        plt.close(fig)
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _num(x: Any, digits: int = 2) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _pct(x: Any) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def _when(ts: Any) -> str:
    if not ts:
        return "–"
    return dt.datetime.fromtimestamp(float(ts)).strftime("%Y-%m-%d %H:%M")


def _duration(seconds: Any) -> str:
    if seconds is None:
        return "–"
    s = float(seconds)
    if s < 60:
        return f"{s:.1f} s"
    return f"{int(s // 60)} min {int(s % 60):02d} s"
