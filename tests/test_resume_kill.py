"""A real `valign run` on the embedded model, killed with SIGKILL mid-stage, then resumed."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from valign.runs import read_rows

pytestmark = pytest.mark.slow


def test_kill_9_then_resume_has_no_duplicate_and_no_missing_row(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"name: killed\nruns_dir: {tmp_path / 'runs'}\nmodel: embedded\n"
        "respond:\n  prompts: demo\n  chunk: 4\n  gen: {max_new_tokens: 24}\n"
    )
    cmd = [sys.executable, "-m", "valign.cli", "run", str(cfg)]
    rows_path = tmp_path / "runs" / "killed" / "01-respond" / "rows.jsonl"
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline:
        if rows_path.exists() and len(rows_path.read_text().splitlines()) >= 8:
            break
        if proc.poll() is not None:
            pytest.fail(f"the run ended before it could be killed: {proc.stderr.read().decode()[-500:]}")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    at_kill = len(read_rows(rows_path))
    assert 8 <= at_kill < 24, "killed mid-stage"
    assert not (rows_path.parent / "manifest.json").exists()

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-800:]
    assert f"resuming after {at_kill} rows" in done.stderr
    rows = read_rows(rows_path)
    ids = [r["id"] for r in rows]
    prompts = [json.loads(line)["id"] for line in open(_demo_path())]
    assert len(ids) == len(set(ids)), "no duplicate rows"
    assert sorted(ids) == sorted(prompts), "no missing rows"
    manifest = json.loads((rows_path.parent / "manifest.json").read_text())
    assert manifest["counts"]["resumed_done"] == at_kill, "finished rows are not redone"

    # A third run changes nothing: the stage is up to date.
    third = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert "up to date, skipped" in third.stderr


def _demo_path():
    from valign.datasets import resolve_source

    return resolve_source("demo")


def test_revise_killed_mid_stage_resumes_without_duplicates(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"name: killed\nruns_dir: {tmp_path / 'runs'}\nmodel: embedded\nstages: [respond, revise]\n"
        "respond:\n  prompts: demo\n  limit: 8\n  chunk: 8\n  gen: {max_new_tokens: 16}\n"
        "revise:\n  chunk: 2\n  few_shot: 0\n  critique_gen: {max_new_tokens: 16}\n  gen: {max_new_tokens: 16}\n"
    )
    cmd = [sys.executable, "-m", "valign.cli", "run", str(cfg)]
    rows_path = tmp_path / "runs" / "killed" / "02-revise" / "rows.jsonl"
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if rows_path.exists() and len(rows_path.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    if proc.poll() is not None:
        pytest.fail(f"the run ended before it could be killed: {proc.stderr.read().decode()[-500:]}")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    at_kill = len(read_rows(rows_path))
    assert 2 <= at_kill < 8
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-800:]
    assert "01-respond: up to date, skipped" in done.stderr
    assert f"resuming after {at_kill} rows" in done.stderr
    rows = read_rows(rows_path)
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == 8
    assert all(r["rounds"] and r["principle_ids"] and r["initial_response"] is not None for r in rows)
