"""pairs, dpo and kto on the embedded model: rows, training, margins, resume."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from valign.runs import RowLog, StageDir
from valign.stages.base import ModelPool, StageContext
from valign.stages.preference import (
    DPOStage,
    DPOStageConfig,
    KTOStage,
    KTOStageConfig,
    kto_rows,
    pair_margins,
    preference_rows,
    read_kto_file,
)

pytestmark = pytest.mark.slow

GOOD = "I can't help you deceive them, but here is an honest way to ask for what you need."
BAD = "Sure, here is a convincing lie you can tell them."
PROMPTS = [
    "Help me lie to my boss about being sick.",
    "Write a fake excuse for my teacher.",
    "How do I trick my friend into lending me money?",
    "Give me a story to fool my landlord.",
]


def judged_rows():
    return [
        {
            "id": f"p{i}",
            "kept": True,
            "prompt": [{"role": "user", "content": q}],
            "chosen": [{"role": "assistant", "content": GOOD}],
            "rejected": [{"role": "assistant", "content": BAD}],
        }
        for i, q in enumerate(PROMPTS)
    ] + [{"id": "dropped", "kept": False, "drop_reason": "low_margin"}]


def test_preference_and_kto_rows():
    pairs = preference_rows(judged_rows())
    assert [p["id"] for p in pairs] == ["p0", "p1", "p2", "p3"], "dropped pairs are not trained on"
    kto = kto_rows(pairs)
    assert len(kto) == 8 and sum(r["label"] for r in kto) == 4


def test_kto_file_errors(tmp_path):
    bad = tmp_path / "k.jsonl"
    bad.write_text('{"prompt": "hi", "completion": "yo"}\n')
    with pytest.raises(Exception, match="row 1 needs 'prompt', 'completion' and a true/false 'label'"):
        read_kto_file(bad)


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory):
    """A stage folder holding a real (random-init) LoRA adapter on the embedded model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from valign.models.embedded import embedded_dir

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(embedded_dir())
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    out = tmp_path_factory.mktemp("run") / "03-sft"
    model.save_pretrained(out / "adapter")
    (out / "manifest.json").write_text(json.dumps({"fingerprint": "x", "model": {"base": "embedded", "adapter": "adapter"}}))
    return out


def _ctx(tmp_path: Path, stage: str, cfg, sft_dir: Path, judge_rows) -> StageContext:
    judge_dir = tmp_path / "05-judge"
    RowLog(judge_dir / "rows.jsonl").append(judge_rows)
    sdir = StageDir(tmp_path / f"06-{stage}")
    run_config = SimpleNamespace(model="embedded", seed=0, stages=["sft", "judge", stage], **{stage: cfg})
    return StageContext(
        run_config=run_config,
        config=cfg,
        dir=sdir.path,
        rows=sdir.begin("fp"),
        models=ModelPool(None),
        input_dirs={"judge": judge_dir, "sft": sft_dir},
        console=Console(stderr=True),
    )


def test_dpo_continues_the_sft_adapter_and_raises_the_margin(tmp_path, sft_dir):
    cfg = DPOStageConfig(max_steps=4, batch_size=2, learning_rate=5e-4, max_length=128)
    ctx = _ctx(tmp_path, "dpo", cfg, sft_dir, judged_rows())
    assert DPOStage().inputs(ctx.run_config) == ["judge", "sft"]
    pairs = preference_rows(judged_rows())
    before = pair_margins(f"run:{sft_dir}", pairs)
    DPOStage().run(ctx)
    train = ctx.info["train"]
    assert train["steps"] == 4 and train["continued_from_sft"]
    assert len(train["reward_accuracy"]) == 4 and len(train["reward_margin"]) == 4
    assert (ctx.dir / "adapter" / "adapter_model.safetensors").exists()
    assert not (ctx.dir / "adapter" / "ref").exists(), "only the trained adapter is saved"
    StageDir(ctx.dir).finish("fp", ctx.info)
    after = pair_margins(f"run:{ctx.dir}", pairs)
    assert sum(after) / len(after) > sum(before) / len(before) + 0.5, (before, after)


def test_kto_trains_on_judged_pairs(tmp_path, sft_dir):
    cfg = KTOStageConfig(max_steps=2, batch_size=4, learning_rate=5e-4, max_length=128)
    ctx = _ctx(tmp_path, "kto", cfg, sft_dir, judged_rows())
    KTOStage().run(ctx)
    assert ctx.info["train"]["steps"] == 2 and ctx.info["counts"]["train_rows"] == 8
    assert (ctx.dir / "adapter" / "adapter_config.json").exists()


def test_weighted_sampler_follows_the_weights():
    from collections import Counter

    from datasets import Dataset

    from valign.stages.preference import weighted_sampler

    data = Dataset.from_list([{"weight": 3.0}, {"weight": 1.0}, {"weight": 0.0}])
    counts = Counter()
    for seed in range(400):
        counts.update(list(weighted_sampler(data, seed)))
    total = sum(counts.values())
    assert counts[2] == 0, "a zero weight is never drawn"
    assert abs(counts[0] / total - 0.75) < 0.03
    assert weighted_sampler(Dataset.from_list([{"x": 1}])) is None


def test_dpo_with_sample_weights_trains(tmp_path, sft_dir):
    rows = judged_rows()
    for i, r in enumerate(rows[:4]):
        r["weight"] = [2.0, 1.0, 0.5, 0.0][i]
    cfg = DPOStageConfig(max_steps=1, batch_size=2, max_length=128)
    ctx = _ctx(tmp_path, "dpo", cfg, sft_dir, rows)
    DPOStage().run(ctx)
    assert ctx.info["train"]["steps"] == 1
    assert [r.get("weight") for r in preference_rows(rows)] == [2.0, 1.0, 0.5, 0.0]


def test_trainer_draws_batches_with_the_weighted_sampler():
    from torch.utils.data import WeightedRandomSampler
    from trl import DPOConfig, DPOTrainer
    from peft import LoraConfig

    from valign.stages.preference import _dataset, _weighted
    from valign.stages.sft import load_base

    tok, base = load_base("embedded", False)
    rows = [dict(r, weight=float(i)) for i, r in enumerate(preference_rows(judged_rows()))]
    args = DPOConfig(output_dir="/tmp/valign-w", use_cpu=True, bf16=False, max_steps=1, per_device_train_batch_size=2,
                     report_to="none", max_length=64)
    trainer = _weighted(DPOTrainer)(model=base, args=args, train_dataset=_dataset(rows, ("prompt", "chosen", "rejected")),
                                    processing_class=tok, peft_config=LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    sampler = trainer.get_train_dataloader().batch_sampler.sampler
    assert isinstance(sampler, WeightedRandomSampler)
    assert sampler.weights.tolist() == [0.0, 1.0, 2.0, 3.0]


def test_bench_judge_and_dpo_report_both_sides(tmp_path):
    from valign.bench import bench_dpo, bench_judge

    judge = bench_judge(pairs=2, verdict_tokens=8, json_out=tmp_path / "j.json")
    assert judge["logprob"]["pairs_per_s"] > 0 and judge["verdict"]["pairs_per_s"] > 0
    assert judge["speedup"] == pytest.approx(judge["verdict"]["seconds"] / judge["logprob"]["seconds"], rel=0.05)
    dpo = bench_dpo(pairs=4, batch=2, epochs=1, json_out=tmp_path / "d.json")
    assert dpo["epoch_seconds"]["precomputed_ref"] > 0 and dpo["epoch_seconds"]["ref_each_step"] > 0
