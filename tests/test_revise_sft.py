"""The revise and sft stages: control flow on a scripted model, then for real on the
embedded model (revise rows, a killed run resumed, LoRA training, run: loading)."""

import json
from collections import Counter

import pytest
import torch

from tests.conftest import ScriptedModel
from valign.config import load_config
from valign.constitution import load_constitution
from valign.pipeline import run_pipeline
from valign.runs import read_rows
from valign.stages.revise import critique_conversation, pick_principle


def test_principle_per_round_is_stable_and_follows_the_weights():
    c = load_constitution("kantian")
    assert pick_principle(c, 0, "row-1", 0).id == pick_principle(c, 0, "row-1", 0).id
    counts = Counter(pick_principle(c, 0, f"row-{i}", 0).id for i in range(6000))
    total_w = sum(p.weight for p in c.principles)
    for p in c.principles:
        expected = 6000 * p.weight / total_w
        assert abs(counts[p.id] - expected) < 5 * expected**0.5 + 5, p.id


def test_critique_conversation_shows_examples_then_the_task():
    c = load_constitution("kantian")
    state = {"prompt_messages": [{"role": "user", "content": "Q?"}], "response": "A."}
    p = c.principles[0]
    conv = critique_conversation(state, p, c.few_shot[:1], c)
    ex = c.few_shot[0]
    assert conv[0] == {"role": "user", "content": ex.prompt}
    assert conv[3]["content"] == ex.critique and conv[5]["content"] == ex.revision
    assert conv[2]["content"] == c.get(ex.principle).critique_request
    assert conv[4]["content"] == c.revision_prompt(c.get(ex.principle)) and c.revision_style in conv[4]["content"]
    assert conv[-3:] == [
        {"role": "user", "content": "Q?"},
        {"role": "assistant", "content": "A."},
        {"role": "user", "content": p.critique_request},
    ]


def _config(tmp_path, stages, extra=""):
    path = tmp_path / "c.yaml"
    path.write_text(
        f"name: t\nruns_dir: {tmp_path / 'runs'}\nmodel: MODEL\nstages: {stages}\n"
        "respond:\n  prompts: demo\n  limit: 6\n  chunk: 6\n  gen: {max_new_tokens: 24}\n"
        "revise:\n  rounds: 2\n  few_shot: 1\n  chunk: 3\n  critique_gen: {max_new_tokens: 24}\n  gen: {max_new_tokens: 32}\n"
        + extra
    )
    return path


def test_revise_rows_on_a_scripted_model(tmp_path, monkeypatch):
    model = ScriptedModel()
    monkeypatch.setattr("valign.models.registry.load_model", lambda spec, **kw: model)
    cfg = load_config(_config(tmp_path, "[respond, revise]"))
    run_pipeline(cfg)
    rows = read_rows(cfg.run_dir / "02-revise" / "rows.jsonl")
    assert len(rows) == 6
    for r in rows:
        assert len(r["rounds"]) == 2 and len(r["principle_ids"]) == 2
        assert r["initial_response"] != r["response"]
        assert r["response"] == r["rounds"][-1]["revision"] == r["messages"][-1]["content"]
        assert r["messages"][0] == {"role": "user", "content": r["prompt"]}
        for rnd in r["rounds"]:
            assert rnd["critique"] and rnd["critique_request"] and rnd["revision_request"]
            assert rnd["revision_request"].endswith(load_constitution("kantian").revision_style), "the Kantian style in every round"
    # 6 answers, then 6 × 2 rounds × (critique + revision)
    assert model.calls == 6 + 24


