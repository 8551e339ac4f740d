"""Rewards for online RL (the `grpo` stage): valign's judges and classifiers as TRL
reward functions, composable with weights.

* `pairwise` — the log-prob judge's win probability within each group of samples;
* `verdict` — a strong judge's grade against the constitution;
* `refusal` / `harm` — classifier penalties for over-refusal and for harmful compliance;
* `python` — any function with TRL's reward signature.

Each is one module here plus one entry in `valign.rewards.registry.REWARDS`.
"""

from valign.rewards.base import Reward, RewardConfig, RewardContext
from valign.rewards.registry import REWARDS, RewardSpec, build_rewards, reward_kinds

__all__ = ["Reward", "RewardConfig", "RewardContext", "REWARDS", "RewardSpec", "build_rewards", "reward_kinds"]
