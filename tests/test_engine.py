"""valign's engine on the real embedded model: bf16 against fp32, prefix caching,
continuous batching, and what the manifest records."""

import pytest
import torch

from valign.hardware import cpu_flags
from valign.models.llama_decode import GROW_COLUMNS, LlamaDecoder, SamplingRow, _inverse_cdf
from valign.models.prefix_cache import BLOCK
from valign.models.registry import load_model
from valign.types import GenConfig

pytestmark = [pytest.mark.slow, pytest.mark.model]

TOPICS = ["the moon", "honesty", "a lost dog", "rivers", "chess", "winter", "bread", "kindness"]
CONVS = [[{"role": "user", "content": f"Write two sentences about {t}."}] for t in TOPICS]
# A long shared prefix, as the revise stage's few-shot examples are.
FEW_SHOT = [
    {"role": "user", "content": "Here is an example of a careful answer. " * 12},
    {"role": "assistant", "content": "I understand, and I will answer carefully and honestly. " * 6},
]


@pytest.fixture(scope="module")
def bf16():
    return load_model("embedded", dtype="bfloat16")


@pytest.fixture
def fresh_fp32(embedded_fp32):
    """A decoder of its own (an empty prefix cache) on the fp32 embedded weights."""
    return LlamaDecoder(embedded_fp32.model, dtype=torch.float32)


def test_dtype_auto_follows_the_cpu(monkeypatch):
    monkeypatch.setenv("VALIGN_CPU_BF16", "0")
    assert load_model("embedded").dtype == "float32"
    monkeypatch.setenv("VALIGN_CPU_BF16", "1")
    model = load_model("embedded")
    assert model.dtype == "bfloat16" and model.decoder.dtype == torch.bfloat16
    assert model.decoder.layers[0].qkv_w.dtype == torch.bfloat16
    with pytest.raises(Exception, match="dtype 'float16' is not one of"):
        load_model("embedded", dtype="float16")


def test_bf16_choice_probs_within_tolerance_of_fp32(embedded_fp32, bf16):
    """Stated tolerance: 0.03 on each option probability (measured: ≤ 0.012)."""
    convs = [[{"role": "user", "content": f"Reply with the single letter {x}. {extra}"}] for x in "AB" for extra in ("", "Now.", "Please answer.")]
    exact = embedded_fp32.choice_probs(convs, ["A", "B"])
    fast = bf16.choice_probs(convs, ["A", "B"])
    for e, f in zip(exact, fast):
        assert abs(e["A"] - f["A"]) < 0.03


def test_bf16_greedy_text_close_to_fp32(embedded_fp32, bf16):
    """Stated tolerance: at least 6 of 8 prompts give the same first 8 greedy tokens
    (rounding can flip a near-tie; after a flip the texts part ways)."""
    cfg = GenConfig(temperature=0, max_new_tokens=8)
    exact = [c.text for c in embedded_fp32.generate(CONVS, cfg)]
    fast = [c.text for c in bf16.generate(CONVS, cfg)]
    assert sum(a == b for a, b in zip(exact, fast)) >= 6, list(zip(exact, fast))
    # Pre-packed for oneDNN where torch and the CPU have its bf16 path (what was measured
    # above); elsewhere (an AVX2-only CPU) the same bf16 weights run unpacked, as here.
    flags = cpu_flags()
    onednn_bf16 = {"avx512bw", "avx512vl", "avx512dq"} <= flags or "avx_ne_convert" in flags
    assert bf16.decoder.packed == (torch.backends.mkldnn.is_available() and onednn_bf16)


