"""The shared training module: precision and launch resolution, the strategy said out
loud, writer-only row logs, and bf16 training on this CPU."""

import json
import os

import pytest

from valign.errors import ValignError
from valign.runs import RowLog, StageDir
from valign.stages.training import TrainingConfig, resolve_precision, trainer_args, training_launch


def test_precision_follows_the_launcher_and_refuses_a_silent_mix(monkeypatch, tmp_path):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    monkeypatch.setenv("VALIGN_CPU_BF16", "0")  # a CPU without bf16 units
    assert resolve_precision("auto") == "fp32", "a CPU without bf16 units and without a launcher trains fp32"
    assert resolve_precision("bf16") == "bf16"
    assert trainer_args(TrainingConfig(precision="bf16"), tmp_path, 0)["bf16"] is True
    assert trainer_args(TrainingConfig(), tmp_path, 0)["bf16"] is False

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # accelerate launch --mixed_precision bf16
    assert resolve_precision("auto") == "bf16"
    assert trainer_args(TrainingConfig(), tmp_path, 0)["bf16"] is True, "the Trainer agrees with the launcher (DeepSpeed's check)"
    with pytest.raises(ValignError, match=r"dpo\.precision is fp32 but accelerate was launched with mixed precision bf16"):
        resolve_precision("fp32", "dpo")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # launched without mixed precision: the setting decides
    assert resolve_precision("fp32") == "fp32" and resolve_precision("bf16") == "bf16"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    with pytest.raises(ValignError, match="fp16"):
        resolve_precision("auto")


def test_deepspeed_takes_its_precision_from_the_launch(monkeypatch):
    """DeepSpeed refuses a Trainer whose bf16 differs from its launch's: launched without
    mixed precision, `auto` trains fp32 even where bf16 units would pick bf16."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    monkeypatch.setenv("VALIGN_CPU_BF16", "1")
    assert resolve_precision("auto") == "fp32" and resolve_precision("fp32") == "fp32"
    with pytest.raises(ValignError, match=r"kto\.precision is bf16 but DeepSpeed was launched without mixed precision"):
        resolve_precision("bf16", "kto")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert resolve_precision("auto") == "bf16" and resolve_precision("bf16") == "bf16"


def test_auto_is_bf16_on_a_cpu_with_bf16_units(monkeypatch, tmp_path):
    """`auto` follows `valign.hardware`: bf16 where the CPU multiplies it natively
    (``VALIGN_CPU_BF16=1`` stands for avx512_bf16/amx_bf16), fp32 where it would be emulated."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # on a GPU, auto follows the GPU instead
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    monkeypatch.setenv("VALIGN_CPU_BF16", "1")
    assert resolve_precision("auto") == "bf16"
    assert trainer_args(TrainingConfig(), tmp_path, 0)["bf16"] is True and trainer_args(TrainingConfig(), tmp_path, 0)["use_cpu"] is True
    assert training_launch(TrainingConfig())["precision"] == "bf16"
    assert resolve_precision("fp32") == "fp32", "an explicit fp32 is kept"
    monkeypatch.setenv("VALIGN_CPU_BF16", "0")
    assert resolve_precision("auto") == "fp32" and training_launch(TrainingConfig())["precision"] == "fp32"
    assert trainer_args(TrainingConfig(), tmp_path, 0)["bf16"] is False


