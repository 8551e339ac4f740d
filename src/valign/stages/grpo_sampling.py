"""Where the `grpo` stage samples its answers: on valign's engine here, or on the run's vLLM servers.

* `EngineSampler` samples on valign's own engine (`valign.models.llama_decode`: batched
  decoding with prefix caching) in every process. After each optimizer step it builds
  the engine afresh from the model being trained, its LoRA update added to the frozen
  weights (`merged_lora_weight`; the trained model itself stays unmerged), so every
  answer comes from the policy as it is now. The engine computes in the precision the
  stage trains in. Models the engine does not run (not Llama-family, 4-bit bases, GPUs)
  fall back to TRL's own generation (transformers' ``generate``), which on a CPU was
  several times slower: it spent 85% of a GRPO step there.
* `ServedSampler` samples on the vLLM servers the run already uses for its ``run:``
  models (``backends.adapters_on``; `valign.models.served_adapters`): after every
  optimizer step the main process saves the adapter as it now is
  (``sampling/step-<n>/``), loads it into each server under a name made from its
  weights (``POST /v1/load_lora_adapter``), and unloads the previous step's; every
  process then sends its prompts as token ids to ``/v1/completions`` and reads the
  sampled token ids back (vLLM's ``return_tokens_as_token_ids``), so TRL trains on
  exactly the tokens the server sampled. This is TRL's "server mode" with valign's
  hot-loaded adapters in place of TRL's NCCL weight transfer, which needs GPUs.

``sampler: auto`` samples on the servers when the run has them, here otherwise.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from valign import distributed
from valign.errors import ValignError

if TYPE_CHECKING:
    from valign.config import RunConfig

__all__ = ["Sampler", "LocalSampler", "ServedSampler", "choose_sampler", "served_on", "token_ids", "step_seed"]


class Sampler:
    """Generates a step's answers, or returns None to leave it to TRL."""

    def generate(self, trainer: Any, prompt_ids: list[list[int]]) -> tuple[list[list[int]], None] | None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"where": "local", "engine": "transformers (TRL)"}

    def close(self, stage_dir: Path) -> None:
        """After training: let go of what sampling held."""


class LocalSampler(Sampler):
    """valign's engine in this process where it runs the model, else TRL's generation."""

    def __init__(self) -> None:
        self._decoder: Any = None
        self._step = -1
        self.engine_steps = 0  # steps sampled on the engine (the rest fell back to TRL)

    def describe(self) -> dict[str, Any]:
        engine = "valign's engine (llama_decode)" if self.engine_steps else "transformers (TRL)"
        return {"where": "local", "engine": engine, "engine_steps": self.engine_steps}

    def generate(self, trainer: Any, prompt_ids: list[list[int]]) -> tuple[list[list[int]], None] | None:
        import torch

        from valign.models import llama_decode

        model = trainer.accelerator.unwrap_model(trainer.model)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        if not llama_decode.supports(base, adapter_merged=True):
            return None
        if trainer.state.global_step != self._step or self._decoder is None:
            dtype = torch.bfloat16 if trainer.args.bf16 else torch.float32
            # A fresh engine (and prefix cache) per step: the weights changed.
            self._decoder = llama_decode.LlamaDecoder(base, dtype=dtype, weight_of=llama_decode.merged_lora_weight())
            self._step = trainer.state.global_step
        args = trainer.args
        seed = step_seed(args.seed, trainer.state.global_step)
        rows = [llama_decode.SamplingRow(args.temperature, args.top_p, args.max_completion_length, seed + n)
                for n in range(len(prompt_ids))]
        self.engine_steps += 1
        return self._decoder.generate(prompt_ids, rows, set(trainer.eos_token_ids)).tokens, None


def step_seed(seed: int, step: int) -> int:
    """Sampling seed of one process at one step: every step and process draws afresh,
    and a resumed run redraws the same answers.

    Example:
        >>> step_seed(0, 3) != step_seed(0, 4)
        True
    """
    return (seed * 100_003 + step * 1_009 + distributed.rank() * 7_919) * 1_000


def served_on(run_config: "RunConfig") -> str | None:
    """The ``openai:<base>@<urls>`` servers ``run:`` models are sampled on, or None.

    Example:
        >>> from valign.config import RunConfig
        >>> served_on(RunConfig(name="x")) is None
        True
    """
    on = run_config.backends.adapters_on
    if on == "auto":
        return run_config.model if run_config.model.startswith("openai:") else None
    return on if on is not None and on.startswith("openai:") else None


