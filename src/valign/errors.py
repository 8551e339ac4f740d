"""Errors a user can cause and fix.

The CLI prints a `ValignError` as one sentence (no traceback) and exits with code 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class ValignError(Exception):
    """A problem with the user's input or environment, with the fix in the message.

    Example:
        >>> raise ValignError("configs/x.yaml: respond.gen.temperature must be a number; write e.g. 0.7.")
        Traceback (most recent call last):
        ...
        valign.errors.ValignError: configs/x.yaml: respond.gen.temperature must be a number; write e.g. 0.7.
    """


class ConfigError(ValignError):
    """A run config (YAML or --set override) that does not validate."""


class ModelError(ValignError):
    """A model spec that cannot be loaded or a backend that cannot answer."""
