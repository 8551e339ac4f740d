"""``--set key=value`` overrides on a settings mapping, before it is validated.

`valign run` applies them to a run config, `valign eval` to an evaluate section; both
validate the result afterwards, so an override can only be wrong in its form here.
"""

from __future__ import annotations

from typing import Any

import yaml

from valign.errors import ConfigError

__all__ = ["apply_override"]


def apply_override(data: dict[str, Any], item: str) -> None:
    """Apply one ``a.b.c=value`` override in place; the value is parsed as YAML.

    Example:
        >>> data = {"respond": {"gen": {"temperature": 0.7}}}
        >>> apply_override(data, "respond.gen.temperature=1.0")
        >>> apply_override(data, "judge.mode=verdict")
        >>> data
        {'respond': {'gen': {'temperature': 1.0}}, 'judge': {'mode': 'verdict'}}
    """
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set '{item}' must look like key=value, e.g. --set respond.gen.temperature=1.0.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError:
        value = raw
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: '{part}' holds a value, not a section, so it has no '{parts[-1]}'.")
        node = child
    node[parts[-1]] = value
