"""Without vLLM installed, ``vllm:`` specs fail with one sentence saying how to get it."""

from __future__ import annotations

import sys

import pytest

from valign.errors import ModelError
from valign.models.registry import load_model


def test_vllm_spec_without_vllm_names_the_extra(monkeypatch):
    # A None entry in sys.modules makes `import vllm` raise ImportError, so this runs
    # (rather than skips) on a machine that has the optional extra installed too.
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ModelError, match=r"valign\[vllm\]") as err:
        load_model("vllm:some/model")
    assert "vllm:some/model" in str(err.value)
