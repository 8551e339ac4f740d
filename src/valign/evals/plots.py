"""Plotting for the report: matplotlib set up for files, and the two models' colours.

Every chart of the report draws base in `BASE_COLOR` and tuned in `TUNED_COLOR`;
`ReportEnv.figure` embeds a finished figure in the HTML.

Example:
    >>> fig, ax = pyplot().subplots()
    >>> _ = ax.bar([0, 1], [0.4, 0.6], color=[BASE_COLOR, TUNED_COLOR])
    >>> pyplot().close(fig)
"""

from __future__ import annotations

from typing import Any

__all__ = ["BASE_COLOR", "TUNED_COLOR", "role_color", "pyplot"]

BASE_COLOR = "#7a869a"
TUNED_COLOR = "#0b5fce"


def role_color(role: str) -> str:
    """The colour of a role's bars and lines.

    Example:
        >>> role_color("tuned") == TUNED_COLOR
        True
    """
    return BASE_COLOR if role == "base" else TUNED_COLOR


def pyplot() -> Any:
    """``matplotlib.pyplot`` with the Agg backend (files only, never a window) and the
    report's style; imported on first use, since matplotlib is slow to import."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False, "figure.dpi": 110})
    return plt
