"""`grpo`: online RL with the constitution's judges as the reward (TRL's GRPOTrainer).

Bai et al. (2022) end Constitutional AI with RL from AI feedback: the policy samples
answers, a judge of the constitution scores them, and the policy is optimised online.
This stage does that with Group Relative Policy Optimisation: for each prompt of the
run's mix (the `respond` stage's red-team and benign prompts) the policy samples
``num_generations`` answers, every reward in ``rewards`` scores them (`valign.rewards`:
the pairwise log-prob judge, a strong judge's verdict, refusal and harm classifiers, any
Python function), TRL sums them with their weights, and each answer's advantage is its
reward against its group's mean. ``beta`` keeps the policy near where it started (KL to
the starting model).

Like `dpo`, it continues the run's previous training stage's adapter (the SFT model):
TRL keeps a frozen copy of that adapter as the reference, so no second model is loaded.
Without an earlier training stage it trains a fresh LoRA adapter on the base. It resumes
from its newest checkpoint and trains data-parallel under ``accelerate launch`` like
every training stage (`valign.stages.training`).

Watching for reward hacking: TRL logs each reward's mean, the KL and the answer length
per step; this stage adds the refusal rate on each kind of prompt (``watch_classifier``,
the `rules` classifier by default, whatever the rewards are), and every ``sample_every``
steps writes ``samples_per_log`` sampled answers with their rewards to
``samples.jsonl``. All of it goes into ``train_log.jsonl`` and the report's GRPO section.

Where the answers are sampled: by TRL's own transformers generation in this process
(``sampler: local``), or on the run's vLLM servers (``sampler: served``), which receive
the adapter as it trains (`valign.stages.grpo_sampling`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, model_validator

from valign import distributed
from valign.errors import ValignError
from valign.evals.classifiers import ClassifierConfig
from valign.rewards import RewardContext, RewardSpec, build_rewards
from valign.rewards.pairwise import PairwiseRewardConfig
from valign.rewards.refusal import HarmRewardConfig, RefusalRewardConfig
from valign.stages.base import StageContext, constitution_file, constitution_inputs, model_identity, run_constitution
from valign.stages.training import (
    TrainingConfig,
    TrainingStage,
    continue_or_add_lora,
    load_base,
    log_series,
    model_record,
    resume_checkpoint,
    resumed,
    train_and_finish,
    trainer_args,
    training_base,
)
from valign.types import Row

if TYPE_CHECKING:
    from valign.config import RunConfig

__all__ = ["GRPOStageConfig", "GRPOStage", "grpo_prompts"]


def _default_rewards() -> list[Any]:
    return [PairwiseRewardConfig(), RefusalRewardConfig(weight=0.5), HarmRewardConfig(weight=0.5)]


class GRPOStageConfig(TrainingConfig):
    """Settings of the `grpo` stage (besides every training stage's, `TrainingConfig`).

    ``batch_size`` counts sampled answers per process and step, so it must be a multiple
    of ``num_generations``: 8 with 4 generations trains on 2 prompts per step.

    Example (YAML):
        grpo:
          num_generations: 4          # answers sampled per prompt (the group)
          batch_size: 8               # answers per step: 2 prompts × 4
          max_completion_length: 64
          beta: 0.04                  # KL penalty to the starting (SFT) model
          rewards:
            - {kind: pairwise, weight: 1.0}        # the log-prob judge, within each group
            - {kind: refusal, weight: 0.5}         # −1 for refusing a benign prompt
            - {kind: harm, weight: 0.5}            # −1 for complying with a red-team prompt
          sample_every: 5             # write sampled answers every 5 steps
    """

    learning_rate: float = Field(5e-5, gt=0)
    batch_size: int = Field(8, ge=1)
    num_generations: int = Field(4, ge=2)
    max_completion_length: int = Field(64, ge=1)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    beta: float = Field(0.04, ge=0)  # 0: no KL term and no reference model
    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo"] = "grpo"
    scale_rewards: Literal["group", "batch", "none"] = "group"
    kinds: list[str] | None = None  # which of respond's prompt kinds to train on; None: all
    max_prompts: int | None = Field(None, ge=1)
    rewards: list[RewardSpec] = Field(default_factory=_default_rewards, min_length=1)  # type: ignore[valid-type]
    watch_classifier: ClassifierConfig = Field(default_factory=ClassifierConfig)
    sample_every: int = Field(5, ge=1)
    samples_per_log: int = Field(4, ge=0)
    sampler: Literal["auto", "local", "served"] = "auto"
    lora_r: int = Field(8, ge=1)  # used only when there is no earlier adapter to continue
    lora_alpha: int = Field(16, ge=1)

    @model_validator(mode="after")
    def _groups_fit(self) -> "GRPOStageConfig":
        if self.batch_size % self.num_generations:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of num_generations ({self.num_generations}): "
                "each step trains on whole groups of answers to a prompt"
            )
        names = [r.label for r in self.rewards]
        if len(set(names)) != len(names):
            raise ValueError(f"two rewards share a name ({', '.join(names)}); give one of them its own `name`")
        return self


def grpo_prompts(respond_rows: list[Row], cfg: GRPOStageConfig) -> list[Row]:
    """The prompts GRPO trains on: respond's, in its order, filtered by kind and capped.

    Example:
        >>> rows = [{"id": "a", "prompt": "Hi", "kind": "benign"}, {"id": "b", "prompt": "Hack", "kind": "red_team"}]
        >>> [r["id"] for r in grpo_prompts(rows, GRPOStageConfig(kinds=["red_team"]))]
        ['b']
    """
    out = []
    for r in respond_rows:
        kind = r.get("kind") or "prompt"
        if cfg.kinds is not None and kind not in cfg.kinds:
            continue
        out.append({"id": r["id"], "prompt": [{"role": "user", "content": r["prompt"]}], "kind": kind})
    return out[: cfg.max_prompts] if cfg.max_prompts else out


class GRPOStage(TrainingStage):
    """GRPO on respond's prompts, continuing the previous training stage's adapter."""

    name: ClassVar[str] = "grpo"
    config_class = GRPOStageConfig
    reads_constitution = True

    def inputs(self, run_config: RunConfig) -> list[str]:
        return ["respond", *constitution_inputs(run_config), *self.continued_stage(run_config)]

    def describe(self, run_config: RunConfig) -> dict[str, Any]:
        cfg = run_config.section(self.name)
        judges = sorted({r.judge or run_config.model for r in cfg.rewards if r.kind in ("pairwise", "verdict")})
        return {
            "config": cfg.model_dump(mode="json"),
            "model": model_identity(cfg.model or run_config.model),
            "judges": [model_identity(j) for j in judges],
            "constitution": constitution_file(run_config),
            "seed": run_config.seed,
            "reward_code": _reward_digest(cfg),
        }

    def check(self, run_config: RunConfig, input_dirs: dict[str, Path]) -> None:
        super().check(run_config, input_dirs)
        if "respond" not in run_config.stages:
            raise ValignError("grpo samples answers to the respond stage's prompts; add respond before grpo in `stages`.")

    def run(self, ctx: StageContext) -> None:
        cfg: GRPOStageConfig = ctx.config
        prompts = grpo_prompts(ctx.input_rows("respond"), cfg)
        if not prompts:
            raise ValignError("grpo has no prompts: respond wrote none of the kinds in grpo.kinds; check grpo.kinds.")
        if any(r.kind == "pairwise" and r.against == "reference" for r in cfg.rewards):
            base_spec, adapter = training_base(cfg, ctx.run_config, ctx.input_dirs)
            _add_references(ctx, cfg, prompts, f"run:{adapter.parent}" if adapter is not None else base_spec)
        ctx.rows.append(prompts)  # before training, as dpo's: a resumed run finds them written
        ctx.info.update(_train(ctx, cfg, prompts))


def _reward_digest(cfg: GRPOStageConfig) -> dict[str, Any]:
    """Templates and rule versions the rewards read, for the fingerprint (no model is loaded)."""
    out: dict[str, Any] = {}
    if any(r.kind == "pairwise" for r in cfg.rewards):
        from valign.rewards.pairwise import templates_digest

        out["pairwise"] = templates_digest()
    if any(r.kind == "verdict" for r in cfg.rewards):
        from valign.rewards.verdict import RETRY_TEMPLATE, TEMPLATE
        from valign.templates import digest

        out["verdict"] = digest([TEMPLATE, RETRY_TEMPLATE])
    if any(r.kind in ("refusal", "harm") for r in cfg.rewards):
        from valign.evals.classifiers.rules import RULES_VERSION

        out["rules_version"] = RULES_VERSION
    return out


# -- training -------------------------------------------------------------------------


def _train(ctx: StageContext, cfg: GRPOStageConfig, prompts: list[Row]) -> dict[str, Any]:
    from datasets import Dataset
    from trl import GRPOConfig

    from valign.stages.grpo_sampling import choose_sampler
    from valign.stages.grpo_trainer import WATCH_PREFIX, GRPOWatch, valign_grpo_trainer

    run_config = ctx.run_config
    base_spec, adapter = training_base(cfg, run_config, ctx.input_dirs)
    reward_ctx = RewardContext(ctx.models.get, run_constitution(run_config), run_config.seed, run_config.model)
    reward_funcs = build_rewards(cfg.rewards, reward_ctx)
    sampler = choose_sampler(cfg.sampler, run_config)
    args_kw = trainer_args(cfg, ctx.dir, run_config.seed, "grpo")
    args_kw.pop("max_length")  # GRPO bounds prompts by the model and answers by max_completion_length
    args = GRPOConfig(
        **args_kw,
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        beta=cfg.beta,
        loss_type=cfg.loss_type,
        scale_rewards=cfg.scale_rewards,
        reward_weights=[r.weight for r in cfg.rewards],
    )
    tokenizer, base = load_base(base_spec, cfg.qlora)  # after the arguments: see `load_base`
    model, peft_config = continue_or_add_lora(base, adapter, cfg.lora_r, cfg.lora_alpha)
    after_step = resumed(resume_checkpoint(ctx.dir))["resumed_from_step"] or 0
    watch = GRPOWatch(ctx.dir / "samples.jsonl", cfg, ctx.models.get, after_step=after_step)
    trainer = valign_grpo_trainer(sampler)(
        model=model, args=args, train_dataset=Dataset.from_list(prompts), processing_class=tokenizer,
        reward_funcs=reward_funcs, peft_config=peft_config, watch=watch,
    )
    train = train_and_finish(trainer, tokenizer, ctx.dir)
    sampler.close(ctx.dir)
    history = trainer.state.log_history
    names = [r.label for r in cfg.rewards]
    series = {
        "reward": log_series(history, "reward"),
        **{f"reward_{n}": log_series(history, f"rewards/{n}/mean") for n in names},
        "kl": log_series(history, "kl"),
        "completion_length": log_series(history, "completions/mean_length"),
        **{f"refusal_rate_{k}": log_series(history, WATCH_PREFIX + k) for k in sorted({p["kind"] for p in prompts})},
    }
    return {
        "model": model_record(base_spec, cfg),
        "counts": {"train_rows": len(prompts), "samples_logged": watch.count()},
        "rewards": [{"name": r.label, "kind": r.kind, "weight": r.weight, **({"against": r.against} if r.kind == "pairwise" else {})}
                    for r in cfg.rewards],
        "sampler": sampler.describe(),
        "train": {**train, **series, "continued_from": str(adapter.parent) if adapter is not None else None},
    }


def _add_references(ctx: StageContext, cfg: GRPOStageConfig, prompts: list[Row], start_spec: str) -> None:
    """The starting model's greedy answer to every prompt, for ``pairwise`` rewards with
    ``against: reference`` (the main process samples them; every process reads them)."""
    from valign.types import GenConfig

    path = ctx.dir / "references.jsonl"
    if distributed.is_main() and not path.exists():
        outs = ctx.models.get(start_spec).generate(
            [p["prompt"] for p in prompts], GenConfig(temperature=0.0, max_new_tokens=cfg.max_completion_length, seed=ctx.run_config.seed)
        )
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps({"id": p["id"], "reference": o.text.strip()}) + "\n" for p, o in zip(prompts, outs)))
        tmp.replace(path)
    distributed.barrier()
    refs = {r["id"]: r["reference"] for r in map(json.loads, path.read_text().splitlines())}
    for p in prompts:
        p["reference"] = refs.get(p["id"], "")
