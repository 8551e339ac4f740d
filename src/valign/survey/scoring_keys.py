"""The published scoring keys of the value questionnaires, and the check that an
instrument's value items agree with the key it names.

A shipped scoring key (``values.scoring_key``: ``pvq21`` — the ESS 21-item PVQ, ten
values — or ``pvq_rr`` — the revised PVQ, 57 items, 19 values) assigns items to values
by their NUMBER in the published questionnaire. An item's number is its ``number``
field, else the digits that end its id (``pvq-7`` → 7). The item's ``value`` must name
the key's value for that number, which catches misnumbered items: `key_problem` checks
that whenever an instrument is loaded. The keys ship as data (`SCORING_KEYS`, in
``valign/data/scoring_keys``), without the licensed item texts. Scoring itself is
`valign.survey.scoring`.

Example:
    >>> len(scoring_key("pvq_rr").values)
    19
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Protocol, Sequence

import yaml

from valign.errors import ValignError

__all__ = ["ScoringKey", "SCORING_KEYS", "scoring_key", "key_problem", "item_number", "NumberedItem"]

SCORING_KEYS = ("pvq21", "pvq_rr")


class NumberedItem(Protocol):
    """What the check reads of a value item (`valign.survey.instrument.ValueItem` is one)."""

    @property
    def id(self) -> str: ...

    @property
    def number(self) -> int | None: ...

    @property
    def value(self) -> str: ...


@dataclass(frozen=True)
class ScoringKey:
    """A published scoring key: value → item numbers.

    Example:
        >>> scoring_key("pvq21").value_of(19)
        'universalism'
    """

    id: str
    title: str
    items: int
    values: dict[str, tuple[int, ...]]
    scale_direction: str

    def value_of(self, number: int) -> str | None:
        """The value item ``number`` measures, or None if the key has no such item."""
        for value, numbers in self.values.items():
            if number in numbers:
                return value
        return None


@lru_cache(maxsize=None)
def scoring_key(name: str) -> ScoringKey:
    """Load a shipped scoring key (``pvq21`` or ``pvq_rr``).

    Example:
        >>> scoring_key("pvq21").items
        21
    """
    if name not in SCORING_KEYS:
        raise ValignError(f"scoring key '{name}' is not shipped; use one of {', '.join(SCORING_KEYS)}.")
    text = (resources.files("valign") / "data" / "scoring_keys" / f"{name}.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    values = {str(v): tuple(int(n) for n in nums) for v, nums in data["values"].items()}
    return ScoringKey(id=data["id"], title=data["title"], items=int(data["items"]), values=values, scale_direction=data["scale_direction"])


def item_number(item_id: str, number: int | None) -> int | None:
    """An item's number in its published questionnaire: ``number``, else the digits ending the id.

    Example:
        >>> item_number("pvq-07", None), item_number("care", 3), item_number("care", None)
        (7, 3, None)
    """
    if number is not None:
        return number
    m = re.search(r"(\d+)$", item_id)
    return int(m.group(1)) if m else None


def key_problem(key_name: str | None, items: Sequence[NumberedItem]) -> tuple[int, str] | None:
    """The first value item that disagrees with the key named ``key_name``: its index in
    ``items`` and a sentence saying what is wrong and how to fix it (no final full stop);
    None when every item matches, or when there is no key.

    `valign.survey.instrument.ValueSection` runs this when an instrument is loaded, so a
    misnumbered item stops `valign survey check` and `serve`, not only the scoring.

    Example:
        >>> from valign.survey.instrument import load_instrument
        >>> values = load_instrument("demo").values
        >>> key_problem(values.scoring_key, values.items) is None
        True
    """
    if key_name is None:
        return None
    key = scoring_key(key_name)
    seen: dict[int, str] = {}
    for index, item in enumerate(items):
        number = item_number(item.id, item.number)
        if number is None or not 1 <= number <= key.items:
            return index, (
                f"value item '{item.id}' has no item number of the {key.id} key (1–{key.items}); "
                f"add `number:` to it or end its id with the number (e.g. {key.id}-{1})"
            )
        if number in seen:
            return index, f"value items '{seen[number]}' and '{item.id}' both have number {number}; give each its own number"
        seen[number] = item.id
        expected = key.value_of(number)
        if expected != item.value:
            return index, (
                f"value item '{item.id}' (number {number}) says value '{item.value}', but the {key.id} key "
                f"scores item {number} as '{expected}'; fix its value or its number"
            )
    return None
