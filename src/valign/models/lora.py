"""A LoRA adapter folder (PEFT's ``adapter_config.json`` + ``adapter_model.*``) as the
engines see it: a fingerprint of its weights, and the rank an engine must allow.

Every backend that applies adapters names them by the same fingerprint — the local
``hf:`` backend in its cache keys, vLLM (in-process or served) in the adapter's name —
so a retrained adapter never reuses a stale cache entry or a stale served copy.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from valign.errors import ModelError

# The values vLLM's ``max_lora_rank`` (``--max-lora-rank``) accepts: vllm/config/lora.py, 0.32.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def adapter_fingerprint(adapter: Path) -> str:
    """Short hash of an adapter's weights and config.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     config = Path(folder) / "adapter_config.json"
        ...     _ = config.write_text('{"r": 8}')
        ...     before = adapter_fingerprint(Path(folder))
        ...     _ = config.write_text('{"r": 16}')
        ...     len(before), before == adapter_fingerprint(Path(folder))
        (10, False)
    """
    h = hashlib.sha256()
    for f in sorted(adapter.glob("adapter_model.*")) + sorted(adapter.glob("adapter_config.json")):
        h.update(f.read_bytes())
    return h.hexdigest()[:10]


def adapter_config(adapter: Path) -> dict:
    """The adapter's ``adapter_config.json``, or one sentence saying it is not an adapter."""
    path = adapter / "adapter_config.json"
    if not path.is_file():
        raise ModelError(f"no LoRA adapter at {adapter} (adapter_config.json is missing); check the path.")
    return json.loads(path.read_text())


def adapter_rank(adapter: Path) -> int:
    """The largest LoRA rank in the adapter (``r`` and any per-module ``rank_pattern``)."""
    cfg = adapter_config(adapter)
    return max([int(cfg.get("r") or 0), *(int(v) for v in (cfg.get("rank_pattern") or {}).values())])


def vllm_rank_limit(rank: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds an adapter of this rank.

    Example:
        >>> vllm_rank_limit(12)
        16
    """
    return next((r for r in VLLM_LORA_RANKS if r >= rank), rank)
