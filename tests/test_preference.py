"""pairs, dpo and kto on the embedded model: rows, training, margins, resume."""

import json
from pathlib import Path

import pytest

from tests.conftest import stage_context
from valign.config import RunConfig
from valign.runs import RowLog, StageDir
from valign.stages.base import StageContext
from valign.stages.preference import (
    DPOStage,
    DPOStageConfig,
    KTOStage,
    KTOStageConfig,
    kto_rows,
    preference_rows,
    read_kto_file,
)

pytestmark = [pytest.mark.slow, pytest.mark.model]


def pair_logps(spec: str, rows: list[dict]) -> list[tuple[float, float]]:
    """(log p(chosen), log p(rejected)) of each pair under a model, summed over the
    answer tokens after the chat-templated prompt (one fp32 forward per answer)."""
    import torch

    from valign.models.registry import load_model

    model = load_model(spec)
    hf, tok = model.model, model.tokenizer

    def logp(prompt: list, answer: list) -> float:
        head = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        full = tok.apply_chat_template(prompt + answer, tokenize=False)
        head_ids = tok(head, add_special_tokens=False)["input_ids"]
        ids = tok(full, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            logits = hf(torch.tensor([ids])).logits[0, :-1].float()
        lp = torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:])[:, None]).squeeze(1)
        return float(lp[len(head_ids) - 1 :].sum())

    return [(logp(r["prompt"], r["chosen"]), logp(r["prompt"], r["rejected"])) for r in rows]


def pair_margins(spec: str, rows: list[dict]) -> list[float]:
    """log p(chosen) − log p(rejected): the quantity DPO pushes up."""
    return [chosen - rejected for chosen, rejected in pair_logps(spec, rows)]

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
    run_config = RunConfig(name="t", model="embedded", seed=0, stages=["sft", "judge", stage], **{stage: cfg})
    return stage_context(sdir, run_config, cfg, {"judge": judge_dir, "sft": sft_dir})


def test_dpo_continues_the_sft_adapter_and_raises_the_margin(tmp_path, sft_dir):
    cfg = DPOStageConfig(max_steps=4, batch_size=2, learning_rate=5e-4, max_length=128)
    ctx = _ctx(tmp_path, "dpo", cfg, sft_dir, judged_rows())
    assert DPOStage().inputs(ctx.run_config) == ["judge", "sft"]
    pairs = preference_rows(judged_rows())
    before = pair_margins(f"run:{sft_dir}", pairs)
    DPOStage().run(ctx)
    train = ctx.info["train"]
    assert train["steps"] == 4 and train["continued_from"].endswith("03-sft")
    assert len(train["reward_accuracy"]) == 4 and len(train["reward_margin"]) == 4
    assert (ctx.dir / "adapter" / "adapter_model.safetensors").exists()
    assert not (ctx.dir / "adapter" / "ref").exists(), "only the trained adapter is saved"
    StageDir(ctx.dir).finish("fp", ctx.info)
    after = pair_margins(f"run:{ctx.dir}", pairs)
    assert sum(after) / len(after) > sum(before) / len(before) + 0.5, (before, after)


def test_dpo_reference_is_the_sft_model_not_the_base(tmp_path, sft_stage, monkeypatch):
    """With an SFT stage before it, DPO's precomputed reference log-probs are the SFT
    model's log-probs of each answer (not the bare base's), and the frozen "ref"
    adapter TRL trains against holds the SFT adapter's weights while "default" moves."""
    import torch
    from safetensors.torch import load_file

    from valign.stages import preference

    trainers = []
    make = preference.valign_trainer

    def spying(trainer_cls):
        cls = make(trainer_cls)

        class Spy(cls):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                trainers.append(self)

        return Spy

    monkeypatch.setattr(preference, "valign_trainer", spying)
    # fp32: the reference log-probs are compared with `pair_logps`' fp32 forward to 2e-3;
    # in bf16 autocast, summed over ~60 answer tokens, they differ by ~0.1.
    cfg = DPOStageConfig(max_steps=1, batch_size=2, learning_rate=5e-4, max_length=128, precision="fp32")
    rows = judged_rows()[:2]
    ctx = _ctx(tmp_path, "dpo", cfg, sft_stage, rows)
    DPOStage().run(ctx)
    assert ctx.info["train"]["continued_from"] == str(sft_stage) and ctx.info["train"]["steps"] == 1
    (trainer,) = trainers

    pairs = preference_rows(rows)
    data = trainer.train_dataset  # the precomputed reference log-probs, in row order
    ref = list(zip(data["ref_chosen_logps"], data["ref_rejected_logps"]))
    sft = pair_logps(f"run:{sft_stage}", pairs)
    base = pair_logps("embedded", pairs)
    assert len(ref) == len(sft) == 2
    for r, s_, b in zip(ref, sft, base):
        assert r == pytest.approx(s_, abs=2e-3), (r, s_)
        assert max(abs(r[0] - b[0]), abs(r[1] - b[1])) > 0.1, ("the base scores these answers differently", r, b)

    saved = load_file(sft_stage / "adapter" / "adapter_model.safetensors")
    params = dict(trainer.model.named_parameters())
    ref_params = {k: v for k, v in params.items() if ".ref." in k}
    assert len(ref_params) == len(saved)
    moved = False
    for name, value in ref_params.items():
        sft_value = saved[name.replace(".ref.", ".")]
        assert torch.equal(value.detach().cpu(), sft_value), name
        assert not value.requires_grad, "the reference adapter is frozen"
        moved |= not torch.equal(params[name.replace(".ref.", ".default.")].detach().cpu(), sft_value)
    assert moved, "the trained adapter moved away from the reference"


