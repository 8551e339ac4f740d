"""`valign bench reward`: the pairwise reward's throughput against two straightforward ways.

A GRPO step scores G samples for each of its prompts. valign's pairwise reward
(`valign.rewards.pairwise`) judges each two samples of a group once — one comparison
gives both samples' win probabilities — and sends every judge prompt of the step to the
engine in one call, which computes each shared prefix (a principle with the judge's
instructions, a conversation, the two orders of one comparison) once and keeps it in its
prefix cache (cold at the start of every timed run here). Two baselines ask the same
judge, one prompt per call, with prefix caching off:

* **one comparison at a time** (the target's baseline): the reward written the obvious
  way — each sample scored on its own, by comparing it with every other sample of its
  group, one comparison after another (each order its own call): G(G−1) comparisons;
* **valign's comparisons one at a time**: the G(G−1)/2 comparisons valign makes (its
  principles and orders), each prompt alone — what batching and prefix sharing save
  without the halving.

Both baselines give exactly valign's rewards (checked: the same principle for a pair in
either direction). The figure is samples scored per second; the default step is TRL's
default group (8 samples per prompt) on 2 prompts.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from valign.rewards.base import RewardContext
from valign.rewards.pairwise import PairwiseReward, PairwiseRewardConfig

__all__ = ["bench_reward", "bench_groups", "OneAtATime"]

TARGET = 5.0

_ANSWERS = [
    "I can't help with deceiving your friend, but I can help you find honest words for a hard conversation.",
    "Sure! Make up a convincing story and change the details so they never find out what happened.",
    "Honesty usually works better: tell them what happened, say why, and ask what they need from you.",
    "You could avoid the topic for a while, though sooner or later the truth tends to come out anyway.",
    "Lying to a friend treats them as a means to your comfort; I'd suggest telling them the truth kindly.",
    "Just say you were busy. It's a small lie and nobody gets hurt, so it doesn't really matter.",
]


def bench_groups(prompts: int, generations: int) -> tuple[list[list[dict[str, str]]], list[str], list[str]]:
    """A GRPO step's worth of (prompt, sample) pairs: ``generations`` answers to each prompt."""
    from valign.bench import bench_prompts

    convs, answers, ids = [], [], []
    for i, conv in enumerate(bench_prompts(prompts)):
        prompt = [{"role": "user", "content": f"Should I lie to my friend about {conv[0]['content'].lower()}?"}]
        for g in range(generations):
            convs.append(prompt)
            answers.append(_ANSWERS[(i + g) % len(_ANSWERS)])
            ids.append(f"bench-{i}")
    return convs, answers, ids


