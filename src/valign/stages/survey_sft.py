"""`survey_sft`: distribution fine-tuning — teach the model the population's answer distribution.

For every survey item (`valign.survey.opinion.OpinionItem`) the model is asked the
question OpinionQA-style, and the loss is the cross-entropy between the population's
weighted distribution ``p`` over the options and the model's distribution ``q`` over
the options' first tokens: ``−Σ p_k log q_k``, i.e. the forward KL(p‖q) plus the
constant entropy of ``p`` — the soft-label objective SubPOP (Suh et al. 2025) uses.
A seeded share of the items (``holdout``) is never trained on, so the manifest can
show whether what was learned carries over to unseen questions.

The items may come from published opinion data (`valign opinions convert`), and the
target may be one population rather than everyone: ``population: country=Japan``
trains towards Japan's distributions. With ``groups`` the training is conditioned on
the group, as SubPOP's is: every item is asked once per chosen group, with a line
naming the group (`valign.opinions.populations.condition`), towards that group's
distribution; ``holdout_groups`` are never trained on, and their rows (split
``held_out_group``) show whether the model learned to answer for groups it never saw.

Training is a LoRA adapter through transformers' `Trainer` (checkpoints, resume,
logging) with this loss; the stage continues the adapter of the run's previous
training stage when there is one. Rows: one per item, with its split, the
population's distribution and the model's before and after, and their distances
(normalised Wasserstein-1 for ordered options, Jensen–Shannon otherwise). The
manifest's ``fidelity`` block holds the mean distances before and after, for the
training and the held-out items.

Example (YAML):
    survey_sft: {items: null, kinds: [value], holdout: 0.25, epochs: 4, learning_rate: 3.0e-4}
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, ClassVar, TYPE_CHECKING

from pydantic import Field, model_validator

from valign.errors import ValignError
from valign.stages.base import ConfigFile, StageContext, model_identity
from valign.stages.training import TrainingConfig, TrainingStage, guard_bf16, load_base, model_record, train_and_finish, trainer_args, training_base
from valign.opinions.populations import condition, expand, retarget
from valign.survey.opinion import OpinionItem, opinion_prompt, option_letters, read_items
from valign.types import Row

if TYPE_CHECKING:
    from valign.config import RunConfig

__all__ = ["SurveySFTConfig", "SurveySFTStage", "split_items", "targets", "train_distributions"]

class SurveySFTConfig(TrainingConfig):
    """Settings of the `survey_sft` stage.

    ``items``: an evaluation-set JSONL (`valign survey export` writes ``eval_items.jsonl``,
    `valign opinions convert` one from published data); by default the run's `survey`
    stage's. ``kinds``: which survey items to train on (``value`` items are the
    instrument's value questions; converted items are ``opinion``). ``population``: one
    group key to train towards instead of everyone. ``groups``: group keys or variables
    to train on conditioned on the group; ``holdout_groups``: of those, the ones kept
    for evaluation only.
    """

    @model_validator(mode="after")
    def _groups_or_population(self) -> SurveySFTConfig:
        if self.population and self.groups:
            raise ValueError("set either population (one target) or groups (conditioned on each), not both")
        if self.holdout_groups and not self.groups:
            raise ValueError("holdout_groups needs groups: the groups trained on, conditioned on each")
        return self

    items: ConfigFile | None = None
    kinds: list[str] = Field(default_factory=lambda: ["value"])
    holdout: float = Field(0.25, ge=0, lt=1)
    population: str | None = None
    groups: list[str] | None = None
    holdout_groups: list[str] = Field(default_factory=list)
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    learning_rate: float = Field(3e-4, gt=0)
    epochs: float = Field(4.0, gt=0)
    batch_size: int = Field(8, ge=1)


def split_items(items: list[OpinionItem], holdout: float, seed: int) -> tuple[list[OpinionItem], list[OpinionItem]]:
    """(train, held out): a seeded choice by item id, stable when items are added or reordered.

    Example:
        >>> items = [OpinionItem(id=f"q{i}", question="?", options=["a", "b"], distribution=[.5, .5]) for i in range(8)]
        >>> train, held = split_items(items, 0.25, seed=0)
        >>> len(train), len(held)
        (6, 2)
    """
    k = round(len(items) * holdout)
    if holdout > 0 and len(items) >= 2:
        k = max(1, min(k, len(items) - 1))  # something to learn from and something to check
    rank = sorted(items, key=lambda it: hashlib.sha256(f"{seed}:{it.id}".encode()).hexdigest())
    held = {it.id for it in rank[:k]}
    return [it for it in items if it.id not in held], [it for it in items if it.id in held]


class SurveySFTStage(TrainingStage):
    name: ClassVar[str] = "survey_sft"
    config_class = SurveySFTConfig

    def inputs(self, run_config: RunConfig) -> list[str]:
        cfg: SurveySFTConfig = run_config.survey_sft
        return ([] if cfg.items else ["survey"]) + self.continued_stage(run_config)

    def describe(self, run_config: RunConfig) -> dict[str, Any]:
        cfg: SurveySFTConfig = run_config.survey_sft
        # the population settings count only when set, so fingerprints from before they existed still hold
        later = {k for k in ("population", "groups", "holdout_groups") if not getattr(cfg, k)}
        out: dict[str, Any] = {"config": cfg.model_dump(mode="json", exclude=later), "model": model_identity(cfg.model or run_config.model), "seed": run_config.seed}
        if cfg.items:
            out["items_sha256"] = hashlib.sha256(Path(cfg.items).read_bytes()).hexdigest() if Path(cfg.items).exists() else None
        return out

    def run(self, ctx: StageContext) -> None:
        cfg: SurveySFTConfig = ctx.config
        path = Path(cfg.items) if cfg.items else ctx.input_dirs["survey"] / "eval_items.jsonl"
        items = [it for it in read_items(path) if it.kind in cfg.kinds]
        if len(items) < 2:
            raise ValignError(f"survey_sft found {len(items)} item(s) of kinds {cfg.kinds} in {path}; it needs two or more — check survey_sft.kinds.")
        train, held, held_groups = targets(items, cfg, ctx.run_config.seed)
        base_spec, adapter = training_base(cfg, ctx.run_config, ctx.input_dirs)
        result = train_distributions(base_spec, train, held, cfg, ctx.dir, ctx.run_config.seed, adapter, held_groups)
        ctx.rows.append(result.pop("rows"))
        ctx.info.update(result)


def targets(items: list[OpinionItem], cfg: SurveySFTConfig, seed: int) -> tuple[list[OpinionItem], list[OpinionItem], list[OpinionItem]]:
    """(train, held-out items, held-out groups): what to train towards and what to keep for checking.

    Items are split by their own id first, so a question held out is held out for every group.

    Example:
        >>> from valign.survey.opinion import GroupDistribution as G
        >>> items = [OpinionItem(id=f"q{i}", question="?", options=["a", "b"], distribution=[.5, .5],
        ...                      groups={"c=X": G(distribution=[.9, .1], n=5), "c=Y": G(distribution=[.1, .9], n=5)}) for i in range(4)]
        >>> train, held, held_groups = targets(items, SurveySFTConfig(kinds=["value"], groups=["c"], holdout_groups=["c=Y"]), seed=0)
        >>> sorted(i.id for i in train), [i.id for i in held], sorted(i.id for i in held_groups)
        (['q1@c=X', 'q2@c=X', 'q3@c=X'], ['q0@c=X'], ['q0@c=Y', 'q1@c=Y', 'q2@c=Y', 'q3@c=Y'])
    """
    if cfg.population:
        items = retarget(items, cfg.population)
    train, held = split_items(items, cfg.holdout, seed)
    if not cfg.groups:
        return train, held, []
    held_keys = expand(items, cfg.holdout_groups) if cfg.holdout_groups else []
    keys = [k for k in expand(items, cfg.groups) if k not in held_keys]
    if not keys:
        raise ValignError("survey_sft.holdout_groups holds every group of survey_sft.groups; leave some to train on.")
    return condition(train, keys), condition(held, keys), condition(items, held_keys)


def train_distributions(
    base_spec: str,
    train: list[OpinionItem],
    held: list[OpinionItem],
    cfg: SurveySFTConfig,
    out_dir: Path,
    seed: int = 0,
    continue_from: Path | None = None,
    held_groups: list[OpinionItem] | None = None,
) -> dict[str, Any]:
    """Train a LoRA adapter towards the items' distributions; measure before and after.

    ``continue_from`` is an adapter folder to keep training (e.g. the SFT stage's);
    ``held_groups`` are items conditioned on groups never trained on, measured like ``held``.
    """
    held_groups = held_groups or []
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import TrainingArguments

    from valign.evals.fidelity import item_distance

    args = TrainingArguments(**_plain_args(trainer_args(cfg, out_dir, seed, "survey_sft")), remove_unused_columns=False)
    tokenizer, base = load_base(base_spec, cfg.qlora)  # after the arguments: see `load_base`
    if continue_from is not None:
        model = PeftModel.from_pretrained(base, str(continue_from), is_trainable=True)
    else:
        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules="all-linear", task_type="CAUSAL_LM")
        model = get_peft_model(base, lora)
    guard_bf16(model)
    measured = train + held + held_groups
    splits = ["train"] * len(train) + ["held_out"] * len(held) + ["held_out_group"] * len(held_groups)
    examples = [_example(tokenizer, it, cfg.max_length) for it in measured]
    before = _distributions(model, examples)
    trainer = _soft_label_trainer_class()(model=model, args=args, train_dataset=examples[: len(train)], data_collator=_collate(tokenizer.pad_token_id))
    log = train_and_finish(trainer, tokenizer, out_dir)
    after = _distributions(trainer.model, examples)

    rows: list[Row] = []
    for i, item in enumerate(measured):
        rows.append({
            "id": item.id, "split": splits[i], "kind": item.kind, "ordinal": item.ordinal,
            "options": item.options, "population": item.distribution,
            "before": [round(x, 6) for x in before[i]], "after": [round(x, 6) for x in after[i]],
            "distance_before": item_distance(item, before[i], item.distribution),
            "distance_after": item_distance(item, after[i], item.distribution),
        })
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    fidelity = {
        split: {
            "items": len([r for r in rows if r["split"] == split]),
            "distance_before": mean([r["distance_before"] for r in rows if r["split"] == split]),
            "distance_after": mean([r["distance_after"] for r in rows if r["split"] == split]),
        }
        for split in ("train", "held_out", "held_out_group")
        if split != "held_out_group" or held_groups
    }
    return {
        "rows": rows,
        "model": model_record(base_spec, cfg),
        "counts": {"train_items": len(train), "held_out_items": len(held), **({"held_out_group_items": len(held_groups)} if held_groups else {})},
        "fidelity": fidelity,
        "train": {**log, "continued_from": str(continue_from) if continue_from else None},
    }


def _plain_args(args: dict[str, Any]) -> dict[str, Any]:
    """`trainer_args` is written for TRL's configs; plain TrainingArguments lack max_length."""
    return {k: v for k, v in args.items() if k != "max_length"}


def _example(tokenizer: Any, item: OpinionItem, max_length: int) -> dict[str, Any]:
    """Token ids of the question (ending where the answer starts), the options' first tokens, the target."""
    text = tokenizer.apply_chat_template(opinion_prompt(item), add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) > max_length:
        raise ValignError(f"survey item '{item.id}' is {len(ids)} tokens long, over survey_sft.max_length={max_length}; raise it.")
    option_ids = []
    for letter in option_letters(item):
        full = tokenizer(text + letter, add_special_tokens=False)["input_ids"]
        if full[: len(ids)] != ids or len(full) == len(ids):
            raise ValignError(f"the tokenizer merges the option letter '{letter}' into the prompt of item '{item.id}'; the model cannot be scored this way.")
        option_ids.append(full[len(ids)])
    if len(set(option_ids)) != len(option_ids):
        raise ValignError(f"the options of survey item '{item.id}' start with the same token; they cannot be told apart.")
    return {"input_ids": ids, "option_ids": option_ids, "target": list(item.distribution)}


def _collate(pad_id: int):
    import torch

    def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
        width = max(len(b["input_ids"]) for b in batch)
        k = max(len(b["option_ids"]) for b in batch)
        return {
            "input_ids": torch.tensor([b["input_ids"] + [pad_id] * (width - len(b["input_ids"])) for b in batch]),
            "attention_mask": torch.tensor([[1] * len(b["input_ids"]) + [0] * (width - len(b["input_ids"])) for b in batch]),
            "last": torch.tensor([len(b["input_ids"]) - 1 for b in batch]),
            "option_ids": torch.tensor([b["option_ids"] + [-1] * (k - len(b["option_ids"])) for b in batch]),
            "target": torch.tensor([b["target"] + [0.0] * (k - len(b["target"])) for b in batch], dtype=torch.float32),
        }

    return collate


def _option_log_probs(model: Any, batch: dict[str, Any]):
    """log q over each row's options (padding options get −inf), from the answer position."""
    import torch

    hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True, logits_to_keep=1)
    # Right padding: the answer position differs per row, so read the last layer's state
    # there and project only those rows through the LM head (the frozen head of the
    # model under DDP's wrapper, when several processes train).
    states = hidden.hidden_states[-1][torch.arange(len(batch["last"])), batch["last"]]
    head = getattr(model, "module", model).get_output_embeddings()
    logits = head(states).float()
    options = batch["option_ids"]
    picked = logits.gather(1, options.clamp(min=0)).masked_fill(options < 0, float("-inf"))
    return torch.log_softmax(picked, dim=-1)


def _soft_label_trainer_class():
    from transformers import Trainer

    class SoftLabelTrainer(Trainer):
        """Cross-entropy against a distribution over the options' first tokens."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            log_q = _option_log_probs(model, inputs)
            target = inputs["target"].to(log_q.device)
            loss = -(target * log_q.masked_fill(target == 0, 0.0)).sum(-1).mean()
            return (loss, {"log_q": log_q}) if return_outputs else loss

    return SoftLabelTrainer


def _distributions(model: Any, examples: list[dict[str, Any]], batch_size: int = 16) -> list[list[float]]:
    import torch

    was_training = model.training
    model.eval()
    collate = _collate(0)
    out: list[list[float]] = []
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            log_q = _option_log_probs(model, collate(chunk))
            for row, ex in zip(log_q, chunk):
                out.append(row[: len(ex["option_ids"])].exp().tolist())
    model.train(was_training)
    return out

