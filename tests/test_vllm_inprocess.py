"""The ``vllm:`` backend in-process, for real: tests/vllm_inprocess_check.py runs in vLLM's
own environment (``.venv-vllm``, which ``make test`` installs) on the embedded
checkpoint and the adapter the sft stage trained, and its numbers are held here to the
transformers backend's (both float32): greedy text equal, log-probs within 1e-3."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from valign.models.registry import load_model
from valign.types import GenConfig

pytestmark = [pytest.mark.slow, pytest.mark.model]

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-3


def test_vllm_in_process_generates_scores_and_applies_adapters(sft_stage, embedded_fp32, tmp_path):
    python = ROOT / ".venv-vllm" / "bin" / "python"
    assert python.exists(), "vLLM's environment is missing: run `make vllm-env`"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), VLLM_CPU_KVCACHE_SPACE="1")
    done = subprocess.run(
        [str(python), str(ROOT / "tests" / "vllm_inprocess_check.py"), str(sft_stage), str(tmp_path / "got.json")],
        capture_output=True, text=True, timeout=600, env=env, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads((tmp_path / "got.json").read_text())

    prompts = [
        [{"role": "user", "content": "Should I lie to my landlord?"}],
        [{"role": "user", "content": "Name a virtue and say why it matters."}],
    ]
    greedy = GenConfig(temperature=0.0, max_new_tokens=24, logprobs=3)
    # valign's engine in fp32, the mode that equals transformers' numbers (as vLLM's does here).
    base = embedded_fp32.generate(prompts, greedy)
    sft = load_model(f"run:{sft_stage}", dtype="float32").generate(prompts, greedy)
    assert got["base_text"] == [c.text for c in base]
    assert got["sft_text"] == [c.text for c in sft], "LoRARequest applies the adapter as PEFT does"
    assert abs(got["base_first_logprob"] - base[0].logprobs[0].logprob) < TOLERANCE
    assert abs(got["sft_first_logprob"] - sft[0].logprobs[0].logprob) < TOLERANCE
    ask = [[{"role": "user", "content": "Is 2+2=4? Answer A for yes or B for no."}]]
    local = embedded_fp32.choice_probs(ask, ["A", "B"], answer_prefix="The answer is (")[0]
    assert abs(got["probs"]["base"]["A"] - local["A"]) < TOLERANCE
