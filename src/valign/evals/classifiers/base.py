"""What a refusal classifier is: prompts and answers in, one `Classification` each.

Every refusal or harm reading valign reports (the safety suites, the key cases, the
refusal benchmark) comes from a `RefusalClassifier`, so the instrument can be swapped
in the config without touching a suite: the phrase rules, any model asked XSTest's
three-class question, a guard model (Llama Guard, WildGuard), or StrongREJECT's
rubric. `valign.evals.classifiers.registry` names them by spec.

The three classes are XSTest's (Röttger et al. 2024): ``compliance`` (any direct
attempt to answer), ``partial_refusal`` (declines part, or refuses and then helps
anyway), ``full_refusal``. A classifier that only knows refused / not refused uses
the outer two.

Example:
    >>> c = Classification("partial_refusal", rule="phrase:i can't help with")
    >>> c.refused, c.to_fields()["refusal_label"]
    (True, 'partial_refusal')
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

__all__ = ["LABELS", "Label", "Exchange", "Classification", "RefusalClassifier"]

Label = Literal["compliance", "partial_refusal", "full_refusal"]
LABELS: tuple[Label, ...] = ("compliance", "partial_refusal", "full_refusal")


@dataclass(frozen=True)
class Exchange:
    """One prompt and the answer to classify (the prompt matters to judges and guards)."""

    prompt: str
    answer: str


@dataclass(frozen=True)
class Classification:
    """A classifier's reading of one answer.

    * ``label`` — XSTest's class; ``refused`` is any refusal, partial or full;
    * ``rule`` — what decided it, for a reader checking a verdict (a rule id, the
      judge's class token, a guard's verdict line);
    * ``harmful`` — whether the answer itself is harmful, from classifiers that say
      (guard models, StrongREJECT); None from those that do not;
    * ``categories`` — a guard model's hazard categories (``S1``…, or WildGuard's);
    * ``score`` — a graded reading in [0, 1] where the classifier has one
      (StrongREJECT's harm score; a log-prob judge's P(refusal));
    * ``raw`` — the model's own text, when a model produced the verdict.

    Example:
        >>> Classification("compliance").refused
        False
    """

    label: Label
    rule: str | None = None
    harmful: bool | None = None
    categories: tuple[str, ...] = ()
    score: float | None = None
    raw: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def refused(self) -> bool:
        return self.label != "compliance"

    def to_fields(self) -> dict[str, Any]:
        """The fields an answer row stores (``refused`` and ``refusal_rule`` as before).

        Example:
            >>> sorted(Classification("full_refusal", rule="prefix:i can't").to_fields())
            ['refusal_label', 'refusal_rule', 'refused']
        """
        out: dict[str, Any] = {"refused": self.refused, "refusal_label": self.label, "refusal_rule": self.rule}
        if self.harmful is not None:
            out["harmful"] = self.harmful
        if self.categories:
            out["harm_categories"] = list(self.categories)
        if self.score is not None:
            out["refusal_score"] = self.score
        if self.raw is not None:
            out["classifier_raw"] = self.raw
        out.update(self.extra)
        return out


class RefusalClassifier(ABC):
    """Reads answers: `classify` takes a batch (models are called once per batch).

    ``spec`` is how the config named it (``rules``, ``judge:embedded``…), stored in
    every row it classified and shown in the report beside its numbers.
    """

    spec: str

    @abstractmethod
    def classify(self, exchanges: Sequence[Exchange]) -> list[Classification]:
        """One classification per exchange, in order."""

    def describe(self) -> dict[str, Any]:
        """What its readings depend on, for fingerprints (rules, templates, model spec)."""
        return {"spec": self.spec}
