"""Start `valign run` (in one process or under `accelerate launch`), kill it at a chosen
moment, run it again, and check what a finished training stage left behind."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from valign.runs import read_rows

#
# Each test below starts `valign run` in its own process group, watches the stage folder
# from here, kills the whole group with SIGKILL at the chosen moment and runs the same
# command again. The child imports this worktree's code (PYTHONPATH) and writes its
# output unbuffered into one file, so the trainer's per-step log lines ({'loss': …},
# printed on stdout) and the pipeline's "✓ <stage>" lines (stderr) keep their order.

SRC = Path(__file__).resolve().parents[1] / "src"
CPU_DDP = Path(__file__).resolve().parents[1] / "configs" / "accelerate" / "cpu-ddp.yaml"
POLL = 0.2  # seconds between looks at the run folder
TIMEOUT = 300  # seconds a run may take to reach the kill point (the machine may be busy)


def start_run(cfg: Path, log: Path, processes: int = 1) -> subprocess.Popen:
    """`valign run CFG` in its own process group; with ``processes`` > 1, under
    `accelerate launch` with the shipped two-process CPU config (torchrun, gloo)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])), "PYTHONUNBUFFERED": "1"}
    launcher = [sys.executable, "-m", "valign.cli"]
    if processes > 1:
        assert processes == 2, "configs/accelerate/cpu-ddp.yaml starts two processes"
        launcher = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file", str(CPU_DDP), "-m", "valign.cli"]
    out = open(log, "w")
    proc = subprocess.Popen([*launcher, "run", str(cfg)], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    out.close()  # the child holds its own copy
    return proc


def kill_all(proc: subprocess.Popen) -> None:
    """SIGKILL the run and every process it started, as a crash of the machine would.

    torchrun starts its workers in sessions of their own, so killing the launcher's
    process group alone leaves them running on (they would finish the stage behind the
    test's back); they are found as the launcher's descendants and killed too."""
    import psutil

    try:
        descendants = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    for p in descendants:
        try:
            p.suspend()  # freeze first, so none writes while the others are being killed
        except psutil.NoSuchProcess:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for p in descendants:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(descendants, timeout=30)


def run_to_end(cfg: Path, log: Path, processes: int = 1) -> str:
    """A whole run to its end; returns its output."""
    proc = start_run(cfg, log, processes)
    try:
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            kill_all(proc)
    text = log.read_text()
    assert proc.returncode == 0, text[-1500:]
    return text


def kill_when(proc: subprocess.Popen, log: Path, ready, what: str, more_work: str, poll: float = POLL) -> None:
    """Poll until ``ready()``, then SIGKILL the run's process group. A run that ends first
    fails the test: it would prove nothing about resuming."""
    deadline = time.time() + TIMEOUT
    try:
        while not ready():
            if proc.poll() is not None:
                tail = log.read_text()[-800:]
                pytest.fail(f"the run ended (exit {proc.returncode}) before {what}, so nothing was killed; {more_work}.\n{tail}")
            if time.time() > deadline:
                pytest.fail(f"no {what} after {TIMEOUT}s; the machine is too busy or the run is stuck.\n{log.read_text()[-800:]}")
            time.sleep(poll)
    finally:
        if proc.poll() is None:
            kill_all(proc)
        proc.wait()
    tail = log.read_text()[-800:]
    assert proc.returncode == -signal.SIGKILL, f"the run ended (exit {proc.returncode}) before the kill; {more_work}.\n{tail}"


def complete_checkpoints(stage: Path) -> list[int]:
    """Steps of the checkpoints the Trainer finished writing (trainer_state.json comes last)."""
    steps = []
    for folder in (stage / "checkpoints").glob("checkpoint-*"):
        try:
            json.loads((folder / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        steps.append(int(folder.name.split("-")[1]))
    return sorted(steps)


def steps_logged(output: str) -> int:
    """Training steps a run printed a loss for (the Trainer prints one line per logged step)."""
    return sum(line.startswith("{'loss'") for line in output.splitlines())


def check_trained(stage: Path, max_steps: int, resumed_from: int, rows: int) -> dict:
    """A finished training stage that resumed after step ``resumed_from``: each step once, all rows once."""
    manifest = json.loads((stage / "manifest.json").read_text())
    train = manifest["train"]
    assert train["resumed_from_checkpoint"] is True and train["resumed_from_step"] == resumed_from, train
    assert train["steps"] == max_steps, "the resumed run stops at max_steps, counting the steps before the kill"
    logged = [e["step"] for e in read_rows(stage / "train_log.jsonl") if "loss" in e]
    assert logged == list(range(1, max_steps + 1)), f"each step's loss is logged once: {logged}"
    assert len(train["loss"]) == max_steps
    ids = [r["id"] for r in read_rows(stage / "rows.jsonl")]
    assert len(ids) == len(set(ids)) == rows, "no duplicate and no missing training row"
    assert (stage / "adapter" / "adapter_config.json").exists() and (stage / "adapter" / "adapter_model.safetensors").exists()
    assert not (stage / "checkpoints").exists(), "checkpoints only served resuming; the finished stage removes them"
    return manifest


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
