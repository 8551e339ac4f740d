"""How an imported Polis conversation is analysed: its name, its instrument, its margins.

``valign survey import-polis`` (`valign.survey.polis`) stores a conversation's rows
with ``source`` = ``polis:<conversation>``; every ``valign survey`` command that reads
responses takes ``--instrument polis:<conversation>``, for which `polis_instrument`
builds the instrument from the database: the opinion groups as the one demographic
question (margin ``opinion_group``, which the group-aware consensus partitions by, as
Polis does) and the comments as principle statements
(`valign.survey.quality.with_approved_proposals` adds them). Polis participants are
not a sample of a population, so `group_margins` weights each one once
(``--margins participants``, the default for a conversation).

Example:
    >>> is_polis_instrument("polis:brexit-consensus"), polis_source("brexit-consensus")
    (True, 'polis:brexit-consensus')
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

from valign.errors import ValignError

if TYPE_CHECKING:
    from pathlib import Path

    from sqlalchemy.engine import Engine

    from valign.survey.frames import SurveyFrames
    from valign.survey.instrument import Instrument
    from valign.survey.margins import Margins

__all__ = [
    "POLIS_PREFIX",
    "GROUP_ITEM",
    "GROUP_MARGIN",
    "PARTICIPANT_MARGINS",
    "is_polis_instrument",
    "polis_source",
    "instrument_id",
    "polis_instrument",
    "group_margins",
    "margins_for",
]

POLIS_PREFIX = "polis:"  # --instrument polis:<conversation>; also the start of imported rows' source
GROUP_ITEM = "polis-group"  # the demographic item holding a participant's opinion group
GROUP_MARGIN = "opinion_group"
PARTICIPANT_MARGINS = "participants"  # --margins value: weight each participant once (`group_margins`)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,42}$")  # "polis:" + name fits settings.key (50)


def is_polis_instrument(name: str) -> bool:
    """Whether an ``--instrument`` value names an imported Polis conversation.

    Example:
        >>> is_polis_instrument("polis:brexit-consensus"), is_polis_instrument("demo")
        (True, False)
    """
    return name.startswith(POLIS_PREFIX)


def polis_source(name: str) -> str:
    """The ``source`` of a conversation's rows, from its name or ``polis:<name>``.

    Example:
        >>> polis_source("brexit-consensus"), polis_source("polis:brexit-consensus")
        ('polis:brexit-consensus', 'polis:brexit-consensus')
    """
    bare = name.removeprefix(POLIS_PREFIX)
    if not _NAME.fullmatch(bare):
        raise ValignError(f"'{bare}' cannot name a Polis conversation; use 1–43 letters, digits, '.', '_' or '-' (e.g. --conversation brexit-consensus).")
    return POLIS_PREFIX + bare


def instrument_id(source: str) -> str:
    """The instrument id of a conversation's respondents.

    Example:
        >>> instrument_id("polis:brexit-consensus")
        'polis-brexit-consensus'
    """
    return "polis-" + source.removeprefix(POLIS_PREFIX)


def polis_instrument(engine: "Engine", name: str) -> "Instrument":
    """The instrument of an imported conversation: its opinion groups as the one
    demographic question (when Polis found at least two), no questions of its own
    (`valign.survey.quality.with_approved_proposals` adds the comments), and quality
    checks that cannot fire on votes cast outside this survey."""
    from sqlalchemy.orm import Session

    from valign.survey.db import Setting
    from valign.survey.instrument import Consent, DemographicQuestion, Instrument, Option, PrincipleSection, QualityConfig

    source = polis_source(name)
    with Session(engine) as s:
        row = s.get(Setting, source)
        imported = [k for (k,) in s.query(Setting.key).filter(Setting.key.like(POLIS_PREFIX + "%"))]
    if row is None:
        have = ", ".join(imported) or "none"
        raise ValignError(f"no Polis conversation '{source}' has been imported into this database (imported: {have}); run `valign survey import-polis DIR` first.")
    meta = json.loads(row.value)
    groups = [str(g) for g in meta.get("groups", [])]
    demographics = []
    if len(groups) >= 2:
        options = [Option(code=g, label=f"Opinion group {_letter(i)}") for i, g in enumerate(groups)]
        demographics.append(DemographicQuestion(id=GROUP_ITEM, text="Polis opinion group", margin=GROUP_MARGIN, options=options))
    return Instrument(
        id=instrument_id(source),
        title=meta.get("topic") or source,
        description=meta.get("description") or "",
        notice=f"Imported from a Polis conversation ({meta.get('url') or source}).",
        consent=Consent(text="Participants took part in a Polis conversation; their votes were imported."),
        demographics=demographics,
        principles=PrincipleSection(allow_proposals=False),
        quality=QualityConfig(attention="flag", straightlining="flag", speeding="flag", social_desirability="flag", min_seconds_per_item=0),
    )


def _letter(i: int) -> str:
    """Polis's group names: A, B, … (then A2, B2, … past Z)."""
    return chr(ord("A") + i % 26) + (str(i // 26 + 1) if i >= 26 else "")


def group_margins(frames: "SurveyFrames") -> "Margins":
    """Margins that weight every participant equally: the opinion groups' own shares
    (or one category holding everyone when Polis found no groups)."""
    from valign.survey.margins import margins_from_dict

    resp = frames.respondents
    if GROUP_MARGIN in resp.columns and resp[GROUP_MARGIN].notna().any():
        counts = resp[GROUP_MARGIN].dropna().astype(str).value_counts()
        variables = {GROUP_MARGIN: {"categories": {str(k): float(v) for k, v in counts.items()}}}
    else:
        variables = {"completed": {"categories": {"True": 1.0}}}
    return margins_from_dict({
        "id": "polis-participants",
        "source": {"citation": "the participants themselves: Polis participants are not a sample of a population, so each counts once"},
        "variables": variables,
    }, where="the Polis participants' own group shares")


def margins_for(frames: "SurveyFrames", instrument: str, margins: "str | Path | None") -> "Margins":
    """What ``instrument``'s respondents are raked to: ``margins`` (a file or shipped
    name), `group_margins` for ``participants``, and by default ``participants`` for a
    Polis conversation, ``nz-census-2023`` for an instrument."""
    from valign.survey.margins import DEFAULT_MARGINS, load_margins

    if margins == PARTICIPANT_MARGINS or (margins is None and is_polis_instrument(instrument)):
        return group_margins(frames)
    return load_margins(margins or DEFAULT_MARGINS)
