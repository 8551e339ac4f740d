"""HTML for the survey: the Jinja2 templates in ``valign/data/templates/survey``
(autoescaped, through `valign.web.templates`), with the instrument always at hand.

Example:
    >>> from valign.survey.instrument import load_instrument
    >>> render = Renderer(load_instrument("demo"))
    >>> '<html lang="en"' in render("problem.html", title="Oops", message="Try again.", root="")
    True
    >>> '<html lang="de"' in render("problem.html", lang="de", title="Hoppla", message="Bitte erneut.", root="")
    True
"""

from __future__ import annotations

from typing import Any

from valign.survey.instrument import Instrument
from valign.survey.messages import messages
from valign.web.templates import template_env

__all__ = ["Renderer"]


class Renderer:
    """Renders a template in one of the instrument's languages (default: its base language),
    with that language's instrument, title, notice and catalogue ``t`` (`valign.survey.messages`)
    and the other languages (``languages``: tag → name, for the language links) available.

    Example:
        >>> from valign.survey.instrument import load_instrument
        >>> "Thank you" in Renderer(load_instrument("demo"))("declined.html", root="", page_title="Thank you")
        True
    """

    def __init__(self, instrument: Instrument) -> None:
        self.instrument = instrument
        # ``t`` is also a global (the base language's words), so a macro imported without
        # context still renders; templates import theirs ``with context`` to get the respondent's.
        self.env = template_env("survey", languages={tag: messages(tag)["language_name"] for tag in instrument.languages}, t=messages(instrument.language))
        self.contexts = {tag: self._context(instrument.in_language(tag)) for tag in instrument.languages}

    @staticmethod
    def _context(inst: Instrument) -> dict[str, Any]:
        return {
            "instrument": inst,
            "lang": inst.language,
            "t": messages(inst.language),
            "survey_title": inst.title,
            "notice": inst.notice,
            "rating_answers": {r.id: r.answer for r in inst.ratings.items} if inst.ratings else {},
        }

    def __call__(self, template: str, lang: str | None = None, **ctx: Any) -> str:
        base = self.contexts[lang or self.instrument.language]
        return self.env.get_template(template).render(**{**base, **ctx})
