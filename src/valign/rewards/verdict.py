"""`verdict`: a strong judge grades each sample against the whole constitution.

For a judge behind ``openai:`` (a served 70B model, a commercial API): each sample is
shown with the constitution and the conversation (``reward_score.txt``) and the judge
replies with JSON ``{"rationale": …, "score": 1-10}``. The reward is ``(score − 1) / 9``,
in [0, 1]. Requests go out concurrently through the ``openai:`` backend, with its
retries on server errors and its request-parameter policy; a reply that is not such
JSON is asked again with what was wrong quoted (the judge stage's
`valign.stages.judge.ask_until_readable`), and after ``max_retries`` the sample has no
verdict reward (None: TRL leaves it out of that reward's mean and the weighted sum).
The run's completion cache keeps every grade, so a resumed run asks nothing twice.

Example:
    >>> parse_score('Here you go: {"rationale": "Declines and explains.", "score": 8}').score
    8
"""

from __future__ import annotations

from string import Template
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from valign.rewards.base import Reward, RewardConfig, RewardContext
from valign.types import Conversation, GenConfig, keep_gen_defaults

__all__ = ["VerdictRewardConfig", "VerdictReward", "Score", "parse_score", "score_conversation"]

TEMPLATE = "reward_score.txt"
RETRY_TEMPLATE = "reward_score_retry.txt"


class VerdictRewardConfig(RewardConfig):
    """Settings of the ``verdict`` reward.

    Example (YAML, one entry of ``grpo.rewards``):
        {kind: verdict, judge: "openai:gpt-5@https://api.openai.com/v1", max_retries: 2}
    """

    kind: Literal["verdict"] = "verdict"
    judge: str  # any model spec; a strong judge behind openai: is what this reward is for
    max_retries: int = Field(2, ge=0, le=10)
    gen: GenConfig = Field(default_factory=lambda: GenConfig(temperature=0.0, max_new_tokens=256))
    _gen_defaults = field_validator("gen", mode="before")(keep_gen_defaults)


class Score(BaseModel):
    """The grade a verdict judge returns."""

    model_config = ConfigDict(extra="ignore")

    rationale: str = ""
    score: int = Field(..., ge=1, le=10)

    @field_validator("score", mode="before")
    @classmethod
    def _whole(cls, v: Any) -> Any:
        # "8", 8.0 and "8/10" all mean 8; 7.5 does not fit a 1-10 whole-number scale.
        if isinstance(v, str):
            v = v.strip().split("/")[0].strip()
        if isinstance(v, float) and v.is_integer():
            return int(v)
        return v


def parse_score(text: str) -> Score:
    """The `Score` in a judge's reply (fenced or bare JSON among other text); raises
    `VerdictError` naming what is wrong."""
    from valign.stages.judge import parse_json_reply

    return parse_json_reply(text, Score)


def score_conversation(prompt: Conversation, answer: str, ctx: RewardContext) -> Conversation:
    """The chat that asks the judge to grade one answer."""
    from valign.stages.judge import render_conversation
    from valign.templates import load_template

    text = Template(load_template(TEMPLATE)).substitute(
        constitution=ctx.constitution.render("text"), conversation=render_conversation(prompt), answer=answer.strip()
    )
    return [{"role": "user", "content": text}]


class VerdictReward(Reward):
    def __init__(self, cfg: VerdictRewardConfig, ctx: RewardContext) -> None:
        super().__init__(cfg.label)
        self.cfg, self.ctx = cfg, ctx
        self.unreadable = 0  # samples left without a grade, over the whole stage

    def describe(self) -> dict[str, Any]:
        from valign.templates import digest

        return {"templates": digest([TEMPLATE, RETRY_TEMPLATE])}

    def score(self, prompts: list[Conversation], answers: list[str], columns: dict[str, Any]) -> list[float | None]:
        from valign.stages.judge import ask_until_readable, judge_gen

        convs = [score_conversation(p, a, self.ctx) for p, a in zip(prompts, answers)]

        def gen_for(attempt: int) -> GenConfig:
            # Seeded from the run's seed (reruns hit the cache); a retry gets its own seed.
            return judge_gen(self.cfg.gen, self.ctx.seed, "reward-score", attempt)

        model = self.ctx.load_model(self.cfg.judge)
        replies = ask_until_readable(model, convs, parse_score, gen_for, self.cfg.max_retries, RETRY_TEMPLATE)
        missing = sum("value" not in r for r in replies)
        self.unreadable += missing
        log_metric = columns.get("log_metric")
        if log_metric is not None:
            log_metric(f"rewards/{self.__name__}/unreadable", missing / max(1, len(replies)))
        return [(r["value"].score - 1) / 9 if "value" in r else None for r in replies]
