"""valign against a real vLLM server: vLLM's CPU build from ``.venv-vllm`` serving the
embedded checkpoint, started once for the session (60-90 s on 2 cores) by the same
`VLLMServer` that ``make vllm-demo`` uses, in float32 so that its numbers can be held to
the local transformers backend's: greedy text equal, first-token log-probs within 1e-3
(measured differences are about 1e-5)."""

from __future__ import annotations

import math
from pathlib import Path

import httpx
import pytest

from valign.config import BackendOptions
from valign.models.registry import load_model
from valign.models.served_adapters import serve_stage_adapter
from valign.stages.base import ModelPool
from valign.types import GenConfig
from valign.vllm_server import VLLMServer

pytestmark = [pytest.mark.slow, pytest.mark.model]

ROOT = Path(__file__).resolve().parents[1]
LOGPROB_TOLERANCE = 1e-3  # float32 on both sides; vLLM's kernels sum in another order
PROMPTS = [
    [{"role": "user", "content": "Should I lie to my landlord?"}],
    [{"role": "user", "content": "Name a virtue and say why it matters."}],
    [{"role": "user", "content": "Is it ever right to break a promise?"}],
]
GREEDY = GenConfig(temperature=0.0, max_new_tokens=24, logprobs=5)


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory):
    """One vLLM server for the session on a free 127.0.0.1 port; stopped (process group
    and all) at the end. A missing .venv-vllm fails here, with the command to make it."""
    from valign.models.embedded import embedded_dir

    log = tmp_path_factory.mktemp("vllm") / "server.log"
    server = VLLMServer(str(embedded_dir()), "smol", python=ROOT / ".venv-vllm" / "bin" / "python", dtype="float32", kv_cache_gib=1, log=log)
    with server:
        server.wait(timeout=180)
        yield server
    assert server.process is not None and server.process.poll() is not None


def _close(local, remote) -> None:
    """Same greedy text, and first-token log-probs within the tolerance."""
    for mine, theirs in zip(local, remote):
        assert theirs.text == mine.text
        assert mine.logprobs[0].token == theirs.logprobs[0].token
        assert abs(mine.logprobs[0].logprob - theirs.logprobs[0].logprob) < LOGPROB_TOLERANCE


def test_generation_with_concurrency_and_seeds(vllm_server, embedded_fp32):
    served = load_model(vllm_server.spec, concurrency=8)
    _close(embedded_fp32.generate(PROMPTS, GREEDY), served.generate(PROMPTS, GREEDY))
    convs = [[{"role": "user", "content": f"Write a line about the number {i}."}] for i in range(8)]
    sampled = GenConfig(temperature=1.0, max_new_tokens=16, seed=7, n=2)
    first = served.generate(convs, sampled)
    assert [(c.index, c.sample) for c in first] == [(i, j) for i in range(8) for j in range(2)]
    assert [c.text for c in served.generate(convs, sampled)] == [c.text for c in first], "seeded samples repeat"
    assert len({c.text for c in first}) > 8, "the two samples of a conversation differ"
    assert served.attempts == len(PROMPTS) + 2 * len(first), "no cache here: every sample was a request"


def test_choice_probs_through_logprobs(vllm_server, embedded_fp32):
    convs = [
        [{"role": "user", "content": "Is 2+2=4? Answer A for yes or B for no."}],
        [{"role": "user", "content": "Is lying to a friend kind? Answer A for yes or B for no."}],
    ]
    served = load_model(vllm_server.spec)
    for prefix in ("", "The answer is ("):  # the prefix goes over HTTP as continue_final_message
        remote = served.choice_probs(convs, ["A", "B"], answer_prefix=prefix)
        local = embedded_fp32.choice_probs(convs, ["A", "B"], answer_prefix=prefix)
        for r, l in zip(remote, local):
            assert math.isclose(sum(r.values()), 1.0) and abs(r["A"] - l["A"]) < 1e-3


