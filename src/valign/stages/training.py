"""What every training stage (sft, survey_sft, dpo, kto) shares, declared once.

* `TrainingConfig`: the settings they all have (base model, QLoRA, precision, steps,
  batch, learning rate, checkpoints), beside which each stage's config adds its own.
* `check_can_train`: the refusals (4-bit without bitsandbytes, a remote base, a missing
  adapter to continue), run by the pipeline *before* the stage's folder is reset, so a
  refusal never deletes a finished stage.
* `training_launch`: how the stage is launched — processes, precision, quantization —
  which is part of its fingerprint: two processes, or bf16, train a different model.
* `resolve_precision`: ``auto`` trains in bf16 where the hardware multiplies bf16
  natively (CPUs with AVX-512 BF16 or AMX, bf16 GPUs; `valign.hardware`), else fp32.
* `load_base`: the base to train, in fp32 or as a 4-bit NF4 base through bitsandbytes
  (QLoRA), on a GPU or a CPU.
* `guard_bf16`: what bf16 autocast must not round — each LoRA update's sum with its
  frozen layer's output, and (on a CPU) attention; every stage calls it on the model it
  trains.
* `trainer_args`, `resume_checkpoint`, `finish_training`: the TrainingArguments, where a
  killed run resumes, and the end of training — adapter, tokenizer and loss curve saved
  the same way for every stage, by the main process alone.

Several processes (``accelerate launch``) train data-parallel; everything that writes the
stage folder happens in the main process (`valign.distributed`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from valign import distributed
from valign.errors import ValignError
from valign.stages.base import Stage, training_start

if TYPE_CHECKING:
    from valign.config import RunConfig

Precision = Literal["auto", "fp32", "bf16"]


class TrainingConfig(BaseModel):
    """Settings every training stage has; each stage's config extends it.

    ``precision``: ``auto`` follows the launcher (``accelerate launch --mixed_precision
    bf16`` or a DeepSpeed config's bf16), else bf16 where the hardware multiplies bf16
    natively — a GPU that has it, or a CPU with AVX-512 BF16 or AMX (``VALIGN_CPU_BF16=0|1``
    overrides the detection) — and fp32 elsewhere, where bf16 is emulated and slow.
    ``bf16`` trains with bf16 autocast (also on CPUs without bf16 units), ``fp32``
    without. Weights stay fp32 either way (LoRA's trainable ones and the frozen base), the
    loss is computed in fp32, and a 4-bit base (``qlora``) computes in bf16.

    Example (YAML, any training stage):
        sft: {qlora: true, precision: auto, learning_rate: 2.0e-4, batch_size: 4, max_steps: -1}
    """

    model_config = ConfigDict(extra="forbid")

    model: str | None = None  # the base; defaults to the run's model
    qlora: bool = False  # load the base in 4-bit NF4 (bitsandbytes) and train LoRA on it
    precision: Precision = "auto"
    learning_rate: float = Field(2e-4, gt=0)
    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, ge=-1)  # -1: run `epochs`
    batch_size: int = Field(4, ge=1)  # per process
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_length: int = Field(512, ge=16)
    gradient_checkpointing: bool | None = None  # None: on with CUDA, off on a CPU
    logging_steps: int = Field(1, ge=1)
    save_steps: int = Field(50, ge=1)


# -- the launch, as a fingerprint sees it ---------------------------------------------


def _launcher_precision() -> str:
    """What `accelerate launch` asked for (``no``, ``bf16`` or ``fp16``); ``no`` without it."""
    return os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()


def resolve_precision(setting: Precision, stage: str = "training") -> Literal["fp32", "bf16"]:
    """The precision a stage trains in, from its setting, the launcher's and the hardware.

    accelerate applies its ``--mixed_precision`` whatever the Trainer is told, so a
    stage that asks for fp32 under a bf16 launch is refused instead of silently mixed.
    Without a launcher's word, ``auto`` is bf16 where the hardware multiplies it natively
    (`auto_bf16`) — except under DeepSpeed, which takes its precision from the launch only.

    Example:
        >>> resolve_precision("fp32")  # launched without --mixed_precision
        'fp32'
        >>> resolve_precision("auto") == ("bf16" if auto_bf16() else "fp32")
        True
    """
    launcher = _launcher_precision()
    if launcher == "fp16":
        raise ValignError(f"{stage}: accelerate was launched with --mixed_precision fp16, which valign does not train in; use bf16 or no.")
    if setting == "fp32" and launcher == "bf16":
        raise ValignError(
            f"{stage}.precision is fp32 but accelerate was launched with mixed precision bf16; "
            "set precision: auto (or bf16), or launch with --mixed_precision no."
        )
    if _strategy() == "deepspeed" and launcher == "no":
        # DeepSpeed takes its precision from the launch (accelerate's config and the
        # DeepSpeed JSON), and refuses a Trainer that asks for another one at start-up.
        if setting == "bf16":
            raise ValignError(
                f"{stage}.precision is bf16 but DeepSpeed was launched without mixed precision; "
                "launch with --mixed_precision bf16 (and bf16 enabled in the DeepSpeed config), or set precision: auto."
            )
        return "fp32"
    if setting != "auto":
        return setting
    if launcher == "bf16":
        return "bf16"
    return "bf16" if auto_bf16() else "fp32"


def auto_bf16() -> bool:
    """Whether ``precision: auto`` trains in bf16 here: on a GPU that has it, or on a CPU
    that multiplies bf16 natively (AVX-512 BF16, AMX; ``VALIGN_CPU_BF16`` overrides).

    LoRA SFT on the embedded model trained about 1.6× faster in bf16 than in fp32 on such
    a CPU (`valign bench train`), with losses within about 0.01 of fp32's.
    """
    import torch

    from valign.hardware import fast_dtype

    return fast_dtype("cuda" if torch.cuda.is_available() else "cpu") == "bfloat16"


def _strategy() -> str:
    """How accelerate spreads the model: ``ddp``, ``fsdp``, ``deepspeed`` or ``single``.

    accelerate enables FSDP only on GPUs: launched with an FSDP config on a CPU, it
    quietly trains plain DDP, and valign says so instead.
    """
    if distributed.world_size() <= 1:
        return "single"
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return "deepspeed"
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        import torch

        return "fsdp" if torch.cuda.is_available() else "ddp (FSDP needs GPUs; accelerate falls back to DDP on a CPU)"
    return "ddp"


def training_launch(cfg: TrainingConfig, stage: str = "training") -> dict[str, Any]:
    """What the launch adds to a training stage's fingerprint: processes (the global
    batch is ``batch_size × gradient_accumulation_steps × processes``), precision,
    quantization and strategy.

    Example:
        >>> training_launch(TrainingConfig(precision="fp32"))  # one process, no launcher
        {'processes': 1, 'precision': 'fp32', 'quantization': None, 'strategy': 'single'}
    """
    return {
        "processes": distributed.world_size(),
        "precision": resolve_precision(cfg.precision, stage),
        "quantization": "nf4" if cfg.qlora else None,
        "strategy": _strategy(),
    }


# -- refusals, before anything is deleted ----------------------------------------------


def is_local_base(spec: str) -> bool:
    """Whether a spec names a base model this machine can load to train (no adapter on it)."""
    return spec == "embedded" or (spec.startswith("hf:") and "+" not in spec)


def base_model_path(spec: str) -> str:
    """A local checkpoint to train from; remote backends cannot be fine-tuned here."""
    if spec == "embedded":
        from valign.models.embedded import embedded_dir, is_prepared, prepare_embedded

        if not is_prepared():
            prepare_embedded()
        return str(embedded_dir())
    if is_local_base(spec):
        return spec[3:]
    raise ValignError(
        f"a training stage trains a LoRA adapter on a local base model, and '{spec}' is not one; "
        "set the stage's `model` to 'embedded' or 'hf:<path or hub id>'."
    )


def check_can_train(cfg: TrainingConfig, stage: str, base_spec: str, adapter: Path | None) -> None:
    """Everything that would refuse this stage, checked before its folder is reset."""
    if not is_local_base(base_spec):
        base_model_path(base_spec)  # raises the sentence
    if cfg.qlora and importlib.util.find_spec("bitsandbytes") is None:
        raise ValignError(f"{stage}.qlora: true loads the base in 4 bit through bitsandbytes, which is not installed; run `pip install bitsandbytes` or set qlora: false.")
    if adapter is not None and not (adapter / "adapter_config.json").exists():
        raise ValignError(f"{stage} continues the adapter in {adapter}, which is missing; re-run the stage that trains it (drop --only).")
    resolve_precision(cfg.precision, stage)


def training_base(cfg: TrainingConfig, run_config: RunConfig, input_dirs: dict[str, Path]) -> tuple[str, Path | None]:
    """(base spec, adapter to continue or None) of a training stage, from its inputs:
    the run's previous training stage's adapter, else a ``run:`` model's, else none."""
    previous = next((d for name, d in input_dirs.items() if run_config.trains(name)), None)
    return training_start(cfg.model or run_config.model, previous)


def model_record(base_spec: str, cfg: TrainingConfig) -> dict[str, Any]:
    """The manifest's ``model`` entry, from which ``run:<stage folder>`` loads the result:
    the base, the adapter folder, and the base's quantization when it trained in 4 bit
    (``run:`` then loads the base in 4 bit too)."""
    return {"base": base_spec, "adapter": "adapter", **({"quantization": "nf4"} if cfg.qlora else {})}


class TrainingStage(Stage):
    """A stage that trains an adapter (in every process of a multi-process launch); its
    refusals are checked before its folder is reset (`check_can_train`)."""

    name: ClassVar[str]
    trains = True

    def continued_stage(self, run_config: RunConfig) -> list[str]:
        """The run's previous training stage, whose adapter this one continues — none
        when there is none, or when the stage's own ``model`` names where to start."""
        prev = run_config.previous_training_stage(self.name)
        return [prev] if run_config.section(self.name).model is None and prev is not None else []

    def check(self, run_config: RunConfig, input_dirs: dict[str, Path]) -> None:
        cfg = run_config.section(self.name)
        assert isinstance(cfg, TrainingConfig)
        base, adapter = training_base(cfg, run_config, input_dirs)
        check_can_train(cfg, self.name, base, adapter)


# -- the model to train -----------------------------------------------------------------


def load_base(base_spec: str, qlora: bool):
    """Tokenizer and model to train: fp32 weights, or a 4-bit NF4 base with ``qlora``
    (bitsandbytes; on a GPU or a CPU), prepared for k-bit training.

    Call it after the stage's TrainingArguments exist: under DeepSpeed ZeRO-3 their
    creation is what makes transformers partition the weights while loading them, instead
    of loading the whole model into every process first.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from valign.models.hf import four_bit_load_kwargs

    path = base_model_path(base_spec)
    load_kw: dict[str, Any] = four_bit_load_kwargs(for_training=True) if qlora else {"dtype": torch.float32}
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, **load_kw)
    if qlora:
        from peft import prepare_model_for_kbit_training

        # Its gradient checkpointing is TrainingArguments' business (off on a CPU).
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=torch.cuda.is_available())
    return tokenizer, model


def continue_or_add_lora(base: Any, adapter: Path | None, r: int, alpha: int):
    """(model, peft_config) for a TRL trainer: the adapter a stage continues, loaded
    trainable (TRL keeps a frozen copy of it as the reference where it needs one), or the
    base with a fresh all-linear LoRA config of rank ``r`` for TRL to add."""
    from peft import LoraConfig, PeftModel

    if adapter is not None:
        return PeftModel.from_pretrained(base, str(adapter), is_trainable=True), None
    return base, LoraConfig(r=r, lora_alpha=alpha, target_modules="all-linear", task_type="CAUSAL_LM")


# The attention implementation `guard_bf16` gives a model trained on a CPU.
FP32_ATTENTION = "valign_sdpa_fp32"


def guard_bf16(model: Any) -> Any:
    """Keep two things out of bf16 when the model trains under bf16 autocast; returns ``model``.

    * **The LoRA update's sum.** Under autocast a frozen layer's output comes out in bf16,
      and PEFT adds the adapter's ``B·A·x`` to it in bf16. While the adapter is young its
      contribution is below half a bf16 step of that output (2⁻⁹ relative) and is rounded
      away exactly: the forward pass does not see what training learned, and the logged
      loss lags fp32's (by 0.04–0.11 over 5 steps on the embedded model, though the
      adapters trained in both were the same to 2·10⁻⁴ in an fp32 evaluation). The frozen
      layer's output is handed on in fp32 instead, so the sum is exact; losses then stay
      within ~0.01 of fp32's, for about 7% of bf16's speed.
    * **Attention, on a CPU.** PyTorch's CPU flash-attention backward runs 2.4× slower in
      bf16 than in fp32 (1.1 s against 0.45 s of an 8×128-token step), so attention
      computes in fp32 there, which more than pays for the first point. GPUs keep their
      bf16 kernels.

    Both act only while autocast is on: fp32 training, evaluation and generation run
    exactly as before. Call it on the model the trainer trains — after the trainer has
    added its adapters (TRL adds them in its constructor) and before any forward pass
    under autocast, such as DPO's precomputed reference log-probs. Calling it twice is
    harmless.
    """
    import torch
    from peft.tuners.lora import LoraLayer

    def fp32_output(module, args, output):
        if isinstance(output, torch.Tensor) and output.dtype == torch.bfloat16 and torch.is_autocast_enabled(output.device.type):
            return output.float()
        return None

    for layer in model.modules():
        if isinstance(layer, LoraLayer) and not getattr(layer, "_valign_fp32_sum", False):
            # PEFT adds each adapter's bf16 delta to this output; fp32 + bf16 sums in fp32.
            layer.get_base_layer().register_forward_hook(fp32_output)
            layer._valign_fp32_sum = True
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not torch.cuda.is_available() and getattr(base.config, "_attn_implementation", None) == "sdpa":
        _register_fp32_attention()
        base.set_attn_implementation(FP32_ATTENTION)
    return model


def _register_fp32_attention() -> None:
    """`FP32_ATTENTION`: transformers' SDPA attention, computed in fp32 under autocast."""
    import torch
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import sdpa_mask

    def attention(module, query, key, value, attention_mask, *args, **kwargs):
        device = query.device.type
        if not torch.is_autocast_enabled(device):
            return sdpa_attention_forward(module, query, key, value, attention_mask, *args, **kwargs)
        with torch.autocast(device, enabled=False):
            return sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask, *args, **kwargs)

    AttentionInterface.register(FP32_ATTENTION, attention)
    AttentionMaskInterface.register(FP32_ATTENTION, sdpa_mask)


