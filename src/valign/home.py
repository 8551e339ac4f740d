"""Where valign keeps prepared models and other per-user state (``VALIGN_HOME``)."""

from __future__ import annotations

import os
from pathlib import Path


def valign_home() -> Path:
    """The cache folder: ``$VALIGN_HOME``, else ``~/.cache/valign``.

    Example:
        >>> from unittest import mock
        >>> with mock.patch.dict(os.environ, {"VALIGN_HOME": "/srv/valign"}):
        ...     valign_home() / "models"
        PosixPath('/srv/valign/models')
    """
    return Path(os.environ.get("VALIGN_HOME") or Path.home() / ".cache" / "valign").expanduser()
