"""The rewards ``grpo.rewards`` may list, declared once.

To add a reward, write its module (a `RewardConfig` subclass whose ``kind`` is a
literal, and a builder from that config and a `RewardContext` to a TRL reward function)
and add one entry to `REWARDS`: the config accepts ``{kind: <name>, …}`` and the grpo
stage builds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Callable, Union

from pydantic import Field

from valign.rewards.base import RewardConfig, RewardContext
from valign.rewards.pairwise import PairwiseReward, PairwiseRewardConfig
from valign.rewards.python import PythonRewardConfig, python_reward
from valign.rewards.refusal import ClassifierReward, HarmRewardConfig, RefusalRewardConfig
from valign.rewards.verdict import VerdictReward, VerdictRewardConfig

__all__ = ["RewardKind", "REWARDS", "RewardSpec", "build_rewards", "reward_kinds"]


@dataclass(frozen=True)
class RewardKind:
    """One kind of reward: its settings and how to build it."""

    config: type[RewardConfig]
    build: Callable[[Any, RewardContext], Callable[..., Any]]
    summary: str


REWARDS: dict[str, RewardKind] = {
    "pairwise": RewardKind(PairwiseRewardConfig, PairwiseReward, "the log-prob judge's mean win probability against the group (or the starting model's answer)"),
    "verdict": RewardKind(VerdictRewardConfig, VerdictReward, "a strong judge's 1-10 grade against the constitution, scaled to [0, 1]"),
    "refusal": RewardKind(RefusalRewardConfig, ClassifierReward, "−1 for refusing a prompt that should be answered"),
    "harm": RewardKind(HarmRewardConfig, ClassifierReward, "−1 for complying with a prompt that should be declined"),
    "python": RewardKind(PythonRewardConfig, python_reward, "any function with TRL's reward signature"),
}

# One entry of ``grpo.rewards``: pydantic picks the config class by ``kind``.
RewardSpec = Annotated[Union[tuple(kind.config for kind in REWARDS.values())], Field(discriminator="kind")]  # type: ignore[valid-type]


def reward_kinds() -> tuple[str, ...]:
    """Every ``kind`` a reward may have."""
    return tuple(REWARDS)


def build_rewards(configs: list[RewardConfig], ctx: RewardContext) -> list[Callable[..., Any]]:
    """The reward functions the configs name, in order (their weights stay in the configs)."""
    return [REWARDS[cfg.kind].build(cfg, ctx) for cfg in configs]  # type: ignore[attr-defined]
