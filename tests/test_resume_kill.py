"""A real `valign run` on the embedded model, killed with SIGKILL mid-stage, then resumed."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from valign.runs import read_rows

from tests.run_helpers import check_trained, complete_checkpoints, kill_when, run_to_end, start_run, steps_logged, write_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.model]


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
    from valign.prompt_files import resolve_source

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


# --------------------------------------------------------------------------- pairs and training stages
def test_pairs_killed_mid_stage_resumes_without_duplicates(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"name: killed\nruns_dir: {tmp_path / 'runs'}\nmodel: embedded\nstages: [respond, pairs]\n"
        "respond:\n  prompts: demo\n  limit: 6\n  chunk: 6\n  gen: {max_new_tokens: 4}\n"
        "pairs:\n  chunk: 1\n  gen: {max_new_tokens: 8}\n"
    )
    stage = tmp_path / "runs" / "killed" / "02-pairs"
    log = tmp_path / "first.log"
    proc = start_run(cfg, log)
    kill_when(
        proc, log, lambda: len(read_rows(stage / "rows.jsonl")) >= 2, "two pairs rows were written",
        "give pairs more prompts (respond.limit) or longer answers (pairs.gen.max_new_tokens)",
    )
    at_kill = len(read_rows(stage / "rows.jsonl"))
    assert 2 <= at_kill < 6, f"killed mid-stage ({at_kill} of 6 pairs written); if 6, give pairs more work"
    assert not (stage / "manifest.json").exists()

    out = run_to_end(cfg, tmp_path / "second.log")
    assert "01-respond: up to date, skipped" in out
    assert f"02-pairs: resuming after {at_kill} rows" in out
    prompts = [r["prompt_id"] for r in read_rows(stage.parent / "01-respond" / "rows.jsonl")]
    rows = read_rows(stage / "rows.jsonl")
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "no duplicate pair"
    assert sorted(ids) == sorted(prompts) and len(prompts) == 6, "every prompt has its pair"
    for r in rows:
        assert [a["temperature"] for a in r["responses"]] == [0.7, 1.0] and all("text" in a for a in r["responses"]), r
    manifest = json.loads((stage / "manifest.json").read_text())
    assert manifest["counts"]["prompts"] == 6
    assert manifest["counts"]["resumed_done"] == at_kill, "pairs written before the kill are not sampled again"


def test_sft_killed_while_writing_a_checkpoint_resumes_from_the_one_before(tmp_path):
    """SIGKILL lands while the Trainer writes checkpoint-k (k ≥ 2): checkpoint-(k-1) is
    complete, checkpoint-k a torn folder. The rerun must resume after step k-1 and train
    the remaining steps exactly once (before the fix it took the torn folder for the last
    checkpoint and crashed on every rerun)."""
    rows = [{"id": f"r{i}", "prompt": f"Name fact {i} about the sea.", "completion": f"Fact {i}: the sea is salty."} for i in range(4)]
    data = write_jsonl(tmp_path / "sft.jsonl", rows)
    max_steps = 4
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"name: killed\nruns_dir: {tmp_path / 'runs'}\nmodel: embedded\nstages: [sft]\n"
        f"sft:\n  rows: {data}\n  max_steps: {max_steps}\n  save_steps: 1\n  batch_size: 1\n  max_length: 64\n"
    )
    stage = tmp_path / "runs" / "killed" / "01-sft"
    log = tmp_path / "first.log"
    proc = start_run(cfg, log)
    looked: set[int] = set()  # checkpoints already inspected
    caught: list[int] = []  # the one found mid-write

    def mid_save() -> bool:
        # The window between a checkpoint folder appearing and its trainer_state.json is a
        # fraction of a second, so this looks often; SIGSTOP freezes the run while it looks.
        for k in range(2, max_steps + 1):
            folder = stage / "checkpoints" / f"checkpoint-{k}"
            if k in looked or not folder.is_dir():
                continue
            looked.add(k)
            os.killpg(proc.pid, signal.SIGSTOP)
            if not (folder / "trainer_state.json").exists():
                caught.append(k)
                return True  # killed while still stopped: the folder stays torn
            os.killpg(proc.pid, signal.SIGCONT)  # too late for this one; try the next
        return False

    kill_when(proc, log, mid_save, "a checkpoint was caught mid-write", "raise sft.max_steps for more checkpoints to catch", poll=0.005)
    k = caught[0]
    assert complete_checkpoints(stage) == [k - 1], "the checkpoint before the torn one is complete"
    assert (stage / "checkpoints" / f"checkpoint-{k}").is_dir()
    assert not (stage / "manifest.json").exists()

    out = run_to_end(cfg, tmp_path / "second.log")
    assert steps_logged(out) == max_steps - (k - 1), f"the rerun trains only steps {k}..{max_steps}:\n{out[-1500:]}"
    check_trained(stage, max_steps, resumed_from=k - 1, rows=len(rows))


def test_dpo_then_kto_each_killed_after_a_checkpoint_resume_from_it(tmp_path):
    """Run 1 is killed in dpo, run 2 in kto (after resuming and finishing dpo), run 3
    finishes kto, which continues dpo's adapter. Each resume trains only the steps after
    its checkpoint."""
    questions = ["Should I keep a promise?", "May I lie to a friend?"]
    good, bad = "Yes; be honest and keep your word.", "No; do whatever suits you."
    dpo_rows = [{"id": f"p{i}", "prompt": q, "chosen": good, "rejected": bad} for i, q in enumerate(questions)]
    kto_rows = [
        {"id": f"k{i}:{label}", "prompt": q, "completion": good if label else bad, "label": label}
        for i, q in enumerate(questions)
        for label in (True, False)
    ]
    max_steps = 3
    train = f"  max_steps: {max_steps}\n  save_steps: 1\n  batch_size: 2\n  max_length: 64\n"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"name: killed\nruns_dir: {tmp_path / 'runs'}\nmodel: embedded\nstages: [dpo, kto]\n"
        f"dpo:\n  rows: {write_jsonl(tmp_path / 'dpo.jsonl', dpo_rows)}\n{train}"
        f"kto:\n  rows: {write_jsonl(tmp_path / 'kto.jsonl', kto_rows)}\n{train}"
    )
    dpo, kto = tmp_path / "runs" / "killed" / "01-dpo", tmp_path / "runs" / "killed" / "02-kto"
    more = "raise max_steps so training outlasts the poll"

    def kill_after_checkpoint(stage: Path, log: Path) -> int:
        proc = start_run(cfg, log)
        kill_when(proc, log, lambda: bool(complete_checkpoints(stage)), f"a checkpoint in {stage.name}", more)
        k = complete_checkpoints(stage)[-1]
        assert k < max_steps, f"killed after the last step (checkpoint-{k}); {more}"
        assert not (stage / "manifest.json").exists()
        return k

    k_dpo = kill_after_checkpoint(dpo, tmp_path / "first.log")
    assert not kto.exists()

    k_kto = kill_after_checkpoint(kto, tmp_path / "second.log")
    second = (tmp_path / "second.log").read_text()
    assert f"01-dpo: resuming after {len(dpo_rows)} rows" in second
    dpo_part = second.split("✓ 01-dpo:")[0]
    assert steps_logged(dpo_part) == max_steps - k_dpo, f"dpo trains only steps {k_dpo + 1}..{max_steps} again:\n{dpo_part[-1500:]}"
    check_trained(dpo, max_steps, resumed_from=k_dpo, rows=len(dpo_rows))

    third = run_to_end(cfg, tmp_path / "third.log")
    assert "01-dpo: up to date, skipped" in third
    assert f"02-kto: resuming after {len(kto_rows)} rows" in third
    assert steps_logged(third) == max_steps - k_kto, f"kto trains only steps {k_kto + 1}..{max_steps} again:\n{third[-1500:]}"
    manifest = check_trained(kto, max_steps, resumed_from=k_kto, rows=len(kto_rows))
    assert manifest["train"]["continued_from"] == str(dpo), "kto continues dpo's adapter"


def test_survey_sft_killed_after_a_checkpoint_resumes_from_it(tmp_path):
    """Distribution fine-tuning resumes like the other training stages: only the steps
    after its last checkpoint run again, and every item's row is written once."""
    from valign.survey.opinion import OpinionItem, write_items

    labels = ["Not like me at all", "Not like me", "A little like me", "Somewhat like me", "Like me", "Very much like me"]
    items = [
        OpinionItem(id=f"v{i}", kind="value", question=f"Statement {i}: this person values tradition.", options=labels,
                    ordinal=True, distribution=[0.5 if j == i % 6 else 0.1 for j in range(6)], n=50)
        for i in range(8)
    ]
    max_steps = 4
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"name: killed\nruns_dir: {tmp_path / 'runs'}\nmodel: embedded\nstages: [survey_sft]\n"
        f"survey_sft:\n  items: {write_items(items, tmp_path / 'items.jsonl')}\n  max_steps: {max_steps}\n"
        "  save_steps: 1\n  batch_size: 2\n  max_length: 128\n"
    )
    stage = tmp_path / "runs" / "killed" / "01-survey_sft"
    log = tmp_path / "first.log"
    proc = start_run(cfg, log)
    more = "raise survey_sft.max_steps so training outlasts the poll"
    kill_when(proc, log, lambda: bool(complete_checkpoints(stage)), "a checkpoint in survey_sft", more)
    k = complete_checkpoints(stage)[-1]
    assert k < max_steps, f"killed after the last step (checkpoint-{k}); {more}"
    assert not (stage / "manifest.json").exists()

    out = run_to_end(cfg, tmp_path / "second.log")
    assert steps_logged(out) == max_steps - k, f"the rerun trains only steps {k + 1}..{max_steps}:\n{out[-1500:]}"
    check_trained(stage, max_steps, resumed_from=k, rows=len(items))
