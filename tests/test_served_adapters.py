"""Putting a training stage's adapter on servers (`valign.models.served_adapters`) against
servers that answer the way vLLM 0.32's source answers, and ``valign serve`` (which has
no runtime-adapter endpoint); the run-config switch (``backends.adapters_on``). The
same code against a real vLLM server: tests/test_vllm_served.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tests.conftest import ScriptedModel, load_seed_config
from valign.config import load_config
from valign.errors import ConfigError, ModelError
from valign.models.registry import load_model
from valign.models.served_adapters import serve_stage_adapter, served_name
from valign.serve import create_app, serve_in_background


def finished_stage(root: Path, rank: int = 8) -> Path:
    """A finished training stage folder as valign writes one: manifest + adapter."""
    stage = root / "demo-run" / "03-sft"
    (stage / "adapter").mkdir(parents=True)
    (stage / "adapter" / "adapter_config.json").write_text(json.dumps({"r": rank, "peft_type": "LORA"}))
    (stage / "adapter" / "adapter_model.safetensors").write_bytes(b"weights")
    (stage / "manifest.json").write_text(json.dumps({"fingerprint": "fp", "model": {"base": "embedded", "adapter": "adapter"}}))
    return stage


def vllm_like(base: str = "smol", *, load: str = "ok", list_loaded: bool = True) -> tuple[FastAPI, list[dict]]:
    """An app with vLLM's /v1/models and /v1/load_lora_adapter answers; records each POST body.

    ``load``: "ok" loads, "already" says it is loaded already (a race), "lora-off" is
    an engine started without --enable-lora, "unreadable" cannot read the path.
    """
    app, posts, loaded = FastAPI(), [], []

    @app.get("/v1/models")
    def models() -> dict:
        names = [base] + (loaded if list_loaded else [])
        return {"object": "list", "data": [{"id": n, "object": "model"} for n in names]}

    @app.post("/v1/load_lora_adapter")
    async def load_adapter(request: Request):
        body = await request.json()
        posts.append(body)
        if load == "already":
            msg = f"The lora adapter '{body['lora_name']}' has already been loaded. If you want to load the adapter in place, set 'load_inplace' to True."
            return JSONResponse({"error": {"message": msg, "type": "InvalidUserInput", "param": None, "code": 400}}, 400)
        if load == "lora-off":
            msg = "Call to add_lora method failed: Worker failed with error 'LoRA is not enabled. Use --enable-lora to enable LoRA.', please check the stack trace above for the root cause"
            return JSONResponse({"error": {"message": msg, "type": "InternalServerError", "param": None, "code": 500}}, 500)
        if load == "unreadable":
            msg = f"Loading lora {body['lora_name']} failed: No adapter found for {body['lora_path']}"
            return JSONResponse({"error": {"message": msg, "type": "NotFoundError", "param": None, "code": 404}}, 404)
        loaded.append(body["lora_name"])
        return JSONResponse(f"Success: LoRA adapter '{body['lora_name']}' added successfully.")

    return app, posts


def test_the_adapter_goes_to_every_server_once_and_is_sampled_there(tmp_path):
    stage = finished_stage(tmp_path)
    (app1, posts1), (app2, posts2) = vllm_like(), vllm_like()
    with serve_in_background(app1) as url1, serve_in_background(app2) as url2:
        spec = f"openai:smol@{url1},{url2}"
        first = serve_stage_adapter(stage, stage / "adapter", spec)
        name = served_name(stage, stage / "adapter")
        assert name.startswith("demo-run-03-sft-") and first.name == name
        assert first.spec == f"openai:{name}@{url1},{url2}" and first.loaded_on == [url1, url2]
        want = {"lora_name": name, "lora_path": str((stage / "adapter").resolve())}
        assert posts1 == [want] and posts2 == [want], "one POST per server, with the absolute path the server reads"
        # A resumed run resolves it again: both servers list it, nothing is posted.
        again = serve_stage_adapter(stage, stage / "adapter", spec)
        assert again.spec == first.spec and again.loaded_on == [] and again.already_on == [url1, url2]
        assert len(posts1) == len(posts2) == 1
        # The registry's run: path, as a run's ModelPool calls it.
        model = load_model(f"run:{stage}", adapters_on=spec, concurrency=2)
        assert model.name == first.spec and model.base_urls == [url1, url2]
    # Retrained weights get a new name, so no server keeps sampling the old copy.
    (stage / "adapter" / "adapter_model.safetensors").write_bytes(b"retrained")
    assert served_name(stage, stage / "adapter") != name


def test_already_loaded_by_another_process_counts_as_loaded(tmp_path):
    stage = finished_stage(tmp_path)
    app, posts = vllm_like(load="already", list_loaded=False)
    with serve_in_background(app) as url:
        served = serve_stage_adapter(stage, stage / "adapter", f"openai:smol@{url}")
    assert len(posts) == 1 and served.loaded_on == [] and served.already_on == [url]


@pytest.mark.parametrize("where", ["valign serve", "lora-off"])
def test_a_server_without_runtime_adapters_gets_one_sentence(tmp_path, where):
    stage = finished_stage(tmp_path, rank=12)
    # `valign serve` has no /v1/load_lora_adapter (404, as vLLM without
    # VLLM_ALLOW_RUNTIME_LORA_UPDATING); "lora-off" is vLLM started without --enable-lora.
    app = create_app(ScriptedModel(name="smol"), model_name="smol", chat_page=False) if where == "valign serve" else vllm_like(load="lora-off")[0]
    with serve_in_background(app) as url, pytest.raises(ModelError) as err:
        serve_stage_adapter(stage, stage / "adapter", f"openai:smol@{url}")
    text = str(err.value)
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True" in text and "--enable-lora" in text
    assert "--max-lora-rank 16" in text, "the smallest rank vLLM accepts that holds r=12"
    assert url in text and text.count(". ") == 0 and text.endswith("."), "one sentence"


def test_unreadable_adapter_wrong_base_and_unfinished_stages(tmp_path):
    stage = finished_stage(tmp_path)
    app, _ = vllm_like(load="unreadable")
    with serve_in_background(app) as url:
        with pytest.raises(ModelError, match="same path"):
            serve_stage_adapter(stage, stage / "adapter", f"openai:smol@{url}")
        with pytest.raises(ModelError, match=r"serves \['smol'\], not 'llama'"):
            serve_stage_adapter(stage, stage / "adapter", f"openai:llama@{url}")
    with pytest.raises(ModelError, match="has not finished"):
        load_model(f"run:{tmp_path / 'nowhere'}", adapters_on="openai:smol@http://127.0.0.1:9/v1")
    (stage / "manifest.json").write_text(json.dumps({"model": {"base": "hf:some/model"}}))
    with pytest.raises(ModelError, match="produced no adapter"):
        load_model(f"run:{stage}", adapters_on="openai:smol@http://127.0.0.1:9/v1")
    with pytest.raises(ModelError, match="names no engine"):
        load_model(f"run:{stage}", adapters_on="gpu1:8000")


def test_adapters_on_in_the_run_config(tmp_path):
    cfg = load_config("configs/kantian-demo.yaml", ["backends.adapters_on=openai:smol@http://gpu1:8000/v1,http://gpu2:8000/v1"])
    opts = cfg.backends.for_spec("run:runs/kantian-demo/03-sft")
    assert opts["adapters_on"] == "openai:smol@http://gpu1:8000/v1,http://gpu2:8000/v1" and opts["concurrency"] == 16
    assert "token_budget" not in opts, "a served run: model takes the openai options"
    assert "adapters_on" not in cfg.backends.for_spec("embedded")
    assert "adapters_on" not in load_config("configs/kantian-demo.yaml").backends.for_spec("run:x"), "off by default"
    with pytest.raises(ConfigError, match="must be an openai: server"):
        load_config("configs/kantian-demo.yaml", ["backends.adapters_on=auto"])
    with pytest.raises(ConfigError, match="use null, auto, vllm"):
        load_config("configs/kantian-demo.yaml", ["backends.adapters_on=gpu1:8000"])
    vllm_demo = load_config("configs/kantian-vllm-demo.yaml")
    assert vllm_demo.backends.adapters_on == vllm_demo.model and vllm_demo.sft.model == vllm_demo.dpo.model == "embedded"


def test_the_seed_setting_needs_no_server_restart():
    cfg = load_seed_config()
    assert cfg.backends.adapters_on == cfg.model, "auto: run: models go to the generation server"
    assert cfg.pairs.model is None and cfg.evaluate.tuned is None, "pairs and evaluate sample run:<sft> and run:<dpo>"
    opts = cfg.backends.for_spec("run:runs/kantian-llama70b/03-sft")
    assert opts["api_key_env"] == "VLLM_API_KEY" and opts["adapters_on"] == cfg.model
    text = Path("configs/kantian-llama70b.yaml").read_text()
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True" in text and "--enable-lora" in text and "--lora-modules" not in text
