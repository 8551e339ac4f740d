"""`python`: any function with TRL's reward signature, named in the config.

``function`` is ``module:name`` (an importable module) or ``path/to/file.py:name`` (a
file, relative to the config file's folder). The function is called exactly as TRL calls
its ``reward_funcs``: ``f(prompts=…, completions=…, completion_ids=…, **columns)``, with
the dataset's ``id`` and ``kind`` among the columns, and returns one float (or None)
per completion.

Example (a file ``rewards.py`` beside the config)::

    def brevity(prompts, completions, **kwargs):
        return [-len(c[-1]["content"]) / 1000 for c in completions]

    # grpo.rewards: [{kind: python, function: "rewards.py:brevity", weight: 0.2}]
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import ValidationInfo, field_validator

from valign.errors import ValignError
from valign.rewards.base import RewardConfig, RewardContext
from valign.stages.base import config_relative

__all__ = ["PythonRewardConfig", "load_function", "python_reward"]


class PythonRewardConfig(RewardConfig):
    """Settings of the ``python`` reward.

    Example (YAML, one entry of ``grpo.rewards``):
        {kind: python, function: "my_rewards.py:brevity", weight: 0.2}
    """

    kind: Literal["python"] = "python"
    function: str  # "module:name" or "file.py:name" (the file relative to the config file)

    @field_validator("function")
    @classmethod
    def _file_beside_the_config(cls, value: str, info: ValidationInfo) -> str:
        where, sep, name = value.rpartition(":")
        if sep and where.endswith(".py"):
            return f"{config_relative(where, info.context)}:{name}"
        return value

    @property
    def label(self) -> str:
        return self.name or self.function.rpartition(":")[2]


def load_function(spec: str) -> Callable[..., Any]:
    """The callable ``module:name`` or ``file.py:name`` names, or one sentence saying why not."""
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name.isidentifier():
        raise ValignError(f"reward function {spec!r} must be written 'module:function' or 'path/to/file.py:function'.")
    try:
        if where.endswith(".py"):
            path = Path(where)
            if not path.is_file():
                raise ValignError(f"reward function file {path} does not exist; give its path relative to the config file.")
            module_spec = importlib.util.spec_from_file_location(f"valign_reward_{path.stem}", path)
            assert module_spec is not None and module_spec.loader is not None
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except ValignError:
        raise
    except Exception as e:  # the user's module: any error importing it
        raise ValignError(f"reward function {spec!r}: importing {where} failed ({type(e).__name__}: {e}).") from None
    func = getattr(module, name, None)
    if not callable(func):
        raise ValignError(f"reward function {spec!r}: {where} has no function named {name!r}.")
    params = inspect.signature(func).parameters.values()
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        raise ValignError(
            f"reward function {spec!r} must accept TRL's keyword arguments: def {name}(prompts, completions, **kwargs)."
        )
    return func


def python_reward(cfg: PythonRewardConfig, ctx: RewardContext) -> Callable[..., Any]:
    """The user's function, under the name the log shows."""
    func = load_function(cfg.function)

    def reward(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    reward.__name__ = cfg.label
    return reward
