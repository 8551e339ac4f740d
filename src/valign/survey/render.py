"""HTML for the survey: the Jinja2 templates in ``valign/data/templates/survey``
(autoescaped, through `valign.web.templates`), with the instrument always at hand.

Example:
    >>> from valign.survey.instrument import load_instrument
    >>> render = Renderer(load_instrument("demo"))
    >>> '<html lang="en"' in render("problem.html", title="Oops", message="Try again.", root="")
    True
"""

from __future__ import annotations

from typing import Any

from valign.survey.instrument import Instrument
from valign.web.templates import template_env

__all__ = ["Renderer"]


class Renderer:
    """Renders a template with the instrument's title, notice and language always available.

    Example:
        >>> from valign.survey.instrument import load_instrument
        >>> "Thank you" in Renderer(load_instrument("demo"))("declined.html", root="", page_title="Thank you")
        True
    """

    def __init__(self, instrument: Instrument) -> None:
        self.env = template_env(
            "survey",
            instrument=instrument,
            lang=instrument.language,
            survey_title=instrument.title,
            notice=instrument.notice,
            rating_answers={r.id: r.answer for r in instrument.ratings.items} if instrument.ratings else {},
        )

    def __call__(self, template: str, **ctx: Any) -> str:
        return self.env.get_template(template).render(**ctx)
