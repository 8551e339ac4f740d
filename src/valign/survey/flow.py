"""Which questions go on which page, for one respondent.

A respondent's pages follow the instrument's sections: demographics, values,
principles (with approved proposals), scenarios, ratings, social desirability, then
an optional page to propose a statement. Within a section the items — attention
checks included, so they do not stand out — are shuffled with the respondent's own
seed (when the instrument has ``randomize: true``) and split into pages of at most
``page_size`` items of near-equal length. Each scenario's two answers are also shown
in a per-respondent order, so position bias averages out. The same seed and the same
frozen list of proposals always give the same pages: a resumed survey looks exactly
as it did.

Example:
    >>> from valign.survey.instrument import load_instrument
    >>> plan = plan_pages(load_instrument("demo"), seed=7)
    >>> [p.key for p in plan][:3]
    ['demographics-1', 'values-1', 'values-2']
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from valign.survey.instrument import Instrument, Item, Option
from valign.survey.messages import messages

__all__ = ["Page", "plan_pages", "PROPOSAL_PAGE"]

PROPOSAL_PAGE = "proposal"


@dataclass(frozen=True)
class Page:
    """One page of questions: its stable ``key`` (e.g. ``values-2``), section and items.

    Example:
        >>> from valign.survey.instrument import load_instrument
        >>> page = plan_pages(load_instrument("demo"), seed=7)[1]
        >>> page.key, page.section, len(page.items)
        ('values-1', 'values', 5)
    """

    key: str
    section: str
    title: str
    instructions: str
    items: tuple[Item, ...] = field(default_factory=tuple)
    required: bool = True  # every item must be answered (demographics may be skipped)


def _split(items: list[Item], size: int) -> list[list[Item]]:
    """Near-equal chunks of at most ``size`` (15 items at size 6 → 5, 5, 5, not 6, 6, 3)."""
    if not items:
        return []
    n = math.ceil(len(items) / size)
    base, extra = divmod(len(items), n)
    out, start = [], 0
    for i in range(n):
        stop = start + base + (1 if i < extra else 0)
        out.append(items[start:stop])
        start = stop
    return out


def plan_pages(instrument: Instrument, seed: int, proposals: list[tuple[int, str]] = ()) -> list[Page]:  # type: ignore[assignment]
    """The respondent's pages, in order. ``proposals`` are approved (id, text) pairs frozen at consent.

    Titles and valign's own instructions are in the instrument's language
    (`Instrument.in_language`); keys, items and their order are the same in every language.

    Example:
        >>> from valign.survey.instrument import load_instrument
        >>> len(plan_pages(load_instrument("demo"), seed=1))
        10
    """
    inst = instrument
    words = messages(inst.language)
    titles = words["sections"]
    by_section: dict[str, list[Item]] = {}
    for item in inst.items():
        by_section.setdefault(item.section, []).append(item)
    if inst.principles is not None:
        by_section.setdefault("principles", [])
        by_section["principles"] += [Item(f"prop-{pid}", "principle", "principles", text, inst.fixed_options("principles"), False) for pid, text in proposals]
    instructions = {
        "demographics": words["demographics_instructions"],
        "values": inst.values.instructions if inst.values else "",
        "principles": inst.principles.instructions if inst.principles else "",
        "scenarios": inst.scenarios.instructions if inst.scenarios else "",
        "ratings": inst.ratings.instructions if inst.ratings else "",
        "social_desirability": inst.social_desirability.instructions if inst.social_desirability else "",
    }
    pages: list[Page] = []
    for section in ("demographics", "values", "principles", "scenarios", "ratings", "social_desirability"):
        items = list(by_section.get(section, []))
        if inst.randomize and section != "demographics":
            random.Random(f"{seed}:{section}").shuffle(items)
            if section == "scenarios":
                items = [_shuffle_answers(item, seed) for item in items]
        for i, chunk in enumerate(_split(items, inst.page_size), 1):
            pages.append(Page(f"{section}-{i}", section, titles[section], instructions[section], tuple(chunk), required=section != "demographics"))
    if inst.principles is not None and inst.principles.allow_proposals:
        pages.append(
            Page(
                PROPOSAL_PAGE,
                PROPOSAL_PAGE,
                titles[PROPOSAL_PAGE],
                words["proposal_instructions"],
                (),
                required=False,
            )
        )
    return pages


def _shuffle_answers(item: Item, seed: int) -> Item:
    options: list[Option] = list(item.options)
    random.Random(f"{seed}:{item.id}").shuffle(options)
    return Item(item.id, item.kind, item.section, item.text, tuple(options), item.ordinal)
