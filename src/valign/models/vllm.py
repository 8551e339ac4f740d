"""vLLM's offline engine in-process: ``vllm:<hub id or path>`` (optional extra, GPU machines).

vLLM schedules its own continuous batching, so requests go to ``LLM.chat`` in large
chunks — each chunk is cached as soon as it finishes. Every request carries its own
``SamplingParams`` (so its own seed), which keeps samples reproducible one by one.
Option probabilities come from the first generated position's top-20 logprobs, scored
with the same rule as the ``openai:`` backend (`option_probs`).
"""

from __future__ import annotations

from typing import Any, Iterator

from valign.errors import ModelError
from valign.models.base import BaseChatModel, GenRequest
from valign.models.openai_api import TOP_LOGPROBS, option_probs, probs_or_error
from valign.types import Completion, Conversation, GenConfig, TokenLogprob

DEFAULT_CHUNK = 512  # requests per LLM.chat call: big enough to keep a GPU busy


class VLLMChatModel(BaseChatModel):
    """A model run by vLLM's offline ``LLM`` engine; keyword arguments go to ``LLM``.

    Example:
        >>> m = VLLMChatModel("meta-llama/Llama-3.1-8B-Instruct", tensor_parallel_size=2, max_model_len=4096)
        >>> m.generate([[{"role": "user", "content": "Hi"}]], GenConfig(max_new_tokens=64, seed=0, n=4))
        >>> m.choice_probs([[{"role": "user", "content": "A or B?"}]], ["A", "B"])
    """

    def __init__(self, model_id: str, *, chunk_size: int = DEFAULT_CHUNK, **engine_kwargs: Any) -> None:
        try:
            import vllm
        except ImportError as e:
            raise ModelError(
                f"vllm:{model_id} needs vLLM, an optional extra for GPU machines: pip install 'valign[vllm]'."
            ) from e
        self._vllm = vllm
        self.model_id = model_id
        self.name = f"vllm:{model_id}"
        self.chunk_size = max(1, chunk_size)
        try:
            self.llm = vllm.LLM(model=model_id, **engine_kwargs)
        except (OSError, ValueError) as e:
            raise ModelError(f"vLLM could not load '{model_id}': {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
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
            outputs = self.llm.chat([r.messages for r in chunk], params, use_tqdm=False)
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
                add_generation_prompt=not answer_prefix,
                continue_final_message=bool(answer_prefix),
            )
            for out in outputs:
                first = out.outputs[0].logprobs[0] if out.outputs[0].logprobs else {}
                top = [(self._text(t, lp), lp.logprob) for t, lp in first.items()]
                results.append(probs_or_error(option_probs(top, options), self.name, options))
        return results