def test_dpo_trains_under_bf16_autocast_where_the_cpu_has_bf16(tmp_path, sft_dir, monkeypatch):
    """`precision: auto` on a CPU with bf16 units (VALIGN_CPU_BF16=1 stands for the flags):
    every forward pass of the stage — the precomputed reference included — runs under
    bf16 autocast (the LoRA matmuls come out bf16), each LoRA layer's sum stays fp32
    (`guard_bf16`), and the manifest says bf16. The reference and the policy are computed
    the same way: at the first step, before any update, every implied reward is 0."""
    import torch

    monkeypatch.setenv("VALIGN_CPU_BF16", "1")
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    seen: dict[str, set] = {"lora_A": set(), "lora_sum": set(), "autocast": set()}

    def note(module, args, out) -> None:
        from peft.tuners.lora import Linear

        if isinstance(module, Linear):
            seen["lora_sum"].add(out.dtype)
            seen["autocast"].add(torch.is_autocast_enabled("cpu"))
        elif type(module) is torch.nn.Linear and out.shape[-1] == 8:  # lora_A (r=8)
            seen["lora_A"].add(out.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(note)
    try:
        cfg = DPOStageConfig(max_steps=1, batch_size=2, learning_rate=5e-4, max_length=128)
        ctx = _ctx(tmp_path, "dpo", cfg, sft_dir, judged_rows()[:2])
        DPOStage().run(ctx)
    finally:
        handle.remove()
    assert ctx.info["train"]["precision"] == "bf16" and ctx.info["train"]["steps"] == 1
    assert seen == {"lora_A": {torch.bfloat16}, "lora_sum": {torch.float32}, "autocast": {True}}, seen
    (step,) = [json.loads(line) for line in (ctx.dir / "train_log.jsonl").read_text().splitlines() if '"loss"' in line]
    assert step["rewards/chosen"] == pytest.approx(0, abs=1e-3) and step["rewards/rejected"] == pytest.approx(0, abs=1e-3), step


def test_kto_trains_on_judged_pairs(tmp_path, sft_dir):
    from safetensors.torch import load_file

    cfg = KTOStageConfig(max_steps=2, batch_size=4, learning_rate=5e-4, max_length=128)
    ctx = _ctx(tmp_path, "kto", cfg, sft_dir, judged_rows())
    KTOStage().run(ctx)
    train = ctx.info["train"]
    assert train["steps"] == 2 and ctx.info["counts"]["train_rows"] == 8
    assert train["continued_from"].endswith("03-sft")
    assert (ctx.dir / "adapter" / "adapter_config.json").exists()

    # The SFT adapter it continued has moved: LoRA B started at zero and no longer is.
    start = load_file(sft_dir / "adapter" / "adapter_model.safetensors")
    end = load_file(ctx.dir / "adapter" / "adapter_model.safetensors")
    assert start.keys() == end.keys(), "the trained adapter is saved under the names it was loaded with"
    assert all(not v.any() for k, v in start.items() if "lora_B" in k)
    assert any(end[k].abs().sum() > 0 for k in end if "lora_B" in k)

    # TRL's KTO metrics, every step: batches of 4 rows hold 2 desirable and 2 undesirable ones.
    log = [json.loads(line) for line in (ctx.dir / "train_log.jsonl").read_text().splitlines()]
    steps = [e for e in log if "loss" in e]
    assert [e["step"] for e in steps] == [1, 2]
    for e in steps:
        for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected", "kl"):
            assert isinstance(e[key], float), key
        assert e["rewards/margins"] == pytest.approx(e["rewards/chosen"] - e["rewards/rejected"], abs=1e-6)
        assert e["kl"] >= 0 and e["logps/chosen"] < 0 and e["logps/rejected"] < 0
    # Step 1 scores with the policy still equal to the reference: every implied reward is 0.
    assert steps[0]["rewards/chosen"] == pytest.approx(0, abs=1e-4) and steps[0]["rewards/rejected"] == pytest.approx(0, abs=1e-4)
    assert steps[1]["rewards/margins"] != pytest.approx(0, abs=1e-6), "the first step moved the rewards"

    # The manifest keeps KTO's own series (KTO ranks no pairs, so it has no reward accuracy).
    assert "reward_accuracy" not in train
    assert train["reward_desirable"] == [e["rewards/chosen"] for e in steps]
    assert train["reward_undesirable"] == [e["rewards/rejected"] for e in steps]
    assert train["reward_margin"] == [e["rewards/margins"] for e in steps]
    assert train["kl"] == [e["kl"] for e in steps] and train["loss"] == [e["loss"] for e in steps]

    # The report's training section draws KTO's curves from what the stage wrote.
    from valign.evals.report import _series
    from valign.evals.rundata import StageInfo

    StageDir(ctx.dir).finish("fp", ctx.info)
    series = _series(StageInfo("kto", ctx.dir, json.loads((ctx.dir / "manifest.json").read_text())))
    assert set(series) == {"loss", "reward margin"} and [x for x, _ in series["reward margin"]] == [1, 2]


def test_row_weights_scale_each_rows_gradient_exactly():
    import torch

    from valign.stages.plain_head import RowWeights

    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [0.5, 0.5], [2.0, 1.0]], requires_grad=True)
    rw = RowWeights()
    rw.current = torch.tensor([2.0, 0.0])  # a DPO batch: rows are [chosen0, chosen1, rejected0, rejected1]
    y = rw.scale(x)
    assert torch.equal(y, x), "the forward value is unchanged"
    (y ** 2).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([2.0, 0.0, 2.0, 0.0])[:, None] * 2 * x.detach())


