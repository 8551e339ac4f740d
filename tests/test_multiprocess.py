"""`accelerate launch --config_file configs/accelerate/cpu-ddp.yaml -m valign.cli run …`:
two real processes (torchrun, gloo) on this CPU, killed mid-training and resumed.

Training stages train in both processes; respond and pairs run in the main process
alone; only the main process writes the run folder. The run must end as a
single-process run of the same config does — one manifest and one adapter per stage,
every row once — and the launch (two processes) must be part of the training stages'
fingerprints, so the same config run afterwards in one process retrains them.
"""

import json
from pathlib import Path

import pytest

from valign.runs import read_rows

from tests.run_helpers import complete_checkpoints, kill_when, run_to_end, start_run, steps_logged, write_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.model]

SFT_STEPS = 3


def _config(tmp_path: Path) -> Path:
    sft_rows = [{"id": f"s{i}", "prompt": f"Tell me fact {i} about honesty.", "completion": f"Fact {i}: honesty builds trust."} for i in range(8)]
    dpo_rows = [
        {"id": f"d{i}", "prompt": q, "chosen": "Be honest and keep your word.", "rejected": "Do whatever suits you."}
        for i, q in enumerate(["Should I keep a promise?", "May I lie to a friend?", "Should I return a lost wallet?", "May I cheat at cards?"])
    ]
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"name: mp\nruns_dir: {tmp_path / 'runs'}\nmodel: embedded\nstages: [respond, sft, pairs, dpo]\n"
        "respond:\n  prompts: demo\n  limit: 6\n  chunk: 6\n  gen: {max_new_tokens: 8}\n"
        f"sft:\n  rows: {write_jsonl(tmp_path / 'sft.jsonl', sft_rows)}\n  max_steps: {SFT_STEPS}\n  save_steps: 1\n"
        "  batch_size: 2\n  max_length: 64\n"
        "pairs:\n  chunk: 2\n  gen: {max_new_tokens: 8}\n"
        f"dpo:\n  rows: {write_jsonl(tmp_path / 'dpo.jsonl', dpo_rows)}\n  max_steps: 2\n  batch_size: 2\n  max_length: 64\n"
    )
    return cfg


def _manifests(run: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(run.glob("*/manifest.json"))}


def test_two_processes_killed_in_sft_resume_and_match_a_single_process_run(tmp_path):
    cfg = _config(tmp_path)
    run = tmp_path / "runs" / "mp"
    sft = run / "02-sft"

    # 1. Two processes, killed (the whole process group: launcher and both workers)
    #    once sft has written a checkpoint and before it finished.
    proc = start_run(cfg, tmp_path / "first.log", processes=2)
    more = "raise sft.max_steps so training outlasts the poll"
    kill_when(proc, tmp_path / "first.log", lambda: bool(complete_checkpoints(sft)), "a checkpoint in sft", more)
    k = complete_checkpoints(sft)[-1]
    assert k < SFT_STEPS, f"killed after the last step; {more}"
    assert not (sft / "manifest.json").exists()
    assert not list(run.rglob("*.tmp")), "no temp file of a torn manifest write is left"

    # 2. The same launch resumes: respond is done, sft trains only the steps after its
    #    checkpoint (the main process prints each step's loss).
    out = run_to_end(cfg, tmp_path / "second.log", processes=2)
    assert "01-respond: up to date, skipped" in out
    sft_part = out.split("✓ 02-sft:")[0]
    assert steps_logged(sft_part) == SFT_STEPS - k, f"sft trains only steps {k + 1}..{SFT_STEPS} again:\n{sft_part[-1500:]}"
    two = _manifests(run)
    assert sorted(two) == ["01-respond", "02-sft", "03-pairs", "04-dpo"]
    for stage in ("02-sft", "04-dpo"):
        assert two[stage]["launch"]["processes"] == 2, two[stage]["launch"]
        assert (run / stage / "adapter" / "adapter_model.safetensors").exists()
        assert not (run / stage / "checkpoints").exists()
    assert two["02-sft"]["train"]["resumed_from_step"] == k and two["02-sft"]["train"]["steps"] == SFT_STEPS
    assert [e["step"] for e in read_rows(sft / "train_log.jsonl") if "loss" in e] == list(range(1, SFT_STEPS + 1))
    # TRL caches precomputed reference log-probs per process: off with two, and said so.
    assert two["04-dpo"]["train"]["precompute_ref_log_probs"] is False
    assert two["04-dpo"]["train"]["precompute_ref_log_probs_off"] == "several processes"
    assert two["03-pairs"]["inputs"]["sft"] == two["02-sft"]["fingerprint"], "pairs sampled from the two-process sft"
    two_rows = {stage: [r["id"] for r in read_rows(run / stage / "rows.jsonl")] for stage in two}
    for stage, ids in two_rows.items():
        assert len(ids) == len(set(ids)), f"{stage}: no row written twice"
        assert two[stage]["counts"]["rows"] == len(ids), f"{stage}: the manifest counts the rows on disk"

    # 3. The same config in ONE process: the launch is part of the training stages'
    #    fingerprints, so sft and dpo train again, and pairs (which samples sft's model)
    #    runs again; respond does not. Row counts equal the two-process run's.
    out = run_to_end(cfg, tmp_path / "third.log")
    assert "01-respond: up to date, skipped" in out
    for stage in ("02-sft", "03-pairs", "04-dpo"):
        assert f"{stage}: up to date" not in out, f"{stage} was trained/sampled by two processes; one process must redo it"
    one = _manifests(run)
    assert one["02-sft"]["fingerprint"] != two["02-sft"]["fingerprint"]
    assert one["02-sft"]["launch"]["processes"] == 1 and one["04-dpo"]["train"]["precompute_ref_log_probs"] is True
    for stage in two:
        ids = [r["id"] for r in read_rows(run / stage / "rows.jsonl")]
        assert sorted(ids) == sorted(two_rows[stage]), f"{stage}: the same rows in one process as in two"
