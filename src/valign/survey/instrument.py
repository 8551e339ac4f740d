"""Survey instruments: what a respondent is asked, and what each answer may be.

An instrument is one YAML file. Its sections, in the order a respondent meets them:

* ``consent`` — shown first; nothing is stored before the respondent agrees.
* ``demographics`` — each question names the census-margin variable it feeds
  (``margin``), so weighting can rake the sample to population margins.
* ``values`` — Likert items, each keyed to the value it measures (``value``), some
  reverse-keyed; scored raw or centred on the respondent's mean rating (the MRAT
  centring of Schwartz's PVQ). ``scoring_key`` names a shipped key (``pvq21``,
  ``pvq_rr``) whose item numbers map items to values, for users who hold the licensed
  item texts; an item's number is its ``number`` or the digits ending its id
  (``pvq-7``), and an item whose ``value`` is not the key's value for its number fails
  loading. ``scale_direction: descending`` says the scale's code 1 means "very
  much like me" (the ESS layout), so scoring counts it backwards
  (`valign.survey.scoring`).
* ``principles`` — statements about how an AI assistant should behave: agree /
  disagree / pass. Respondents may propose a statement; it is shown to others only
  after a moderator approves it.
* ``scenarios`` — a prompt and two model answers: which is better, and how much
  (revealed preference; becomes weighted DPO data).
* ``ratings`` — one answer to rate 👍/👎 (binary feedback; becomes KTO data).
* ``attention_checks`` — items with one correct answer, placed inside a section.
* ``social_desirability`` — true/false items with keyed answers (a short
  Marlowe–Crowne-style scale; keys are configurable).
* ``quality`` — what to do with respondents who fail the checks.
* ``quotas`` — optional targets of completed responses per demographic cell, given as
  counts, as shares of a ``total`` or from a margins file; a respondent in a full cell
  is screened out with a polite closing page (`valign.survey.quotas`).

Top-level settings: ``id``, ``title``, ``version``, ``validated`` (false for anything
but a published, validated instrument), ``languages`` (BCP 47 tags such as ``[en, de]``,
the base language first; or one ``language``, default ``en``), ``notice``,
``description``, ``randomize`` and ``page_size`` (see `valign.survey.flow`).

With several languages every respondent-facing text is a mapping with one entry per
language (`valign.survey.translations`); `load_instrument` returns the base language's
instrument, and `Instrument.in_language` the same instrument in another declared
language: same ids, codes and keys, so scoring, weighting and analysis never see which
language a respondent answered in. The pages' own words (buttons, headings, the
agree/disagree and true/false options) come from `valign.survey.messages`.

Every answer is stored as a string ``choice`` from the item's options (see
`Instrument.options`), plus ``strength`` for scenario choices and ``text`` for
proposals, so the database, the exports and the analysis share one vocabulary.

Example:
    >>> inst = load_instrument("demo")
    >>> [i.id for i in inst.items() if i.kind == "attention"]
    ['att-values', 'att-principles']
    >>> [o.code for o in inst.options("pr-honesty")]
    ['agree', 'disagree', 'pass']
"""

from __future__ import annotations

import difflib
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, ValidationInfo, field_validator, model_validator

from valign.errors import ValignError
from valign.survey.datafiles import read_data_yaml, shipped_names
from valign.survey.messages import messages
from valign.survey.quotas import QuotaCell, QuotaProblem, QuotaSection, resolve_quotas
from valign.survey.scoring_keys import key_problem
from valign.survey.translations import TranslationProblem, declared_languages, localise

__all__ = [
    "Option",
    "LikertScale",
    "Consent",
    "DemographicQuestion",
    "ValueItem",
    "ValueSection",
    "PrincipleStatement",
    "PrincipleSection",
    "ScenarioAnswer",
    "Scenario",
    "ScenarioSection",
    "RatedAnswer",
    "RatingSection",
    "AttentionCheck",
    "SDItem",
    "SDSection",
    "QualityConfig",
    "Instrument",
    "Item",
    "ItemKind",
    "load_instrument",
    "shipped_instruments",
    "PRINCIPLE_OPTIONS",
    "RATING_OPTIONS",
    "SD_OPTIONS",
]

_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
_LANGUAGE = r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$"  # a BCP 47 tag

