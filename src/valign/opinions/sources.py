"""Where a conversion's input comes from: a file or folder on disk, or a hub id already cached.

No hub can be reached from valign's machines, so a hub id (``Anthropic/llm_global_opinions``)
is looked up only in the local Hugging Face cache (``huggingface_hub.snapshot_download``
with ``local_files_only=True``: it reads the cache and never opens a connection). A hub
id that is not cached is one sentence naming where to download the data.

Example:
    >>> looks_like_hub_id("Anthropic/llm_global_opinions"), looks_like_hub_id("data/goqa.csv")
    (True, False)
"""

from __future__ import annotations

import re
from pathlib import Path

from valign.errors import ValignError

__all__ = ["looks_like_hub_id", "resolve_source"]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_hub_id(source: str) -> bool:
    """``owner/name`` with no file suffix: what a hub id looks like (a path that exists wins)."""
    return bool(_HUB_ID.match(source)) and Path(source).suffix.lower() not in (".csv", ".jsonl", ".json", ".parquet", ".sav", ".dta")


def resolve_source(source: str | Path, fmt: str, download: str, cache_dir: Path | None = None) -> Path:
    """The local path of ``source``: itself when it exists, else the cached snapshot of a hub id.

    ``download`` says where the data set is published (the sentence a missing one gets);
    ``cache_dir`` overrides the Hugging Face cache folder (tests).
    """
    path = Path(source)
    if path.exists():
        return path
    text = str(source)
    if not looks_like_hub_id(text):
        raise ValignError(f"{text} does not exist; give the path of a {fmt} file or folder.")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=text, repo_type="dataset", local_files_only=True, cache_dir=str(cache_dir) if cache_dir else None))
    except Exception:  # noqa: BLE001 — any failure here means "not cached"; the fix is the same
        raise ValignError(f"{text} is neither a file nor a data set in the local Hugging Face cache, and no hub can be reached from here; "
                          f"download it ({download}) and pass the downloaded file or folder instead.") from None