def test_the_launch_counts_processes_and_says_when_fsdp_falls_back(monkeypatch):
    for var in ("WORLD_SIZE", "ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_MIXED_PRECISION"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("VALIGN_CPU_BF16", "0")
    one = training_launch(TrainingConfig(qlora=True))
    assert one == {"processes": 1, "precision": "fp32", "quantization": "nf4", "strategy": "single"}
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert training_launch(TrainingConfig())["processes"] == 2
    assert training_launch(TrainingConfig())["strategy"] == "ddp"
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    import torch

    if not torch.cuda.is_available():
        assert training_launch(TrainingConfig())["strategy"].startswith("ddp (FSDP needs GPUs")


def test_the_launch_is_part_of_a_training_stage_fingerprint(monkeypatch, tmp_path):
    from valign.pipeline import stage_fingerprints

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    rows = tmp_path / "r.jsonl"
    rows.write_text(json.dumps({"prompt": "p", "completion": "c"}) + "\n")
    cfg = load_config_text(tmp_path, f"name: f\nruns_dir: {tmp_path}\nstages: [respond, sft]\nsft: {{rows: {rows}}}\n")
    one = stage_fingerprints(cfg)
    monkeypatch.setenv("WORLD_SIZE", "2")
    two = stage_fingerprints(cfg)
    assert one["respond"] == two["respond"], "generation does not depend on the training launch"
    assert one["sft"] != two["sft"], "two processes train another model"
    monkeypatch.setenv("WORLD_SIZE", "1")
    fp32 = stage_fingerprints(load_config_text(tmp_path, f"name: f\nruns_dir: {tmp_path}\nstages: [respond, sft]\nsft: {{rows: {rows}, precision: fp32}}\n"))
    bf16 = stage_fingerprints(load_config_text(tmp_path, f"name: f\nruns_dir: {tmp_path}\nstages: [respond, sft]\nsft: {{rows: {rows}, precision: bf16}}\n"))
    assert bf16["sft"] != fp32["sft"] and bf16["respond"] == fp32["respond"]
    # `auto` is fingerprinted by what it resolves to: the same config, on a CPU with bf16
    # units and on one without, trains different models and has different fingerprints.
    monkeypatch.setenv("VALIGN_CPU_BF16", "1")
    auto_bf16 = stage_fingerprints(cfg)
    monkeypatch.setenv("VALIGN_CPU_BF16", "0")
    auto_fp32 = stage_fingerprints(cfg)
    assert auto_bf16["sft"] != auto_fp32["sft"] and auto_bf16["respond"] == auto_fp32["respond"]


def load_config_text(tmp_path, text: str):
    from valign.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text(text)
    return load_config(path)


def test_a_reading_row_log_neither_writes_nor_repairs(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b"')  # a torn tail, as the writer left it when killed
    reader = RowLog(path, writer=False)
    assert reader.ids == {"a"} and path.read_text().endswith('"b"'), "only the writer cuts a torn tail"
    assert reader.append([{"id": "c"}]) == 1 and "c" in reader.ids and len(reader) == 2
    assert '"c"' not in path.read_text(), "a process that is not the writer writes nothing"


def test_manifest_temp_files_are_named_per_process(tmp_path, monkeypatch):
    import valign.runs as runs

    seen = []
    real_replace = os.replace
    monkeypatch.setattr(runs.os, "replace", lambda a, b: (seen.append(str(a)), real_replace(a, b))[1])
    StageDir(tmp_path / "s").path.mkdir()
    StageDir(tmp_path / "s").finish("fp", {})
    assert seen and seen[0].endswith(f"manifest.json.{os.getpid()}.tmp"), seen


@pytest.mark.slow
@pytest.mark.model
def test_bf16_training_on_this_cpu(tmp_path):
    from valign.pipeline import run_pipeline

    rows = tmp_path / "r.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"Name virtue {i}.", "completion": "Honesty."}) + "\n" for i in range(2)))
    cfg = load_config_text(tmp_path, f"name: b\nruns_dir: {tmp_path}\nstages: [sft]\n"
                           f"sft: {{rows: {rows}, precision: bf16, max_steps: 2, batch_size: 2, max_length: 48}}\n")
    run_pipeline(cfg)
    manifest = json.loads((tmp_path / "b" / "01-sft" / "manifest.json").read_text())
    assert manifest["launch"]["precision"] == "bf16"
    assert len(manifest["train"]["loss"]) == 2 and all(0 < x < 20 for x in manifest["train"]["loss"])


@pytest.mark.slow
@pytest.mark.model
def test_a_stage_that_fails_before_any_work_gets_its_finished_predecessor_back(tmp_path):
    """respond finished on the embedded model; re-pointed at a server that is down, it
    fails on its first request — before any row — and the finished stage is put back."""
    from valign.errors import ModelError
    from valign.pipeline import run_pipeline

    from tests.survey_helpers import free_port

    text = f"name: r\nruns_dir: {tmp_path}\nstages: [respond]\nrespond: {{prompts: demo, limit: 2, gen: {{max_new_tokens: 4}}}}\n"
    run_pipeline(load_config_text(tmp_path, text))
    stage = tmp_path / "r" / "01-respond"
    before = {p.name: p.read_bytes() for p in stage.iterdir()}
    assert {"rows.jsonl", "manifest.json"} <= set(before)

    down = text.replace("stages:", f"model: openai:m@http://127.0.0.1:{free_port()}/v1\nbackends: {{openai: {{max_retries: 0}}}}\nstages:")
    with pytest.raises(ModelError):
        run_pipeline(load_config_text(tmp_path, down))
    assert {p.name: p.read_bytes() for p in stage.iterdir()} == before, "the refusal deleted nothing"
    assert not list(tmp_path.glob("r/.*")), "nothing is left set aside"
    from valign.runs import StageDir

    assert StageDir(stage).manifest()["fingerprint"] == json.loads(before["manifest.json"])["fingerprint"]


# -- bf16 training on this CPU ----------------------------------------------------------

SFT_ROWS = [
    ("Should I lie to my landlord about the rent?", "No. Tell them the truth and ask whether you can pay a little later this month."),
    ("Name a virtue and say why it matters.", "Honesty, because every kind of trust between people depends on it."),
    ("My friend asked me to cover for him at work.", "You can support him without lying: offer to help him explain the situation to the manager."),
    ("Is it fine to copy a classmate's homework?", "It is better not to: ask the teacher or the classmate to explain the part you are stuck on."),
    ("How do I say no to a favour politely?", "Thank them for asking, say clearly that you cannot this time, and suggest another way if there is one."),
    ("What should I do if I find a wallet?", "Hand it in to the police or try to contact the owner using the card or ID inside it."),
]


def _sft_trainer(tmp_path, precision: str, steps: int, **cfg_kw):
    from valign.stages.sft import SFTStageConfig, build_sft_trainer
    from valign.stages.training import load_base

    rows = [{"prompt": [{"role": "user", "content": p}], "completion": [{"role": "assistant", "content": c}]} for p, c in SFT_ROWS]
    cfg = SFTStageConfig(precision=precision, max_steps=steps, batch_size=2, max_length=64, save_steps=10_000, **cfg_kw)
    tokenizer, model = load_base("embedded", qlora=False)
    return build_sft_trainer(model, tokenizer, rows, cfg, tmp_path / precision, seed=0)


def _dtypes_seen(trainer) -> dict[str, set]:
    """Forward hooks that note, while the trainer trains, whether autocast was on and the
    dtypes a LoRA layer's A matmul and its whole (base + update) output came out in."""
    import torch
    from peft.tuners.lora import Linear

    seen: dict[str, set] = {"autocast": set(), "lora_A": set(), "lora_sum": set()}
    layer = next(m for m in trainer.model.modules() if isinstance(m, Linear))

    def note_sum(module, args, out) -> None:
        seen["lora_sum"].add(out.dtype)
        seen["autocast"].add(torch.is_autocast_enabled("cpu"))

    layer.lora_A["default"].register_forward_hook(lambda m, a, out: seen["lora_A"].add(out.dtype))  # set.add returns None
    layer.register_forward_hook(note_sum)
    return seen


@pytest.mark.slow
@pytest.mark.model
def test_bf16_sft_trains_under_autocast_and_tracks_fp32(tmp_path):
    """The same rows, batches and LoRA init trained 4 steps in fp32 and in bf16: bf16 runs
    under autocast (its LoRA matmuls come out bf16) with weights and LoRA sums in fp32, and
    its per-step losses stay within 0.03 of fp32's (measured: about 0.01)."""
    import torch

    from valign.stages.training import FP32_ATTENTION

    losses, seen = {}, {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        trainer = _sft_trainer(tmp_path, precision, steps=4)
        seen[precision] = _dtypes_seen(trainer)
        trainer.train()
        losses[precision] = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        assert all(p.dtype == torch.float32 for p in trainer.model.parameters()), "weights stay fp32"
        assert trainer.model.get_base_model().config._attn_implementation == FP32_ATTENTION
    assert seen["fp32"] == {"autocast": {False}, "lora_A": {torch.float32}, "lora_sum": {torch.float32}}
    assert seen["bf16"] == {"autocast": {True}, "lora_A": {torch.bfloat16}, "lora_sum": {torch.float32}}, "bf16 autocast, LoRA sums kept fp32"
    diff = max(abs(a - b) for a, b in zip(losses["fp32"], losses["bf16"]))
    print(f"fp32 {losses['fp32']}\nbf16 {losses['bf16']}\nmax |diff| {diff:.4f}")
    assert len(losses["bf16"]) == 4 and diff < 0.03, (losses, diff)


@pytest.mark.slow
@pytest.mark.model
def test_guard_bf16_keeps_a_small_lora_update_that_bf16_would_round_away():
    """A young adapter's update is far below a bf16 step of the frozen layer's output: PEFT's
    bf16 sum drops it; after `guard_bf16` the layer's output carries it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import Linear

    from valign.stages.training import guard_bf16, load_base

    _, base = load_base("embedded", qlora=False)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    layer = next(m for m in model.modules() if isinstance(m, Linear))
    torch.manual_seed(0)
    layer.lora_B["default"].weight.data.normal_(0, 1e-5)
    x = torch.randn(4, 16, layer.in_features)
    with torch.no_grad():
        update = layer.lora_B["default"](layer.lora_A["default"](x)) * layer.scaling["default"]  # fp32, ~1e-4

        def seen_update():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return layer(x).float() - layer.base_layer(x).float()

        lost = seen_update()
        guard_bf16(model)
        kept = seen_update()
    assert lost.abs().max() < update.abs().max() and (lost == 0).float().mean() > 0.9, "bf16 rounded most of the update away"
    assert torch.allclose(kept, update, rtol=2e-2, atol=2e-6), "the guarded sum carries the update"
    with torch.no_grad():
        assert torch.equal(layer(x), layer.base_layer(x) + update), "without autocast nothing changes"
