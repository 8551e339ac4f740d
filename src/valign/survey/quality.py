"""Quality checks on survey responses: the `QUALITY_COLUMNS` of `SurveyFrames`.

Four flags, from the instrument's ``quality`` settings (`QualityConfig`):

* ``flag_attention`` — answered an attention check with anything but its expected code;
* ``flag_straightlining`` — gave one and the same answer to at least
  ``straightline_min_items`` value items (reverse-keyed items included, so a
  consistent respondent cannot do it by accident);
* ``flag_speeding`` — spent fewer than ``min_seconds_per_item`` seconds per answered
  question on average (server-measured time on question pages);
* ``flag_social_desirability`` — ``sd_score``, the share of social-desirability items
  answered in the keyed direction, reached the scale's ``threshold``: stated values of
  such respondents may say more about how they wish to be seen (seed 001).

Each check's action is ``flag`` (only the flag), ``exclude`` (``exclude`` = True:
left out of weighting and exports) or ``downweight`` (``quality_factor`` =
``downweight_factor``; weighting multiplies the raked weight by it). A check that
cannot be computed (no items answered) does not flag.

Example (a survey database, e.g. ``sqlite:///survey.db``)::

    frames = add_quality(load_frames("sqlite:///survey.db", inst))
    frames.respondents[["flag_attention", "exclude", "quality_factor"]].head()
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from valign.survey.frames import QUALITY_COLUMNS, SurveyFrames

if TYPE_CHECKING:
    from valign.survey.instrument import Instrument

__all__ = ["add_quality", "load_checked", "with_approved_proposals", "flag_counts", "FLAGS"]

FLAGS = {
    "flag_attention": "attention",
    "flag_straightlining": "straightlining",
    "flag_speeding": "speeding",
    "flag_social_desirability": "social_desirability",
}


def load_checked(db: str | None, instrument: "Instrument | str") -> SurveyFrames:
    """The survey database's frames with the quality columns: what every analysis starts from.

    Example::

        frames = load_checked("sqlite:///survey.db", "demo")
        frames = load_checked("sqlite:///survey.db", "polis:brexit-consensus")  # an imported conversation
    """
    from valign.errors import ValignError
    from valign.survey.db import load_frames, make_engine, resolve_db_url, schema_revision
    from valign.survey.instrument import load_instrument
    from valign.survey.polis_instrument import is_polis_instrument, polis_instrument, polis_source

    engine = make_engine(resolve_db_url(db))
    try:
        if schema_revision(engine) is None:
            raise ValignError(f"{engine.url.render_as_string(hide_password=True)} holds no survey yet; check --db (or run `valign survey migrate`).")
        if isinstance(instrument, str) and is_polis_instrument(instrument):
            inst, source = polis_instrument(engine, instrument), polis_source(instrument)
        else:
            inst, source = (load_instrument(instrument) if isinstance(instrument, str) else instrument), None
        return add_quality(load_frames(engine, with_approved_proposals(inst, engine, source)))
    finally:
        engine.dispose()


def with_approved_proposals(instrument: "Instrument", engine: Any, source: str | None = None) -> "Instrument":
    """The instrument plus the statements respondents proposed and moderators approved,
    as principle items ``prop-<n>``, so their answers are analysed like the others'.

    Only statements of ``source`` count: ``live`` (this survey's) by default, or a
    Polis conversation's imported comments (``polis:<conversation>``)."""
    from sqlalchemy.orm import Session

    from valign.survey.db import LIVE_SOURCE, Proposal
    from valign.survey.instrument import PrincipleSection, PrincipleStatement

    with Session(engine) as s:
        query = s.query(Proposal).filter(Proposal.status == "approved", Proposal.source == (source or LIVE_SOURCE))
        approved = [(p.item_id, p.text) for p in query.order_by(Proposal.id)]
    if not approved:
        return instrument
    section = instrument.principles or PrincipleSection()
    items = [*section.items, *(PrincipleStatement(id=pid, text=text) for pid, text in approved)]
    return instrument.model_copy(update={"principles": section.model_copy(update={"items": items})})


def add_quality(frames: SurveyFrames) -> SurveyFrames:
    """The frames with the quality columns (re)computed on the respondents table.

    Example:
        >>> from valign.survey.frames import SurveyFrames
        >>> from valign.survey.instrument import load_instrument
        >>> "exclude" in add_quality(SurveyFrames.empty(load_instrument("demo"))).respondents
        True
    """
    import numpy as np
    import pandas as pd

    inst = frames.instrument
    cfg = inst.quality
    resp = frames.respondents.drop(columns=[c for c in QUALITY_COLUMNS if c in frames.respondents.columns]).copy()
    idx = resp.index
    a = frames.answers

    # attention: any check answered other than expected
    expected = {c.id: c.expected for c in inst.attention_checks}
    att = a[a["item_id"].isin(list(expected))]
    wrong = att[att["choice"] != att["item_id"].map(expected)]
    flag_att = pd.Series(idx.isin(wrong["respondent_id"].unique()), index=idx)

    # straight-lining: the most frequent answer among value items covers enough items
    values = a[a["kind"] == "value"]
    top = values.groupby("respondent_id")["choice"].agg(lambda s: s.value_counts().iloc[0]) if len(values) else pd.Series(dtype=float)
    flag_sl = top.reindex(idx).fillna(0) >= cfg.straightline_min_items

    # speeding: seconds per answered question (proposals are free text, not questions)
    answered = a[a["item_id"] != "proposal"].groupby("respondent_id").size().reindex(idx).fillna(0)
    seconds = resp["seconds"].astype(float) if "seconds" in resp else pd.Series(np.nan, index=idx)
    per_item = seconds / answered.where(answered > 0)
    flag_speed = (per_item < cfg.min_seconds_per_item).fillna(False)

    # social desirability: share of keyed answers
    sd_score = pd.Series(np.nan, index=idx, dtype=float)
    flag_sd = pd.Series(False, index=idx)
    if inst.social_desirability is not None and inst.social_desirability.items:
        keyed = {i.id: ("true" if i.keyed else "false") for i in inst.social_desirability.items}
        sd = a[a["item_id"].isin(list(keyed))]
        if len(sd):
            hits = (sd["choice"] == sd["item_id"].map(keyed)).groupby(sd["respondent_id"]).mean()
            sd_score = hits.reindex(idx).astype(float)
        flag_sd = (sd_score >= inst.social_desirability.threshold).fillna(False)

    flags = {
        "flag_attention": flag_att.astype(bool),
        "flag_straightlining": flag_sl.astype(bool),
        "flag_speeding": flag_speed.astype(bool),
        "flag_social_desirability": flag_sd.astype(bool),
    }
    exclude = pd.Series(False, index=idx)
    downweight = pd.Series(False, index=idx)
    for col, name in FLAGS.items():
        action = getattr(cfg, name)
        if action == "exclude":
            exclude |= flags[col]
        elif action == "downweight":
            downweight |= flags[col]
    for col, series in flags.items():
        resp[col] = series.values
    resp["sd_score"] = sd_score.values
    resp["exclude"] = exclude.values
    resp["quality_factor"] = np.where(downweight.values, cfg.downweight_factor, 1.0).astype(float)
    return frames.with_respondents(resp)


def flag_counts(frames: SurveyFrames) -> dict[str, int]:
    """How many respondents raise each flag, and how many are excluded or down-weighted.

    Example (no respondents yet):
        >>> from valign.survey.frames import SurveyFrames
        >>> from valign.survey.instrument import load_instrument
        >>> flag_counts(add_quality(SurveyFrames.empty(load_instrument("demo"))))
        {'attention': 0, 'straightlining': 0, 'speeding': 0, 'social_desirability': 0, 'excluded': 0, 'downweighted': 0}
    """
    r = frames.respondents
    out = {name: int(r[col].sum()) for col, name in FLAGS.items()} if len(r) else {name: 0 for name in FLAGS.values()}
    out["excluded"] = int(r["exclude"].sum()) if len(r) else 0
    out["downweighted"] = int((r["quality_factor"] < 1).sum()) if len(r) else 0
    return out
