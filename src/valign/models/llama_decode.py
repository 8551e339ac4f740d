"""valign's own engine for Llama-family checkpoints (Llama, SmolLM, Mistral, Qwen2) on a CPU.

Why not ``model.generate``: on a CPU at batch 64, transformers spends about 40% of each
decode step concatenating its dynamic KV cache and most of the rest in many small
matmuls; it pads every batch to its longest prompt, drains a batch before starting the
next, and computes a shared prompt prefix once per prompt. This engine reads the same
weights and does the same arithmetic with

- **bf16 where the hardware multiplies it natively** (`valign.hardware`), fp32 elsewhere;
  the residual stream, norms, log-probs and sampling stay in fp32, softmaxes accumulate
  in fp32, and logits that are read as numbers come from an fp32 LM head;
- q/k/v and gate/up projections fused into one matmul each (fewer, wider GEMMs), their
  bf16 weights pre-packed for oneDNN;
- a KV cache laid out so that column = token position, written in place, one contiguous
  block per request that grows `GROW_COLUMNS` at a time;
- **continuous batching** (as vLLM's scheduler and llama.cpp's slots do): each request
  owns a slot while it decodes; a finished request's slot is refilled from the waiting
  ones instead of the batch draining, and the number of slots follows a token budget;
- **prefix caching** (as vLLM's automatic prefix caching, `valign.models.prefix_cache`):
  16-token blocks of keys and values are kept after they are computed, so a prefix that
  prompts share — within one call or across calls — is computed once; a prefill
  computes only each prompt's uncached tail, with no padding to a common start;
- grouped-query attention as batched matmuls without expanding K/V;
- per-row random generators, so a seeded sample does not depend on its batch-mates (in
  fp32; in bf16 a batch-mate can change how a matmul rounds, and so break a near-tie).

In fp32 it produces the same logits as transformers (checked in the tests); models of
other architectures fall back to ``generate``.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from valign.models.prefix_cache import BLOCK, PrefixCache

SUPPORTED_MODEL_TYPES = {"llama", "mistral", "qwen2"}
PREFILL_TOKENS = 4096  # new prompt tokens per prefill forward pass (bounds its attention scores)
MAX_PADDING = 1.25  # a prefill chunk's query slots (rows × longest) per real new token, at most
# The live requests' KV cache grows by this many columns at a time. A decode step attends
# over every column (the unwritten ones masked): the cache then is one contiguous block
# per request, which the batched matmuls read in place, where a slice up to the longest
# position would be copied first (about twice the attention's cost at 64 requests).
GROW_COLUMNS = 32


@functools.cache
def _can_pack() -> bool:
    """Whether this torch and CPU can keep bf16 weights pre-packed in oneDNN's blocked
    layout (the op behind torch.compile's CPU linear): a 64-row decode step's matmuls then
    skip re-packing every weight on every call (about 15% of their time here). oneDNN's
    bf16 path needs AVX-512 (BW/VL/DQ) or AVX-NE-CONVERT; on other CPUs (AVX2-only EPYCs,
    for one) the op raises, so it is tried once on a small weight rather than assumed."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
        return False
    try:
        _pack(torch.zeros(64, 64, dtype=torch.bfloat16))
    except RuntimeError:
        return False
    return True


def _pack(w: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(w, 64)  # tuned for batches of about 64 rows


def supports(model, adapter_merged: bool = False) -> bool:
    """True when `LlamaDecoder` can run this (already merged, unquantized) model; with
    ``adapter_merged``, the base under a LoRA adapter whose update `merged_lora_weight` adds."""
    cfg = model.config
    return (
        getattr(cfg, "model_type", None) in SUPPORTED_MODEL_TYPES
        and getattr(cfg, "hidden_act", "silu") == "silu"
        and not getattr(cfg, "sliding_window", None)
        and model.device.type == "cpu"
        and model.dtype in (torch.float32, torch.bfloat16)
        # A 4-bit base keeps packed NF4 weights and an unmerged adapter beside them;
        # transformers' own generate runs those.
        and getattr(cfg, "quantization_config", None) is None
        and (adapter_merged or not hasattr(model, "peft_config"))
    )


def merged_lora_weight(adapter: str = "default") -> Callable[[torch.nn.Module], torch.Tensor]:
    """For `LlamaDecoder`'s ``weight_of``: a projection's weight with its LoRA update
    (B·A·scale, PEFT's own `get_delta_weight`) added, computed afresh and exactly, the
    adapter left unmerged in the model being trained.

    Example:
        >>> layer = torch.nn.Linear(2, 2)
        >>> torch.equal(merged_lora_weight()(layer), layer.weight)  # no adapter: its own weight
        True
    """

    def weight_of(module: torch.nn.Module) -> torch.Tensor:
        get_delta = getattr(module, "get_delta_weight", None)
        if get_delta is None or adapter not in getattr(module, "lora_A", {}):
            return module.weight
        with torch.no_grad():
            return module.get_base_layer().weight + get_delta(adapter)

    return weight_of


@dataclass
class _Layer:
    in_norm: torch.Tensor
    qkv_w: torch.Tensor
    qkv_b: torch.Tensor | None
    o_w: torch.Tensor
    post_norm: torch.Tensor
    gate_up_w: torch.Tensor
    down_w: torch.Tensor


@dataclass
class SamplingRow:
    """Per-row sampling settings: a row is one (conversation, sample) request."""

    temperature: float
    top_p: float
    max_new_tokens: int
    seed: int | None
    generator: torch.Generator | None = field(default=None, repr=False)


@dataclass
class Finished:
    """One finished request: its position in the call, tokens, why it stopped, log-probs."""

    row: int
    tokens: list[int]
    finish: str
    logprobs: list[tuple[int, float, list[tuple[int, float]]]] | None = None


@dataclass
class DecodeResult:
    """Generated token ids per row, why each row stopped, and optional logprobs."""

    tokens: list[list[int]]
    finish: list[str]
    logprobs: list[list[tuple[int, float, list[tuple[int, float]]]]] | None = None


@dataclass
class _Slots:
    """The live requests of a `LlamaDecoder.stream` call, one KV-cache row each.

    Live requests occupy rows 0…n-1 of ``k``/``v`` ([layers, rows, kv heads, columns,
    d]); column = token position, and the columns grow as the requests do
    (`GROW_COLUMNS`). ``pos[i]`` is where row i's next token goes and ``last[i]`` is that
    token (sampled, not yet fed).
    """

    k: torch.Tensor
    v: torch.Tensor
    row: list[int] = field(default_factory=list)  # request index per slot
    pos: list[int] = field(default_factory=list)
    last: list[int] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.row)

    @property
    def rows(self) -> int:
        return self.k.shape[1]

    @property
    def columns(self) -> int:
        return self.k.shape[3]


class LlamaDecoder:
    """Continuous-batching prefill + decode over a transformers Llama-family model's weights.

    ``dtype`` is the compute dtype (the model's own by default); ``prefix_cache_mb``
    bounds the prefix cache (0 turns it off); ``token_budget`` bounds the KV cache of the
    live requests (slots × their longest prompt + new tokens) and ``max_batch`` the slots.

    Example (``model`` is a loaded transformers Llama, so it is not run as a doctest)::

        dec = LlamaDecoder(model, dtype=torch.bfloat16)
        out = dec.generate([[1, 2, 3]], [SamplingRow(0.0, 1.0, 16, None)], eos_ids={2})
        out.tokens[0]  # the new token ids of the first prompt
    """

    def __init__(
        self,
        model,
        *,
        dtype: torch.dtype | None = None,
        prefix_cache_mb: int = 512,
        token_budget: int = 16384,
        max_batch: int = 128,
        weight_of: Callable[[torch.nn.Module], torch.Tensor] | None = None,
    ) -> None:
        cfg = model.config
        # The weight of a projection: its own, or (`merged_lora_weight`) with a LoRA
        # adapter's update added, for a model whose adapter keeps training (grpo).
        w = weight_of or (lambda module: module.weight)
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.eps = cfg.rms_norm_eps
        self.dtype = dtype or model.dtype
        self.token_budget = token_budget
        self.max_batch = max_batch
        self.cache = PrefixCache(prefix_cache_mb << 20)
        inner = model.model
        cast = lambda t: t.detach().to(self.dtype).contiguous()  # noqa: E731
        self.embed = cast(inner.embed_tokens.weight)
        self.final_norm = inner.norm.weight.detach().float()
        self.lm_head = cast(model.lm_head.weight)
        # Scores that are read as numbers (choice probabilities, log-probs) come from an
        # fp32 head: a bf16 matmul rounds each logit to 3 significant digits.
        self.lm_head_fp32 = model.lm_head.weight.detach().float() if self.dtype != torch.float32 else self.lm_head
        self.rotary = inner.rotary_emb
        self.layers: list[_Layer] = []
        with torch.no_grad():
            for layer in inner.layers:
                att, mlp = layer.self_attn, layer.mlp
                qkv_b = att.q_proj.bias
                # Queries are pre-scaled by 1/√d in their weights (RoPE is linear), which
                # spares a pass over every attention score; exact when d is a power of 4.
                scale = self.head_dim**-0.5
                qkv_w = torch.cat([w(att.q_proj) * scale, w(att.k_proj), w(att.v_proj)])
                if qkv_b is not None:
                    qkv_b = cast(torch.cat([att.q_proj.bias * scale, att.k_proj.bias, att.v_proj.bias]))
                self.layers.append(
                    _Layer(
                        in_norm=layer.input_layernorm.weight.detach().float(),
                        qkv_w=cast(qkv_w),
                        qkv_b=qkv_b,
                        o_w=cast(w(att.o_proj)),
                        post_norm=layer.post_attention_layernorm.weight.detach().float(),
                        gate_up_w=cast(torch.cat([w(mlp.gate_proj), w(mlp.up_proj)])),
                        down_w=cast(w(mlp.down_proj)),
                    )
                )
        self._sample_buf: torch.Tensor | None = None
        self.packed = self.dtype == torch.bfloat16 and _can_pack()
        if self.packed:
            self.lm_head = _pack(self.lm_head)
            for L in self.layers:
                L.qkv_w, L.o_w, L.gate_up_w, L.down_w = map(_pack, (L.qkv_w, L.o_w, L.gate_up_w, L.down_w))

    def linear(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        """``x @ w.T + b`` for one of the engine's weights (packed ones through oneDNN)."""
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
        return F.linear(x, w, b)

    # -- the forward pass -------------------------------------------------------------

    def _norm(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        # One fused kernel in fp32 instead of five elementwise passes (Llama's RMSNorm).
        return F.rms_norm(x, (x.shape[-1],), w, self.eps).to(self.dtype)

    @staticmethod
    def _rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
        # Llama's x·cos + rotate_half(x)·sin, with rotate_half's sign folded into
        # ``signed_sin`` once per forward pass: three passes per layer instead of five.
        return (x * cos).addcmul_(torch.roll(x, x.shape[-1] // 2, dims=-1), signed_sin)

    def _forward(
        self,
        ids: torch.Tensor,  # [B, S] new tokens
        positions: torch.Tensor,  # [B, S] their positions = the cache columns they are written to
        k_cache: torch.Tensor,  # [layers, B, n_kv, columns, d]
        v_cache: torch.Tensor,
        bias: torch.Tensor,  # [B, 1, S, T] additive attention mask over columns 0…T-1
        last: torch.Tensor,  # [B] which of the S positions' hidden state to return
    ) -> torch.Tensor:
        """Runs S new tokens per row through every layer; returns the chosen positions'
        final hidden states [B, H] in fp32."""
        B, S = ids.shape
        T = bias.shape[-1]
        # The residual stream stays fp32 (as norms do): only the matmuls run in bf16.
        h = F.embedding(ids, self.embed).float()
        cos, sin = self.rotary(h, positions)  # [B, S, d]
        half = sin.shape[-1] // 2
        sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
        cos, sin = cos.unsqueeze(2).to(self.dtype), sin.unsqueeze(2).to(self.dtype)  # over heads
        nq, nkv, d = self.n_heads, self.n_kv, self.head_dim
        group = nq // nkv
        rows = torch.arange(B)[:, None]
        if S == 1:
            # Decode: each row's one new key goes to row-major slot (row, head, its
            # position) of the layer's contiguous cache — an index_copy_, computed once.
            columns = k_cache.shape[3]
            flat = ((rows * nkv + torch.arange(nkv)[None, :]) * columns + positions).view(-1)
        for i, L in enumerate(self.layers):
            x = self._norm(h, L.in_norm)
            qkv = self.linear(x, L.qkv_w, L.qkv_b).view(B, S, nq + 2 * nkv, d)
            qk = self._rope(qkv[:, :, : nq + nkv], cos, sin)  # q and k rotated in one pass
            # Each row's new keys/values go to its own columns (its positions).
            if S == 1:
                k_cache[i].view(-1, d).index_copy_(0, flat, qk[:, 0, nq:].reshape(-1, d))
                v_cache[i].view(-1, d).index_copy_(0, flat, qkv[:, 0, nq + nkv :].reshape(-1, d))
            else:
                k_cache[i][rows, :, positions] = qk[:, :, nq:]
                v_cache[i][rows, :, positions] = qkv[:, :, nq + nkv :]
            keys, values = k_cache[i][:, :, :T], v_cache[i][:, :, :T]
            if S > 1:
                # Prefill: torch's fused attention never materialises the S×T scores.
                q = qk[:, :, :nq].transpose(1, 2)  # [B, nq, S, d]
                out = F.scaled_dot_product_attention(q, keys, values, attn_mask=bias, enable_gqa=True, scale=1.0)
                out = out.transpose(1, 2).reshape(B, S, nq * d)
            else:
                # Decode: group query heads under their kv head, [B, nkv, group, d] x
                # [B, nkv, d, T], which beats the fused kernel for a single query.
                qg = qk[:, 0, :nq].reshape(B, nkv, group, d)
                scores = torch.matmul(qg, keys.transpose(-1, -2)).add_(bias.view(B, 1, 1, T))
                # torch's CPU softmax accumulates reduced precision in fp32 (equal to an
                # fp32 softmax rounded once), without a separate pass to narrow it.
                att = torch.softmax(scores, dim=-1)
                out = torch.matmul(att, values).view(B, 1, nq * d)
            h.add_(self.linear(out, L.o_w))
            x = self._norm(h, L.post_norm)
            gate, up = self.linear(x, L.gate_up_w).chunk(2, dim=-1)
            h.add_(self.linear(F.silu(gate, inplace=True).mul_(up), L.down_w))
        h_last = h[torch.arange(B), last]
        return F.rms_norm(h_last, (h_last.shape[-1],), self.final_norm, self.eps)

    def _logits(self, h: torch.Tensor, exact: bool) -> torch.Tensor:
        """Next-token logits: ``exact`` (for numbers that are read, not sampled) multiplies
        in fp32; otherwise they come in the compute dtype (as a bf16 head rounds them
        anyway), and `_sample` widens them into its fp32 buffer."""
        if exact or self.dtype == torch.float32:
            return F.linear(h, self.lm_head_fp32)
        return self.linear(h.to(self.dtype), self.lm_head)

    def _scratch(self, rows: int, vocab: int) -> torch.Tensor:
        """An fp32 [rows, vocab] buffer kept across steps: a fresh one per step (12 MB at 64
        rows) costs more in page faults than the sampling arithmetic done in it."""
        if self._sample_buf is None or self._sample_buf.shape[0] < rows or self._sample_buf.shape[1] != vocab:
            self._sample_buf = torch.empty(rows, vocab)
        return self._sample_buf[:rows]

    def _new_cache(self, rows: int, columns: int) -> tuple[torch.Tensor, torch.Tensor]:
        # Zeros, not empty: masked columns are multiplied by 0 weights, and 0·NaN is NaN.
        shape = (len(self.layers), rows, self.n_kv, columns, self.head_dim)
        return torch.zeros(shape, dtype=self.dtype), torch.zeros(shape, dtype=self.dtype)

    # -- prefill with the prefix cache ----------------------------------------------------

    @staticmethod
    def _cacheable_blocks(n_tokens: int, whole: bool) -> int:
        # A prompt's last token is always computed (its hidden state gives the logits),
        # unless the sequence is only being cached (``whole``).
        return (n_tokens if whole else n_tokens - 1) // BLOCK

    def _warm_shared(self, seqs: list[list[int]], full_chains: list[list[int]]) -> None:
        """Computes, once, the uncached prefixes that two or more of ``seqs`` share, so
        that the prefill after this reads them from the cache instead of computing each."""
        if self.cache.max_bytes <= 0 or len(seqs) < 2:
            return
        chains = [chain[: self._cacheable_blocks(len(s), False)] for s, chain in zip(seqs, full_chains)]
        seen = Counter(key for chain in chains for key in set(chain))
        shared: dict[int, list[int]] = {}
        for s, chain in zip(seqs, chains):
            # Along a chain the counts never grow, so the shared blocks are a prefix of it.
            n = next((j for j, key in enumerate(chain) if seen[key] < 2), len(chain))
            if n and self.cache.match(s, chain[:n]) < n:
                shared[chain[n - 1]] = s[: n * BLOCK]
        if shared:
            self._prefill(list(shared.values()), whole=True)

    def _prefill(
        self, seqs: list[list[int]], *, whole: bool = False, into: tuple[_Slots, list[int]] | None = None, exact: bool = False
    ) -> torch.Tensor | None:
        """Computes ``seqs``' keys and values, reading and filling the prefix cache.

        Returns each sequence's next-token logits (None when ``whole``: the sequences are
        only being cached). ``into`` = (slots, slot index per sequence) also copies each
        sequence's keys and values into those slots.
        """
        if not whole:
            self.cache.stats.prompt_tokens += sum(len(s) for s in seqs)
        # Each sequence's block keys, hashed once for the whole prefill.
        chains = [self.cache.chain(s, len(s) // BLOCK) if self.cache.max_bytes > 0 else [] for s in seqs]
        self._warm_shared(seqs, chains)
        # Chunks of similar uncached length, each within the token budget (its own KV
        # cache) and PREFILL_TOKENS new tokens (its attention scores), and at most a
        # quarter padding: a padded query costs as much as a real one, and a prefill's
        # matmuls are as fast in two chunks as in one.
        new = [len(s) - self._cached_blocks(s, chain, whole) * BLOCK for s, chain in zip(seqs, chains)]
        order = sorted(range(len(seqs)), key=lambda i: (new[i], len(seqs[i])))
        logits: list[torch.Tensor | None] = [None] * len(seqs)
        chunks: list[list[int]] = [[]]
        widest = real = 0
        for i in order:  # ascending uncached length: new[i] is the chunk's longest so far
            widest, real = max(widest, len(seqs[i])), real + new[i]
            size = len(chunks[-1]) + 1
            if chunks[-1] and (size * widest > self.token_budget or size * new[i] > PREFILL_TOKENS or size * new[i] > MAX_PADDING * real):
                chunks.append([])
                widest, real = len(seqs[i]), new[i]
            chunks[-1].append(i)
        for chunk in chunks:
            rows = self._prefill_chunk([seqs[j] for j in chunk], [chains[j] for j in chunk], whole, into, chunk, exact)
            for j, row_logits in zip(chunk, rows):
                logits[j] = row_logits
        return None if whole else torch.stack(logits)  # type: ignore[arg-type]

    def _cached_blocks(self, seq: list[int], chain: list[int], whole: bool) -> int:
        """How many of ``seq``'s leading blocks the prefill can read from the cache now."""
        return self.cache.match(seq, chain[: self._cacheable_blocks(len(seq), whole)]) if chain else 0

    @torch.inference_mode()
    def _prefill_chunk(self, seqs, chains, whole, into, positions_in_call, exact) -> list[torch.Tensor | None]:
        # Matched again here: an earlier chunk's blocks may have evicted some.
        hits = [self._cached_blocks(s, chain, whole) for s, chain in zip(seqs, chains)]
        starts = [h * BLOCK for h in hits]
        new = [len(s) - c for s, c in zip(seqs, starts)]
        if max(new) == 0:  # only caching, and another chunk cached these meanwhile
            return [None] * len(seqs)
        self.cache.stats.computed_tokens += sum(new)
        B, S = len(seqs), max(new)
        T = max(c + S for c in starts)  # pad queries write past their row's end, never before it
        k_cache, v_cache = self._new_cache(B, T)
        ids = torch.zeros(B, S, dtype=torch.long)
        for b, (s, c, hit) in enumerate(zip(seqs, starts, hits)):
            if hit:
                kv = self.cache.get(chains[b][:hit])
                k_cache[:, b, :, :c], v_cache[:, b, :, :c] = kv[0], kv[1]
            ids[b, : len(s) - c] = torch.tensor(s[c:])
        start = torch.tensor(starts)
        positions = start[:, None] + torch.arange(S)[None, :]  # [B, S]
        allowed = torch.arange(T)[None, None, :] <= positions[:, :, None]  # causal, by absolute position
        bias = torch.zeros(B, 1, S, T).masked_fill_(~allowed[:, None], float("-inf")).to(self.dtype)
        h = self._forward(ids, positions, k_cache, v_cache, bias, torch.tensor(new) - 1)
        for b, s in enumerate(seqs):
            self.cache.put(s, chains[b], hits[b], k_cache[:, b], v_cache[:, b])
        if into is not None:
            slots, where = into
            for b, i in enumerate(positions_in_call):
                n = len(seqs[b])
                slots.k[:, where[i], :, :n] = k_cache[:, b, :, :n]
                slots.v[:, where[i], :, :n] = v_cache[:, b, :, :n]
        if whole:
            return [None] * B
        return list(self._logits(h, exact))

    def logits_last(self, prompts: list[list[int]]) -> torch.Tensor:
        """Next-token logits (fp32) after each prompt: [B, vocab]. Used by choice_probs."""
        return self._prefill(prompts, exact=True)  # type: ignore[return-value]

    # -- generation ---------------------------------------------------------------------

    def generate(
        self, prompts: list[list[int]], rows: list[SamplingRow], eos_ids: set[int], top_logprobs: int = 0
    ) -> DecodeResult:
        """Samples a continuation for every prompt; rows stop at an eos id or their budget."""
        done: dict[int, Finished] = {}
        for batch in self.stream(prompts, rows, eos_ids, top_logprobs):
            done.update((f.row, f) for f in batch)
        ordered = [done[i] for i in range(len(prompts))]
        return DecodeResult(
            tokens=[f.tokens for f in ordered],
            finish=[f.finish for f in ordered],
            logprobs=[f.logprobs or [] for f in ordered] if top_logprobs else None,
        )

    def stream(
        self,
        prompts: list[list[int]],
        rows: list[SamplingRow],
        eos_ids: set[int],
        top_logprobs: int = 0,
        *,
        every_step: bool = False,
        cancelled: Callable[[int], bool] | None = None,
    ) -> Iterator[list[Finished]]:
        """Yields requests as they finish, continuously batched (see the module docstring).

        Requests wait longest first, so the first admitted set how many slots fit the
        token budget; a freed slot is refilled once an eighth of the slots are free (a
        prefill per finished row would cost more in per-call overhead than the idle slot
        does).

        ``every_step`` yields after every decode step, an empty list when nothing
        finished, so a scheduler (`valign.serve`) can run other work between steps.
        ``cancelled(row)`` True drops that request at the next step: it frees its slot
        and comes back as a `Finished` with ``finish="cancelled"``.
        """
        for r in rows:
            if r.seed is not None:
                r.generator = torch.Generator().manual_seed(r.seed)
        need = [len(p) + r.max_new_tokens for p, r in zip(prompts, rows)]
        waiting = sorted(range(len(prompts)), key=lambda i: -need[i])
        waiting.reverse()  # pop() takes the longest
        tokens: list[list[int]] = [[] for _ in prompts]
        lps: list[list] = [[] for _ in prompts]
        slots: _Slots | None = None
        while waiting or (slots is not None and slots.n):
            dropped: list[Finished] = []
            if cancelled is not None and waiting:
                dropped = [Finished(i, [], "cancelled") for i in waiting if cancelled(i)]
                waiting[:] = [i for i in waiting if not cancelled(i)]
            if waiting:
                slots = self._admit(slots, waiting, prompts, rows, need, tokens, lps, top_logprobs)
            if slots is None:  # every request was cancelled before it started
                if dropped:
                    yield dropped
                return
            finished = dropped + self._collect(slots, prompts, rows, tokens, lps, eos_ids, cancelled)
            if finished or every_step:
                yield finished
            if slots.n:
                self._decode_step(slots, rows, tokens, lps, top_logprobs)

    def _admit(self, slots, waiting, prompts, rows, need, tokens, lps, top_logprobs) -> _Slots:
        """Moves waiting requests into free slots (prefilling them and sampling their
        first token) while the slot count and the token budget allow."""
        live = slots.n if slots is not None else 0
        width = max([need[slots.row[s]] for s in range(live)] if live else [need[waiting[-1]]])
        fit = max(1, min(self.max_batch, self.token_budget // width))
        if slots is not None and live and fit - live < max(1, fit // 8):
            return slots
        admitted: list[int] = []
        while waiting and live + len(admitted) < fit:
            admitted.append(waiting.pop())
        if not admitted:
            return slots  # type: ignore[return-value]
        longest = max(len(prompts[i]) for i in admitted)
        if slots is None or slots.rows < live + len(admitted) or slots.columns < longest:
            slots = self._reserve(slots, max(fit, slots.rows if slots else 0), longest)
        where = [live + n for n in range(len(admitted))]  # admitted requests take the next rows
        logits = self._prefill([prompts[i] for i in admitted], into=(slots, where), exact=top_logprobs > 0)
        assert logits is not None
        read = self._top_logprobs(logits, top_logprobs)
        chosen = self._sample(logits, [rows[i] for i in admitted])
        for n, i in enumerate(admitted):
            slots.row.append(i)
            slots.pos.append(len(prompts[i]))
            slots.last.append(int(chosen[n]))
        self._record(read, chosen, admitted, tokens, lps)
        return slots

    def _reserve(self, slots: _Slots | None, rows: int, columns: int) -> _Slots:
        """``slots`` (new ones when None) with a KV cache of ``rows`` × at least ``columns``
        (rounded up to `GROW_COLUMNS`), its live requests copied over."""
        columns = -(-max(columns, slots.columns if slots else 0) // GROW_COLUMNS) * GROW_COLUMNS
        k, v = self._new_cache(rows, columns)
        if slots is None:
            return _Slots(k, v)
        n, used = slots.n, max(slots.pos, default=0)
        k[:, :n, :, :used], v[:, :n, :, :used] = slots.k[:, :n, :, :used], slots.v[:, :n, :, :used]
        slots.k, slots.v = k, v
        return slots

    @torch.inference_mode()  # it moves slots' keys and values, which a decode step may have allocated
    def _collect(self, slots: _Slots, prompts, rows, tokens, lps, eos_ids: set[int], cancelled=None) -> list[Finished]:
        """Takes finished requests out of their slots (the last live slot moves into the
        hole, so live slots stay rows 0…n-1) and caches their generated blocks too: a
        second turn that quotes the first turn's answer finds it in the prefix cache."""
        finished: list[Finished] = []
        for s in reversed(range(slots.n)):
            i = slots.row[s]
            toks = tokens[i]
            stopped = bool(toks) and toks[-1] in eos_ids
            dropped = cancelled is not None and cancelled(i)
            if not (stopped or dropped) and len(toks) < rows[i].max_new_tokens:
                continue
            finished.append(Finished(i, toks, "cancelled" if dropped else "stop" if stopped else "length", lps[i]))
            fed = prompts[i] + toks[:-1]  # the last sampled token was never fed
            if self.cache.max_bytes > 0 and len(fed) >= BLOCK:
                chain = self.cache.chain(fed, len(fed) // BLOCK)
                self.cache.put(fed, chain, len(prompts[i]) // BLOCK, slots.k[:, s], slots.v[:, s])
            end = slots.n - 1
            if s != end:
                used = slots.pos[end]
                slots.k[:, s, :, :used] = slots.k[:, end, :, :used]
                slots.v[:, s, :, :used] = slots.v[:, end, :, :used]
                slots.row[s], slots.pos[s], slots.last[s] = slots.row[end], slots.pos[end], slots.last[end]
            del slots.row[end], slots.pos[end], slots.last[end]
        return finished

    @torch.inference_mode()
    def _decode_step(self, slots: _Slots, rows, tokens, lps, top_logprobs) -> None:
        """Feeds every live slot its last token and samples the next."""
        n = slots.n
        if max(slots.pos) >= slots.columns:
            self._reserve(slots, slots.rows, max(slots.pos) + 1)
        pos = torch.tensor(slots.pos)
        T = slots.columns  # every column, so each request's keys are one block (GROW_COLUMNS)
        bias = torch.zeros(n, T).masked_fill_(torch.arange(T)[None, :] > pos[:, None], float("-inf"))
        h = self._forward(
            torch.tensor(slots.last)[:, None], pos[:, None], slots.k[:, :n], slots.v[:, :n],
            bias.view(n, 1, 1, T), torch.zeros(n, dtype=torch.long),
        )
        logits = self._logits(h, exact=top_logprobs > 0)
        live = list(slots.row)
        read = self._top_logprobs(logits, top_logprobs)
        chosen = self._sample(logits, [rows[i] for i in live])
        for s in range(n):
            slots.pos[s] += 1
            slots.last[s] = int(chosen[s])
        self._record(read, chosen, live, tokens, lps)

    @staticmethod
    def _top_logprobs(logits: torch.Tensor, top_logprobs: int) -> tuple[torch.Tensor, ...] | None:
        """Log-probs of every token and of each row's top ones (fp32: ``exact`` logits)."""
        if not top_logprobs:
            return None
        logp = torch.log_softmax(logits, dim=-1)
        return (logp, *logp.topk(top_logprobs, dim=-1))

    @staticmethod
    def _record(read, chosen, live, tokens, lps) -> None:
        if read is not None:
            logp, top_v, top_i = read
            picked = logp.gather(1, chosen[:, None]).squeeze(1)
        for s, i in enumerate(live):
            tokens[i].append(int(chosen[s]))
            if read is not None:
                lps[i].append((int(chosen[s]), float(picked[s]), list(zip(top_i[s].tolist(), top_v[s].tolist()))))

    def _sample(self, logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
        """One token per row, the arithmetic in fp32 (in `_scratch`)."""
        temps = torch.tensor([r.temperature for r in rows])
        top_ps = torch.tensor([r.top_p for r in rows])
        greedy = temps <= 0
        if bool(greedy.all()):
            return logits.argmax(-1)
        x = self._scratch(*logits.shape).copy_(logits).mul_(1.0 / temps.clamp_min(1e-5)[:, None])
        # Unnormalised probabilities, in place: the inverse CDF scales its draw by each
        # row's total instead.
        probs = x.sub_(x.amax(-1, keepdim=True)).exp_()
        if bool((top_ps < 1).any()):
            probs = probs / probs.sum(-1, keepdim=True)
            sorted_p, order = probs.sort(dim=-1, descending=True)
            cum = sorted_p.cumsum(-1)
            # Keep the smallest prefix whose mass reaches top_p (always the first token).
            cut = (cum - sorted_p) >= top_ps[:, None]
            sorted_p = sorted_p.masked_fill(cut, 0.0)
            probs = torch.zeros_like(probs).scatter_(1, order, sorted_p)
        # Inverse-CDF sampling: one uniform draw per row from that row's own generator
        # (torch.multinomial spends ~1 ms per row drawing exponentials over the vocab).
        u = torch.stack([torch.rand((), generator=row.generator) for row in rows])
        sampled = _inverse_cdf(probs, u)
        if bool(greedy.any()):  # greedy rows (temperature 0) beside sampled ones
            sampled = torch.where(greedy, probs.argmax(-1), sampled)
        return sampled


# Tokens per block of the two-level inverse CDF: a cumulative sum over the whole
# vocabulary is a sequential pass per row (4.4 ms at 64 rows here); block sums, then
# short cumulative sums over the block sums and over one block, find the same token.
_CDF_BLOCK = 256


def _inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The first token at which each row's cumulative (unnormalised) mass exceeds ``u`` ×
    its total (``right``: a token of zero mass is never chosen, even at u = 0)."""
    n, vocab = probs.shape
    pad = -vocab % _CDF_BLOCK
    blocks = (F.pad(probs, (0, pad)) if pad else probs).view(n, -1, _CDF_BLOCK)
    block_cum = blocks.sum(-1).cumsum(-1)  # [n, blocks]
    target = u * block_cum[:, -1]
    b = torch.searchsorted(block_cum, target[:, None], right=True).clamp_max(block_cum.shape[1] - 1)  # [n, 1]
    before = F.pad(block_cum, (1, 0)).gather(1, b)  # the mass of the blocks before block b
    within = blocks[torch.arange(n), b.squeeze(1)].cumsum(-1)  # [n, BLOCK]
    j = torch.searchsorted(within, target[:, None] - before, right=True).clamp_max(_CDF_BLOCK - 1)
    return (b * _CDF_BLOCK + j).squeeze(1).clamp_max(vocab - 1)
