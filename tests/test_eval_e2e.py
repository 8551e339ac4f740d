"""End to end on the real embedded model: `valign eval`'s code compares the embedded
model with embedded + a LoRA adapter on two MT-Bench questions (both turns, FastChat's
files), three key cases (logprob judge, both orders) and a few safety prompts, then
renders the report; the `valign eval` command runs the same comparison with its
smallest options; the inspect_ai tasks run on the embedded model too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from valign.evals.report import render_report
from valign.runs import read_rows
from valign.stages.evaluate import evaluate_outside_pipeline

pytestmark = [pytest.mark.slow, pytest.mark.model]


@pytest.fixture(scope="module")
def adapter_stage(tmp_path_factory) -> Path:
    """A finished "training stage" folder with a LoRA adapter that really changes the model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from valign.models.embedded import embedded_dir

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(embedded_dir())
    # init_lora_weights=False: B is random too, so base + adapter answers differently.
    cfg = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM", init_lora_weights=False)
    model = get_peft_model(base, cfg)
    out = tmp_path_factory.mktemp("run") / "06-dpo"
    model.save_pretrained(out / "adapter")
    (out / "manifest.json").write_text(json.dumps({"fingerprint": "x", "model": {"base": "embedded", "adapter": "adapter"}}))
    return out


def test_embedded_against_embedded_plus_adapter(tmp_path, adapter_stage):
    out = tmp_path / "eval"
    settings = {
        "keycases": {"limit": 3, "judge_mode": "logprob", "gen": {"temperature": 0.0, "max_new_tokens": 24}},
        "mtbench": {"questions": 2, "max_new_tokens": 16, "judge_mode": "generative", "judge_gen": {"temperature": 0.0, "max_new_tokens": 24}},
        "safety": {"red_team": 2, "benign_edgy": 2, "gen": {"temperature": 0.0, "max_new_tokens": 16}},
    }
    info = evaluate_outside_pipeline(settings, [], base="embedded", tuned=f"run:{adapter_stage}", judge="embedded", out=out)
    rows = read_rows(out / "rows.jsonl")
    kinds = [r["type"] for r in rows]
    assert kinds.count("keycase") == 3 and kinds.count("mtbench_answer") == 4 and kinds.count("mtbench_judgment") == 8
    assert kinds.count("safety") == 8

    # The two models really differ, and each key case has a readable both-order verdict.
    cases = [r for r in rows if r["type"] == "keycase"]
    assert any(c["base_response"] != c["tuned_response"] for c in cases)
    assert all(c["score"] is not None and len(c["orders"]) == 2 and -2 <= c["score"] <= 2 for c in cases)
    assert all(abs(sum(p.values()) - 1) < 1e-6 for c in cases for p in c["judge_probs"])

    # FastChat's files: answers with both turns, judgments with FastChat's fields and prompt names.
    answers = [json.loads(x) for x in (out / "mt_bench/model_answer/tuned.jsonl").read_text().splitlines()]
    assert [a["question_id"] for a in answers] == [81, 82] and all(len(a["choices"][0]["turns"]) == 2 for a in answers)
    judgments = [json.loads(x) for x in (out / "mt_bench/model_judgment/embedded_single.jsonl").read_text().splitlines()]
    assert {tuple(j["judge"]) for j in judgments} == {("embedded", "single-v1"), ("embedded", "single-v1-multi-turn")}
    mt = info["mtbench"]["results"]
    assert mt["base"]["judgments"] == 4 and mt["tuned"]["judgments"] == 4
    assert all(j["score"] == -1 or 0 <= j["score"] for j in judgments)
    print("generative parse failures (24-token judge budget):", mt["base"]["parse_failures"] + mt["tuned"]["parse_failures"], "of 8")

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "evaluate" and manifest["models"]["tuned"] == f"run:{adapter_stage}"
    assert set(manifest["safety"]) == {"base", "tuned"} and manifest["safety"]["tuned"]["benign_edgy"]["n"] == 2

    html = render_report(out).read_text()
    assert all(f">{h}</h2>" in html for h in ("Run summary", "MT-Bench", "Key cases", "Safety", "Constitution"))

    # Unchanged settings: the finished evaluation is reused, not redone.
    again = evaluate_outside_pipeline(settings, [], base="embedded", tuned=f"run:{adapter_stage}", judge="embedded", out=out)
    assert again["keycases"] == info["keycases"] and len(read_rows(out / "rows.jsonl")) == len(rows)


