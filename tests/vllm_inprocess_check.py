"""The ``vllm:`` backend in-process, run by tests/test_vllm_inprocess.py with vLLM's own
interpreter (``.venv-vllm/bin/python``, ``PYTHONPATH=src``): vLLM pins an older
transformers than valign's environment, so it cannot be imported in the test process.

    .venv-vllm/bin/python tests/vllm_inprocess_check.py <finished sft stage folder> <results.json>

Asserts what it can on its own and writes its results as JSON for the test to compare
with the transformers backend (which only the main environment has).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path


def main(sft_stage: str, out: str) -> None:
    from valign.models.embedded import embedded_dir
    from valign.models.registry import load_model
    from valign.types import GenConfig

    # float32 so the numbers match the local backend's; one step per prompt (see vllm_server.py).
    engine = {"dtype": "float32", "max_model_len": 1024, "enable_lora": True, "max_lora_rank": 16}
    base = load_model(f"vllm:{embedded_dir()}", **engine)
    sft = load_model(f"run:{sft_stage}", adapters_on="vllm", **engine)
    assert sft.name.startswith(f"vllm:{embedded_dir()}+") and "#" in sft.name, sft.name
    assert sft.llm is base.llm, "the base and its adapter share one engine"

    prompts = [
        [{"role": "user", "content": "Should I lie to my landlord?"}],
        [{"role": "user", "content": "Name a virtue and say why it matters."}],
    ]
    greedy = GenConfig(temperature=0.0, max_new_tokens=24, logprobs=3)
    base_out, sft_out = base.generate(prompts, greedy), sft.generate(prompts, greedy)
    assert base_out[0].text != sft_out[0].text, "the adapter changes the answer"
    assert base.generate(prompts, greedy)[0].text == base_out[0].text, "greedy repeats"

    sampled = GenConfig(temperature=1.0, max_new_tokens=16, seed=3, n=3)
    first = base.generate(prompts, sampled)
    assert [(c.index, c.sample) for c in first] == [(i, j) for i in range(2) for j in range(3)]
    assert [c.text for c in base.generate(prompts, sampled)] == [c.text for c in first], "seeded samples repeat"
    assert len({c.text for c in first}) == 6, "n samples differ"
    other = base.generate(prompts, GenConfig(temperature=1.0, max_new_tokens=16, seed=4, n=3))
    assert [c.text for c in other] != [c.text for c in first], "another seed, other samples"
    hot = base.generate(prompts[:1], GenConfig(temperature=1.5, max_new_tokens=16, seed=3, n=3))
    assert [c.text for c in hot] != [c.text for c in first[:3]], "the temperature is applied"

    ask = [[{"role": "user", "content": "Is 2+2=4? Answer A for yes or B for no."}]]
    probs = {
        "base": base.choice_probs(ask, ["A", "B"], answer_prefix="The answer is (")[0],
        "base_no_prefix": base.choice_probs(ask, ["A", "B"])[0],
        "sft": sft.choice_probs(ask, ["A", "B"], answer_prefix="The answer is (")[0],
    }
    for p in probs.values():
        assert math.isclose(sum(p.values()), 1.0), p

    Path(out).write_text(json.dumps({
        "base_text": [c.text for c in base_out],
        "sft_text": [c.text for c in sft_out],
        "base_first_logprob": base_out[0].logprobs[0].logprob,
        "sft_first_logprob": sft_out[0].logprobs[0].logprob,
        "probs": probs,
    }))


if __name__ == "__main__":  # vLLM spawns its engine process: the guard is required
    main(sys.argv[1], sys.argv[2])
