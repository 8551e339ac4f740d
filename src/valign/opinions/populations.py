"""Choosing whose opinions to compare with: a country, a subgroup, or several.

An item's populations are ``all`` (its ``distribution``) and its group keys
(``country=Japan``, ``sex=Female``). A choice names populations by key, or a whole
variable (``country`` = every ``country=…``). `restrict` keeps, on every item, only the
chosen groups (and drops items that have none of them), so the fidelity suite reports
exactly those populations; `retarget` makes one population the item's distribution,
the target `survey_sft` trains towards; `condition` asks each item once per group, with
a line naming the group, towards that group's distribution (SubPOP's training).

Example:
    >>> from valign.survey.opinion import OpinionItem
    >>> item = OpinionItem(id="q", question="?", options=["a", "b"], distribution=[.5, .5],
    ...                    groups={"country=JP": {"distribution": [.9, .1], "n": 10}, "country=PE": {"distribution": [.2, .8], "n": 10}})
    >>> population_counts([item])
    {'all': 1, 'country=JP': 1, 'country=PE': 1}
    >>> list(restrict([item], ["country=PE"])[0].groups)
    ['country=PE']
    >>> retarget([item], "country=JP")[0].distribution
    [0.9, 0.1]
"""

from __future__ import annotations

from valign.errors import ValignError
from valign.survey.opinion import OpinionItem

__all__ = ["ALL", "population_counts", "expand", "restrict", "retarget", "condition", "group_line"]

ALL = "all"


def population_counts(items: list[OpinionItem]) -> dict[str, int]:
    """Each population and how many items have a distribution for it, ``all`` first."""
    counts: dict[str, int] = {ALL: len(items)}
    for item in items:
        for key in item.groups:
            counts[key] = counts.get(key, 0) + 1
    return counts


def expand(items: list[OpinionItem], chosen: list[str]) -> list[str]:
    """The population keys ``chosen`` names: keys as given, a bare variable as all its groups."""
    known = population_counts(items)
    out: list[str] = []
    for name in chosen:
        if name in known:
            matches = [name]
        else:
            matches = [k for k in known if k.split("=", 1)[0] == name and "=" in k]
        if not matches:
            sample = ", ".join(list(known)[:8])
            raise ValignError(f"population '{name}' is in none of the items; choose a key or variable they have (e.g. {sample}).")
        out += [m for m in matches if m not in out]
    return out


def restrict(items: list[OpinionItem], chosen: list[str]) -> list[OpinionItem]:
    """The items with only the chosen groups; items with none of them (and ``all`` not chosen) are dropped."""
    keys = expand(items, chosen)
    out = []
    for item in items:
        groups = {k: g for k, g in item.groups.items() if k in keys}
        if groups or ALL in keys:
            out.append(item.model_copy(update={"groups": groups}))
    return out


def retarget(items: list[OpinionItem], population: str) -> list[OpinionItem]:
    """The items that have ``population``, each with that population's distribution as its own (and no groups)."""
    if population == ALL:
        return items
    expand(items, [population])  # an unknown name is an error naming the known ones
    out = []
    for item in items:
        group = item.groups.get(population)
        if group is not None:
            out.append(item.model_copy(update={"distribution": group.distribution, "n": group.n or 0, "groups": {}}))
    if not out:
        raise ValignError(f"population '{population}' names a variable, not one group; give one key such as {population}=<group>.")
    return out


def group_line(key: str) -> str:
    """The line that tells the model whom to answer as.

    Example:
        >>> group_line("country=Japan")
        'Answer as a typical person whose country is Japan would answer.'
    """
    variable, _, value = key.partition("=")
    return f"Answer as a typical person whose {variable.replace('_', ' ')} is {value} would answer."


def condition(items: list[OpinionItem], keys: list[str]) -> list[OpinionItem]:
    """One item per (item, group it has among ``keys``): id ``<id>@<key>``, the group's line first, its distribution."""
    out = []
    for item in items:
        for key in keys:
            group = item.groups.get(key)
            if group is None:
                continue
            instructions = "\n\n".join(t for t in (group_line(key), item.instructions.strip()) if t)
            out.append(item.model_copy(update={"id": f"{item.id}@{key}", "instructions": instructions, "distribution": group.distribution,
                                               "n": group.n or 0, "groups": {}}))
    return out
