"""Where vLLM is not installed (valign's own environment: vLLM lives in .venv-vllm), ``vllm:``
specs fail with one sentence saying where it is and what to use instead."""

from __future__ import annotations

import sys

import pytest

from valign.errors import ModelError
from valign.models.registry import load_model


def test_vllm_spec_without_vllm_names_its_environment(monkeypatch):
    # A None entry in sys.modules makes `import vllm` raise ImportError, so this runs
    # (rather than skips) in an environment that has vLLM installed too (.venv-vllm).
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ModelError, match="make vllm-env") as err:
        load_model("vllm:some/model")
    assert "vllm:some/model" in str(err.value) and "openai:<name>@<url>" in str(err.value)
