"""The suite registry drives everything about a suite: the evaluate config's fields
and allowed names, what `run_evaluation` and the fingerprint do, the report's
sections and the inspect tasks. A fake suite registered here shows up in all of them."""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError
from rich.console import Console

from valign.config import load_config
from valign.errors import ConfigError
from valign.evals.report import render_report, report_sections
from valign.evals.rundata import RunData
from valign.evals.section import ReportEnv, Section
from valign.evals.suite import ROLES, Suite, SuiteRun, SuiteSetup
from valign.evals.suites import SUITES
from valign.runs import RowLog, StageDir
from valign.stages.base import ModelPool
from valign.stages.evaluate import EvaluateConfig, describe_evaluation, evaluate_config, run_evaluation


class FakeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompts: int = 2
    file: str | None = None


def describe_fake(setup: SuiteSetup) -> dict[str, Any]:
    return {"fake": setup.settings.prompts}


def run_fake(ctx: SuiteRun) -> dict[str, Any]:
    for role in ROLES:
        if f"fake:{role}" not in ctx.rows.ids:
            ctx.rows.append([{"id": f"fake:{role}", "type": "fake", "role": role, "model": ctx.specs[role]}])
    return {"answered": len(ctx.rows_of("fake"))}


def fake_section(run: RunData, env: ReportEnv) -> Section | None:
    summary = (run.manifest("evaluate") or {}).get("fake")
    if not summary:
        return None
    return Section("fake", "Fake suite", env.render_string("<p>{{ n }} answered</p>", n=summary["answered"]))


FAKE = Suite(
    name="fake",
    config=FakeConfig,
    describe=describe_fake,
    run=run_fake,
    counts=lambda summary: {"fake answers": summary["answered"]},
    section=fake_section,
    inspect_task="tests.fake_suite_task:fake",
    default=False,
    paths=("file",),
)


@pytest.fixture
def fake_suite(monkeypatch):
    """FAKE in the registry for one test; the registry is restored afterwards."""
    monkeypatch.setitem(SUITES, "fake", FAKE)
    return FAKE


def test_an_unknown_suite_is_a_config_error_naming_the_known_ones():
    with pytest.raises(ValidationError, match="unknown suite 'mmlu'; the suites are keycases, mtbench, safety, fidelity"):
        EvaluateConfig(suites=["safety", "mmlu"])
    with pytest.raises(ConfigError, match="evaluate.suites.*unknown suite 'mmlu'; the suites are keycases, mtbench, safety, fidelity"):
        load_config("configs/kantian-demo.yaml", ["evaluate.suites=[mmlu]"])


def test_the_config_has_a_field_per_suite_and_every_shipped_config_validates():
    assert list(EvaluateConfig.model_fields)[-8:] == list(SUITES) == ["keycases", "mtbench", "safety", "fidelity", "xstest", "orbench", "strongreject", "harmbench"]
    assert all(EvaluateConfig.model_fields[name].annotation is s.config for name, s in SUITES.items())
    assert EvaluateConfig().suites == ["keycases", "mtbench", "safety"]  # fidelity needs survey items; the benchmarks are opt-in
    for path in glob.glob("configs/*.yaml"):
        settings = yaml.safe_load(Path(path).read_text()).get("evaluate") or {}
        assert EvaluateConfig.model_validate(settings, context={"base_dir": Path("configs")}).suites, path


def test_validating_a_config_reads_no_file(tmp_path, monkeypatch):
    """Relative paths are resolved against the config's folder when they exist; nothing is read."""
    (tmp_path / "cases.jsonl").write_text("not json at all")
    (tmp_path / "fastchat").mkdir()
    monkeypatch.setattr(Path, "read_text", lambda *a, **k: pytest.fail("a config read a file while validating"))
    monkeypatch.setattr(Path, "read_bytes", lambda *a, **k: pytest.fail("a config read a file while validating"))
    settings = {"suites": ["keycases", "mtbench", "fidelity"], "keycases": {"file": "cases.jsonl"},
                "mtbench": {"data": "fastchat"}, "fidelity": {"items": "missing.jsonl"}}
    cfg = EvaluateConfig.model_validate(settings, context={"base_dir": tmp_path})
    assert cfg.keycases.file == str(tmp_path / "cases.jsonl") and cfg.mtbench.data == str(tmp_path / "fastchat")
    assert cfg.fidelity.items == "missing.jsonl"  # left as written: it does not exist there


def test_a_registered_suite_gets_a_config_field_runs_and_is_fingerprinted(fake_suite, tmp_path):
    config = evaluate_config()
    assert config.model_fields["fake"].annotation is FakeConfig and "fake" not in config().suites
    (tmp_path / "f.txt").write_text("x")
    cfg = config.model_validate({"suites": ["fake", "safety"], "fake": {"prompts": 3, "file": "f.txt"},
                                 "safety": {"red_team": 0, "benign_edgy": 0}}, context={"base_dir": tmp_path})
    assert cfg.fake.file == str(tmp_path / "f.txt")
    d = describe_evaluation(cfg, "embedded", "run:x", "embedded", 0, "kantian", None)
    assert d["fake"] == 3 and d["config"]["fake"] == {"prompts": 3, "file": str(tmp_path / "f.txt")}

    rows = RowLog(tmp_path / "rows.jsonl")
    info = run_evaluation(cfg, base="b", tuned="t", judge="j", rows=rows, models=ModelPool(None), out_dir=tmp_path, console=Console(quiet=True))
    assert info["suites"] == ["fake", "safety"] and info["fake"] == {"answered": 2} and set(info["suite_seconds"]) == {"fake", "safety"}
    assert info["counts"] == {"safety prompts": 0, "fake answers": 2}  # in the registry's order
    assert sorted(r["id"] for r in rows) == ["fake:base", "fake:tuned"]
    assert run_evaluation(cfg, base="b", tuned="t", judge="j", rows=rows, models=ModelPool(None), out_dir=tmp_path,
                          console=Console(quiet=True))["fake"] == {"answered": 2}, "resumed, nothing twice"
    with pytest.raises(ValidationError, match="unknown suite 'fake'"):
        EvaluateConfig(suites=["fake"])  # the class built before it was registered does not know it


def test_a_registered_suite_brings_its_report_section(fake_suite, tmp_path):
    assert [i for i, _ in report_sections()] == ["summary", "training", "grpo", "keycases", "mtbench", "safety", "fidelity", "xstest", "orbench", "strongreject", "harmbench", "fake", "calibration", "constitution"]
    StageDir(tmp_path).finish("fp", {"stage": "evaluate", "suites": ["fake"], "fake": {"answered": 2}, "constitution": "kantian"})
    html = render_report(tmp_path).read_text()
    assert ">Fake suite</h2>" in html and "<p>2 answered</p>" in html
    assert html.index(">Fake suite</h2>") < html.index(">Constitution</h2>")


def test_every_suite_has_an_inspect_task_registered_by_its_name(fake_suite):
    pytest.importorskip("inspect_ai")
    from inspect_ai import Task
    from inspect_ai._util.registry import registry_info

    from valign.evals import inspect_tasks

    tasks = inspect_tasks.tasks()
    assert list(tasks) == ["keycases", "mtbench", "safety", "fidelity", "xstest", "orbench", "strongreject", "harmbench", "fake"]
    assert all(registry_info(fn).name.split("/")[-1] == name for name, fn in tasks.items())
    assert inspect_tasks.fidelity is tasks["fidelity"] and inspect_tasks.fake is tasks["fake"]
    built = tasks["fake"](prompts=1)
    assert isinstance(built, Task) and len(built.dataset) == 1