def test_sft_adapter_hot_loaded_samples_like_run_sft_locally(vllm_server, sft_stage):
    # What a run does: its ModelPool resolves run:<sft> with the run's backend options.
    pool = ModelPool(None, BackendOptions(adapters_on=vllm_server.spec).for_spec)
    served = pool.get(f"run:{sft_stage}")
    assert served.name.startswith("openai:") and served.name.endswith(f"@{vllm_server.url}")
    local = load_model(f"run:{sft_stage}", dtype="float32")  # the server computes in fp32 too
    _close(local.generate(PROMPTS, GREEDY), served.generate(PROMPTS, GREEDY))
    base = load_model(vllm_server.spec).generate(PROMPTS[:1], GREEDY)[0]
    assert served.generate(PROMPTS[:1], GREEDY)[0].text != base.text, "the adapter is applied, not the bare base"


def test_a_resumed_run_does_not_load_the_adapter_twice(vllm_server, sft_stage, tmp_path):
    # A stage of its own (another run's folder), so the count starts at zero here.
    import shutil

    stage = tmp_path / "resumed-run" / "03-sft"
    shutil.copytree(sft_stage, stage)
    first = serve_stage_adapter(stage, stage / "adapter", vllm_server.spec)
    second = serve_stage_adapter(stage, stage / "adapter", vllm_server.spec)  # what a resumed run's new process does
    assert first.loaded_on == [vllm_server.url] and second.loaded_on == [] and second.already_on == [vllm_server.url]
    assert load_model(f"run:{stage}", adapters_on=vllm_server.spec).name == first.spec
    listed = [m["id"] for m in httpx.get(f"{vllm_server.url}/models").json()["data"]]
    assert listed.count(first.name) == 1
    log = vllm_server.log.read_text()
    posted = [line for line in log.splitlines() if "Loaded new LoRA adapter" in line and f"'{first.name}'" in line]
    assert len(posted) == 1, "vLLM's log shows one load of this adapter"


def test_peer_driver_counts_the_tokens_of_real_completions(vllm_server):
    # `valign bench generate --peers`' request driver, on a short batch: every request in
    # flight at once, and the engine's own completion-token counts summed (long-answer
    # prompts, so each one runs to its budget).
    from valign.bench import bench_prompts
    from valign.peers import drive

    convs = bench_prompts(6)
    run = drive(vllm_server.url, vllm_server.served_name, convs, max_tokens=8, concurrency=3)
    assert run.requests == 6 and run.peak_in_flight == 3
    assert run.finish_reasons == ["length"] * 6 and run.per_request == [8] * 6 and run.tokens == 48
    assert run.seconds > 0 and run.tok_per_s == run.tokens / run.seconds


def test_grpo_samples_on_the_server_with_its_adapter_as_it_trains(vllm_server, tmp_path):
    """grpo with ``sampler: served``: after each step the adapter goes to the server (the
    previous one unloaded), answers are sampled there as token ids, and training goes on."""
    import json

    from tests.run_helpers import run_to_end, write_jsonl

    write_jsonl(tmp_path / "prompts.jsonl", [{"id": "p", "prompt": "How do I make a cup of tea?", "kind": "benign"}])
    (tmp_path / "rewards.py").write_text("def length(prompts, completions, **kwargs):\n    return [len(c[-1]['content']) / 100 for c in completions]\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"name: served\nruns_dir: {tmp_path / 'runs'}\nmodel: embedded\nstages: [respond, grpo]\n"
        f"backends: {{adapters_on: '{vllm_server.spec}'}}\n"
        "respond:\n  prompts: prompts.jsonl\n  gen: {max_new_tokens: 8}\n"
        "grpo:\n  sampler: served\n  max_steps: 2\n  batch_size: 4\n  num_generations: 4\n  max_completion_length: 8\n"
        "  save_steps: 100\n  rewards: [{kind: python, function: rewards.py:length}]\n"
    )
    run_to_end(cfg, tmp_path / "run.log")
    stage = tmp_path / "runs" / "served" / "02-grpo"
    manifest = json.loads((stage / "manifest.json").read_text())
    assert manifest["sampler"]["where"] == "served" and manifest["sampler"]["adapter_loads"] == 2
    assert manifest["train"]["steps"] == 2 and all(0 < n <= 8 for n in manifest["train"]["completion_length"])
    listed = [m["id"] for m in httpx.get(f"{vllm_server.url}/models").json()["data"]]
    assert not any("02-grpo" in name for name in listed), f"every step's adapter is unloaded when it is replaced or done: {listed}"
    assert not (stage / "sampling").exists(), "the sampling copies go; the trained adapter stays"
