"""The local backends on the real embedded model: generation, the fast decoder's
exactness, seeding, choice_probs, LoRA adapters through hf: and run:, clear errors."""

import json

import pytest
import torch

from valign.errors import ModelError
from valign.models.registry import load_model
from valign.types import GenConfig

pytestmark = [pytest.mark.slow, pytest.mark.model]

Q = [{"role": "user", "content": "Name three colours."}]
R = [{"role": "user", "content": "Write one sentence about the moon and the stars tonight."}]


def test_generate_groups_samples_and_counts_tokens(embedded):
    out = embedded.generate([Q, R], GenConfig(max_new_tokens=12, seed=0, n=2))
    assert [(c.index, c.sample) for c in out] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for c in out:
        assert c.text and 1 <= c.completion_tokens <= 12 and c.prompt_tokens > 5
        assert c.finish_reason in ("stop", "length") and c.model == "embedded"
    assert out[0].text != out[1].text or out[2].text != out[3].text, "samples differ"


def test_seeded_sample_does_not_depend_on_its_batch(embedded_fp32):
    embedded = embedded_fp32  # in bf16 a batch-mate can change how a matmul rounds, and so a near-tie
    cfg = GenConfig(max_new_tokens=16, seed=5, temperature=0.9)
    alone = embedded.generate([Q], cfg)[0].text
    with_others = embedded.generate([R, Q, R], cfg)[1].text
    assert alone == with_others


def test_fast_decoder_matches_transformers(embedded_fp32):
    embedded = embedded_fp32
    ids = [embedded.render(Q), embedded.render(R)]
    fast = embedded.decoder.logits_last(ids)
    with torch.inference_mode():
        for i, p in enumerate(ids):
            ref = embedded.model(torch.tensor([p])).logits[0, -1]
            assert torch.allclose(fast[i], ref, atol=1e-3), "same logits as transformers"
    greedy = embedded.generate([Q, R], GenConfig(temperature=0, max_new_tokens=20))
    with torch.inference_mode():
        for p, comp in zip(ids, greedy):
            ref = embedded.model.generate(torch.tensor([p]), max_new_tokens=20, do_sample=False)
            text = embedded.tokenizer.decode(ref[0, len(p):], skip_special_tokens=True)
            assert comp.text == text, "greedy decoding equals transformers' generate"


def test_logprobs(embedded):
    c = embedded.generate([Q], GenConfig(max_new_tokens=5, temperature=0, logprobs=3))[0]
    assert c.logprobs is not None and len(c.logprobs) == c.completion_tokens
    for tl in c.logprobs:
        assert len(tl.top) == 3 and tl.logprob <= 0
        assert tl.top[0][1] >= tl.top[1][1]
        assert abs(tl.logprob - tl.top[0][1]) < 1e-4, "greedy picks the top token"


@pytest.mark.parametrize("letter, other", [("A", "B"), ("B", "A")])
def test_choice_probs_sum_to_one_and_rank_the_obvious_answer(embedded, letter, other):
    conv = [{"role": "user", "content": f"Reply with the single letter {letter}."}]
    p = embedded.choice_probs([conv], ["A", "B"])[0]
    assert abs(sum(p.values()) - 1) < 1e-6
    assert p[letter] > p[other]


def test_choice_probs_rejects_options_sharing_a_first_token(embedded):
    with pytest.raises(ModelError, match="start with the same token"):
        embedded.choice_probs([Q], ["Absolutely", "Absolutely not"])


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    """A real PEFT LoRA adapter on the embedded checkpoint, with non-zero weights."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from valign.models.embedded import embedded_dir

    base = AutoModelForCausalLM.from_pretrained(embedded_dir())
    torch.manual_seed(0)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    out = tmp_path_factory.mktemp("stage") / "adapter"
    peft_model.save_pretrained(out)
    return out


def test_hf_backend_with_lora_adapter(embedded, adapter_dir):
    from valign.models.embedded import embedded_dir

    tuned = load_model(f"hf:{embedded_dir()}+{adapter_dir}")
    assert "#" in tuned.name and str(adapter_dir) in tuned.name, "the adapter's hash is part of the cache key"
    ids = tuned.render(Q)
    assert not torch.allclose(tuned.decoder.logits_last([ids]), embedded.decoder.logits_last([ids]), atol=1e-3)
    assert tuned.generate([Q], GenConfig(max_new_tokens=8, seed=0))[0].completion_tokens > 0


def test_run_spec_loads_a_stage_model(adapter_dir):
    stage = adapter_dir.parent
    (stage / "manifest.json").write_text(json.dumps({"fingerprint": "x", "model": {"base": "embedded", "adapter": "adapter"}}))
    model = load_model(f"run:{stage}")
    assert model.name.startswith("embedded+") and model.generate([Q], GenConfig(max_new_tokens=6))[0].text


def test_clear_errors(tmp_path):
    with pytest.raises(ModelError, match="unknown model spec"):
        load_model("gpt5")
    with pytest.raises(ModelError, match="could not load model"):
        load_model(f"hf:{tmp_path / 'nothing-here'}")
    with pytest.raises(ModelError, match="has no manifest.json"):
        load_model(f"run:{tmp_path}")
    with pytest.raises(ModelError, match="no LoRA adapter"):
        load_model(f"embedded+{tmp_path}")
    from valign.models.hf import four_bit_load_kwargs

    # bitsandbytes runs NF4 on a CPU too: 4-bit loading is no longer refused without CUDA.
    kwargs = four_bit_load_kwargs()
    assert kwargs["quantization_config"].bnb_4bit_quant_type == "nf4"
    assert kwargs["device_map"] == ("auto" if torch.cuda.is_available() else "cpu")


def test_choice_probs_with_a_prefix_ending_in_a_space(embedded):
    """'The answer is ' + 'A' tokenises as '…is' + ' A': the space must not be scored twice."""
    conv = [{"role": "user", "content": "Reply with the single letter A."}]
    spaced = embedded.choice_probs([conv], ["A", "B"], answer_prefix="The answer is ")[0]
    spelled = embedded.choice_probs([conv], [" A", " B"], answer_prefix="The answer is")[0]
    assert abs(sum(spaced.values()) - 1) < 1e-6
    # Both read the ' A' / ' B' tokens right after "is", so they agree.
    assert spaced["A"] == pytest.approx(spelled[" A"], abs=1e-6) and spaced["A"] > spaced["B"]
