"""Survey data as two tables: the contract between the database, weighting, analysis and export.

The database (`valign.survey.db`) produces a `SurveyFrames`; quality flags, weighting
(`valign.survey.weighting`), analysis (`valign.survey.analysis`) and export read it.
Nothing downstream touches SQL, so every statistical function can be tested on frames
built by hand.

``respondents`` — one row per respondent who consented, indexed by ``respondent_id``
(str). Columns:

* one column per demographic question, named by its **margin variable**
  (`DemographicQuestion.margin`), holding the option code (str) or missing (None/NaN)
  when the respondent skipped it;
* ``completed`` (bool), ``screened_out`` (bool: a full quota cell ended their survey;
  never completed, so analyses leave them out), ``synthetic`` (bool: made by
  ``valign survey simulate``), ``language`` (str: the tag of the language the survey
  was shown in; answers are option codes, the same in every language),
  ``started_at`` / ``finished_at`` (UTC datetimes; finished may be missing),
  ``seconds`` (float: active time on question pages);
* quality (filled by `valign.survey.quality`): ``flag_attention``,
  ``flag_straightlining``, ``flag_speeding``, ``flag_social_desirability`` (bool),
  ``sd_score`` (share of keyed answers, float), ``exclude`` (bool) and
  ``quality_factor`` (float: 1, or the instrument's downweight factor);
* ``weight`` (float) once weighting has run: the raked weight, already multiplied by
  ``quality_factor``; excluded respondents have no weight (NaN).

``answers`` — one row per answered question, columns ``respondent_id``, ``item_id``,
``kind`` (an `ItemKind`), ``choice`` (the option code, str; for a proposal the text
is in ``text`` and choice is ``"proposal"``), ``strength`` (scenario choices: 1 … the
number of strength labels; else missing), ``text`` (str or missing),
``answered_at`` (UTC datetime). A respondent's own proposal is the row with
``item_id`` ``"proposal"`` and kind ``"principle"``; approved proposals asked of later
respondents are items ``prop-<n>`` of kind ``"principle"`` (agree / disagree / pass),
not in the instrument's item list.

Example:
    >>> from valign.survey.instrument import load_instrument
    >>> frames = SurveyFrames.empty(load_instrument("demo"))
    >>> list(frames.answers.columns)
    ['respondent_id', 'item_id', 'kind', 'choice', 'strength', 'text', 'answered_at']
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from valign.survey.instrument import Instrument

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["SurveyFrames", "ANSWER_COLUMNS", "RESPONDENT_COLUMNS", "QUALITY_COLUMNS"]

ANSWER_COLUMNS = ["respondent_id", "item_id", "kind", "choice", "strength", "text", "answered_at"]
RESPONDENT_COLUMNS = ["completed", "screened_out", "synthetic", "language", "started_at", "finished_at", "seconds"]
QUALITY_COLUMNS = [
    "flag_attention",
    "flag_straightlining",
    "flag_speeding",
    "flag_social_desirability",
    "sd_score",
    "exclude",
    "quality_factor",
]


@dataclass(frozen=True)
class SurveyFrames:
    """The respondents table, the answers table and the instrument they answered."""

    instrument: Instrument
    respondents: "pd.DataFrame"
    answers: "pd.DataFrame"

    @classmethod
    def empty(cls, instrument: Instrument) -> SurveyFrames:
        """Frames with the right columns and no rows."""
        import pandas as pd

        margins = [q.margin for q in instrument.demographics]
        respondents = pd.DataFrame(columns=margins + RESPONDENT_COLUMNS)
        respondents.index.name = "respondent_id"
        return cls(instrument, respondents, pd.DataFrame(columns=ANSWER_COLUMNS))

    @property
    def margins(self) -> list[str]:
        """The demographic margin variables, in instrument order."""
        return [q.margin for q in self.instrument.demographics]

    def with_respondents(self, respondents: "pd.DataFrame") -> SurveyFrames:
        """The same frames with an updated respondents table (e.g. flags or weights added)."""
        return replace(self, respondents=respondents)

    def select(self, *, completed_only: bool = True, synthetic: bool = False) -> SurveyFrames:
        """Only the respondents (and their answers) an analysis should count: by default
        those who finished, and no synthetic ones (``valign survey simulate``'s)."""
        resp = self.respondents
        keep = resp["completed"].astype(bool) if completed_only else resp.index.to_series().notna()
        if not synthetic:
            keep &= ~resp["synthetic"].astype(bool)
        ids = resp.index[keep.to_numpy()]
        return replace(self, respondents=resp.loc[ids], answers=self.answers[self.answers["respondent_id"].isin(ids)])

    def choices(self, kind: str | None = None) -> "pd.DataFrame":
        """A wide table: respondents × item ids, holding the chosen option codes."""
        a = self.answers if kind is None else self.answers[self.answers["kind"] == kind]
        wide = a.pivot_table(index="respondent_id", columns="item_id", values="choice", aggfunc="last")
        return wide.reindex(self.respondents.index)
