"""The evaluate stage's control flow on scripted models: every unit of work is a row,
a killed evaluation resumes without redoing or duplicating anything, the pipeline
wiring (default tuned model, fingerprints) and the CLI's user errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from tests.conftest import ScriptedModel, load_seed_config
from valign.config import load_config
from valign.errors import ValignError
from valign.stages.registry import STAGES
from valign.runs import RowLog, fingerprint, read_rows
from valign.stages.base import ModelPool
from valign.stages.evaluate import EvaluateConfig, run_evaluation, tuned_stage
from valign.types import Completion

CLI = [sys.executable, "-m", "valign.cli"]


class Judge(ScriptedModel):
    """Writes "Rating: [[7]]" for MT-Bench and prefers option 1 (A much better) in logprob mode."""

    def _generate_batches(self, requests, cfg):
        self.calls += len(requests)
        yield [(i, Completion(text="Clear and correct. Rating: [[7]]")) for i in range(len(requests))]


def _pool() -> tuple[ModelPool, dict[str, ScriptedModel]]:
    models = {"base": ScriptedModel(name="base"), "tuned": ScriptedModel(name="tuned"), "judge": Judge(name="judge", choice={"1": 3.0})}
    pool = ModelPool(None)
    pool._models.update(models)  # specs resolve to the scripted models
    return pool, models


def _config() -> EvaluateConfig:
    return EvaluateConfig.model_validate(
        {
            "keycases": {"limit": 3, "judge_mode": "logprob"},
            "mtbench": {"questions": 2, "judge_mode": "generative"},
            "safety": {"red_team": 2, "benign_edgy": 2, "red_team_prompts": "harmbench"},
            "chunk": 2,
        }
    )


def _run(tmp_path: Path, pool: ModelPool) -> dict:
    return run_evaluation(
        _config(), base="base", tuned="tuned", judge="judge", rows=RowLog(tmp_path / "rows.jsonl"), models=pool,
        out_dir=tmp_path, console=Console(quiet=True),
    )


def test_every_unit_is_a_row_and_a_killed_run_resumes_without_redoing_work(tmp_path):
    pool, models = _pool()
    info = _run(tmp_path, pool)
    rows = read_rows(tmp_path / "rows.jsonl")
    kinds = [r["type"] for r in rows]
    assert kinds.count("keycase_answer") == 6 and kinds.count("keycase") == 3
    assert kinds.count("mtbench_answer") == 4 and kinds.count("mtbench_judgment") == 8
    assert kinds.count("safety") == 8 and len({r["id"] for r in rows}) == len(rows) == 29
    assert info["mtbench"]["results"]["tuned"]["overall"] == 7 and info["mtbench"]["results"]["base"]["parse_failures"] == 0
    assert info["keycases"]["cases"] == 3 and info["safety"]["base"]["red_team"]["n"] == 2
    assert (tmp_path / "mt_bench" / "model_answer" / "tuned.jsonl").exists()
    assert (tmp_path / "mt_bench" / "model_judgment" / "judge_single.jsonl").read_text().count("\n") == 8
    first_calls = {k: (m.calls, m.choice_calls) for k, m in models.items()}

    # A kill after 12 rows: the rest is redone, nothing twice, and only the missing work costs calls.
    lines = (tmp_path / "rows.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "rows.jsonl").write_text("".join(lines[:12]) + lines[12][:20])  # plus a torn line
    pool2, models2 = _pool()
    again = _run(tmp_path, pool2)
    rows2 = read_rows(tmp_path / "rows.jsonl")
    assert sorted(r["id"] for r in rows2) == sorted(r["id"] for r in rows)
    assert again["mtbench"]["results"] == info["mtbench"]["results"] and again["safety"] == info["safety"]
    # Kept: 9 key-case rows, both of base's MT-Bench answers and one of tuned's. Redone: tuned's
    # other answer (2 turns), the 8 judgments, and the 4 safety prompts per model.
    assert [rows[k]["type"] for k in range(12)].count("mtbench_answer") == 3
    assert (models2["base"].calls, models2["tuned"].calls, models2["judge"].calls, models2["judge"].choice_calls) == (4, 6, 8, 0)
    assert first_calls["base"][0] == 3 + 4 + 4 and first_calls["judge"][1] == 6

    # Nothing left to do: no model is asked anything.
    pool3, models3 = _pool()
    _run(tmp_path, pool3)
    assert all(m.calls == 0 and m.choice_calls == 0 for m in models3.values())


def test_pipeline_wiring_and_fingerprints(tmp_path):
    cfg = load_config("configs/kantian-demo.yaml", [f"runs_dir={tmp_path}"])
    assert cfg.stages[-2:] == ["evaluate", "report"]
    assert STAGES["evaluate"].inputs(cfg) == ["dpo"] and tuned_stage(cfg) == "dpo"
    assert STAGES["report"].inputs(cfg) == cfg.stages[:-1]
    fp = lambda c: fingerprint("evaluate", STAGES["evaluate"].describe(c), {})  # noqa: E731
    other = load_config("configs/kantian-demo.yaml", [f"runs_dir={tmp_path}", "evaluate.mtbench.per_category=2"])
    assert fp(cfg) != fp(other) and fp(cfg) == fp(load_config("configs/kantian-demo.yaml", [f"runs_dir={tmp_path}"]))

    sft_only = load_config("configs/kantian-demo.yaml", [f"runs_dir={tmp_path}", "stages=[respond, revise, sft, evaluate]"])
    assert STAGES["evaluate"].inputs(sft_only) == ["sft"]
    given = load_config("configs/kantian-demo.yaml", ["stages=[evaluate, report]", "evaluate.tuned=embedded"])
    assert STAGES["evaluate"].inputs(given) == []
    served = load_seed_config()  # its tuned model is run:<dpo>, hot-loaded into the vLLM server
    assert served.evaluate.tuned is None and STAGES["evaluate"].inputs(served) == ["dpo"]
    named = load_seed_config(["evaluate.tuned=openai:dpo@http://localhost:8000/v1"])
    assert STAGES["evaluate"].inputs(named) == ["dpo"], "a named tuned model still re-evaluates when dpo retrains"
    none = load_config("configs/kantian-demo.yaml", ["stages=[respond, evaluate]"])
    with pytest.raises(ValignError, match="set evaluate.tuned"):
        STAGES["evaluate"].inputs(none)


def test_config_errors_name_the_key(tmp_path):
    from valign.errors import ConfigError

    with pytest.raises(ConfigError, match="did you mean 'judge_mode'"):
        load_config("configs/kantian-demo.yaml", ["evaluate.mtbench.judge_mod=logprob"])
    with pytest.raises(ConfigError, match="evaluate.suites"):
        load_config("configs/kantian-demo.yaml", ["evaluate.suites=[mmlu]"])


def test_a_partial_gen_setting_keeps_the_sections_greedy_default():
    """`--set keycases.gen.max_new_tokens=64` changes the length only: key-case and
    safety answers and every judge stay greedy (GenConfig's own default is 0.7)."""
    from valign.overrides import apply_override

    data: dict = {}
    for item in ("keycases.gen.max_new_tokens=64", "keycases.judge_gen.max_new_tokens=32", "mtbench.judge_gen.max_new_tokens=16", "safety.gen.max_new_tokens=8"):
        apply_override(data, item)
    cfg = EvaluateConfig.model_validate(data)
    gens = [cfg.keycases.gen, cfg.keycases.judge_gen, cfg.mtbench.judge_gen, cfg.safety.gen]
    assert [(g.temperature, g.max_new_tokens) for g in gens] == [(0.0, 64), (0.0, 32), (0.0, 16), (0.0, 8)]
    assert EvaluateConfig.model_validate({"keycases": {"gen": {"temperature": 0.9}}}).keycases.gen.max_new_tokens == 512
    with pytest.raises(ValueError, match="max_new_token"):  # a typo is still refused
        EvaluateConfig.model_validate({"safety": {"gen": {"max_new_token": 8}}})
    # The preference judge's stage too.
    run = load_config("configs/kantian-demo.yaml", ["judge.gen.max_new_tokens=64"])
    assert (run.judge.gen.temperature, run.judge.gen.max_new_tokens) == (0.0, 64)


def test_cli_errors_are_one_sentence(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    out = subprocess.run([*CLI, "eval", "--base", "embedded", "--tuned", "embedded", "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "already holds other files" in out.stderr and "Traceback" not in out.stderr
    assert (tmp_path / "mine.txt").exists()
    out = subprocess.run([*CLI, "report", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "neither a run" in out.stderr
    out = subprocess.run(
        [*CLI, "eval", "--base", "a", "--tuned", "b", "--out", str(tmp_path / "new"), "--set", "mtbench.questions=zero"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2 and "mtbench.questions" in out.stderr
    # A comma-separated list is split and trimmed, and an unknown category stops the
    # evaluation before any model runs (key cases come first).
    out = subprocess.run(
        [*CLI, "eval", "--base", "embedded", "--tuned", "embedded", "--out", str(tmp_path / "cats"), "--categories", "roleplay, poetry"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2 and "no category 'poetry'" in out.stderr and "evaluate: key cases" not in out.stderr
    assert not (tmp_path / "cats" / "rows.jsonl").exists()
