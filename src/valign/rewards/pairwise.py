"""`pairwise`: the constitution's log-prob judge compares each sample with its group.

Bai et al.'s RL stage scores a sample by how a judge of the constitution prefers it to
other samples. Here every two samples of a GRPO group (the G answers to one prompt) are
shown to the judge in both orders, each comparison under its own principle drawn by
weight from the constitution, as the judge stage asks
(`valign.stages.judge.comparison_conversation`, read the same way), but in an order made
for sharing (``reward_pairwise.txt``): the principle first, then the conversation and
the question, then the two answers. Every comparison under one principle shares the
prompt up to the conversation — across groups and steps, since the judge does not
train — and the two orders of one comparison share it up to the answers. The two orders' readings of
P(first is better) are averaged, so a judge that favours a position cancels out. A
sample's reward is its mean win probability against the others: 0.5 for a group of
equals, 1.0 for a sample preferred to every other with certainty.

With ``against: reference`` each sample is compared with the answer the model had
before GRPO (the stage samples it once per prompt, greedily, into the ``reference``
column) instead: the reward is then P(sample better than where training started).

A comparison of samples i and j gives both their win probabilities (p and 1 − p), so a
group of G costs G(G−1)/2 comparisons, 2 prompts each; every prompt of a step goes to the
judge in one batched call, where the engine computes each prefix they share once and
keeps it in its prefix cache (`valign.models.prefix_cache`).

Example:
    >>> win_rates(3, {(0, 1): 0.9, (0, 2): 0.7, (1, 2): 0.5})
    [0.8, 0.3, 0.4]
"""

from __future__ import annotations

from itertools import combinations
from typing import Any, Literal

from pydantic import Field

from valign import distributed
from valign.errors import ValignError
from valign.rewards.base import Reward, RewardConfig, RewardContext, group_key
from valign.types import Conversation

__all__ = ["PairwiseRewardConfig", "PairwiseReward", "win_rates", "comparison_prompts", "TEMPLATE"]

TEMPLATE = "reward_pairwise.txt"  # the judge stage's comparison, principle first


class PairwiseRewardConfig(RewardConfig):
    """Settings of the ``pairwise`` reward.

    Example (YAML, one entry of ``grpo.rewards``):
        {kind: pairwise, weight: 1.0, judge: null, against: group, few_shot: 0}
    """

    kind: Literal["pairwise"] = "pairwise"
    judge: str | None = None  # any model spec; None: the run's model judges (Bai et al.'s self-judging)
    against: Literal["group", "reference"] = "group"
    few_shot: int = Field(0, ge=0, le=8)  # worked comparisons shown first, as in the judge stage


def win_rates(n: int, p_first: dict[tuple[int, int], float]) -> list[float]:
    """Each of ``n`` samples' mean probability of beating the others, from P(i beats j)
    for every i < j (the rest follows: P(j beats i) = 1 − P(i beats j))."""
    wins = [0.0] * n
    for (i, j), p in p_first.items():
        wins[i] += p
        wins[j] += 1.0 - p
    return [round(w / (n - 1), 12) if n > 1 else 0.5 for w in wins]


def comparison_prompts(
    prompt: Conversation, first: str, second: str, key: str, ctx: RewardContext, few_shot: int
) -> list[Conversation]:
    """The two judge prompts (both orders) comparing ``first`` with ``second``, under a
    principle (and worked examples) drawn for this comparison's ``key``."""
    from valign.stages.judge import comparison_conversation, pick_principle, pick_shots

    principle = pick_principle(ctx.constitution, ctx.seed, key)
    shots = pick_shots(ctx.constitution, ctx.seed, key, few_shot)
    return [comparison_conversation(prompt, principle, a, b, shots, template=TEMPLATE) for a, b in ((first, second), (second, first))]


def templates_digest() -> str:
    """What the pairwise reward's prompts are made of, for the fingerprint."""
    from valign.stages.judge import ANSWER_TEMPLATE, EXAMPLES_FILE
    from valign.templates import digest

    return digest([TEMPLATE, ANSWER_TEMPLATE, EXAMPLES_FILE])


class PairwiseReward(Reward):
    def __init__(self, cfg: PairwiseRewardConfig, ctx: RewardContext) -> None:
        super().__init__(cfg.label)
        self.cfg, self.ctx = cfg, ctx
        self.judge_spec = cfg.judge or ctx.run_model
        self.calls = 0  # judge calls so far: seeds each call's principles afresh

    def describe(self) -> dict[str, Any]:
        return {"templates": templates_digest()}

    def score(self, prompts: list[Conversation], answers: list[str], columns: dict[str, Any]) -> list[float | None]:
        ids = columns.get("id") or [None] * len(prompts)
        references = columns.get("reference")
        # Several processes each hold part of a group: every process sees all of it, scores
        # the comparisons, and keeps its own slice (the judge's work is repeated, not split).
        local = list(zip(prompts, answers, ids, references or [None] * len(prompts)))
        everything, start = distributed.gather_with_offset(local)
        rewards = self._score_all(everything, with_reference=references is not None and self.cfg.against == "reference")
        self.calls += 1
        return rewards[start : start + len(local)]

    def _score_all(self, items: list[tuple[Conversation, str, Any, str | None]], with_reference: bool) -> list[float | None]:
        from valign.stages.judge import ANSWER_PREFIX, OPTIONS, combine_orders

        if self.cfg.against == "reference" and not with_reference:
            raise ValignError("the pairwise reward with against: reference needs a 'reference' column of the starting model's answers (the grpo stage adds it).")
        convs: list[Conversation] = []
        jobs: list[tuple[list[int], tuple[int, int] | None]] = []  # (group members, pair) per comparison
        groups: dict[str, list[int]] = {}
        for n, (prompt, _, pid, _) in enumerate(items):
            groups.setdefault(group_key(prompt, pid), []).append(n)
        for key, members in groups.items():
            prompt = items[members[0]][0]
            if with_reference:
                for n in members:
                    ref = items[n][3] or ""
                    convs += comparison_prompts(prompt, items[n][1], ref, f"grpo:{self.calls}:{key}:{n}:ref", self.ctx, self.cfg.few_shot)
                    jobs.append(([n], None))
                continue
            for i, j in combinations(range(len(members)), 2):
                a, b = items[members[i]][1], items[members[j]][1]
                convs += comparison_prompts(prompt, a, b, f"grpo:{self.calls}:{key}:{i}:{j}", self.ctx, self.cfg.few_shot)
                jobs.append((members, (i, j)))
        probs = self.ctx.load_model(self.judge_spec).choice_probs(convs, OPTIONS, answer_prefix=ANSWER_PREFIX) if convs else []
        rewards: list[float | None] = [None] * len(items)
        per_group: dict[tuple[int, ...], dict[tuple[int, int], float]] = {}
        for k, (members, pair) in enumerate(jobs):
            # Order 1 shows (first, second): P(A) is P(first better); order 2 the reverse: P(B).
            _, p = combine_orders(probs[2 * k]["A"], probs[2 * k + 1]["B"])
            if pair is None:
                rewards[members[0]] = p
            else:
                per_group.setdefault(tuple(members), {})[pair] = p
        for members, p_first in per_group.items():
            for n, r in zip(members, win_rates(len(members), p_first)):
                rewards[n] = r
        return rewards
