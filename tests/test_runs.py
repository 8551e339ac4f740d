"""Fingerprints, the crash-safe row log, and the pipeline's skip / resume / invalidate."""

import json

import pytest

from tests.conftest import ScriptedModel
from valign.config import load_config
from valign.errors import ValignError
from valign.pipeline import run_pipeline
from valign.runs import RowLog, StageDir, fingerprint, read_rows


def test_fingerprint_changes_with_config_inputs_and_templates():
    base = fingerprint("respond", {"t": 0.7}, {"a": "1"}, {"tpl": "x"})
    assert base == fingerprint("respond", {"t": 0.7}, {"a": "1"}, {"tpl": "x"})
    assert base != fingerprint("respond", {"t": 1.0}, {"a": "1"}, {"tpl": "x"})
    assert base != fingerprint("respond", {"t": 0.7}, {"a": "2"}, {"tpl": "x"})
    assert base != fingerprint("respond", {"t": 0.7}, {"a": "1"}, {"tpl": "y"})
    assert base != fingerprint("revise", {"t": 0.7}, {"a": "1"}, {"tpl": "x"})


def test_row_log_cuts_a_torn_tail_and_never_duplicates(tmp_path):
    path = tmp_path / "rows.jsonl"
    log = RowLog(path)
    assert log.append([{"id": "a"}, {"id": "b"}]) == 2
    with open(path, "a") as f:
        f.write('{"id": "c", "text": "half a li')  # the process died mid-write
    log = RowLog(path)
    assert log.ids == {"a", "b"}
    assert log.append([{"id": "b"}, {"id": "c"}]) == 1
    assert [r["id"] for r in read_rows(path)] == ["a", "b", "c"]


def test_stage_dir_discards_rows_of_another_fingerprint(tmp_path):
    sdir = StageDir(tmp_path / "01-respond")
    sdir.begin("fp1").append([{"id": "a"}])
    assert len(sdir.begin("fp1")) == 1, "same fingerprint resumes"
    assert len(sdir.begin("fp2")) == 0, "another fingerprint starts over"


@pytest.fixture
def run_cfg(tmp_path, monkeypatch):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"question {i}"}) + "\n" for i in range(10)))
    (tmp_path / "c.yaml").write_text(
        f"name: t\nruns_dir: {tmp_path / 'runs'}\nmodel: scripted\n"
        "respond:\n  prompts: p.jsonl\n  chunk: 3\n  gen: {max_new_tokens: 8}\n"
    )
    models = {}

    def fake_load(spec, **kw):
        models.setdefault(spec, ScriptedModel(name=spec))
        return models[spec]

    monkeypatch.setattr("valign.models.registry.load_model", fake_load)
    return tmp_path / "c.yaml", models


def test_pipeline_runs_skips_and_invalidates(run_cfg):
    path, models = run_cfg
    out = run_pipeline(load_config(path))
    assert out[0].status == "ran" and out[0].rows == 10
    stage = out[0].dir
    manifest = json.loads((stage / "manifest.json").read_text())
    assert manifest["counts"]["rows"] == 10 and "transformers" in manifest["versions"]
    rows = read_rows(stage / "rows.jsonl")
    assert {r["id"] for r in rows} == {f"q{i}" for i in range(10)}
    assert all(r["messages"][-1] == {"role": "assistant", "content": r["response"]} for r in rows)

    again = run_pipeline(load_config(path))
    assert again[0].status == "skipped"

    changed = run_pipeline(load_config(path, ["respond.gen.temperature=1.0"]))
    assert changed[0].status == "ran", "a config change re-runs the stage"
    assert len(read_rows(stage / "rows.jsonl")) == 10


def test_pipeline_resumes_from_written_rows(run_cfg):
    path, models = run_cfg
    cfg = load_config(path)
    run_pipeline(cfg)
    stage = cfg.run_dir / "01-respond"
    lines = (stage / "rows.jsonl").read_text().splitlines()
    # Simulate a kill after two chunks: drop the manifest and the last rows.
    (stage / "manifest.json").unlink()
    (stage / "rows.jsonl").write_text("\n".join(lines[:6]) + "\n" + lines[6][:20])
    (cfg.run_dir / "cache.sqlite").unlink()
    for suffix in ("-wal", "-shm"):
        (cfg.run_dir / f"cache.sqlite{suffix}").unlink(missing_ok=True)
    models.clear()
    out = run_pipeline(load_config(path))
    assert out[0].status == "resumed"
    assert models["scripted"].calls == 4, "only the 4 missing prompts are answered again"
    ids = [r["id"] for r in read_rows(stage / "rows.jsonl")]
    assert sorted(ids) == sorted(f"q{i}" for i in range(10)) and len(ids) == len(set(ids))


def test_from_reruns_and_only_checks(run_cfg):
    path, models = run_cfg
    run_pipeline(load_config(path))
    calls = models["scripted"].calls
    out = run_pipeline(load_config(path), start_from="respond")
    assert out[0].status == "ran"
    assert models["scripted"].calls == calls, "a forced re-run still answers from the cache"
    with pytest.raises(ValignError, match="no such stage"):
        run_pipeline(load_config(path), only="judge")
