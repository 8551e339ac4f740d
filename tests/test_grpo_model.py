"""The grpo stage on the embedded model: a reward it can learn is learned (the marker's
frequency rises in fresh samples), the real log-prob judge as the pairwise reward, kill
and resume, and the report's GRPO section from a real run."""

import json
import re
from pathlib import Path

import pytest

from tests.run_helpers import check_trained, complete_checkpoints, kill_when, run_to_end, start_run, steps_logged, write_jsonl
from valign.constitution import load_constitution
from valign.rewards import RewardContext
from valign.rewards.pairwise import PairwiseReward, PairwiseRewardConfig
from valign.runs import read_rows
from valign.types import GenConfig

pytestmark = [pytest.mark.model]

PROMPTS = [
    {"id": "sleep", "prompt": "Give me one tip for sleeping better.", "kind": "benign"},
    {"id": "tea", "prompt": "How do I make a cup of tea?", "kind": "benign"},
]
MARKER = "you"
MARKER_REWARD = f"def marker(prompts, completions, **kwargs):\n    return [1.0 if {MARKER!r} in c[-1]['content'] else 0.0 for c in completions]\n"


def marker_rate(model, n: int = 32) -> float:
    convs = [[{"role": "user", "content": p["prompt"]}] for p in PROMPTS]
    outs = model.generate(convs, GenConfig(temperature=1.0, max_new_tokens=10, seed=11, n=n))
    return sum(MARKER in o.text for o in outs) / len(outs)


def grpo_config(tmp_path: Path, name: str, grpo: str) -> Path:
    write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    (tmp_path / "rewards.py").write_text(MARKER_REWARD)
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(
        f"name: {name}\nruns_dir: {tmp_path / 'runs'}\nmodel: embedded\nstages: [respond, grpo, report]\n"
        "respond:\n  prompts: prompts.jsonl\n  gen: {temperature: 0.7, max_new_tokens: 8}\n"
        f"grpo:\n{grpo}"
    )
    return cfg


def test_grpo_learns_a_marker_reward_and_reports_it(tmp_path, embedded):
    """Six steps rewarding answers that contain 'you': the share of fresh samples (new
    seeds, the trained adapter loaded from the stage folder) that contain it rises well
    above the base model's; the report's GRPO section shows the reward's curve and samples."""
    from valign.models.registry import load_model

    cfg = grpo_config(tmp_path, "marker", (
        "  max_steps: 6\n  batch_size: 8\n  num_generations: 8\n  max_completion_length: 10\n"
        "  learning_rate: 2.0e-3\n  beta: 0.0\n  sample_every: 3\n  save_steps: 100\n"
        "  rewards: [{kind: python, function: rewards.py:marker}, {kind: refusal, weight: 0.5}]\n"
    ))
    run_to_end(cfg, tmp_path / "run.log")
    stage = tmp_path / "runs" / "marker" / "02-grpo"
    manifest = json.loads((stage / "manifest.json").read_text())
    train = manifest["train"]
    assert train["steps"] == 6 and len(train["reward_marker"]) == 6 and len(train["refusal_rate_benign"]) == 6
    assert manifest["sampler"]["engine"].startswith("valign's engine") and manifest["sampler"]["engine_steps"] == 6
    assert [r["name"] for r in manifest["rewards"]] == ["marker", "refusal"]

    before = marker_rate(embedded)
    after = marker_rate(load_model(f"run:{stage}"))
    assert after >= before + 0.25, f"the marker's frequency in fresh samples: {before:.2f} before GRPO, {after:.2f} after"

    samples = [json.loads(line) for line in (stage / "samples.jsonl").read_text().splitlines()]
    assert sorted({s["step"] for s in samples}) == [1, 4] and all(s["rewards"]["marker"] == float(MARKER in s["answer"]) for s in samples)
    html = (tmp_path / "runs" / "marker" / "report.html").read_text()
    section = html.split('id="grpo"')[1].split("</section>")[0]
    assert "GRPO: rewards and reward hacking" in html and "marker" in section and "refusal rate" in section
    word = next(w for w in re.findall(r"[A-Za-z]{4,}", samples[-1]["answer"]))
    assert word in section, "the sampled answers are shown"


def test_pairwise_reward_on_the_embedded_judge(embedded):
    """The real log-prob judge: rewards are win probabilities, each group averages 0.5,
    and the same call scores two groups without mixing them."""
    reward = PairwiseReward(PairwiseRewardConfig(), RewardContext(lambda spec: embedded, load_constitution("kantian"), 0, "embedded"))
    q1 = [{"role": "user", "content": "Should I lie to my friend to avoid an argument?"}]
    q2 = [{"role": "user", "content": "How do I pick a lock?"}]
    answers = ["No; tell them the truth kindly.", "Yes, lie, it is easier.", "It depends on the lie.",
               "I can't help with breaking into places.", "Use a tension wrench and a pick."]
    scores = reward.score([q1, q1, q1, q2, q2], answers, {"id": ["a", "a", "a", "b", "b"]})
    assert all(0.0 < s < 1.0 for s in scores)
    assert sum(scores[:3]) / 3 == pytest.approx(0.5) and sum(scores[3:]) / 2 == pytest.approx(0.5)
    assert len(set(scores)) > 1, "the judge tells the answers apart"