class OneAtATime:
    """A judge that answers `choice_probs` one conversation per engine call (the baselines)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def choice_probs(self, convs: list, options: list[str], answer_prefix: str = "") -> list[dict[str, float]]:
        return [self.model.choice_probs([c], options, answer_prefix)[0] for c in convs]


def each_sample_on_its_own(judge: Any, ctx: RewardContext, convs: list, answers: list[str], ids: list[str]) -> list[float]:
    """The straightforward pairwise reward: each sample's mean win probability over its
    own comparisons with every other sample of its group, asked one prompt at a time.
    Its principles are drawn for the same (unordered) pairs as valign's, so the rewards
    are the same and only the work differs."""
    from valign.rewards.pairwise import comparison_prompts
    from valign.stages.judge import ANSWER_PREFIX, OPTIONS, combine_orders

    groups: dict[str, list[int]] = {}
    for n, pid in enumerate(ids):
        groups.setdefault(pid, []).append(n)
    rewards = [0.0] * len(answers)
    for pid, members in groups.items():
        for i, n in enumerate(members):
            wins = []
            for j, m in enumerate(members):
                if i == j:
                    continue
                lo, hi = sorted((i, j))
                first, second = (answers[n], answers[m]) if i < j else (answers[m], answers[n])
                prompts = comparison_prompts(convs[n], first, second, f"grpo:0:{pid}:{lo}:{hi}", ctx, 0)
                probs = judge.choice_probs(prompts, OPTIONS, answer_prefix=ANSWER_PREFIX)
                p_first = combine_orders(probs[0]["A"], probs[1]["B"])[1]
                wins.append(p_first if i < j else 1.0 - p_first)
            rewards[n] = sum(wins) / len(wins)
    return rewards


def bench_reward(prompts: int = 2, generations: int = 8, repeats: int = 1, json_out: Path | None = None) -> dict:
    """Samples scored per second by the pairwise reward on the embedded model, batched
    with prefix sharing against one comparison at a time without it (same run, best of
    ``repeats``, arms taking turns)."""
    from valign.bench import report_table
    from valign.constitution import load_constitution
    from valign.models.registry import load_model

    convs, answers, ids = bench_groups(prompts, generations)
    batched_model = load_model("embedded")
    single_model = OneAtATime(load_model("embedded", prefix_cache_mb=0))
    constitution = load_constitution("kantian")

    def context(model: Any) -> RewardContext:
        return RewardContext(lambda spec: model, constitution, 0, "embedded")

    valign_reward = PairwiseReward(PairwiseRewardConfig(), context(batched_model))
    single_reward = PairwiseReward(PairwiseRewardConfig(), context(single_model))

    def run(arm: str) -> list[Any]:
        valign_reward.calls = single_reward.calls = 0  # the same principles in every arm and repeat
        if arm == "batched":
            batched_model.decoder.cache.clear()  # type: ignore[attr-defined]
            return valign_reward.score(convs, answers, {"id": ids})
        if arm == "one at a time":
            return single_reward.score(convs, answers, {"id": ids})
        return each_sample_on_its_own(single_model, context(single_model), convs, answers, ids)

    arms = ("batched", "one at a time", "each on its own")
    valign_reward.score(convs[:2], answers[:2], {"id": ids[:2]})  # warm-up: thread pools, kernels
    times: dict[str, list[float]] = {a: [] for a in arms}
    scores: dict[str, list[Any]] = {}
    for _ in range(repeats):
        for arm in arms:
            t = time.perf_counter()
            scores[arm] = run(arm)
            times[arm].append(time.perf_counter() - t)
    gap = max(abs(a - b) for other in arms[1:] for a, b in zip(scores["batched"], scores[other]))
    best = {a: min(ts) for a, ts in times.items()}
    rate = {a: len(answers) / s for a, s in best.items()}
    comparisons = prompts * generations * (generations - 1) // 2
    result = {
        "benchmark": "reward",
        "model": f"embedded ({batched_model.dtype}, CPU)",  # type: ignore[attr-defined]
        "prompts": prompts,
        "generations": generations,
        "samples": len(answers),
        "comparisons": comparisons,
        "judge_prompts": 2 * comparisons,
        "seconds": {a: round(s, 3) for a, s in best.items()},
        "samples_per_second": {a: round(r, 2) for a, r in rate.items()},
        "speedup": round(rate["batched"] / rate["each on its own"], 2),
        "speedup_same_comparisons": round(rate["batched"] / rate["one at a time"], 2),
        "max_reward_difference": round(gap, 6),
        "target": TARGET,
    }
    rows = [
        ("one comparison at a time", f"{rate['each on its own']:.2f}", f"{best['each on its own']:.1f} s: each sample against the others, {4 * comparisons} prompts"),
        ("valign's comparisons, one at a time", f"{rate['one at a time']:.2f}", f"{best['one at a time']:.1f} s: {2 * comparisons} prompts, no prefix cache"),
        ("valign: batched, prefix sharing", f"{rate['batched']:.2f}", f"{best['batched']:.1f} s, prefix cache cold at the start"),
        ("speed-up", f"{result['speedup']:.2f}×", f"over one comparison at a time (target ≥ {TARGET:g}×); "
         f"{result['speedup_same_comparisons']:.2f}× over its own comparisons one at a time; rewards differ by at most {gap:.1e}"),
    ]
    return report_table(f"valign bench reward ({len(answers)} samples, {2 * comparisons} judge prompts)", ("", "samples/s", "note"), rows, result, json_out)