def test_valign_eval_command_on_embedded_against_embedded_plus_adapter(tmp_path, adapter_stage):
    """`valign eval` itself, with the smallest options: each flag must reach the evaluation."""
    from typer.testing import CliRunner

    from valign.cli import app

    out = tmp_path / "eval"
    args = [
        "eval", "--base", "embedded", "--tuned", f"run:{adapter_stage}", "--out", str(out),
        "--categories", "humanities", "--questions", "1", "--keycases", "1", "--judge-mode", "logprob",
        "--red-team", "1", "--set", "safety.benign_edgy=1",
        "--set", "mtbench.max_new_tokens=8", "--set", "keycases.gen.max_new_tokens=8", "--set", "safety.gen.max_new_tokens=8",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    lines = dict(line.split("\t", 1) for line in result.stdout.splitlines() if "\t" in line)
    assert set(lines) == {"keycases", "mtbench", "safety", "report"} and lines["report"] == str(out / "report.html")
    html = (out / "report.html").read_text()
    assert all(f">{h}</h2>" in html for h in ("MT-Bench", "Key cases", "Safety"))

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["models"] == {"base": "embedded", "tuned": f"run:{adapter_stage}", "judge": "embedded"}  # judge: the base
    # --categories and --questions: the first humanities question only (the last category in FastChat's file).
    assert manifest["mtbench"]["question_ids"] == [151] and manifest["mtbench"]["judge_mode"] == "logprob"
    answers = [json.loads(x) for x in (out / "mt_bench/model_answer/tuned.jsonl").read_text().splitlines()]
    assert [a["question_id"] for a in answers] == [151]
    judgments = [json.loads(x) for x in (out / "mt_bench/model_judgment/embedded_single.jsonl").read_text().splitlines()]
    assert len(judgments) == 4 and {j["category"] for j in judgments} == {"humanities"}
    assert all(j["judge_mode"] == "logprob" and 1 <= j["score"] <= 10 for j in judgments)
    # --keycases, --judge-mode (key cases too), --red-team and the --set options.
    assert manifest["keycases"]["cases"] == 1 and manifest["keycases"]["judge_mode"] == "logprob"
    assert {s: manifest["safety"]["tuned"][s]["n"] for s in ("red_team", "benign_edgy")} == {"red_team": 1, "benign_edgy": 1}
    rows = read_rows(out / "rows.jsonl")
    texts = [r["response"] for r in rows if r["type"] in ("keycase_answer", "safety")]
    texts += [t for a in answers for t in a["choices"][0]["turns"]]
    assert len(texts) == 2 + 4 + 2 and all(len(t.split()) <= 8 for t in texts), "every answer within 8 tokens"
    assert [r["judge_mode"] for r in rows if r["type"] == "keycase"] == ["logprob"]


def test_inspect_tasks_on_the_embedded_model(tmp_path, monkeypatch):
    monkeypatch.setenv("INSPECT_LOG_DIR", str(tmp_path / "logs"))
    from inspect_ai import eval as inspect_eval

    from tests.test_fidelity import _items
    from valign.evals.inspect_tasks import fidelity, keycases, mtbench
    from valign.survey.opinion import write_items

    log = inspect_eval(mtbench(questions=1, max_tokens=12, judge="valign/embedded", judge_mode="logprob"), model="valign/embedded", display="none")[0]
    assert log.status == "success", log.error
    metrics = log.results.scores[0].metrics
    assert 1 <= metrics["overall"].value <= 10 and metrics["parse_failure_rate"].value == 0
    log = inspect_eval(
        keycases(limit=1, max_tokens=12, baseline="valign/embedded", judge="valign/embedded", judge_mode="logprob"),
        model="valign/embedded", display="none",
    )[0]
    assert log.status == "success", log.error
    assert log.samples[0].scores["keycase_scorer"].metadata["parsed"] is True
    items = write_items(_items(), tmp_path / "items.jsonl")
    log = inspect_eval(fidelity(items=str(items)), model="valign/embedded", display="none")[0]
    assert log.status == "success", log.error
    metrics = log.results.scores[0].metrics
    assert 0 <= metrics["mean"].value <= 1 and 0 <= metrics["representativeness"].value <= 1
    assert all(abs(sum(s.scores["fidelity_scorer"].metadata["distribution"]) - 1) < 1e-4 for s in log.samples)


def test_inspect_cli_finds_the_provider_through_the_entry_point(tmp_path):
    """`inspect eval valign/safety --model valign/embedded` on 2 samples: the task and the
    provider are found by name. The entry point declared in pyproject.toml is installed
    here as a stand-in distribution, as pip would."""
    import tomllib

    eps = tomllib.loads(Path("pyproject.toml").read_text())["project"]["entry-points"]["inspect_ai"]
    dist = tmp_path / "site" / "valign_ep-0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: valign-ep\nVersion: 0\n")
    (dist / "entry_points.txt").write_text("[inspect_ai]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()))
    # Not src/ on the path: its valign.egg-info (written by `pip install -e`) would shadow
    # the installed distribution, which inspect reads to namespace the tasks as valign/.
    env = {**os.environ, "INSPECT_LOG_DIR": str(tmp_path / "logs"), "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")])}
    inspect = Path(sys.executable).parent / "inspect"
    out = subprocess.run(
        [str(inspect), "eval", "valign/safety", "--model", "valign/embedded",
         "-T", "red_team=1", "-T", "benign_edgy=1", "-T", "max_tokens=12", "--display", "plain"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "safety (2 samples): valign/embedded" in out.stdout and "red_team" in out.stdout and "benign_edgy" in out.stdout
