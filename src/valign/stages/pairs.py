"""`pairs`: two answers per prompt from the SFT model, at two temperatures.

Seed 000 sampled its preference pairs at t=0.7 and t=1.0 from the SFT model; the pair
is what the `judge` stage compares. By default the policy is the model the `sft` stage
produced (``run:<sft folder>``), so changing SFT re-samples the pairs.

Rows: ``id`` (the prompt id), ``prompt``, ``prompt_messages``, ``kind``, ``responses``
(one ``{text, temperature, finish_reason, completion_tokens}`` per temperature) and
``model``.
"""

from __future__ import annotations

from typing import Any, ClassVar, TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, field_validator

from valign.progress import GenProgress
from valign.stages.base import Stage, StageContext, model_identity
from valign.types import GenConfig, Row

if TYPE_CHECKING:
    from valign.config import RunConfig


class PairsConfig(BaseModel):
    """Settings of the `pairs` stage.

    Example (YAML):
        pairs:
          temperatures: [0.7, 1.0]
          kinds: [red_team]          # which prompts get pairs (null: all)
          gen: {max_new_tokens: 256}
    """

    model_config = ConfigDict(extra="forbid")

    temperatures: list[float] = Field(default_factory=lambda: [0.7, 1.0])
    kinds: list[str] | None = None
    model: str | None = None  # default: the sft stage's model when the run has one, else the run's model
    chunk: int = Field(32, ge=1)
    gen: GenConfig = Field(default_factory=lambda: GenConfig(max_new_tokens=256))

    @field_validator("temperatures")
    @classmethod
    def _two(cls, temps: list[float]) -> list[float]:
        if len(temps) != 2 or any(t < 0 for t in temps):
            raise ValueError("give exactly two non-negative temperatures, e.g. [0.7, 1.0]; a pair is two answers")
        return temps


class PairsStage(Stage):
    name: ClassVar[str] = "pairs"
    config_class = PairsConfig

    def inputs(self, run_config: RunConfig) -> list[str]:
        uses_sft = run_config.pairs.model is None and "sft" in run_config.stages
        return ["respond", "sft"] if uses_sft else ["respond"]

    def describe(self, run_config: RunConfig) -> dict[str, Any]:
        cfg: PairsConfig = run_config.pairs
        default = "sft" if "sft" in run_config.stages else run_config.model
        return {"config": cfg.model_dump(mode="json"), "model": model_identity(cfg.model or default), "seed": run_config.seed}

    def run(self, ctx: StageContext) -> None:
        cfg: PairsConfig = ctx.config
        spec = cfg.model or (f"run:{ctx.input_dirs['sft']}" if "sft" in ctx.input_dirs else ctx.run_config.model)
        prompts = [r for r in _unique_prompts(ctx.input_rows("respond")) if cfg.kinds is None or r.get("kind") in cfg.kinds]
        todo = [r for r in prompts if r["prompt_id"] not in ctx.rows.ids]
        ctx.info["counts"] = {"prompts": len(prompts), "resumed_done": len(prompts) - len(todo)}
        ctx.info["policy"] = spec
        if not todo:
            return
        model = ctx.models.get(spec)
        ctx.console.print(f"pairs: {len(todo)} prompts × temperatures {cfg.temperatures} with {spec}")
        seed = ctx.run_config.seed if cfg.gen.seed is None else cfg.gen.seed
        with GenProgress("pairs", total=len(todo) * 2) as bar:
            for start in range(0, len(todo), cfg.chunk):
                chunk = todo[start : start + cfg.chunk]
                convs = [r["messages"][:-1] for r in chunk]
                answers = [
                    model.generate(convs, cfg.gen.model_copy(update={"temperature": t, "seed": seed + k}), progress=bar)
                    for k, t in enumerate(cfg.temperatures)
                ]
                ctx.rows.append(
                    {
                        "id": r["prompt_id"],
                        "prompt_id": r["prompt_id"],
                        "prompt": r["prompt"],
                        "prompt_messages": convs[i],
                        "kind": r.get("kind"),
                        "source": r.get("source"),
                        "responses": [
                            {
                                "text": answers[k][i].text,
                                "temperature": t,
                                "finish_reason": answers[k][i].finish_reason,
                                "completion_tokens": answers[k][i].completion_tokens,
                            }
                            for k, t in enumerate(cfg.temperatures)
                        ],
                        "model": spec,
                    }
                    for i, r in enumerate(chunk)
                )


def _unique_prompts(rows: list[Row]) -> list[Row]:
    """One row per prompt (respond may hold several samples of a prompt)."""
    seen: dict[str, Row] = {}
    for r in rows:
        seen.setdefault(r["prompt_id"], r)
    return list(seen.values())
