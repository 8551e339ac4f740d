"""Without vLLM installed, ``vllm:`` specs fail with one sentence saying how to get it."""

from __future__ import annotations

import importlib.util

import pytest

from valign.errors import ModelError
from valign.models.registry import load_model


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_spec_without_vllm_names_the_extra():
    with pytest.raises(ModelError, match=r"valign\[vllm\]") as err:
        load_model("vllm:some/model")
    assert "vllm:some/model" in str(err.value)
