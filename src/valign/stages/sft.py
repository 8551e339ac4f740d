"""`sft`: supervised fine-tuning on the constitutional revisions, with TRL + PEFT LoRA.

Training rows are TRL's conversational prompt–completion format — ``prompt`` (the
user's turns) and ``completion`` (the revised assistant answer) — so TRL computes the
loss on the assistant's tokens only and applies the model's own chat template. Benign
answers from `respond` can be mixed in (``include_respond_kinds``), as the seed mixed
benign examples in for balance.

``sft.rows`` trains on other rows instead: ``feedback:<database URL>`` takes the
corrections people wrote on a served model's answers (seed 001's feedback on mistakes),
any other value names a JSONL file of ``prompt/completion`` rows. Such a stage continues
the adapter of the run's previous training stage, or of a ``run:<stage folder>`` model
(last round's), so a feedback round builds on the model people rated.

The stage writes the training rows (``rows.jsonl``), the LoRA adapter (``adapter/``),
the loss curve (``train_log.jsonl``) and a manifest whose ``model`` entry lets later
stages load ``run:<this folder>``. A killed run resumes from the last checkpoint.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, ClassVar, TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from valign import distributed
from valign.errors import ValignError
from valign.stages.base import ConfigFile, StageContext, model_identity, rows_fingerprint
from valign.stages.training import TrainingConfig, TrainingStage, guard_bf16, load_base, model_record, train_and_finish, trainer_args, training_base
from valign.types import Row

if TYPE_CHECKING:
    from valign.config import RunConfig


class SFTStageConfig(TrainingConfig):
    """Settings of the `sft` stage: LoRA on the base (``qlora: true`` loads it in 4 bit),
    plus the settings every training stage has (`TrainingConfig`).

    Example (YAML):
        sft:
          lora: {r: 8, alpha: 16, dropout: 0.0, target_modules: all-linear}
          learning_rate: 2.0e-4
          epochs: 1
          batch_size: 4
          gradient_accumulation_steps: 1
          max_length: 512
    """

    class Lora(BaseModel):
        model_config = ConfigDict(extra="forbid")
        r: int = Field(8, ge=1)
        alpha: int = Field(16, ge=1)
        dropout: float = Field(0.0, ge=0, lt=1)  # PEFT's default; each dropout copies every LoRA input
        target_modules: str | list[str] = "all-linear"

    lora: Lora = Field(default_factory=Lora)
    warmup_steps: float = Field(0, ge=0)  # a whole number of steps, or a fraction (< 1) of training
    include_respond_kinds: list[str] = Field(default_factory=lambda: ["benign"])
    rows: ConfigFile | None = None  # None: revise (+ respond); `feedback:<db URL>`: corrections; else a JSONL file


class SFTStage(TrainingStage):
    name: ClassVar[str] = "sft"
    config_class = SFTStageConfig

    def inputs(self, run_config: RunConfig) -> list[str]:
        cfg: SFTStageConfig = run_config.sft
        if cfg.rows is None:
            return ["respond", "revise"]
        return self.continued_stage(run_config)

    def describe(self, run_config: RunConfig) -> dict[str, Any]:
        cfg: SFTStageConfig = run_config.sft
        out = {"config": cfg.model_dump(mode="json"), "model": model_identity(cfg.model or run_config.model), "seed": run_config.seed}
        if cfg.rows is None:
            return out  # the revisions: revise's fingerprint counts them
        kind = "feedback" if cfg.rows.startswith("feedback:") else "file"
        return {**out, **rows_fingerprint(kind, cfg.rows.removeprefix("feedback:"))}

    def run(self, ctx: StageContext) -> None:
        cfg: SFTStageConfig = ctx.config
        if cfg.rows is None:
            self._train_on_revisions(ctx, cfg)
        else:
            self._train_on_rows(ctx, cfg)

    def _train_on_revisions(self, ctx: StageContext, cfg: SFTStageConfig) -> None:
        base_spec = cfg.model or ctx.run_config.model
        rows = training_rows(ctx.input_rows("revise"), ctx.input_rows("respond"), cfg.include_respond_kinds)
        if not rows:
            raise ValignError("sft has no training rows: revise produced none; check respond/revise settings.")
        ctx.rows.append(rows)
        log = train_lora(base_spec, rows, cfg, ctx.dir, seed=ctx.run_config.seed)
        ctx.info["model"] = model_record(base_spec, cfg)
        ctx.info["counts"] = {"train_rows": len(rows), "revised": sum(r["origin"] == "revise" for r in rows)}
        ctx.info["train"] = log

    def _train_on_rows(self, ctx: StageContext, cfg: SFTStageConfig) -> None:
        assert cfg.rows is not None
        base_spec, adapter = training_base(cfg, ctx.run_config, ctx.input_dirs)
        if cfg.rows.startswith("feedback:"):
            from valign.feedback import sft_rows_from_feedback

            rows = sft_rows_from_feedback(cfg.rows.removeprefix("feedback:"))
        else:
            from valign.stages.preference import read_sft_file

            rows = read_sft_file(Path(cfg.rows))
        ctx.info["model"] = model_record(base_spec, cfg)
        ctx.info["counts"] = {"train_rows": len(rows)}
        if not rows and adapter is not None:
            # A round in which nobody wrote a correction: the model passes on unchanged, so
            # the stages after this one (kto on the ratings) still have an adapter to continue.
            if distributed.is_main():
                shutil.copytree(adapter, ctx.dir / "adapter", dirs_exist_ok=True)
            ctx.info["train"] = {"steps": 0, "loss": [], "continued_from": str(adapter.parent), "note": "no rows: adapter passed on unchanged"}
            return
        if not rows:
            raise ValignError(f"sft.rows '{cfg.rows}' holds no rows and there is no adapter to pass on; collect corrections first or drop sft from `stages`.")
        ctx.rows.append(rows)
        log = train_lora(base_spec, rows, cfg, ctx.dir, seed=ctx.run_config.seed, adapter=adapter)
        ctx.info["train"] = {**log, "continued_from": str(adapter.parent) if adapter is not None else None}


def training_rows(revised: list[Row], answered: list[Row], respond_kinds: list[str]) -> list[Row]:
    """Prompt–completion rows: every final revision, plus `respond` answers of the given
    kinds whose prompt was not revised."""
    out: list[Row] = []
    revised_prompts = {r["prompt_id"] for r in revised}
    for r in revised:
        out.append(_pc_row(r, "revise"))
    for r in answered:
        if r.get("kind") in respond_kinds and r["prompt_id"] not in revised_prompts and r["response"].strip():
            out.append(_pc_row(r, "respond"))
    return out


def _pc_row(r: Row, origin: str) -> Row:
    prompt = r["messages"][:-1]
    return {
        "id": f"{origin}:{r['id']}",
        "prompt": prompt,
        "completion": [{"role": "assistant", "content": r["messages"][-1]["content"]}],
        "origin": origin,
        "kind": r.get("kind"),
        "principle_ids": r.get("principle_ids", []),
    }


def _plain_loss_trainer_class():
    """TRL's SFTTrainer with the model's own cross-entropy loss.

    TRL computes its loss with a chunked log-prob kernel (to spare GPU memory on big
    vocabularies) plus entropy and accuracy metrics; on a CPU that path takes ~45% of a
    LoRA step for the embedded model. The plain path gives the same loss values
    (checked in the tests) in about two thirds of the time (`valign bench train`).
    """
    from transformers import Trainer
    from trl import SFTTrainer

    class PlainLossSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            keep = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "labels", "position_ids")}
            keep["use_cache"] = False
            return Trainer.compute_loss(self, model, keep, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    return PlainLossSFTTrainer


def sft_config(cfg: SFTStageConfig, out_dir: Path, seed: int = 0):
    """TRL's SFTConfig for this stage (TrainingArguments plus TRL's own settings)."""
    from trl import SFTConfig

    return SFTConfig(
        **trainer_args(cfg, out_dir, seed, "sft"),
        warmup_steps=int(cfg.warmup_steps) if cfg.warmup_steps >= 1 else cfg.warmup_steps,
    )


def build_sft_trainer(
    model,
    tokenizer,
    rows: list[Row],
    cfg: SFTStageConfig,
    out_dir: Path,
    seed: int = 0,
    *,
    args=None,
    plain_loss: bool | None = None,
    callbacks: list | None = None,
):
    """A configured TRL SFTTrainer with a PEFT LoRA adapter on `model`.

    ``args``: the stage's `sft_config` when the caller made it before loading the model
    (as `train_lora` does); ``plain_loss`` (default: on a CPU) swaps TRL's chunked loss
    for the model's own. With ``bf16`` arguments it trains under bf16 autocast, with the
    LoRA sums and (on a CPU) attention in fp32 (`guard_bf16`).
    """
    import torch
    from datasets import Dataset
    from peft import LoraConfig, PeftModel
    from trl import SFTTrainer

    on_gpu = torch.cuda.is_available()
    args = args if args is not None else sft_config(cfg, out_dir, seed)
    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
        task_type="CAUSAL_LM",
    )
    data = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
    plain = (not on_gpu) if plain_loss is None else plain_loss
    trainer_cls = _plain_loss_trainer_class() if plain else SFTTrainer
    continuing = isinstance(model, PeftModel)  # an adapter loaded trainable: train it, add none
    trainer = trainer_cls(
        model=model, args=args, train_dataset=data, processing_class=tokenizer, peft_config=None if continuing else lora, callbacks=callbacks
    )
    guard_bf16(trainer.model)  # the adapter exists now: TRL added it
    return trainer


def train_lora(
    base_spec: str, rows: list[Row], cfg: SFTStageConfig, out_dir: Path, seed: int = 0, adapter: Path | None = None
) -> dict[str, Any]:
    """Fine-tune a LoRA adapter with TRL's SFTTrainer (a new one, or ``adapter`` continued); returns the loss curve."""
    args = sft_config(cfg, out_dir, seed)  # before the model: see `load_base`
    tokenizer, model = load_base(base_spec, cfg.qlora)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
    trainer = build_sft_trainer(model, tokenizer, rows, cfg, out_dir, seed, args=args)
    return train_and_finish(trainer, tokenizer, out_dir)