def test_the_kv_cache_grows_while_decoding_and_every_step_equals_a_fresh_prefill(embedded_fp32):
    """Decoding attends over whole GROW_COLUMNS blocks (the unwritten columns masked) and
    grows them as the requests lengthen: the log-prob of every 8th decoded token equals
    what a prefill of the prompt and the tokens before it gives."""
    # The long prompt takes slot 0, grows the cache, and finishes first: the last slot
    # then moves into its hole, in the grown cache.
    prompts = [embedded_fp32.render(FEW_SHOT + CONVS[0]), embedded_fp32.render(CONVS[1]), embedded_fp32.render(CONVS[2])]
    budgets = [GROW_COLUMNS + 5, 3 * GROW_COLUMNS, 2 * GROW_COLUMNS]
    dec = LlamaDecoder(embedded_fp32.model, dtype=torch.float32, prefix_cache_mb=0)
    widths, order = [], []
    reserve, collect = dec._reserve, dec._collect

    def reserving(slots, rows, columns):
        out = reserve(slots, rows, columns)
        widths.append(out.columns)
        return out

    def collecting(slots, *args):
        done = collect(slots, *args)
        order.extend(f.row for f in done)
        return done

    dec._reserve, dec._collect = reserving, collecting  # type: ignore[method-assign]
    out = dec.generate(prompts, [SamplingRow(0.9, 1.0, b, seed=i) for i, b in enumerate(budgets)], set(), top_logprobs=1)
    assert [len(t) for t in out.tokens] == budgets and order[0] == 0
    assert len(widths) >= 2 and all(w % GROW_COLUMNS == 0 for w in widths) and widths == sorted(widths), widths
    assert widths[-1] >= len(prompts[0]) + budgets[0] - 1
    for p, toks, lps in zip(prompts, out.tokens, out.logprobs):
        for k in range(1, len(toks), 8):
            logp = torch.log_softmax(dec.logits_last([p + toks[:k]])[0], -1)[toks[k]]
            assert abs(float(logp) - lps[k][1]) < 1e-3, k


def test_inverse_cdf_sampling_draws_what_a_full_cumulative_sum_draws():
    torch.manual_seed(0)
    for vocab in (49152, 1000, 3):
        probs = torch.softmax(3 * torch.randn(32, vocab), -1) * torch.rand(32, 1)  # unnormalised, as sampled
        u = torch.rand(32)
        cum = probs.cumsum(-1)
        full = torch.searchsorted(cum, (u * cum[:, -1])[:, None], right=True).squeeze(1).clamp_max(vocab - 1)
        assert torch.equal(_inverse_cdf(probs, u), full)
    one_hot = torch.zeros(2, 49152)
    one_hot[0, 5] = one_hot[1, 49151] = 1.0
    assert _inverse_cdf(one_hot, torch.tensor([0.0, 0.0])).tolist() == [5, 49151], "a token of zero mass is never drawn"


def test_bf16_is_cached_apart_from_fp32(embedded_fp32, bf16):
    from valign.models.base import GenRequest

    req = GenRequest(0, 0, (("user", "hi"),), None)
    assert bf16.name == embedded_fp32.name == "embedded"
    assert bf16._cache_key(req, GenConfig()) != embedded_fp32._cache_key(req, GenConfig())


