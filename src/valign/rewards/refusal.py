"""`refusal` and `harm`: penalties from valign's refusal classifiers, so that a policy
cannot win the constitution's reward by refusing everything, nor by complying with
everything.

* ``refusal`` penalises refusing a prompt that should be answered (``kind`` in
  ``kinds``, by default the benign ones): −1 for a full refusal, −``partial`` for a
  partial one (XSTest's classes), 0 for an answer; other prompts get 0.
* ``harm`` penalises complying with a prompt that should be declined (by default the
  red-team ones): −1 for an answer the classifier calls harmful — or, from classifiers
  that do not judge harm (``rules``, ``judge:``), for any full compliance — and
  −``partial`` for a partial refusal; other prompts get 0.

Any classifier valign has reads the answers (``classifier``: ``rules`` by default,
``judge:<spec>``, ``guard:<spec>``, ``strongreject:<spec>``; `valign.evals.classifiers`).

Example:
    >>> from valign.evals.classifiers import Classification
    >>> refusal_penalty(Classification("full_refusal"), 0.5), refusal_penalty(Classification("partial_refusal"), 0.5)
    (-1.0, -0.5)
    >>> harm_penalty(Classification("compliance"), 0.5), harm_penalty(Classification("compliance", harmful=False), 0.5)
    (-1.0, 0.0)
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from valign.evals.classifiers import Classification, ClassifierConfig, Exchange, load_classifier
from valign.rewards.base import Reward, RewardConfig, RewardContext
from valign.types import Conversation

__all__ = ["RefusalRewardConfig", "HarmRewardConfig", "ClassifierReward", "refusal_penalty", "harm_penalty"]


class RefusalRewardConfig(RewardConfig):
    """Settings of the ``refusal`` reward (over-refusal of prompts that should be answered).

    Example (YAML, one entry of ``grpo.rewards``):
        {kind: refusal, weight: 0.5, classifier: rules, kinds: [benign], partial: 0.5}
    """

    kind: Literal["refusal"] = "refusal"
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig)
    kinds: list[str] = Field(default_factory=lambda: ["benign"])  # prompts that should be answered
    partial: float = Field(0.5, ge=0.0, le=1.0)


class HarmRewardConfig(RewardConfig):
    """Settings of the ``harm`` reward (compliance with prompts that should be declined).

    Example (YAML, one entry of ``grpo.rewards``):
        {kind: harm, weight: 0.5, classifier: "guard:openai:llama-guard-3@http://guard:8000/v1", kinds: [red_team]}
    """

    kind: Literal["harm"] = "harm"
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig)
    kinds: list[str] = Field(default_factory=lambda: ["red_team"])  # prompts that should be declined
    partial: float = Field(0.5, ge=0.0, le=1.0)


def refusal_penalty(c: Classification, partial: float) -> float:
    """The ``refusal`` reward of one answer to a prompt that should be answered."""
    return {"full_refusal": -1.0, "partial_refusal": -partial}.get(c.label, 0.0)


def harm_penalty(c: Classification, partial: float) -> float:
    """The ``harm`` reward of one answer to a prompt that should be declined."""
    if c.harmful is not None:
        return -1.0 if c.harmful else 0.0
    return {"compliance": -1.0, "partial_refusal": -partial}.get(c.label, 0.0)


class ClassifierReward(Reward):
    """``refusal`` or ``harm``: classify the answers to the prompts of ``kinds``, penalise."""

    def __init__(self, cfg: RefusalRewardConfig | HarmRewardConfig, ctx: RewardContext) -> None:
        super().__init__(cfg.label)
        self.cfg = cfg
        self.classifier = load_classifier(cfg.classifier, ctx.load_model)
        self.penalty = refusal_penalty if cfg.kind == "refusal" else harm_penalty

    def describe(self) -> dict[str, Any]:
        return {"classifier": self.classifier.describe()}

    def score(self, prompts: list[Conversation], answers: list[str], columns: dict[str, Any]) -> list[float | None]:
        kinds = columns.get("kind") or [None] * len(prompts)
        wanted = [n for n, k in enumerate(kinds) if k in self.cfg.kinds]
        exchanges = [Exchange(prompt=str(prompts[n][-1]["content"]), answer=answers[n]) for n in wanted]
        rewards: list[float | None] = [0.0] * len(prompts)
        for n, c in zip(wanted, self.classifier.classify(exchanges)):
            rewards[n] = self.penalty(c, self.cfg.partial)
        return rewards
