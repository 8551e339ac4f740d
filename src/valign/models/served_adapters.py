"""Put a finished training stage's LoRA adapter on the vLLM servers a run samples from.

When a run generates through vLLM servers (``openai:<base>@<url>[,<url>…]``), the
models its training stages produce (``run:<sft folder>`` for pairs, ``run:<dpo folder>``
for evaluate's tuned model) should be sampled there too, without restarting anything:
vLLM loads an adapter at runtime with ``POST /v1/load_lora_adapter`` (when started
with ``--enable-lora`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``) and then serves it
as one more model name. The name is derived from the adapter's weights
(`adapter_fingerprint`), so a resumed run finds it in ``GET /v1/models`` and loads
nothing twice, and a retrained adapter gets a new name instead of a stale copy.

The server reads the adapter from *its* filesystem, at the absolute path valign sends:
the run folder must be on storage the servers see at the same path (one machine, or a
shared file system).

vLLM's answers, as its 0.32 source gives them: 200 with "Success: …"; 400 "… has
already been loaded …" (another process won the race: fine); 404 ``{"detail": "Not
Found"}`` when runtime updating is off (the route does not exist); 500 "LoRA is not
enabled. Use --enable-lora …" when the engine has no LoRA slots; 404 "No adapter found
for <path>" when the server cannot read the path; 500 "LoRA rank R is greater than
max_lora_rank M".
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from valign.errors import ModelError
from valign.models.lora import adapter_fingerprint, adapter_rank, vllm_rank_limit
from valign.models.openai_api import parse_openai_spec

TIMEOUT = 120.0  # seconds: loading a 70B model's adapter on a busy server takes a while


@dataclass
class ServedAdapter:
    """A stage's adapter on a set of servers: the spec to sample it, and what this call did.

    ``loaded_on`` lists the URLs this call loaded it into; ``already_on`` those that
    had it before (a resumed run, or another process that got there first).
    """

    spec: str
    name: str
    path: Path
    loaded_on: list[str] = field(default_factory=list)
    already_on: list[str] = field(default_factory=list)


def served_name(stage_dir: Path, adapter: Path) -> str:
    """The model name a stage's adapter is served under: run, stage and weights' fingerprint.

    Example (the name ends in `adapter_fingerprint` of the adapter's files):
        >>> served_name(Path("runs/kantian-vllm-demo/03-sft"), Path("runs/kantian-vllm-demo/03-sft/adapter"))
        'kantian-vllm-demo-03-sft-...'
    """
    stage_dir = stage_dir.resolve()
    label = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{stage_dir.parent.name}-{stage_dir.name}").strip("-")
    return f"{label}-{adapter_fingerprint(adapter)}"


def serve_stage_adapter(
    stage_dir: Path, adapter: Path, on: str, *, api_key_env: str = "OPENAI_API_KEY", timeout: float = TIMEOUT
) -> ServedAdapter:
    """Load ``adapter``, which the training stage ``stage_dir`` produced, into every server
    of ``on`` (``openai:<served base>@<url>[,<url>…]``) unless it is there already, and
    return the ``openai:<adapter name>@<urls>`` spec that samples it.

    Example (needs the server, so it is not run as a doctest)::

        served = serve_stage_adapter(Path("runs/demo/03-sft"), Path("runs/demo/03-sft/adapter"), "openai:smol@http://127.0.0.1:8000/v1")
        served.spec  # 'openai:demo-03-sft-<adapter fingerprint>@http://127.0.0.1:8000/v1'
    """
    base_name, urls = parse_openai_spec(on)
    adapter = adapter.resolve()
    name = served_name(stage_dir, adapter)
    rank = adapter_rank(adapter)
    headers = {"Authorization": f"Bearer {os.environ.get(api_key_env) or 'EMPTY'}"}
    served = ServedAdapter(spec=f"openai:{name}@{','.join(urls)}", name=name, path=adapter)
    import httpx

    with httpx.Client(timeout=timeout, headers=headers) as client:
        for url in (u.rstrip("/") for u in urls):
            models = _served_models(client, url)
            if base_name not in models:
                raise ModelError(f"{url} serves {sorted(models)}, not '{base_name}'; fix the model name in {on}.")
            if name in models:
                served.already_on.append(url)
            elif _load(client, url, name, adapter, rank):
                served.loaded_on.append(url)
            else:
                served.already_on.append(url)
    return served


def _served_models(client: Any, url: str) -> set[str]:
    """The model names a server answers to (``GET /v1/models``): bases and loaded adapters."""
    import httpx

    try:
        resp = client.get(f"{url}/models")
    except httpx.HTTPError as e:
        raise ModelError(f"could not reach {url} to load an adapter ({type(e).__name__}: {e}); check that the server is up and the URL ends in /v1.") from e
    if resp.status_code != 200:
        raise ModelError(f"{url}/models answered {resp.status_code} ({_message(resp)}); check the URL and the key in the api_key_env variable.")
    return {m.get("id") for m in resp.json().get("data", []) if isinstance(m, dict)}


def _load(client: Any, url: str, name: str, adapter: Path, rank: int) -> bool:
    """POST the adapter to one server; True if it was loaded now, False if it already was."""
    import httpx

    try:
        resp = client.post(f"{url}/load_lora_adapter", json={"lora_name": name, "lora_path": str(adapter)})
    except httpx.HTTPError as e:
        raise ModelError(f"could not reach {url} to load adapter {adapter} ({type(e).__name__}: {e}); check that the server is up.") from e
    if resp.status_code == 200:
        return True
    message = _message(resp)
    if resp.status_code == 400 and "already been loaded" in message:
        return False  # another process loaded it between our GET and our POST
    fit = vllm_rank_limit(rank)
    if resp.status_code == 404 and "No adapter found" in message:
        raise ModelError(
            f"{url} cannot read the adapter at {adapter} ({message}); the server must see the run folder at the same "
            "path (same machine or a shared file system)."
        )
    if resp.status_code in (404, 405) or "LoRA is not enabled" in message:
        why = "its engine has no LoRA" if "LoRA is not enabled" in message else f"POST /v1/load_lora_adapter answered {resp.status_code}"
        raise ModelError(
            f"{url} does not load LoRA adapters at runtime ({why}); start vLLM with "
            f"VLLM_ALLOW_RUNTIME_LORA_UPDATING=True in its environment and --enable-lora --max-lora-rank {fit}, "
            "or set backends.adapters_on to null to sample run: models on this machine."
        )
    if "max_lora_rank" in message:
        raise ModelError(f"{url} refused adapter {adapter} of rank {rank} ({message}); restart vLLM with --max-lora-rank {fit} or more.")
    raise ModelError(f"{url} could not load adapter {adapter} ({resp.status_code}: {message}); check the server's log.")


def _message(resp: Any) -> str:
    """The error text of a server's answer (vLLM's ``{"error": {"message"}}``, FastAPI's ``{"detail"}``)."""
    try:
        body = resp.json()
    except ValueError:
        return (resp.text or "").strip().splitlines()[0][:200] if resp.text.strip() else f"HTTP {resp.status_code}"
    if isinstance(body, dict):
        inner = body.get("error", body)
        text = inner.get("message") or inner.get("detail") if isinstance(inner, dict) else inner
        if text:
            return str(text).splitlines()[0][:300]
    return str(body)[:200]



def unload_adapter(on: str, name: str, *, api_key_env: str = "OPENAI_API_KEY", timeout: float = TIMEOUT) -> None:
    """Unload an adapter from every server of ``on`` (``POST /v1/unload_lora_adapter``),
    so a stage that publishes a new adapter every step (grpo) keeps one on each server.
    An adapter a server no longer has is fine; any other refusal is an error."""
    import httpx

    _, urls = parse_openai_spec(on)
    headers = {"Authorization": f"Bearer {os.environ.get(api_key_env) or 'EMPTY'}"}
    with httpx.Client(timeout=timeout, headers=headers) as client:
        for url in (u.rstrip("/") for u in urls):
            try:
                resp = client.post(f"{url}/unload_lora_adapter", json={"lora_name": name})
            except httpx.HTTPError as e:
                raise ModelError(f"could not reach {url} to unload adapter {name} ({type(e).__name__}: {e}); check that the server is up.") from e
            if resp.status_code != 200 and not (resp.status_code in (400, 404) and "not" in _message(resp).lower()):
                raise ModelError(f"{url} could not unload adapter {name} ({resp.status_code}: {_message(resp)}); check the server's log.")
