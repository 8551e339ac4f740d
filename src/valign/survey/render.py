"""HTML for the survey: Jinja2 templates (autoescaped) in ``valign/data/templates/survey``.

Example:
    >>> render = Renderer(load_instrument("demo"))
    >>> "<html lang=\\"en\\"" in render("problem.html", title="Oops", message="Try again.", root="")
    True
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from valign.survey.instrument import Instrument

__all__ = ["Renderer", "stylesheet"]


def _folder():
    return resources.files("valign") / "data" / "templates" / "survey"


def stylesheet() -> str:
    """The one stylesheet every page uses (served as a file: the CSP allows no inline styles)."""
    return (_folder() / "survey.css").read_text(encoding="utf-8")


class Renderer:
    """Renders a template with the instrument's title, notice and language always available.

    Example:
        >>> Renderer(load_instrument("demo"))("declined.html", root="", page_title="Thank you")
    """

    def __init__(self, instrument: Instrument) -> None:
        from jinja2 import Environment, FileSystemLoader, select_autoescape

        self.env = Environment(
            loader=FileSystemLoader(str(_folder())),
            autoescape=select_autoescape(default=True, default_for_string=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.globals.update(
            instrument=instrument,
            lang=instrument.language,
            survey_title=instrument.title,
            notice=instrument.notice,
            rating_answers={r.id: r.answer for r in instrument.ratings.items} if instrument.ratings else {},
        )

    def __call__(self, template: str, **ctx: Any) -> str:
        return self.env.get_template(template).render(**ctx)