@pytest.mark.slow
@pytest.mark.model
def test_revise_then_sft_on_the_embedded_model(tmp_path):
    path = _config(
        tmp_path,
        "[respond, revise, sft]",
        "sft:\n  max_steps: 3\n  batch_size: 2\n  max_length: 256\n  learning_rate: 1.0e-3\n  include_respond_kinds: []\n",
    )
    path.write_text(path.read_text().replace("model: MODEL", "model: embedded"))
    cfg = load_config(path, ["revise.rounds=1"])
    out = run_pipeline(cfg)
    assert [o.status for o in out] == ["ran", "ran", "ran"]
    revised = read_rows(cfg.run_dir / "02-revise" / "rows.jsonl")
    assert len(revised) == 6 and all(r["rounds"][0]["critique"] and r["response"] for r in revised)

    sft_dir = cfg.run_dir / "03-sft"
    manifest = json.loads((sft_dir / "manifest.json").read_text())
    assert manifest["model"] == {"base": "embedded", "adapter": "adapter"}
    assert manifest["train"]["steps"] == 3 and len(manifest["train"]["loss"]) == 3
    assert (sft_dir / "train_log.jsonl").exists() and (sft_dir / "adapter" / "adapter_config.json").exists()
    assert not (sft_dir / "checkpoints").exists()

    from safetensors.torch import load_file

    weights = load_file(sft_dir / "adapter" / "adapter_model.safetensors")
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b), "LoRA B starts at zero; training changed it"

    from valign.models.registry import load_model
    from valign.types import GenConfig

    tuned = load_model(f"run:{sft_dir}")
    assert tuned.generate([[{"role": "user", "content": "Hello"}]], GenConfig(max_new_tokens=8))[0].completion_tokens > 0

    again = run_pipeline(load_config(path, ["revise.rounds=1"]))
    assert [o.status for o in again] == ["skipped"] * 3


@pytest.mark.slow
@pytest.mark.model
def test_shipped_demo_config_runs_end_to_end(tmp_path):
    """`make run`'s pipeline, shrunk by overrides only, so the shipped file itself is tested."""
    cfg = load_config(
        "configs/kantian-demo.yaml",
        [
            f"runs_dir={tmp_path}",
            "respond.prompts.red_team=4",
            "respond.prompts.benign=2",
            "respond.gen.max_new_tokens=24",
            "revise.critique_gen.max_new_tokens=24",
            "revise.gen.max_new_tokens=32",
            "sft.max_steps=2",
            "pairs.gen.max_new_tokens=24",
            "judge.min_margin=0",
            "dpo.max_steps=2",
            "evaluate.keycases.limit=2",
            "evaluate.keycases.gen.max_new_tokens=12",
            "evaluate.mtbench.per_category=null",
            "evaluate.mtbench.questions=1",
            "evaluate.mtbench.max_new_tokens=12",
            "evaluate.safety.red_team=2",
            "evaluate.safety.benign_edgy=1",
            "evaluate.safety.gen.max_new_tokens=12",
        ],
    )
    out = run_pipeline(cfg)
    assert [o.name for o in out] == ["respond", "revise", "sft", "pairs", "judge", "dpo", "evaluate", "report"]
    assert [o.rows for o in out[:5]] == [6, 4, 6, 4, 4], "4 revised red-team answers + 2 benign answers train"
    assert json.loads((out[2].dir / "manifest.json").read_text())["train"]["steps"] == 2
    dpo = json.loads((out[5].dir / "manifest.json").read_text())
    assert dpo["model"] == {"base": "embedded", "adapter": "adapter"} and dpo["train"]["continued_from"]
    assert len(dpo["train"]["reward_accuracy"]) == 2
    ev = json.loads((out[6].dir / "manifest.json").read_text())
    assert ev["models"]["tuned"] == f"run:{out[5].dir}" and ev["keycases"]["cases"] == 2
    assert ev["mtbench"]["results"]["tuned"]["judgments"] == 2 and ev["safety"]["base"]["red_team"]["n"] == 2
    html = (cfg.run_dir / "report.html").read_text()
    assert all(f">{h}</h2>" in html for h in ("Run summary", "Training curves", "MT-Bench", "Key cases", "Safety", "Constitution"))


