"""valign: align a chat model to explicit human values and measure whether it worked.

Example (loads the embedded model, so it is not run as a doctest)::

    from valign import load_model, GenConfig
    model = load_model("embedded")
    model.generate([[{"role": "user", "content": "Is it ever right to lie?"}]], GenConfig(max_new_tokens=64))[0].text
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# Public names and the module that defines each; imported on first use so that
# `import valign` (and `valign --help`) never pays for torch or transformers.
_EXPORTS = {
    "GenConfig": "valign.types",
    "Completion": "valign.types",
    "Conversation": "valign.types",
    "Message": "valign.types",
    "TokenLogprob": "valign.types",
    "ChatModel": "valign.models.base",
    "load_model": "valign.models.registry",
    "CompletionCache": "valign.cache",
    "RunConfig": "valign.config",
    "load_config": "valign.config",
    "run_pipeline": "valign.pipeline",
    "ValignError": "valign.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'valign' has no attribute {name!r}")
