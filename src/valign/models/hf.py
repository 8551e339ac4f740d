"""Local transformers models: ``hf:<path or hub id>[+<adapter dir>]`` and ``embedded``.

Llama-family models run on valign's own engine, `LlamaDecoder` (continuous batching,
prefix caching, bf16 where the CPU has it); anything else runs on ``model.generate`` in
batches sorted by length and sized by a token budget, with left padding.
"""

from __future__ import annotations

import functools
import os
import re
import secrets
from pathlib import Path
from typing import Any, Callable, Iterator

from valign.errors import ModelError
from valign.hardware import fast_dtype
from valign.models.base import BaseChatModel, GenRequest, normalise
from valign.models.lora import adapter_config, adapter_fingerprint
from valign.types import Completion, Conversation, GenConfig, TokenLogprob

DEFAULT_TOKEN_BUDGET = 16384  # prompt + new tokens per batch: ~64 short chats on a CPU
MAX_BATCH = 128
PREFIX_CACHE_MB = 512
DTYPES = ("auto", "float32", "bfloat16")


class HFChatModel(BaseChatModel):
    """A causal LM loaded with transformers, optionally with a PEFT LoRA adapter.

    Example (loads a model, so it is not run as a doctest)::

        m = HFChatModel("/models/SmolLM2-135M-Instruct", adapter="runs/demo/03-sft/adapter")
        m.generate([[{"role": "user", "content": "Hi"}]], GenConfig(max_new_tokens=16))
    """

    def __init__(
        self,
        path: str | os.PathLike,
        adapter: str | os.PathLike | None = None,
        *,
        name: str | None = None,
        load_in_4bit: bool = False,
        token_budget: int = DEFAULT_TOKEN_BUDGET,
        max_batch: int = MAX_BATCH,
        dtype: str = "auto",
        prefix_cache_mb: int = PREFIX_CACHE_MB,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.path = str(path)
        self.adapter = Path(adapter) if adapter else None
        self.token_budget = token_budget
        self.max_batch = max_batch
        if dtype not in DTYPES:
            raise ModelError(f"dtype '{dtype}' is not one of {', '.join(DTYPES)}; use auto (bf16 where the CPU has it).")
        # The compute dtype: weights load in fp32 (exactly as stored) and the engine casts.
        # A 4-bit base always computes in bf16 (bitsandbytes' compute dtype).
        self.dtype = "bfloat16" if load_in_4bit else (fast_dtype("cpu") if dtype == "auto" else dtype)
        local = Path(self.path).expanduser()
        source = str(local) if local.exists() else self.path
        kwargs: dict = {"dtype": torch.float32}
        if load_in_4bit:
            kwargs.update(four_bit_load_kwargs())
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source)
            self.model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        except OSError as e:
            where = "the folder" if local.exists() else "the model hub (not a local folder; is the hub reachable?)"
            raise ModelError(f"could not load model '{self.path}' from {where}: {str(e).splitlines()[0]}") from e
        if self.adapter is not None:
            self.model = _attach_adapter(self.model, self.adapter, merge=not load_in_4bit)
        self.model.eval()
        if self.tokenizer.chat_template is None:
            raise ModelError(f"model '{self.path}' has no chat template; use an instruct/chat checkpoint.")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.eos_ids = _eos_ids(self.tokenizer, self.model)
        from valign.models import llama_decode

        self.decoder = None
        if llama_decode.supports(self.model):
            self.decoder = llama_decode.LlamaDecoder(
                self.model, dtype=getattr(torch, self.dtype), prefix_cache_mb=prefix_cache_mb,
                token_budget=token_budget, max_batch=max_batch,
            )
        elif self.dtype == "bfloat16" and not load_in_4bit:
            self.model.to(torch.bfloat16)
        # bf16 answers differ from fp32 ones in the last digits: cached apart, same name.
        self.variant = "" if self.dtype == "float32" else self.dtype
        base = name or f"hf:{self.path}"
        if load_in_4bit:
            base += "@nf4"  # a 4-bit base answers differently: its completions are cached apart
        self.name = base if self.adapter is None else f"{base}+{self.adapter}#{adapter_fingerprint(self.adapter)}"

    # -- prompts ----------------------------------------------------------------------

    @property
    def context_length(self) -> int | None:
        """How many tokens (prompt + answer) the model was trained to attend over."""
        return getattr(self.model.config, "max_position_embeddings", None)

    def render(self, conv: Conversation, answer_prefix: str = "") -> list[int]:
        """Token ids of the chat-templated conversation, ready for the assistant's turn.

        Only the template makes special tokens: text inside a message (or the answer
        prefix) that spells one, such as ``<|im_start|>system``, is tokenised as plain
        text, so a user cannot forge a system or assistant turn.
        """
        specials = self._special_strings
        if not any(t in m["content"] for m in conv for t in specials) and not any(t in answer_prefix for t in specials):
            # The common case, byte for byte as before: one pass over the templated text.
            text = self.tokenizer.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
            return self.tokenizer(text + answer_prefix, add_special_tokens=False)["input_ids"]
        # Render with a placeholder per message, then tokenise the template's text (with
        # its special tokens) and the messages' text (without) separately.
        marks = [f"VALIGNMSG{secrets.token_hex(8)}X" for _ in conv]
        text = self.tokenizer.apply_chat_template(
            [{**m, "content": mark} for m, mark in zip(conv, marks)], add_generation_prompt=True, tokenize=False
        )
        ids: list[int] = []
        for piece in re.split("(" + "|".join(marks) + ")", text):
            if piece in marks:
                ids += self._plain_ids(conv[marks.index(piece)]["content"])
            elif piece:
                ids += self.tokenizer(piece, add_special_tokens=False)["input_ids"]
        return ids + self._plain_ids(answer_prefix)

    @functools.cached_property
    def _special_strings(self) -> tuple[str, ...]:
        tok = self.tokenizer
        added = [t.content if hasattr(t, "content") else str(t) for t in getattr(tok, "added_tokens_decoder", {}).values()]
        return tuple(sorted({*tok.all_special_tokens, *added} - {""}))

    def _plain_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"] if text else []

    def _batches(self, lengths: list[int], max_new: int) -> list[list[int]]:
        """Positions grouped into batches: longest first, each within the token budget."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        batches: list[list[int]] = []
        current: list[int] = []
        for i in order:
            width = (lengths[current[0]] if current else lengths[i]) + max_new
            if current and ((len(current) + 1) * width > self.token_budget or len(current) >= self.max_batch):
                batches.append(current)
                current = []
            current.append(i)
        if current:
            batches.append(current)
        return batches

    # -- generation -------------------------------------------------------------------

    def _generate_batches(self, requests: list[GenRequest], cfg: GenConfig) -> Iterator[list[tuple[int, Completion]]]:
        prompts = [self.render(r.messages) for r in requests]
        if self.decoder is not None:
            yield from self._decode_fast(prompts, requests, cfg)
            return
        for batch in self._batches([len(p) for p in prompts], cfg.max_new_tokens):
            outs = self._decode_generic([prompts[i] for i in batch], [requests[i] for i in batch], cfg)
            yield [(i, comp) for i, comp in zip(batch, outs)]

    def engine_info(self) -> dict[str, Any]:
        """How this model computes, for manifests: engine, dtype, and prompt tokens asked
        for against those computed (the prefix cache's saving) since the last call."""
        info: dict[str, Any] = {"engine": "valign" if self.decoder is not None else "transformers", "dtype": self.dtype}
        if self.decoder is not None:
            stats = self.decoder.cache.stats
            info["prefix_cache"] = {"prompt_tokens": stats.prompt_tokens, "computed_tokens": stats.computed_tokens,
                                    "saved": round(stats.saved, 3)}
            stats.reset()
        return info

    def _completion(self, prompt: list[int], tokens: list[int], finish: str, lps=None) -> Completion:
        text_tokens = tokens[:-1] if finish == "stop" and tokens and tokens[-1] in self.eos_ids else tokens
        logprobs = None
        if lps is not None:
            dec = self.tokenizer.decode
            logprobs = [
                TokenLogprob(token=dec([t]), logprob=lp, top=[(dec([a]), alp) for a, alp in alts]) for t, lp, alts in lps
            ]
        return Completion(
            text=self.tokenizer.decode(text_tokens, skip_special_tokens=True),
            finish_reason=finish,  # type: ignore[arg-type]
            prompt_tokens=len(prompt),
            completion_tokens=len(tokens),
            logprobs=logprobs,
        )

    def generate_steps(
        self, requests: list[GenRequest], cfg: GenConfig, cancelled: Callable[[int], bool] | None = None
    ) -> Iterator[list[tuple[int, Completion]]]:
        """On the engine: a (possibly empty) list after every decode step, and cancelled
        requests dropped at the next one (see `BaseChatModel.generate_steps`)."""
        if self.decoder is None:
            # Named, not super(): ``self`` may be a view that renders differently (serve's ContinuingView).
            yield from HFChatModel._generate_batches(self, requests, cfg)  # type: ignore[arg-type]
            return
        prompts = [self.render(r.messages) for r in requests]
        yield from self._decode_fast(prompts, requests, cfg, every_step=True, cancelled=cancelled)

    def _decode_fast(
        self, prompts: list[list[int]], reqs: list[GenRequest], cfg: GenConfig, *, every_step: bool = False,
        cancelled: Callable[[int], bool] | None = None,
    ) -> Iterator[list[tuple[int, Completion]]]:
        """All requests through the engine at once; yields them as they finish (cancelled
        ones never come back)."""
        from valign.models.llama_decode import SamplingRow

        rows = [SamplingRow(cfg.temperature, cfg.top_p, cfg.max_new_tokens, r.seed) for r in reqs]
        stream = self.decoder.stream(  # type: ignore[union-attr]
            prompts, rows, self.eos_ids, top_logprobs=cfg.logprobs, every_step=every_step, cancelled=cancelled
        )
        for done in stream:
            yield [
                (f.row, self._completion(prompts[f.row], f.tokens, f.finish, f.logprobs if cfg.logprobs else None))
                for f in done
                if f.finish != "cancelled"
            ]

    def _decode_generic(self, prompts: list[list[int]], reqs: list[GenRequest], cfg: GenConfig) -> list[Completion]:
        """Any architecture, through ``model.generate`` (seeded per batch, not per row)."""
        import torch

        pad = self.tokenizer.pad_token_id
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.model.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.model.device)
        if reqs[0].seed is not None:
            torch.manual_seed(reqs[0].seed)
        sample = cfg.temperature > 0
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=cfg.max_new_tokens,
                do_sample=sample,
                temperature=cfg.temperature if sample else None,
                top_p=cfg.top_p if sample else None,
                top_k=None,
                pad_token_id=pad,
                eos_token_id=sorted(self.eos_ids),
                output_scores=cfg.logprobs > 0,
                return_dict_in_generate=True,
            )
        results = []
        for k, p in enumerate(prompts):
            new = out.sequences[k, width:].tolist()
            stop = next((i for i, t in enumerate(new) if t in self.eos_ids), None)
            tokens = new[: stop + 1] if stop is not None else new
            lps = None
            if cfg.logprobs:
                lps = []
                for step, tok in enumerate(tokens):
                    logp = torch.log_softmax(out.scores[step][k].float(), -1)
                    top_v, top_i = logp.topk(cfg.logprobs)
                    lps.append((tok, float(logp[tok]), list(zip(top_i.tolist(), top_v.tolist()))))
            results.append(self._completion(p, tokens, "stop" if stop is not None else "length", lps))
        return results

    # -- option probabilities ---------------------------------------------------------

    def _choice_probs(self, convs: list[Conversation], options: list[str], answer_prefix: str) -> list[dict[str, float]]:
        import torch

        option_ids, cut = self._option_first_tokens(convs[0], options, answer_prefix)
        prompts = [self.render(c, answer_prefix) for c in convs]
        prompts = [p[: len(p) - cut] for p in prompts]
        results: list[dict[str, float]] = [{}] * len(prompts)
        # The engine takes every prompt at once, so prompts that share a prefix (one
        # judge template, both orders of a pair) compute it once.
        batches = [list(range(len(prompts)))] if self.decoder is not None else self._batches([len(p) for p in prompts], 1)
        for batch in batches:
            batch_prompts = [prompts[i] for i in batch]
            if self.decoder is not None:
                logits = self.decoder.logits_last(batch_prompts)
            else:
                logits = self._logits_generic(batch_prompts)
            probs = torch.softmax(logits.float(), dim=-1)
            for row, i in enumerate(batch):
                results[i] = normalise({o: float(probs[row, t]) for o, t in option_ids.items()})
        return results

    def _option_first_tokens(self, conv: Conversation, options: list[str], prefix: str) -> tuple[dict[str, int], int]:
        """The token each option starts with, in context, and how many prompt tokens to cut.

        A prefix that ends in a space ("The answer is ") tokenises differently once the
        option follows: " A" becomes one token. Scoring "…is " + "A" would then read a
        token the model never produces there, so the merged tail is cut from the prompt
        and the merged token (" A") is read instead.
        """
        base = self.render(conv, prefix)
        first: dict[str, int] = {}
        cuts: set[int] = set()
        for o in options:
            full = self.render(conv, prefix + o)
            k = next((i for i, (a, b) in enumerate(zip(base, full)) if a != b), len(base))
            if k >= len(full):
                raise ModelError(f"option {o!r} adds no token after the prompt; use non-empty options.")
            first[o] = full[k]
            cuts.add(len(base) - k)
        if len(cuts) > 1:
            raise ModelError(
                f"options {options!r} merge differently with the end of the answer prefix {prefix!r}; "
                "end the prefix with a bracket or colon instead, e.g. 'The answer is: ('."
            )
        clashes = {t for t in first.values() if list(first.values()).count(t) > 1}
        if clashes:
            same = [o for o, t in first.items() if t in clashes]
            raise ModelError(
                f"options {same!r} start with the same token, so their probabilities cannot be told apart; "
                "use options that differ in their first token, such as 'A' and 'B'."
            )
        return first, cuts.pop()

    def _logits_generic(self, prompts: list[list[int]]):
        import torch

        pad = self.tokenizer.pad_token_id
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.model.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.model.device)
        with torch.inference_mode():
            return self.model(input_ids=ids, attention_mask=mask, logits_to_keep=1).logits[:, -1].cpu()


