"""`respond`: the model answers every prompt — the first stage of the Kantian pipeline.

Rows: ``id``, ``prompt`` (the user's text), ``messages`` (the prompt conversation plus
the assistant's answer, TRL's conversational format), ``response``, ``model``,
``temperature``, ``finish_reason``, ``completion_tokens`` and any extra fields of the
prompt row (``source``, ``kind``, …).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from valign.errors import ConfigError, ValignError
from valign.prompt_files import load_prompts, resolve_source
from valign.progress import GenProgress
from valign.prompt_sets import PromptMixConfig, build_prompt_mix, load_source
from valign.stages.base import Stage, StageContext, model_identity
from valign.types import Completion, Conversation, GenConfig, Row

if TYPE_CHECKING:
    from valign.config import RunConfig


class RespondConfig(BaseModel):
    """Settings of the `respond` stage.

    Example (YAML):
        respond:
          prompts: demo              # a shipped set, a .jsonl/.csv path, a named source
                                     # (advbench, harmbench, donotanswer, hub:…, hh-red-team:…)
          # or a seeded, de-duplicated mix:
          # prompts: {red_team: 600, benign: 150, red_team_sources: [harmbench, advbench], seed: 0}
          limit: 16
          chunk: 32                  # rows written per checkpoint
          gen: {temperature: 0.7, max_new_tokens: 128}
    """

    model_config = ConfigDict(extra="forbid")

    prompts: str | PromptMixConfig = "demo"
    limit: int | None = Field(None, ge=1)
    system_prompt: str | None = None
    model: str | None = None  # defaults to the run's model
    chunk: int = Field(32, ge=1)
    gen: GenConfig = Field(default_factory=lambda: GenConfig(max_new_tokens=256))
    _base_dir: Path | None = PrivateAttr(default=None)
    _rows: list[Row] | None = PrivateAttr(default=None)

    def model_post_init(self, context: Any) -> None:
        # Remember the config file's folder: prompt files are relative to it. Loading
        # waits for `prompt_rows` (the pipeline's preflight), so validating reads nothing.
        base = context.get("base_dir") if isinstance(context, dict) else None
        self._base_dir = Path(base) if base is not None else None

    def prompt_rows(self) -> list[Row]:
        """The prompt rows this stage answers (after `limit`), loaded on first use.

        A missing file or an impossible mix is a `ConfigError` naming ``respond.prompts``.
        """
        if self._rows is None:
            try:
                self._rows = _load(self.prompts, self._base_dir)[: self.limit]
            except ConfigError:
                raise
            except ValignError as e:
                raise ConfigError(f"respond.prompts: {e}") from None
        return self._rows


def _load(prompts: str | PromptMixConfig, base_dir: Path | None) -> list[Row]:
    if isinstance(prompts, PromptMixConfig):
        return build_prompt_mix(prompts, base_dir).rows
    try:
        path = resolve_source(prompts, base_dir)
    except ValignError:
        return load_source(prompts, base_dir)  # named wheel/hub sources; a clear error otherwise
    return load_prompts(path)


def rows_digest(rows: list[Row]) -> str:
    """Hash of the prompts themselves (ids and conversations), for the fingerprint."""
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps([r["id"], r["messages"]], ensure_ascii=False).encode())
    return h.hexdigest()


class RespondStage(Stage):
    name: ClassVar[str] = "respond"
    config_class = RespondConfig

    def describe(self, run_config: RunConfig) -> dict[str, Any]:
        cfg: RespondConfig = run_config.respond
        return {
            "config": cfg.model_dump(mode="json"),
            "model": model_identity(cfg.model or run_config.model),
            "seed": run_config.seed,
            "prompts_sha256": rows_digest(cfg.prompt_rows()),
        }

    def preflight(self, run_config: RunConfig) -> None:
        run_config.respond.prompt_rows()

    def run(self, ctx: StageContext) -> None:
        cfg: RespondConfig = ctx.config
        prompts = cfg.prompt_rows()
        gen = cfg.gen.seeded(ctx.run_config.seed)
        spec = cfg.model or ctx.run_config.model
        todo = [p for p in prompts if not set(_row_ids(p["id"], gen.n)) <= ctx.rows.ids]
        ctx.info["counts"] = {"prompts": len(prompts), "resumed_done": len(prompts) - len(todo)}
        if not todo:
            return
        model = ctx.models.get(spec)
        ctx.console.print(f"respond: {len(todo)} of {len(prompts)} prompts to answer with {spec}")
        with GenProgress("respond", total=len(todo) * gen.n, done=(len(prompts) - len(todo)) * gen.n) as bar:
            # One checkpoint per chunk: a kill loses at most the chunk in flight.
            for start in range(0, len(todo), cfg.chunk):
                chunk = todo[start : start + cfg.chunk]
                convs = [_conversation(p["messages"], cfg.system_prompt) for p in chunk]
                outs = model.generate(convs, gen, progress=bar)
                ctx.rows.append(_answer_row(chunk[c.index], convs[c.index], c, gen, spec) for c in outs)


def _answer_row(prompt: Row, conv: Conversation, comp: Completion, gen: GenConfig, spec: str) -> Row:
    extra = {k: v for k, v in prompt.items() if k not in ("id", "prompt", "messages")}
    return {
        **extra,
        "id": _row_ids(prompt["id"], gen.n)[comp.sample],
        "prompt_id": prompt["id"],
        "prompt": prompt["prompt"],
        "messages": [*conv, {"role": "assistant", "content": comp.text}],
        "response": comp.text,
        "model": comp.model or spec,
        "temperature": gen.temperature,
        "sample": comp.sample,
        "finish_reason": comp.finish_reason,
        "completion_tokens": comp.completion_tokens,
    }


def _row_ids(prompt_id: str, n: int) -> list[str]:
    """Row ids of a prompt's answers: the prompt id itself, or ``id#j`` for n samples."""
    return [prompt_id] if n == 1 else [f"{prompt_id}#{j}" for j in range(n)]


def _conversation(messages: list[dict], system_prompt: str | None) -> list[dict]:
    if system_prompt and messages[0]["role"] != "system":
        return [{"role": "system", "content": system_prompt}, *messages]
    return list(messages)
