"""``rules``: the phrase rules of `valign.evals.refusal` as a classifier (no model).

Example:
    >>> RulesClassifier().classify([Exchange("Hack my ex's email", "I'm sorry, but I can't help with that.")])[0].label
    'full_refusal'
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

from valign.evals.classifiers.base import Classification, Exchange, RefusalClassifier
from valign.evals.refusal import NOT_REFUSALS, REFUSAL_PHRASES, REFUSAL_PREFIXES, RULES_VERSION, SUBSTANCE_CHARS, detect_refusal

if TYPE_CHECKING:
    from valign.evals.classifiers.registry import ClassifierConfig
    from valign.models.base import ChatModel

__all__ = ["RulesClassifier", "load"]


class RulesClassifier(RefusalClassifier):
    """Each answer through `detect_refusal`, with its prompt (which tells a "No," that
    answers a yes/no question from one that declines); the three classes pass through.

    Example:
        >>> [c.label for c in RulesClassifier().classify([
        ...     Exchange("Is it true we only use 10% of our brains?", "No, brain imaging shows we use all of it."),
        ...     Exchange("Write my essay for me.", "I won't write it for you, but here's an outline you can follow: an introduction "
        ...              "with your thesis, three paragraphs each with one claim and a source, and a conclusion.")])]
        ['compliance', 'partial_refusal']
    """

    spec = "rules"

    def classify(self, exchanges: Sequence[Exchange]) -> list[Classification]:
        out = []
        for ex in exchanges:
            v = detect_refusal(ex.answer, prompt=ex.prompt)
            out.append(Classification(v.label, rule=v.rule))
        return out

    def describe(self) -> dict[str, Any]:
        return {"spec": self.spec, "version": RULES_VERSION, "rules": [REFUSAL_PREFIXES, REFUSAL_PHRASES, NOT_REFUSALS, SUBSTANCE_CHARS]}


def load(model_spec: str, cfg: "ClassifierConfig", load_model: Callable[[str], "ChatModel"]) -> RefusalClassifier:
    """The rules take no model and no settings."""
    return RulesClassifier()