ItemKind = Literal["demographic", "value", "principle", "scenario", "rating", "attention", "sd"]
QualityAction = Literal["flag", "exclude", "downweight"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _PlacedError(ValueError):
    """A mistake a section's validator finds in one of its entries: ``loc`` continues the
    section's location down to the entry, and the message already says the fix."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


class Option(_Strict):
    """One answer option: the stored ``code`` and the label a respondent sees."""

    code: str = Field(..., min_length=1, max_length=40)
    label: str = Field(..., min_length=1)


PRINCIPLE_OPTIONS = (Option(code="agree", label="Agree"), Option(code="disagree", label="Disagree"), Option(code="pass", label="Pass / unsure"))
RATING_OPTIONS = (Option(code="up", label="👍 Good answer"), Option(code="down", label="👎 Bad answer"))
SD_OPTIONS = (Option(code="true", label="True"), Option(code="false", label="False"))


class LikertScale(_Strict):
    """An ordered rating scale; answers are stored as ``"1"`` … ``"points"``.

    Example:
        >>> LikertScale(points=3, labels=["Not like me", "Somewhat", "Very much like me"]).options()[0].code
        '1'
    """

    points: int = Field(6, ge=2, le=11)
    labels: list[str]

    @model_validator(mode="after")
    def _labels_match_points(self) -> LikertScale:
        if len(self.labels) != self.points:
            raise ValueError(f"the scale has {self.points} points but {len(self.labels)} labels; give one label per point")
        return self

    def options(self) -> list[Option]:
        return [Option(code=str(i), label=label) for i, label in enumerate(self.labels, 1)]


class Consent(_Strict):
    title: str = "Before you start"
    text: str = Field(..., min_length=1)
    agree_label: str = "I agree to take part"
    decline_label: str = "No thanks"


class DemographicQuestion(_Strict):
    """A demographic question feeding census-margin variable ``margin`` (default: its id).

    Not answering is always allowed: it is stored as no answer, never guessed.
    """

    id: str = Field(..., pattern=_ID)
    text: str = Field(..., min_length=1)
    margin: str = ""
    options: list[Option] = Field(..., min_length=2)

    @model_validator(mode="after")
    def _default_margin(self) -> DemographicQuestion:
        if not self.margin:
            object.__setattr__(self, "margin", self.id)
        return self


class ValueItem(_Strict):
    """A Likert item measuring ``value``; ``reverse`` items count the scale backwards.

    ``number`` is the item's number in a published instrument (e.g. 7 of the PVQ-RR's
    57), which a ``scoring_key`` uses; when absent, the digits ending the id are used.
    """

    id: str = Field(..., pattern=_ID)
    text: str = Field(..., min_length=1)
    value: str = Field(..., min_length=1)
    reverse: bool = False
    number: int | None = Field(None, ge=1)


class ValueSection(_Strict):
    instructions: str = "How much is each person like you?"
    scale: LikertScale
    scoring: Literal["raw", "centred"] = "centred"
    scoring_key: Literal["pvq21", "pvq_rr"] | None = None
    # "descending": code 1 is the top of the scale ("very much like me", as in the ESS)
    scale_direction: Literal["ascending", "descending"] = "ascending"
    items: list[ValueItem] = Field(default_factory=list)

    @model_validator(mode="after")
    def _items_match_the_scoring_key(self) -> ValueSection:
        # At load time, not only when scores are computed: a misnumbered item must stop
        # `valign survey check` and `serve` before anyone answers it.
        problem = key_problem(self.scoring_key, self.items)
        if problem is not None:
            index, message = problem
            raise _PlacedError(("items", index), message)
        return self


class PrincipleStatement(_Strict):
    id: str = Field(..., pattern=_ID)
    text: str = Field(..., min_length=1)


class PrincipleSection(_Strict):
    instructions: str = "Should an AI assistant behave like this?"
    allow_proposals: bool = True
    max_proposal_chars: int = Field(300, ge=20, le=2000)
    items: list[PrincipleStatement] = Field(default_factory=list)


class ScenarioAnswer(_Strict):
    """One of a scenario's two answers; ``values`` name the values it expresses, which
    lets analysis compare stated values with revealed choices."""

    id: str = Field(..., pattern=_ID)
    text: str = Field(..., min_length=1)
    values: list[str] = Field(default_factory=list)


class Scenario(_Strict):
    id: str = Field(..., pattern=_ID)
    prompt: str = Field(..., min_length=1)
    answers: list[ScenarioAnswer] = Field(..., min_length=2, max_length=2)

    @model_validator(mode="after")
    def _distinct_answers(self) -> Scenario:
        if self.answers[0].id == self.answers[1].id:
            raise ValueError(f"its two answers share the id '{self.answers[0].id}'; give them different ids")
        return self


class ScenarioSection(_Strict):
    instructions: str = "Which answer would you rather the assistant gave?"
    strength_labels: list[str] = Field(default_factory=lambda: ["A little better", "Clearly better", "Much better"], min_length=1, max_length=7)
    items: list[Scenario] = Field(default_factory=list)


class RatedAnswer(_Strict):
    id: str = Field(..., pattern=_ID)
    prompt: str = Field(..., min_length=1)
    answer: str = Field(..., min_length=1)


class RatingSection(_Strict):
    instructions: str = "Is this a good answer?"
    items: list[RatedAnswer] = Field(default_factory=list)


class AttentionCheck(_Strict):
    """An item with one correct answer, shown among the items of ``section`` and
    answered on that section's options (e.g. a Likert point's code)."""

    id: str = Field(..., pattern=_ID)
    text: str = Field(..., min_length=1)
    section: Literal["values", "principles", "social_desirability"] = "values"
    expected: str = Field(..., min_length=1)


class SDItem(_Strict):
    """A true/false item; answering ``keyed`` adds one point of social desirability."""

    id: str = Field(..., pattern=_ID)
    text: str = Field(..., min_length=1)
    keyed: bool = True


class SDSection(_Strict):
    instructions: str = "Is each statement true or false of you?"
    threshold: float = Field(0.8, gt=0, le=1)  # share of keyed answers that raises the flag
    items: list[SDItem] = Field(default_factory=list)


class QualityConfig(_Strict):
    """What happens to a respondent who trips a check: only ``flag`` it, ``exclude``
    it from weighting and exports, or ``downweight`` it by ``downweight_factor``."""

    attention: QualityAction = "exclude"
    straightlining: QualityAction = "downweight"
    speeding: QualityAction = "downweight"
    social_desirability: QualityAction = "flag"
    downweight_factor: float = Field(0.5, gt=0, lt=1)
    min_seconds_per_item: float = Field(1.5, ge=0)  # faster than this on average: a speeder
    straightline_min_items: int = Field(6, ge=3)  # identical answers on this many value items


@dataclass(frozen=True)
class Item:
    """Any question of an instrument, in one shape: what the pages and the analysis loop over."""

    id: str
    kind: ItemKind
    section: str
    text: str
    options: tuple[Option, ...]
    ordinal: bool  # options are ordered (Likert) rather than nominal


class Instrument(_Strict):
    """A whole survey instrument. Load one with `load_instrument`."""

    id: str = Field(..., pattern=_ID)
    title: str = Field(..., min_length=1)
    version: str = "1"
    validated: bool = False
    language: str = Field("en", pattern=_LANGUAGE)  # this instance's language: the pages' lang attribute and catalogue
    languages: list[str] = Field(default_factory=list)  # every declared language, base first ([language] when not given)
    notice: str = ""  # shown under the title, e.g. "not a validated instrument"
    description: str = ""
    randomize: bool = True  # item order shuffled per respondent within each page group
    page_size: int = Field(6, ge=1, le=50)
    consent: Consent
    demographics: list[DemographicQuestion] = Field(default_factory=list)
    values: ValueSection | None = None
    principles: PrincipleSection | None = None
    scenarios: ScenarioSection | None = None
    ratings: RatingSection | None = None
    attention_checks: list[AttentionCheck] = Field(default_factory=list)
    social_desirability: SDSection | None = None
    quality: QualityConfig = Field(default_factory=QualityConfig)
    quotas: QuotaSection | None = None
    _quota_cells: tuple[QuotaCell, ...] = PrivateAttr(default=())
    _translations: dict[str, Instrument] = PrivateAttr(default_factory=dict)  # other languages, on the base instance
    _base_fingerprint: str | None = PrivateAttr(default=None)  # set on translations: the base's

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, (int, float)) else v

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> Instrument:
        if not self.languages:
            object.__setattr__(self, "languages", [self.language])
        for i, tag in enumerate(self.languages):
            if not isinstance(tag, str) or not re.match(_LANGUAGE, tag):
                raise _PlacedError(("languages", i), f"'{tag}' is not a language tag such as en or de-CH")
        if self.language not in self.languages:
            raise ValueError(f"the language '{self.language}' is not one of the declared languages {self.languages}")
        try:
            messages(self.language)
        except ValignError as e:
            raise ValueError(str(e).rstrip(".")) from None
        seen: set[str] = set()
        for item in self.items():
            if item.id in seen:
                raise ValueError(f"the id '{item.id}' is used twice; every question needs its own id")
            seen.add(item.id)
        margins = [q.margin for q in self.demographics]
        if len(set(margins)) != len(margins):
            raise ValueError("two demographic questions feed the same margin variable; give each its own 'margin'")
        for check in self.attention_checks:
            section = getattr(self, check.section)
            if section is None:
                raise ValueError(f"attention check '{check.id}' sits in section '{check.section}', which this instrument lacks")
            codes = [o.code for o in self._section_options(check.section)]
            if check.expected not in codes:
                raise ValueError(f"attention check '{check.id}' expects '{check.expected}', which is not one of {codes}")
        if self.quotas is not None:
            # Resolved here, margins files included, so that a quota mistake stops
            # `valign survey check` and `serve` before anyone answers.
            base_dir = (info.context or {}).get("base_dir")
            try:
                self._quota_cells = tuple(resolve_quotas(self.quotas, self.demographics, base_dir))
            except QuotaProblem as p:
                raise _PlacedError(("quotas", *p.loc), str(p)) from None
        return self

    def quota_cells(self) -> tuple[QuotaCell, ...]:
        """Every quota cell with its target (none without a ``quotas`` section).

        Example:
            >>> load_instrument("demo").quota_cells()
            ()
        """
        return self._quota_cells

    def _section_options(self, section: str) -> tuple[Option, ...]:
        if section == "values":
            assert self.values is not None
            return tuple(self.values.scale.options())
        if section in ("principles", "social_desirability", "ratings"):
            return self.fixed_options(section)
        raise KeyError(section)

    def fixed_options(self, section: Literal["principles", "ratings", "social_desirability"]) -> tuple[Option, ...]:
        """The options valign gives a section (agree/disagree/pass, up/down, true/false),
        labelled in this instance's language; the codes are the same in every language.

        Example:
            >>> [o.label for o in load_instrument("demo").in_language("de").fixed_options("principles")]
            ['Stimme zu', 'Stimme nicht zu', 'Weiß nicht / keine Angabe']
        """
        shared = {"principles": PRINCIPLE_OPTIONS, "ratings": RATING_OPTIONS, "social_desirability": SD_OPTIONS}[section]
        labels = messages(self.language)["options"]
        return tuple(Option(code=o.code, label=labels[o.code]) for o in shared)

    def in_language(self, lang: str) -> Instrument:
        """This instrument in one of its declared languages (itself for its own).

        Example:
            >>> load_instrument("demo").in_language("de").consent.agree_label
            'Ich bin mit der Teilnahme einverstanden'
        """
        if lang == self.language:
            return self
        if lang in self._translations:
            return self._translations[lang]
        raise ValignError(f"instrument '{self.id}' is not available in '{lang}'; its languages are {', '.join(self.languages)}.")

    def items(self) -> list[Item]:
        """Every question, section by section (attention checks after their section's items)."""
        out: list[Item] = [Item(q.id, "demographic", "demographics", q.text, tuple(q.options), False) for q in self.demographics]
        checks = {s: [c for c in self.attention_checks if c.section == s] for s in ("values", "principles", "social_desirability")}

        def with_checks(section: str, items: list[Item]) -> list[Item]:
            opts = self._section_options(section)
            ordinal = section == "values"
            return items + [Item(c.id, "attention", section, c.text, opts, ordinal) for c in checks[section]]

        if self.values is not None:
            opts = tuple(self.values.scale.options())
            out += with_checks("values", [Item(v.id, "value", "values", v.text, opts, True) for v in self.values.items])
        if self.principles is not None:
            principle_opts = self.fixed_options("principles")
            out += with_checks("principles", [Item(p.id, "principle", "principles", p.text, principle_opts, False) for p in self.principles.items])
        if self.scenarios is not None:
            for s in self.scenarios.items:
                opts = tuple(Option(code=a.id, label=a.text) for a in s.answers)
                out.append(Item(s.id, "scenario", "scenarios", s.prompt, opts, False))
        if self.ratings is not None:
            out += [Item(r.id, "rating", "ratings", r.prompt, self.fixed_options("ratings"), False) for r in self.ratings.items]
        if self.social_desirability is not None:
            sd_opts = self.fixed_options("social_desirability")
            out += with_checks("social_desirability", [Item(i.id, "sd", "social_desirability", i.text, sd_opts, False) for i in self.social_desirability.items])
        return out

    def item(self, item_id: str) -> Item:
        """One question by id; an unknown id names the closest one."""
        for item in self.items():
            if item.id == item_id:
                return item
        close = difflib.get_close_matches(item_id, [i.id for i in self.items()], n=1)
        hint = f"; did you mean '{close[0]}'?" if close else "."
        raise ValignError(f"instrument '{self.id}' has no question '{item_id}'{hint}")

    def options(self, item_id: str) -> tuple[Option, ...]:
        """The answer codes a question accepts."""
        return self.item(item_id).options

    def value_key(self) -> dict[str, list[str]]:
        """value → the ids of the items that measure it (reverse items included)."""
        key: dict[str, list[str]] = {}
        for v in self.values.items if self.values else []:
            key.setdefault(v.value, []).append(v.id)
        return key

    def fingerprint(self) -> str:
        """A hash of the instrument's content: responses are tied to the version they answered.

        Quotas are left out: they decide who is asked, not what, so raising a target
        mid-fieldwork does not make the answers a different version. Translations are
        left out too: the fingerprint is the base language's (so every language of an
        instrument shares it, and a single-language instrument keeps the one it had):
        a translation renders the same questions with the same codes, each response
        records the language it was given in, and correcting a translation's wording
        mid-fieldwork should not split the sample into versions.

        Example:
            >>> demo = load_instrument("demo")
            >>> demo.in_language("de").fingerprint() == demo.fingerprint()
            True
        """
        if self._base_fingerprint is not None:
            return self._base_fingerprint
        return hashlib.sha256(self.model_dump_json(exclude={"quotas", "languages"}).encode()).hexdigest()[:16]


def shipped_instruments() -> list[str]:
    """Names of the instruments shipped with valign (e.g. ``demo``)."""
    return shipped_names("instruments")


def load_instrument(name_or_path: str | Path) -> Instrument:
    """Load and validate an instrument: a shipped name (``demo``) or a YAML file.

    Every mistake is one `ValignError` naming the file, the place and the fix.

    Example:
        >>> load_instrument("demo").title
        'What should an AI assistant value?'
    """
    path, data = read_data_yaml(name_or_path, "instruments", "instrument")
    if not isinstance(data, dict):
        raise ValignError(f"{path} must hold a mapping with 'id', 'title', 'consent' and the survey's sections.")
    try:
        languages = declared_languages(data)
        versions = [_validated(path, data, localise(data, lang)) for lang in languages]
    except TranslationProblem as p:
        raise ValignError(f"{path}: {_place(data, p.loc)}: {p}.") from None
    base = versions[0]
    for other in versions[1:]:
        _same_questions(path, base, other)
        other._base_fingerprint = base.fingerprint()
        base._translations[other.language] = other
    return base


def _validated(path: Path, data: dict[str, Any], localised: dict[str, Any]) -> Instrument:
    try:
        return Instrument.model_validate(localised, context={"base_dir": path.parent})
    except ValidationError as e:
        raise ValignError(_explain(path, data, e)) from None


def _same_questions(path: Path, base: Instrument, other: Instrument) -> None:
    """A translation may change words only: the same questions, codes and scale lengths."""
    def shape(inst: Instrument) -> list[Any]:
        strengths = len(inst.scenarios.strength_labels) if inst.scenarios else 0
        return [strengths] + [(i.id, tuple(o.code for o in i.options)) for i in inst.items()]

    if shape(base) != shape(other):
        raise ValignError(f"{path}: the '{other.language}' texts give a different number of labels than the '{base.language}' ones (check strength_labels); give every language the same labels in the same order.")


def _explain(path: Path, data: dict[str, Any], err: ValidationError) -> str:
    first = err.errors()[0]
    placed = first.get("ctx", {}).get("error")
    if isinstance(placed, _PlacedError):
        return f"{path}: {_place(data, tuple(first['loc']) + placed.loc)}: {placed}."
    loc = first["loc"]
    where = _place(data, loc)
    if first["type"] == "extra_forbidden":
        bad = str(loc[-1])
        return f"{path}: {where}: unknown field '{bad}'; remove it or check the spelling."
    if first["type"] == "missing":
        return f"{path}: {where}: '{loc[-1]}' is required; add it."
    msg = first["msg"].removeprefix("Value error, ")
    return f"{path}: {where}: {msg}; fix that value."


def _place(data: Any, loc: tuple) -> str:
    """A readable location such as ``values.items[3] (id 'v-care')``."""
    parts: list[str] = []
    node = data
    for p in loc:
        if isinstance(p, int):
            ident = node[p].get("id") if isinstance(node, list) and p < len(node) and isinstance(node[p], dict) else None
            parts[-1] += f"[{p + 1}]" + (f" (id '{ident}')" if ident else "")
        else:
            parts.append(str(p))
        try:
            node = node[p]
        except (KeyError, IndexError, TypeError):
            node = None
    return ".".join(parts) or "(top level)"