def test_prefix_cache_gives_the_same_logits_and_computes_a_shared_prefix_once(embedded_fp32, fresh_fp32):
    prompts = [embedded_fp32.render(FEW_SHOT + c) for c in CONVS]
    cold = LlamaDecoder(embedded_fp32.model, dtype=torch.float32, prefix_cache_mb=0).logits_last(prompts)
    warm = fresh_fp32.logits_last(prompts)
    assert torch.allclose(warm, cold, atol=1e-3), "caching changes no logit"
    stats = fresh_fp32.cache.stats
    total = sum(len(p) for p in prompts)
    shared = min(len(p) for p in prompts) - 24  # the few-shot turns, far more than a block
    assert stats.prompt_tokens == total
    assert stats.computed_tokens <= total - (len(prompts) - 1) * (shared // BLOCK - 1) * BLOCK, "shared prefix once"
    # A second call finds every full block in the cache and computes only the tails.
    stats.reset()
    again = fresh_fp32.logits_last(prompts)
    assert torch.allclose(again, cold, atol=1e-3)
    assert stats.computed_tokens <= len(prompts) * BLOCK


def test_second_turn_reuses_the_first_turns_answer(embedded_fp32, fresh_fp32):
    """Generated tokens' keys and values are cached as well: MT-Bench's second turn
    quotes the first turn's answer and computes little more than the new question."""
    conv = [{"role": "user", "content": "Describe a lighthouse in detail."}]
    first = embedded_fp32.render(conv)
    out = fresh_fp32.generate([first], [SamplingRow(0.0, 1.0, 64, None)], embedded_fp32.eos_ids)
    answer = embedded_fp32.tokenizer.decode(out.tokens[0], skip_special_tokens=True)
    second = embedded_fp32.render([*conv, {"role": "assistant", "content": answer}, {"role": "user", "content": "Now shorter."}])
    fresh_fp32.cache.stats.reset()
    fresh_fp32.logits_last([second])
    assert fresh_fp32.cache.stats.computed_tokens < len(second) - len(first) - 32, "the answer's blocks came from the cache"


def test_cache_stays_within_its_bound(embedded_fp32):
    dec = LlamaDecoder(embedded_fp32.model, dtype=torch.float32, prefix_cache_mb=1)
    dec.logits_last([embedded_fp32.render(FEW_SHOT + c) for c in CONVS])
    assert 0 < dec.cache.bytes <= 1 << 20 and dec.cache.blocks


def test_continuous_batching_refills_slots_and_changes_no_answer(embedded_fp32):
    """One long request and six short ones on two slots: the short ones take turns in the
    second slot while the long one decodes, so the call takes about as many decode steps
    as the long request alone (a drained batch would add every short pair's steps)."""
    prompts = [embedded_fp32.render(c) for c in CONVS[:7]]
    budgets = [40] + [4] * 6
    rows = lambda: [SamplingRow(0.8, 1.0, b, seed=i) for i, b in enumerate(budgets)]  # noqa: E731
    alone = LlamaDecoder(embedded_fp32.model, dtype=torch.float32).generate(prompts, rows(), set())
    dec = LlamaDecoder(embedded_fp32.model, dtype=torch.float32, max_batch=2)
    steps = 0
    forward = dec._forward

    def counting(ids, *args):
        nonlocal steps
        steps += ids.shape[1] == 1
        return forward(ids, *args)

    dec._forward = counting  # type: ignore[method-assign]
    finished_order = [f.row for batch in dec.stream(prompts, rows(), set()) for f in batch]
    assert steps <= 40, f"{steps} decode steps: slots were not refilled while the long request ran"
    assert finished_order[-1] == 0, "the long request finished last, after the short ones cycled through"
    again = LlamaDecoder(embedded_fp32.model, dtype=torch.float32, max_batch=2).generate(prompts, rows(), set())
    assert again.tokens == alone.tokens, "seeded samples do not depend on their batch-mates"
    assert [len(t) for t in alone.tokens] == budgets


def test_token_budget_bounds_the_live_requests(embedded_fp32):
    prompts = [embedded_fp32.render(c) for c in CONVS]
    width = max(len(p) for p in prompts) + 16
    dec = LlamaDecoder(embedded_fp32.model, dtype=torch.float32, token_budget=3 * width)
    live = []
    collect = dec._collect

    def watching(slots, *args):
        live.append(slots.n)
        return collect(slots, *args)

    dec._collect = watching  # type: ignore[method-assign]
    out = dec.generate(prompts, [SamplingRow(0.0, 1.0, 16, None) for _ in prompts], set())
    assert max(live) == 3 and all(len(t) == 16 for t in out.tokens)


def test_generation_streams_finished_rows():
    """Rows reach the caller (and the completion cache) as they finish, not when the
    whole call ends: with two slots, four requests come back in at least two groups."""
    from valign.models.base import GenRequest

    model = load_model("embedded", max_batch=2)
    requests = [GenRequest(i, 0, (("user", c[0]["content"]),), i) for i, c in enumerate(CONVS[:4])]
    batches = list(model._generate_batches(requests, GenConfig(max_new_tokens=12, temperature=1.0)))
    assert sorted(i for b in batches for i, _ in b) == [0, 1, 2, 3] and len(batches) >= 2


def test_manifest_records_the_engine(tmp_path):
    from valign.stages.base import ModelPool

    pool = ModelPool(None, lambda spec: {"dtype": "bfloat16"})
    pool.get("embedded").generate(CONVS[:2], GenConfig(max_new_tokens=4))
    info = pool.engines()["embedded"]
    assert info["engine"] == "valign" and info["dtype"] == "bfloat16"
    assert info["prefix_cache"]["prompt_tokens"] > 0
    assert pool.engines() == {}, "each stage reports the models it used"