def _eos_ids(tokenizer, model) -> set[int]:
    ids: set[int] = set()
    for source in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(int(x) for x in source)
    for tok in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid is not None and tid >= 0:
            ids.add(tid)
    return ids


def four_bit_load_kwargs(for_training: bool = False) -> dict:
    """``from_pretrained`` arguments for a 4-bit NF4 base (QLoRA) through bitsandbytes.

    bitsandbytes runs NF4 on CUDA and on CPUs, computing in bf16. Where the weights go:
    every GPU in one process (``auto``); this process's own GPU when several processes
    train data-parallel; nowhere yet under FSDP, which shards the model itself and wants
    the 4-bit weights stored as bf16 (``bnb_4bit_quant_storage``) to flatten them with
    the rest; the CPU without a GPU.
    """
    import importlib.util

    import torch

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError("4-bit loading needs bitsandbytes; run `pip install bitsandbytes` or drop `load_in_4bit`/`qlora`.")
    from transformers import BitsAndBytesConfig

    from valign import distributed

    fsdp = for_training and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and torch.cuda.is_available()
    if not torch.cuda.is_available():
        device_map: Any = "cpu"
    elif fsdp:
        device_map = None
    elif for_training and distributed.world_size() > 1:
        device_map = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    else:
        device_map = "auto"
    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
            **({"bnb_4bit_quant_storage": torch.bfloat16} if fsdp else {}),
        ),
        "dtype": torch.bfloat16,
        **({"device_map": device_map} if device_map is not None else {}),
    }


def _attach_adapter(model, adapter: Path, merge: bool):
    adapter_config(adapter)  # one sentence when the folder holds no adapter
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(model, str(adapter))
    # Merged weights give identical outputs and let the fast decoder run the model.
    return peft_model.merge_and_unload() if merge else peft_model