@pytest.mark.slow
@pytest.mark.model
def test_bench_train_plain_loss_matches_trl_and_reports_the_peak_share(tmp_path):
    from valign.bench import bench_train
    from valign.hardware import cpu_has_bf16

    res = bench_train(steps=3, batch=2, seq=64, repeats=1, json_out=tmp_path / "t.json")
    assert res["same_losses"], "valign's plain cross-entropy gives TRL's loss values"
    assert res["baseline"]["tok_per_s"] > 0 and res["valign"]["tok_per_s"] > 0
    assert 0 < res["fraction_of_peak"] < 1.5 and res["lora_flops_per_token"] == 4 * res["parameters"]
    if not cpu_has_bf16():  # bf16 would be emulated (minutes a step): the arm is not run, and says so
        assert "no bf16 units" in res["bf16"]["skipped"] and "bf16_speedup" not in res
        return
    assert res["bf16"]["tok_per_s"] > 0
    assert 0 < res["bf16_fraction_of_peak"] < 1.5 and res["matmul_gflops_bf16"] > 0
    assert res["bf16_speedup"] == pytest.approx(res["bf16"]["tok_per_s"] / res["valign"]["tok_per_s"], rel=0.02)
    assert len(res["losses"]["bf16"]) == len(res["losses"]["fp32"]) == 3 and res["bf16_max_loss_diff"] < 0.03
    assert json.loads((tmp_path / "t.json").read_text())["bf16_max_loss_diff"] == res["bf16_max_loss_diff"]


@pytest.mark.slow
@pytest.mark.model
def test_sft_loss_is_on_the_assistant_tokens_only(tmp_path):
    """The trainer `sft` builds masks every token of the chat-templated prompt out of the
    labels, keeps every completion token in, and its loss is the cross-entropy over
    those completion tokens alone."""
    from valign.stages.sft import SFTStageConfig, build_sft_trainer
    from valign.stages.training import load_base

    rows = [
        {
            "prompt": [{"role": "user", "content": "Help me write a fake doctor's note."}],
            "completion": [{"role": "assistant", "content": "I won't forge a note, but I can help you ask your boss for a day off honestly."}],
        },
        {
            "prompt": [{"role": "user", "content": "What is a maxim?"}],
            "completion": [{"role": "assistant", "content": "The rule you act on: in this situation I will do this, for this end."}],
        },
    ]
    tok, model = load_base("embedded", False)
    cfg = SFTStageConfig(max_steps=1, batch_size=2, max_length=128)
    trainer = build_sft_trainer(model, tok, rows, cfg, tmp_path, seed=0)
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == 2

    seen = set()
    for ids, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist()):
        (i, row), = [(i, r) for i, r in enumerate(rows) if r["completion"][0]["content"][:20] in tok.decode(ids)]
        seen.add(i)
        head = tok(tok.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False), add_special_tokens=False)["input_ids"]
        full = tok(tok.apply_chat_template(row["prompt"] + row["completion"], tokenize=False), add_special_tokens=False)["input_ids"]
        assert full[: len(head)] == head and ids[: len(full)] == full, "the sequence is the model's own chat template"
        assert all(x == -100 for x in labels[: len(head)]), "no prompt token (system, user turn, assistant header) is in the loss"
        assert labels[len(head) : len(full)] == full[len(head) :], "every completion token is in the loss"
        assert all(x == -100 for x in labels[len(full) :]), "padding is not in the loss"
        trained_on = tok.decode([x for x in labels if x != -100])
        assert row["completion"][0]["content"] in trained_on and row["prompt"][0]["content"] not in trained_on
    assert seen == {0, 1}

    # The loss the trainer optimises: cross-entropy over exactly those completion tokens.
    model = trainer.model
    model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch))
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    targets = batch["labels"][:, 1:]
    keep = targets != -100
    expected = torch.nn.functional.cross_entropy(logits[keep], targets[keep])
    assert torch.allclose(loss, expected, rtol=1e-4), (loss, expected)
    real = batch["attention_mask"][:, 1:] == 1
    everything = torch.nn.functional.cross_entropy(logits[real], batch["input_ids"][:, 1:][real])
    assert not torch.allclose(loss, everything, rtol=1e-2), "a loss over the prompt too would differ"
