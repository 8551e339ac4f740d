"""The shared training module: precision and launch resolution, the strategy said out
loud, writer-only row logs, and bf16 training on this CPU."""

import json
import os

import pytest

from valign.errors import ValignError
from valign.runs import RowLog, StageDir
from valign.stages.training import TrainingConfig, resolve_precision, trainer_args, training_launch


def test_precision_follows_the_launcher_and_refuses_a_silent_mix(monkeypatch, tmp_path):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert resolve_precision("auto") == "fp32", "a CPU without a launcher trains fp32"
    assert resolve_precision("bf16") == "bf16"
    assert trainer_args(TrainingConfig(precision="bf16"), tmp_path, 0)["bf16"] is True
    assert trainer_args(TrainingConfig(), tmp_path, 0)["bf16"] is False

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # accelerate launch --mixed_precision bf16
    assert resolve_precision("auto") == "bf16"
    assert trainer_args(TrainingConfig(), tmp_path, 0)["bf16"] is True, "the Trainer agrees with the launcher (DeepSpeed's check)"
    with pytest.raises(ValignError, match=r"dpo\.precision is fp32 but accelerate was launched with mixed precision bf16"):
        resolve_precision("fp32", "dpo")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    with pytest.raises(ValignError, match="fp16"):
        resolve_precision("auto")


def test_the_launch_counts_processes_and_says_when_fsdp_falls_back(monkeypatch):
    for var in ("WORLD_SIZE", "ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_MIXED_PRECISION"):
        monkeypatch.delenv(var, raising=False)
    one = training_launch(TrainingConfig(qlora=True))
    assert one == {"processes": 1, "precision": "fp32", "quantization": "nf4", "strategy": "single"}
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert training_launch(TrainingConfig())["processes"] == 2
    assert training_launch(TrainingConfig())["strategy"] == "ddp"
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    import torch

    if not torch.cuda.is_available():
        assert training_launch(TrainingConfig())["strategy"].startswith("ddp (FSDP needs GPUs")


def test_the_launch_is_part_of_a_training_stage_fingerprint(monkeypatch, tmp_path):
    from valign.pipeline import stage_fingerprints

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    rows = tmp_path / "r.jsonl"
    rows.write_text(json.dumps({"prompt": "p", "completion": "c"}) + "\n")
    cfg = load_config_text(tmp_path, f"name: f\nruns_dir: {tmp_path}\nstages: [respond, sft]\nsft: {{rows: {rows}}}\n")
    one = stage_fingerprints(cfg)
    monkeypatch.setenv("WORLD_SIZE", "2")
    two = stage_fingerprints(cfg)
    assert one["respond"] == two["respond"], "generation does not depend on the training launch"
    assert one["sft"] != two["sft"], "two processes train another model"
    monkeypatch.setenv("WORLD_SIZE", "1")
    bf16 = stage_fingerprints(load_config_text(tmp_path, f"name: f\nruns_dir: {tmp_path}\nstages: [respond, sft]\nsft: {{rows: {rows}, precision: bf16}}\n"))
    assert bf16["sft"] != one["sft"]


def load_config_text(tmp_path, text: str):
    from valign.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text(text)
    return load_config(path)


def test_a_reading_row_log_neither_writes_nor_repairs(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b"')  # a torn tail, as the writer left it when killed
    reader = RowLog(path, writer=False)
    assert reader.ids == {"a"} and path.read_text().endswith('"b"'), "only the writer cuts a torn tail"
    assert reader.append([{"id": "c"}]) == 1 and "c" in reader.ids and len(reader) == 2
    assert '"c"' not in path.read_text(), "a process that is not the writer writes nothing"


def test_manifest_temp_files_are_named_per_process(tmp_path, monkeypatch):
    import valign.runs as runs

    seen = []
    real_replace = os.replace
    monkeypatch.setattr(runs.os, "replace", lambda a, b: (seen.append(str(a)), real_replace(a, b))[1])
    StageDir(tmp_path / "s").path.mkdir()
    StageDir(tmp_path / "s").finish("fp", {})
    assert seen and seen[0].endswith(f"manifest.json.{os.getpid()}.tmp"), seen


@pytest.mark.slow
def test_bf16_training_on_this_cpu(tmp_path):
    from valign.pipeline import run_pipeline

    rows = tmp_path / "r.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"Name virtue {i}.", "completion": "Honesty."}) + "\n" for i in range(2)))
    cfg = load_config_text(tmp_path, f"name: b\nruns_dir: {tmp_path}\nstages: [sft]\n"
                           f"sft: {{rows: {rows}, precision: bf16, max_steps: 2, batch_size: 2, max_length: 48}}\n")
    run_pipeline(cfg)
    manifest = json.loads((tmp_path / "b" / "01-sft" / "manifest.json").read_text())
    assert manifest["launch"]["precision"] == "bf16"
    assert len(manifest["train"]["loss"]) == 2 and all(0 < x < 20 for x in manifest["train"]["loss"])


@pytest.mark.slow
def test_a_stage_that_fails_before_any_work_gets_its_finished_predecessor_back(tmp_path):
    """respond finished on the embedded model; re-pointed at a server that is down, it
    fails on its first request — before any row — and the finished stage is put back."""
    from valign.errors import ModelError
    from valign.pipeline import run_pipeline

    from tests.survey_helpers import free_port

    text = f"name: r\nruns_dir: {tmp_path}\nstages: [respond]\nrespond: {{prompts: demo, limit: 2, gen: {{max_new_tokens: 4}}}}\n"
    run_pipeline(load_config_text(tmp_path, text))
    stage = tmp_path / "r" / "01-respond"
    before = {p.name: p.read_bytes() for p in stage.iterdir()}
    assert {"rows.jsonl", "manifest.json"} <= set(before)

    down = text.replace("stages:", f"model: openai:m@http://127.0.0.1:{free_port()}/v1\nbackends: {{openai: {{max_retries: 0}}}}\nstages:")
    with pytest.raises(ModelError):
        run_pipeline(load_config_text(tmp_path, down))
    assert {p.name: p.read_bytes() for p in stage.iterdir()} == before, "the refusal deleted nothing"
    assert not list(tmp_path.glob("r/.*")), "nothing is left set aside"
    from valign.runs import StageDir

    assert StageDir(stage).manifest()["fingerprint"] == json.loads(before["manifest.json"])["fingerprint"]