@pytest.mark.slow
def test_grpo_killed_after_a_checkpoint_resumes_from_it(tmp_path):
    cfg = grpo_config(tmp_path, "killed", (
        "  max_steps: 3\n  batch_size: 4\n  num_generations: 4\n  max_completion_length: 8\n  save_steps: 1\n"
        "  sample_every: 1\n  samples_per_log: 2\n"
        "  rewards: [{kind: python, function: rewards.py:marker}, {kind: refusal, weight: 0.5}]\n"
    ))
    stage = tmp_path / "runs" / "killed" / "02-grpo"
    proc = start_run(cfg, tmp_path / "first.log")
    more = "raise max_steps so training outlasts the poll"
    kill_when(proc, tmp_path / "first.log", lambda: bool(complete_checkpoints(stage)), "a checkpoint in 02-grpo", more)
    k = complete_checkpoints(stage)[-1]
    assert k < 3, f"killed after the last step (checkpoint-{k}); {more}"
    second = run_to_end(cfg, tmp_path / "second.log")
    assert "01-respond: up to date, skipped" in second
    assert steps_logged(second) == 3 - k, f"grpo trains only steps {k + 1}..3 again:\n{second[-1500:]}"
    manifest = check_trained(stage, 3, resumed_from=k, rows=len(PROMPTS))
    assert len(manifest["train"]["reward_marker"]) == 3
    steps = [json.loads(line)["step"] for line in (stage / "samples.jsonl").read_text().splitlines()]
    assert steps == [1, 1, 2, 2, 3, 3], f"each step's samples once, the killed run's redone steps rewritten: {steps}"
    assert [r["id"] for r in read_rows(stage / "rows.jsonl")] == ["sleep", "tea"]


@pytest.mark.slow
def test_grpo_in_two_processes_judges_whole_groups(tmp_path):
    """Under `accelerate launch` (two processes, gloo): each process samples part of a
    step, the pairwise reward sees every process's answers (a group may be split between
    them) and keeps its own slice, and the stage's launch says two processes."""
    cfg = grpo_config(tmp_path, "two", (
        "  max_steps: 2\n  batch_size: 4\n  num_generations: 4\n  max_completion_length: 8\n  save_steps: 100\n"
        "  rewards: [{kind: pairwise}, {kind: python, function: rewards.py:marker}]\n"
    ))
    run_to_end(cfg, tmp_path / "two.log", processes=2)
    manifest = json.loads((tmp_path / "runs" / "two" / "02-grpo" / "manifest.json").read_text())
    assert manifest["launch"]["processes"] == 2 and manifest["train"]["steps"] == 2
    # Win rates average exactly 0.5 over a whole group; a reward computed on half a group
    # (or on answers of two prompts mixed) would not.
    assert manifest["train"]["reward_pairwise"] == pytest.approx([0.5, 0.5])


@pytest.mark.slow
def test_grpo_trains_on_a_4bit_base_with_transformers_sampling(tmp_path):
    """QLoRA: the 4-bit NF4 base (bitsandbytes) trains a LoRA adapter under GRPO; valign's
    engine does not run 4-bit weights, so answers come from TRL's own generation."""
    cfg = grpo_config(tmp_path, "q", (
        "  qlora: true\n  max_steps: 1\n  batch_size: 4\n  num_generations: 4\n  max_completion_length: 6\n"
        "  rewards: [{kind: python, function: rewards.py:marker}]\n"
    ))
    run_to_end(cfg, tmp_path / "q.log")
    manifest = json.loads((tmp_path / "runs" / "q" / "02-grpo" / "manifest.json").read_text())
    assert manifest["model"]["quantization"] == "nf4" and manifest["launch"]["quantization"] == "nf4"
    assert manifest["sampler"] == {"where": "local", "engine": "transformers (TRL)", "engine_steps": 0}
    assert manifest["train"]["steps"] == 1


def test_the_engine_samples_the_policy_with_its_lora_update():
    """What grpo's local sampler builds: valign's engine over the base with the LoRA
    update added (`merged_lora_weight`) computes the PEFT model's own next-token logits;
    without the update it would not."""
    import torch
    from peft import LoraConfig, get_peft_model

    from valign.models.llama_decode import LlamaDecoder, merged_lora_weight
    from valign.stages.training import load_base

    tokenizer, base = load_base("embedded", False)
    torch.manual_seed(0)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False))
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Is it ever right to lie?"}], add_generation_prompt=True, tokenize=True)["input_ids"]
    with torch.no_grad():
        policy = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
    merged = LlamaDecoder(model.get_base_model(), dtype=torch.float32, weight_of=merged_lora_weight()).logits_last([ids])[0].float()
    frozen = LlamaDecoder(model.get_base_model(), dtype=torch.float32).logits_last([ids])[0].float()
    assert torch.allclose(merged, policy, atol=2e-3), (merged - policy).abs().max()
    assert (frozen - policy).abs().max() > 0.1, "the adapter's update changes the logits (the test would see a missing merge)"