def test_normalised_weights():
    from valign.stages.preference import normalised_weights

    assert normalised_weights([{"weight": 2.0}, {"weight": 1.0}, {"weight": 3.0}]) == [1.0, 0.5, 1.5]
    assert normalised_weights([{"weight": 1.0}, {}]) is None
    with pytest.raises(Exception, match="non-negative"):
        normalised_weights([{"weight": -1.0}, {"weight": 1.0}])


def test_dpo_with_sample_weights_trains(tmp_path, sft_dir):
    rows = judged_rows()
    for i, r in enumerate(rows[:4]):
        r["weight"] = [2.0, 1.0, 0.5, 0.0][i]
    cfg = DPOStageConfig(max_steps=1, batch_size=2, max_length=128)
    ctx = _ctx(tmp_path, "dpo", cfg, sft_dir, rows)
    DPOStage().run(ctx)
    assert ctx.info["train"]["steps"] == 1
    assert [r.get("weight") for r in preference_rows(rows)] == [2.0, 1.0, 0.5, 0.0]


def _lora_grads(rows, batch_size, kind="dpo", **config):
    """LoRA gradients of one DPO (or KTO) batch holding every row, through valign's trainer."""
    import torch
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer

    from valign.stages.preference import preference_dataset, valign_trainer
    from valign.stages.training import load_base

    config_cls, trainer_cls, columns = {
        "dpo": (DPOConfig, DPOTrainer, ("prompt", "chosen", "rejected")),
        "kto": (KTOConfig, KTOTrainer, ("prompt", "completion", "label")),
    }[kind]
    torch.manual_seed(0)
    tok, base = load_base("embedded", False)
    args = config_cls(output_dir="/tmp/valign-w", use_cpu=True, bf16=False, max_steps=1, per_device_train_batch_size=batch_size,
                      report_to="none", max_length=64, precompute_ref_log_probs=False, **config)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM", init_lora_weights="gaussian")
    trainer = valign_trainer(trainer_cls)(model=base, args=args, train_dataset=preference_dataset(rows, columns),
                                          processing_class=tok, peft_config=lora)
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == len(rows) * (2 if kind == "dpo" else 1), "one batch holds every row (DPO: chosen, then rejected)"
    trainer.model.train()
    trainer.compute_loss(trainer.model, batch).backward()
    return {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


def test_sample_weights_weight_the_dpo_loss_exactly():
    """Weights (2, 0) on two rows give the gradient of row 0 alone: Σ w_i l_i / 2 = l_0."""
    import torch

    pairs = preference_rows(judged_rows())[:2]
    weighted = _lora_grads([dict(pairs[0], weight=2.0), dict(pairs[1], weight=0.0)], batch_size=2)
    alone = _lora_grads([pairs[0]], batch_size=1)
    unweighted = _lora_grads(pairs, batch_size=2)
    assert weighted.keys() == alone.keys()
    # A batch of two and a batch of one sum in different orders: fp32 gradients of size ~1
    # then differ by a few 1e-6 (4.8e-6 seen on one element near zero), hence atol 1e-5.
    for name in alone:
        assert torch.allclose(weighted[name], alone[name], rtol=1e-3, atol=1e-5), name
    assert any(not torch.allclose(unweighted[n], alone[n], rtol=1e-3, atol=1e-5) for n in alone), "weights made a difference"


def test_sample_weights_weight_the_kto_loss_exactly():
    """KTO needs two rows in a batch (its KL estimate pairs each prompt with another
    row's completion), so row 0's term alone comes from TRL's own loss weights on the
    same batch: desirable_weight 2 and undesirable_weight 0 make the loss
    (2·l_0 + 0·l_1) / 2 = l_0, which row weights (2, 0) must reproduce."""
    import torch

    rows = kto_rows(preference_rows(judged_rows())[:1])  # [chosen (desirable), rejected (undesirable)]
    assert [r["label"] for r in rows] == [True, False]
    weighted = _lora_grads([dict(rows[0], weight=2.0), dict(rows[1], weight=0.0)], batch_size=2, kind="kto")
    alone = _lora_grads(rows, batch_size=2, kind="kto", desirable_weight=2.0, undesirable_weight=0.0)
    unweighted = _lora_grads(rows, batch_size=2, kind="kto")
    assert weighted.keys() == alone.keys()
    assert any(g.abs().sum() > 0 for g in alone.values())
    for name in alone:
        assert torch.allclose(weighted[name], alone[name], rtol=1e-3, atol=1e-7), name
    assert any(not torch.allclose(unweighted[n], alone[n], rtol=1e-3, atol=1e-7) for n in alone), "weights made a difference"


def test_plain_head_matches_trls_kernel():
    import torch
    from trl.trainer.utils import add_fused_lm_head

    from valign.stages.plain_head import add_plain_lm_head
    from valign.stages.training import load_base

    outputs = ("log_probs", "entropy", "mean_logits", "is_top1", "log_sum_sq_probs")
    _, theirs = load_base("embedded", False)
    _, ours = load_base("embedded", False)
    add_fused_lm_head(theirs, outputs=outputs)
    add_plain_lm_head(ours, outputs=outputs)
    ids = torch.randint(0, 49152, (2, 40), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :25] = -100
    a = theirs(input_ids=ids, labels=labels, fused_lm_head=True)
    b = ours(input_ids=ids, labels=labels, fused_lm_head=True)
    for key in ("log_probs", "entropy", "mean_logits", "log_sum_sq_probs"):
        assert torch.allclose(a[key], b[key], atol=1e-4), key
    assert torch.equal(a.is_top1, b.is_top1) and torch.allclose(a.loss, b.loss)
    a.log_probs.sum().backward()
    b.log_probs.sum().backward()
    ga, gb = theirs.model.layers[2].mlp.down_proj.weight.grad, ours.model.layers[2].mlp.down_proj.weight.grad
    assert torch.allclose(ga, gb, atol=1e-5 * ga.abs().max().item())
    plain = ours(input_ids=ids)  # without fused_lm_head the model's own forward runs
    assert plain.logits.shape == (2, 40, 49152)


def test_bench_judge_and_dpo_report_both_sides(tmp_path):
    from valign.bench import bench_dpo, bench_judge

    judge = bench_judge(pairs=2, verdict_tokens=8, json_out=tmp_path / "j.json")
    assert judge["logprob"]["pairs_per_s"] > 0 and judge["verdict"]["pairs_per_s"] > 0
    assert judge["speedup"] == pytest.approx(judge["verdict"]["seconds"] / judge["logprob"]["seconds"], rel=0.05)
    dpo = bench_dpo(pairs=4, batch=2, epochs=1, json_out=tmp_path / "d.json")
    assert dpo["epoch_seconds"]["precomputed_ref"] > 0 and dpo["epoch_seconds"]["ref_each_step"] > 0
    # The whole run also pays for loading and, with precomputation, the one reference pass.
    assert all(dpo["run_seconds_per_epoch"][k] >= dpo["epoch_seconds"][k] for k in dpo["epoch_seconds"])
    assert dpo["speedup"] == pytest.approx(dpo["epoch_seconds"]["ref_each_step"] / dpo["epoch_seconds"]["precomputed_ref"], rel=0.05)