def trainer_args(cfg: TrainingConfig, out_dir: Path, seed: int, stage: str = "training") -> dict[str, Any]:
    """The TrainingArguments every training stage shares (TRL's configs take them all).

    Gradient checkpointing saves GPU memory for big models; on a CPU with a small model
    memory is plentiful and the recomputation is pure loss, so it defaults to "on with CUDA".
    """
    import torch

    on_gpu = torch.cuda.is_available()
    checkpointing = cfg.gradient_checkpointing
    return dict(
        output_dir=str(out_dir / "checkpoints"),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        gradient_checkpointing=on_gpu if checkpointing is None else checkpointing,
        learning_rate=cfg.learning_rate,
        max_length=cfg.max_length,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=1,
        seed=seed,
        report_to="none",
        use_cpu=not on_gpu,
        bf16=resolve_precision(cfg.precision, stage) == "bf16",
        disable_tqdm=True,
        # DDP over LoRA: every trainable parameter gets a gradient, and searching the
        # graph for unused ones costs a pass per step.
        ddp_find_unused_parameters=False,
    )


# -- resuming and finishing ------------------------------------------------------------


def resume_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete checkpoint in ``out_dir/checkpoints`` to resume training from, or None.

    The Trainer writes a checkpoint's ``trainer_state.json`` last. A run killed while it was
    writing one leaves a folder without it, which the Trainer would take for the last
    checkpoint and fail to load on every later attempt ("Can't find a valid checkpoint");
    the main process removes such torn folders, so training resumes from the one before.
    Every process then finds the same checkpoint.
    """
    ckpt_dir = out_dir / "checkpoints"

    def complete(remove_torn: bool) -> list[tuple[int, Path]]:
        found: list[tuple[int, Path]] = []
        for folder in ckpt_dir.glob("checkpoint-*") if ckpt_dir.is_dir() else ():
            step = folder.name.removeprefix("checkpoint-")
            if not folder.is_dir() or not step.isdigit():
                continue
            try:
                json.loads((folder / "trainer_state.json").read_text())
            except (OSError, ValueError):
                if remove_torn:
                    shutil.rmtree(folder, ignore_errors=True)  # torn: killed mid-save
                continue
            found.append((int(step), folder))
        return found

    if distributed.is_main():
        complete(remove_torn=True)
    distributed.barrier()
    found = complete(remove_torn=False)
    return max(found)[1] if found else None


def resumed(checkpoint: Path | None) -> dict[str, Any]:
    """The manifest's record of where a training stage resumed: ``resumed_from_checkpoint``
    and the step it continued after (None when it started afresh)."""
    step = int(checkpoint.name.removeprefix("checkpoint-")) if checkpoint is not None else None
    return {"resumed_from_checkpoint": checkpoint is not None, "resumed_from_step": step}


def train_and_finish(trainer, tokenizer, out_dir: Path) -> dict[str, Any]:
    """Train (resuming from the newest checkpoint), then end the way every stage ends:
    the main process saves the trained adapter (``adapter/``, with the tokenizer, so the
    folder loads on its own) and the loss curve (``train_log.jsonl``), and removes the
    checkpoints, which only served resuming. Returns the manifest's ``train`` record,
    which says the precision the Trainer trained in (``bf16``: under bf16 autocast).
    """
    resume = resume_checkpoint(out_dir)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    # accelerate wrapped the model's forward in autocast for training; what runs on the
    # trained model afterwards in this process (survey_sft's "after" distributions)
    # computes as a fresh load would, in fp32 like the "before".
    trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    history = trainer.state.log_history
    if _strategy() in ("deepspeed", "fsdp"):
        # The weights are sharded across the processes: every one takes part in gathering
        # them, and the Trainer writes them from the main process — as a whole adapter,
        # not FSDP's sharded checkpoint format (which suits only the checkpoints).
        if getattr(trainer, "is_fsdp_enabled", False):
            trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
        trainer.save_model(str(out_dir / "adapter"))
    elif distributed.is_main():
        # DPO/KTO hold a frozen "ref" copy of a continued adapter beside the trained one.
        trainer.model.save_pretrained(out_dir / "adapter", selected_adapters=["default"])
    if distributed.is_main():
        tokenizer.save_pretrained(out_dir / "adapter")
        with open(out_dir / "train_log.jsonl", "w") as f:
            f.writelines(json.dumps(entry) + "\n" for entry in history)
        shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
    distributed.barrier()
    losses = [e["loss"] for e in history if "loss" in e]
    final = next((e for e in reversed(history) if "train_runtime" in e), {})
    return {
        "precision": "bf16" if trainer.args.bf16 else "fp32",
        "steps": trainer.state.global_step,
        "loss": losses,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "runtime_s": final.get("train_runtime"),
        **resumed(resume),
    }


def log_series(history: list[dict[str, Any]], key: str) -> list[Any]:
    """One metric's values over a training log."""
    return [e[key] for e in history if key in e]
