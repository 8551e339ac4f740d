"""`dpo` and `kto`: preference optimisation with TRL, continuing from the SFT adapter.

DPO trains on the judge's ``prompt/chosen/rejected`` rows. When the run has an `sft`
stage, the policy is base + the SFT adapter, loaded trainable, and the reference is
that same SFT model: TRL copies the adapter as a frozen "ref" adapter, so no second
model sits in memory. Reference log-probs are precomputed once by default.

KTO trains on ``prompt/completion/label`` rows: by default each judged pair gives a
desirable (chosen) and an undesirable (rejected) example; ``kto.rows`` can name any
JSONL file of such rows instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from valign import distributed
from valign.errors import ValignError
from valign.runs import read_rows
from valign.stages.base import ConfigFile, StageContext, model_identity, rows_fingerprint
from valign.stages.training import TrainingConfig, TrainingStage, continue_or_add_lora, guard_bf16, load_base, log_series, model_record, train_and_finish, trainer_args, training_base
from valign.types import Row

if TYPE_CHECKING:
    from valign.config import RunConfig


class PreferenceConfig(TrainingConfig):
    """What DPO and KTO share besides every training stage's settings (`TrainingConfig`).

    ``precompute_ref_log_probs`` computes the reference model's log-probs once before
    training; with several processes it is turned off (each process would cache its
    share where the others cannot read it), and the manifest says so.
    """

    beta: float = Field(0.1, gt=0)
    learning_rate: float = Field(5e-5, gt=0)
    precompute_ref_log_probs: bool = True
    lora_r: int = Field(8, ge=1)  # used only when there is no SFT adapter to continue
    lora_alpha: int = Field(16, ge=1)
    rows: ConfigFile | None = None  # see `rows_source`; default: the judge's pairs (kept ones for dpo)


class DPOStageConfig(PreferenceConfig):
    """Settings of the `dpo` stage.

    Example (YAML):
        dpo: {beta: 0.1, loss_type: sigmoid, learning_rate: 5.0e-5, epochs: 1, batch_size: 4}
    """

    loss_type: Literal["sigmoid", "ipo", "hinge", "robust", "bco_pair", "sppo_hard", "nca_pair", "apo_zero", "apo_down"] = "sigmoid"


class KTOStageConfig(PreferenceConfig):
    """Settings of the `kto` stage.

    Example (YAML):
        kto: {beta: 0.1, desirable_weight: 1.0, undesirable_weight: 1.0, rows: null}
    """

    desirable_weight: float = Field(1.0, gt=0)
    undesirable_weight: float = Field(1.0, gt=0)


def rows_source(run_config: RunConfig, rows: str | None) -> tuple[str, str | None]:
    """Where a dpo/kto stage's rows come from: ``("judge", None)`` by default;
    ``("stage", name)`` when ``rows`` names an earlier stage of the run that writes
    ``dpo.jsonl``/``kto.jsonl`` (e.g. ``survey``); ``("feedback", db_url)`` for
    ``feedback:<database URL>`` (KTO on collected 👍/👎); else ``("file", path)``."""
    if rows is None:
        return "judge", None
    if rows in run_config.stages:
        return "stage", rows
    if rows.startswith("feedback:"):
        return "feedback", rows.removeprefix("feedback:")
    return "file", rows


class PreferenceStage(TrainingStage):
    """What `dpo` and `kto` share: where their rows come from, what they hash, and how
    they train (`_train`, on TRL's trainer of their name)."""

    name: ClassVar[str]
    no_rows: ClassVar[str]  # the sentence when there is nothing to train on

    def inputs(self, run_config: RunConfig) -> list[str]:
        cfg = run_config.section(self.name)
        kind, where = rows_source(run_config, cfg.rows)
        return {"judge": ["judge"], "stage": [where]}.get(kind, []) + self.continued_stage(run_config)

    def describe(self, run_config: RunConfig) -> dict[str, Any]:
        cfg = run_config.section(self.name)
        out = {"config": cfg.model_dump(mode="json"), "model": model_identity(cfg.model or run_config.model), "seed": run_config.seed}
        return {**out, **rows_fingerprint(*rows_source(run_config, cfg.rows))}

    def run(self, ctx: StageContext) -> None:
        rows = self._rows(ctx)
        if not rows:
            raise ValignError(self.no_rows)
        ctx.rows.append(rows)
        ctx.info.update(_train(ctx, ctx.config, rows, self.name))

    def _rows(self, ctx: StageContext) -> list[Row]:
        cfg = ctx.config
        kind, where = rows_source(ctx.run_config, cfg.rows)
        reader = read_dpo_file if self.name == "dpo" else read_kto_file
        if kind == "file":
            return reader(Path(where))
        if kind == "stage":
            return reader(ctx.input_dirs[where] / f"{self.name}.jsonl")
        if kind == "feedback":
            if self.name != "kto":
                raise ValignError("feedback rows are thumbs up/down: use them in kto (kto.rows: feedback:<db>), not in dpo.")
            from valign.feedback import kto_rows_from_feedback

            return kto_rows_from_feedback(where)
        pairs = preference_rows(ctx.input_rows("judge"))
        return pairs if self.name == "dpo" else kto_rows(pairs)


class DPOStage(PreferenceStage):
    name: ClassVar[str] = "dpo"
    config_class = DPOStageConfig
    no_rows = "dpo has no preference pairs: the judge kept none (lower judge.min_margin or add prompts) or dpo.rows is empty."


class KTOStage(PreferenceStage):
    name: ClassVar[str] = "kto"
    config_class = KTOStageConfig
    no_rows = "kto has no rows; give kto.rows (prompt/completion/label JSONL, a stage, or feedback:<db>) or let the judge keep pairs."


def preference_rows(judged: list[Row]) -> list[Row]:
    """The judge's kept pairs, in TRL's conversational prompt/chosen/rejected format."""
    out = []
    for r in judged:
        if not r.get("kept", True) or not r.get("chosen") or not r.get("rejected"):
            continue
        out.append(
            {
                "id": r["id"],
                "prompt": r["prompt"] if isinstance(r["prompt"], list) else r.get("prompt_messages"),
                "chosen": r["chosen"],
                "rejected": r["rejected"],
                **({"weight": r["weight"]} if "weight" in r else {}),
            }
        )
    return out


def kto_rows(pairs: list[Row]) -> list[Row]:
    """Unpaired rows for KTO: each pair's chosen answer is desirable, its rejected one not."""
    out = []
    for p in pairs:
        weight = {"weight": p["weight"]} if "weight" in p else {}
        out.append({"id": f"{p['id']}:chosen", "prompt": p["prompt"], "completion": p["chosen"], "label": True, **weight})
        out.append({"id": f"{p['id']}:rejected", "prompt": p["prompt"], "completion": p["rejected"], "label": False, **weight})
    return out


def _as_conversation(value: Any, role: str) -> list[dict[str, str]]:
    return value if isinstance(value, list) else [{"role": role, "content": value}]


def _read_rows_file(path: Path, need: tuple[str, ...], what: str) -> list[Row]:
    if not path.exists():
        raise ValignError(f"rows file {path} does not exist; write JSONL rows with {what} there.")
    rows = []
    for n, r in enumerate(read_rows(path), 1):
        if not set(need) <= set(r):
            raise ValignError(f"{path} row {n} needs {what}.")
        weight = {"weight": float(r["weight"])} if "weight" in r else {}
        rows.append({"id": str(r.get("id") or f"row-{n}"), **{k: r[k] for k in need}, **weight})
    return rows


def read_kto_file(path: Path) -> list[Row]:
    """prompt/completion/label rows from a JSONL file (strings or conversations), with optional weights."""
    what = "'prompt', 'completion' and a true/false 'label'"
    rows = _read_rows_file(path, ("prompt", "completion", "label"), what)
    for n, r in enumerate(rows, 1):
        if not isinstance(r["label"], bool):
            raise ValignError(f"{path} row {n} needs {what}.")
        r["prompt"] = _as_conversation(r["prompt"], "user")
        r["completion"] = _as_conversation(r["completion"], "assistant")
    return rows


def read_sft_file(path: Path) -> list[Row]:
    """prompt/completion rows from a JSONL file (strings or conversations), for `sft.rows`."""
    rows = _read_rows_file(path, ("prompt", "completion"), "'prompt' and 'completion'")
    for r in rows:
        r["prompt"] = _as_conversation(r["prompt"], "user")
        r["completion"] = _as_conversation(r["completion"], "assistant")
    return rows


def read_dpo_file(path: Path) -> list[Row]:
    """prompt/chosen/rejected rows from a JSONL file (strings or conversations), with optional weights."""
    rows = _read_rows_file(path, ("prompt", "chosen", "rejected"), "'prompt', 'chosen' and 'rejected'")
    for r in rows:
        r["prompt"] = _as_conversation(r["prompt"], "user")
        r["chosen"] = _as_conversation(r["chosen"], "assistant")
        r["rejected"] = _as_conversation(r["rejected"], "assistant")
    return rows


def normalised_weights(rows: list[Row]) -> list[float] | None:
    """Each row's ``weight`` divided by their mean, or None when rows carry no weights.

    Mean 1 keeps the learning rate meaning the same with and without survey weights.

    Example:
        >>> normalised_weights([{"weight": 2.0}, {"weight": 1.0}, {"weight": 3.0}])
        [1.0, 0.5, 1.5]
    """
    if not rows or not all("weight" in r for r in rows):
        return None
    weights = [float(r["weight"]) for r in rows]
    if any(w < 0 or w != w for w in weights) or sum(weights) <= 0:
        raise ValignError("sample weights must be non-negative numbers with a positive sum; check the 'weight' column.")
    mean = sum(weights) / len(weights)
    return [w / mean for w in weights]


def valign_trainer(trainer_cls):
    """TRL's DPO or KTO trainer with valign's two changes.

    * Rows with a ``weight`` column are weighted exactly in the loss: the collator
      carries each row's weight into the batch, and `RowWeights` scales that row's
      gradient by it (see `valign.stages.plain_head`).
    * On a CPU, the plain LM head replaces TRL's chunked kernel.
    * Under bf16 autocast, the LoRA sums and (on a CPU) attention stay fp32
      (`guard_bf16`), from the reference pass on, so reference and policy are computed
      the same way.
    """
    import torch

    from valign.stages.plain_head import RowWeights, add_plain_lm_head, add_row_weights, plain_head_wanted

    class ValignTrainer(trainer_cls):
        def __init__(self, *args, **kwargs):
            self._plain_head_on = False
            super().__init__(*args, **kwargs)
            self._row_weights = RowWeights()
            self._weighted = "weight" in (self.train_dataset.column_names or [])
            inner = self._install_plain_head()
            if self._weighted:
                add_row_weights(inner, self._row_weights)
                collate = self.data_collator

                def with_weights(examples):
                    batch = collate(examples)
                    batch["row_weight"] = torch.tensor([float(e["weight"]) for e in examples])
                    return batch

                self.data_collator = with_weights

        def _install_plain_head(self):
            """The plain LM head on a CPU, once, and `guard_bf16`; returns the model under the adapters."""
            guard_bf16(self.model)
            inner = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
            if not self._plain_head_on and plain_head_wanted(inner):
                outputs = ("log_probs", "entropy", "mean_logits", "is_top1")
                weighting = getattr(self, "use_weighting", getattr(self.args, "use_weighting", False))
                add_plain_lm_head(inner, outputs + (("log_sum_sq_probs",) if weighting else ()))
                self._plain_head_on = True
            return inner

        def _precompute_ref_logps(self, *args, **kwargs):
            # TRL precomputes inside its __init__, after installing its fused head and
            # before ours would be: without this, the one reference pass ran on the slow
            # CPU path and cost about three times an in-step reference forward (and in
            # bf16, without `guard_bf16`, unlike the policy it is compared with).
            self._install_plain_head()
            return super()._precompute_ref_logps(*args, **kwargs)

        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()
            if "weight" not in self._signature_columns:
                self._signature_columns = [*self._signature_columns, "weight"]

        def compute_ref_log_probs(self, model, inputs):
            return super().compute_ref_log_probs(model, {k: v for k, v in inputs.items() if k != "row_weight"})

        def _compute_loss(self, model, inputs, return_outputs):
            inputs = dict(inputs)
            self._row_weights.current = inputs.pop("row_weight", None)
            try:
                return super()._compute_loss(model, inputs, return_outputs)
            finally:
                self._row_weights.current = None

    ValignTrainer.__name__ = f"Valign{trainer_cls.__name__}"
    return ValignTrainer


def _train(ctx: StageContext, cfg: PreferenceConfig, rows: list[Row], kind: str) -> dict[str, Any]:
    base_spec, adapter = training_base(cfg, ctx.run_config, ctx.input_dirs)
    # TRL caches the precomputed reference log-probs in each process's own temporary
    # folder, where the other processes look for them and fail: with several processes
    # the reference runs in every step instead.
    precompute = cfg.precompute_ref_log_probs and distributed.world_size() == 1
    common = dict(
        trainer_args(cfg, ctx.dir, ctx.run_config.seed, kind),
        beta=cfg.beta,
        precompute_ref_log_probs=precompute,
        # The training batch size: bigger reference batches gain nothing on a CPU, and the
        # plain LM head's logits grow with the batch (16 pairs were 1.6× slower per row).
        precompute_ref_batch_size=cfg.batch_size,
    )
    if kind == "dpo":
        from trl import DPOConfig, DPOTrainer

        args = DPOConfig(loss_type=[cfg.loss_type], **common)  # type: ignore[attr-defined]
        trainer_cls, data = valign_trainer(DPOTrainer), preference_dataset(rows, ("prompt", "chosen", "rejected"))
    else:
        from trl import KTOConfig, KTOTrainer

        args = KTOConfig(desirable_weight=cfg.desirable_weight, undesirable_weight=cfg.undesirable_weight, **common)  # type: ignore[attr-defined]
        trainer_cls, data = valign_trainer(KTOTrainer), preference_dataset(rows, ("prompt", "completion", "label"))
    tokenizer, base = load_base(base_spec, cfg.qlora)  # after the arguments: see `load_base`
    # Continue the adapter it starts from (SFT's, last round's, …); TRL keeps a frozen copy of it as the reference.
    model, peft_config = continue_or_add_lora(base, adapter, cfg.lora_r, cfg.lora_alpha)
    trainer = trainer_cls(model=model, args=args, train_dataset=data, processing_class=tokenizer, peft_config=peft_config)
    train = train_and_finish(trainer, tokenizer, ctx.dir)
    history = trainer.state.log_history
    if kind == "dpo":
        metrics = {"reward_accuracy": log_series(history, "rewards/accuracies"), "reward_margin": log_series(history, "rewards/margins")}
    else:
        # KTO has no pairs to rank, so no reward accuracy: it logs the implied rewards of the
        # desirable and undesirable rows, their margin (steps whose batch holds both) and
        # the KL estimate its loss is measured against.
        metrics = {
            "reward_desirable": log_series(history, "rewards/chosen"),
            "reward_undesirable": log_series(history, "rewards/rejected"),
            "reward_margin": log_series(history, "rewards/margins"),
            "kl": log_series(history, "kl"),
        }
    return {
        "model": model_record(base_spec, cfg),
        "counts": {"train_rows": len(rows)},
        "train": {
            **train,
            **metrics,
            "precompute_ref_log_probs": precompute,
            **({"precompute_ref_log_probs_off": "several processes"} if cfg.precompute_ref_log_probs and not precompute else {}),
            "continued_from": str(adapter.parent) if adapter is not None else None,
        },
    }


def preference_dataset(rows: list[Row], columns: tuple[str, ...]):
    """TRL's columns, plus ``weight`` (normalised to mean 1) when every row carries one."""
    from datasets import Dataset

    weights = normalised_weights(rows)
    data = [{k: r[k] for k in columns} for r in rows]
    if weights is not None:
        for d, w in zip(data, weights):
            d["weight"] = w
    return Dataset.from_list(data)
