"""QLoRA for real on this CPU: a 4-bit NF4 base through bitsandbytes, LoRA trained on it
by the sft and dpo stages, and the result loaded back by `run:` as 4-bit base + adapter.
A refused `qlora` (no bitsandbytes) leaves the finished stage as it was."""

import importlib.util
import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from valign.config import load_config
from valign.errors import ValignError
from valign.pipeline import run_pipeline

from tests.run_helpers import write_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.model]


def _config(tmp_path: Path, qlora: bool) -> Path:
    sft_rows = [{"id": f"s{i}", "prompt": q, "completion": "Honesty, because trust depends on it."}
                for i, q in enumerate(["Name a virtue.", "What matters most in a friend?"])]
    dpo_rows = [{"id": f"d{i}", "prompt": q, "chosen": "Be honest and keep your word.", "rejected": "Do whatever suits you."}
                for i, q in enumerate(["Should I keep a promise?", "May I lie to a friend?"])]
    train = f"  qlora: {str(qlora).lower()}\n  max_steps: 3\n  batch_size: 2\n  max_length: 64\n"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"name: q\nruns_dir: {tmp_path / 'runs'}\nmodel: embedded\nstages: [sft, dpo]\n"
        f"sft:\n  rows: {write_jsonl(tmp_path / 'sft.jsonl', sft_rows)}\n  learning_rate: 2.0e-3\n{train}"
        f"dpo:\n  rows: {write_jsonl(tmp_path / 'dpo.jsonl', dpo_rows)}\n  learning_rate: 1.0e-3\n{train}"
    )
    return cfg


def test_qlora_sft_and_dpo_train_on_a_4bit_base_and_run_loads_it(tmp_path):
    run_pipeline(load_config(_config(tmp_path, qlora=True)))
    run = tmp_path / "runs" / "q"
    for stage in ("01-sft", "02-dpo"):
        manifest = json.loads((run / stage / "manifest.json").read_text())
        assert manifest["model"] == {"base": "embedded", "adapter": "adapter", "quantization": "nf4"}
        assert manifest["launch"]["quantization"] == "nf4"
        losses = manifest["train"]["loss"]
        assert len(losses) == 3 and losses[-1] < losses[0], f"{stage}: the loss falls on the 4-bit base: {losses}"
        weights = load_file(run / stage / "adapter" / "adapter_model.safetensors")
        lora_b = {k: v for k, v in weights.items() if "lora_B" in k}
        assert lora_b and all(v.abs().sum() > 0 for v in lora_b.values()), f"{stage}: every lora_B moved off zero"
    assert json.loads((run / "02-dpo" / "manifest.json").read_text())["train"]["continued_from"] == str(run / "01-sft")

    from valign.models.registry import load_model
    from valign.types import GenConfig

    model = load_model(f"run:{run / '02-dpo'}")
    assert "@nf4" in model.name, "run: loads the 4-bit base the adapter was trained on"
    assert type(model.model.get_base_model().model.layers[0].self_attn.q_proj.base_layer).__name__ == "Linear4bit"
    out = model.generate([[{"role": "user", "content": "Name a virtue."}]], GenConfig(temperature=0.0, max_new_tokens=8))
    assert out[0].text.strip() and out[0].completion_tokens > 0


def test_a_refused_qlora_leaves_the_finished_stage_as_it_was(tmp_path, monkeypatch):
    cfg = _config(tmp_path, qlora=False)
    run_pipeline(load_config(cfg, ["stages=[sft]", "sft.max_steps=1"]))
    sft = tmp_path / "runs" / "q" / "01-sft"
    before = {p.relative_to(sft): p.read_bytes() for p in sorted(sft.rglob("*")) if p.is_file()}
    assert Path("adapter/adapter_model.safetensors") in before

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real_find_spec(name, *a))
    with pytest.raises(ValignError, match=r"sft\.qlora: true .* bitsandbytes, which is not installed"):
        run_pipeline(load_config(cfg, ["stages=[sft]", "sft.max_steps=1", "sft.qlora=true"]))
    after = {p.relative_to(sft): p.read_bytes() for p in sorted(sft.rglob("*")) if p.is_file()}
    assert after == before, "the refusal came before the stage folder was reset"