def choose_sampler(setting: Literal["auto", "local", "served"], run_config: "RunConfig") -> Sampler:
    """The sampler ``grpo.sampler`` names (``auto``: served when the run has servers)."""
    on = served_on(run_config)
    if setting == "served" and on is None:
        raise ValignError(
            "grpo.sampler is served but the run names no vLLM server for its adapters; "
            "set backends.adapters_on (auto with an openai: model, or openai:<base>@<url>), or grpo.sampler: local."
        )
    if setting == "local" or on is None:
        return LocalSampler()
    env = run_config.backends.for_spec(on).get("api_key_env", "OPENAI_API_KEY")
    return ServedSampler(on=on, api_key_env=env)


def token_ids(tokens: list[str]) -> list[int]:
    """Token ids from vLLM's ``return_tokens_as_token_ids`` logprob tokens (``"token_id:42"``).

    Example:
        >>> token_ids(["token_id:42", "token_id:7"])
        [42, 7]
    """
    out = []
    for t in tokens:
        head, _, number = t.rpartition(":")
        if head != "token_id" or not number.lstrip("-").isdigit():
            raise ValignError(f"the vLLM server returned token {t!r}, not 'token_id:<n>'; it must be vLLM 0.6 or newer.")
        out.append(int(number))
    return out


@dataclass
class ServedSampler(Sampler):
    """Sampling on vLLM servers that load the adapter as it trains (see the module)."""

    on: str
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 600.0
    concurrency: int = 16
    _step: int = -1
    _name: str | None = None
    _urls: list[str] = field(default_factory=list)
    loads: int = 0

    def describe(self) -> dict[str, Any]:
        return {"where": "served", "engine": "vLLM (adapters loaded at runtime)", "servers": self.on, "adapter_loads": self.loads}

    def close(self, stage_dir: Path) -> None:
        """Unload the last step's adapter from the servers and remove the copies (the
        trained adapter is the stage's ``adapter/``; evaluate loads that one)."""
        from valign.models.served_adapters import unload_adapter

        if distributed.is_main():
            if self._name is not None:
                unload_adapter(self.on, self._name, api_key_env=self.api_key_env)
            shutil.rmtree(stage_dir / "sampling", ignore_errors=True)
        self._name = None

    def generate(self, trainer: Any, prompt_ids: list[list[int]]) -> tuple[list[list[int]], None]:
        if trainer.state.global_step != self._step:
            self._publish(trainer)
            self._step = trainer.state.global_step
        args = trainer.args
        body = {
            "model": self._name,
            "max_tokens": args.max_completion_length,
            "temperature": args.temperature,
            "top_p": args.top_p,
            "logprobs": 0,
            "return_tokens_as_token_ids": True,
        }
        seed = step_seed(args.seed, trainer.state.global_step)
        import asyncio

        return asyncio.run(self._complete(prompt_ids, body, seed)), None

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {os.environ.get(self.api_key_env) or 'EMPTY'}"}

    async def _complete(self, prompt_ids: list[list[int]], body: dict[str, Any], seed: int) -> list[list[int]]:
        import asyncio

        import httpx

        limit = asyncio.Semaphore(self.concurrency)

        async def one(client: httpx.AsyncClient, n: int, ids: list[int]) -> list[int]:
            url = self._urls[n % len(self._urls)]
            async with limit:
                resp = await client.post(f"{url}/completions", json={**body, "prompt": ids, "seed": seed + n})
            if resp.status_code != 200:
                raise ValignError(f"{url} refused a GRPO sampling request ({resp.status_code}: {resp.text[:200]}); check the server's log.")
            choice = resp.json()["choices"][0]
            return token_ids(choice["logprobs"]["tokens"])

        async with httpx.AsyncClient(timeout=self.timeout, headers=self._headers()) as client:
            return list(await asyncio.gather(*(one(client, n, ids) for n, ids in enumerate(prompt_ids))))

    def _publish(self, trainer: Any) -> None:
        """Put the adapter as it is now on the servers (main process), and drop the last one."""
        from valign.models.openai_api import parse_openai_spec
        from valign.models.served_adapters import serve_stage_adapter, served_name, unload_adapter

        stage_dir = Path(trainer.args.output_dir).parent
        folder = stage_dir / "sampling" / f"step-{trainer.state.global_step}"
        _, urls = parse_openai_spec(self.on)
        self._urls = [u.rstrip("/") for u in urls]
        if distributed.is_main():
            model = trainer.accelerator.unwrap_model(trainer.model)
            model.save_pretrained(folder, selected_adapters=["default"])
            served = serve_stage_adapter(stage_dir, folder, self.on, api_key_env=self.api_key_env)
            self.loads += 1
            if self._name is not None and self._name != served.name:
                unload_adapter(self.on, self._name, api_key_env=self.api_key_env)
            previous = stage_dir / "sampling" / f"step-{self._step}"
            if self._step >= 0 and previous != folder:
                shutil.rmtree(previous, ignore_errors=True)
        distributed.barrier()
        self._name = served_name(stage_dir, folder.resolve())
