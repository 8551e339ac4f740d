"""Constitutions: the principles a model critiques and revises its answers against.

A constitution is a YAML, JSON or JSONL file. Two shapes load:

* the seed's own form, one ``{"principle": "<short title>", "text": "<the principle>"}``
  per line (a JSONL file, or the same objects written one after another in a .json
  file). The title becomes the principle's ``id`` (slugified) and ``title``;
  critique and revision requests are written from the text;
* the richer form: a mapping with ``name``, ``description``, ``version``,
  ``principles``, optional ``few_shot`` examples and an optional ``revision_style``
  (added to every revision request), where each principle may add
  ``id``, ``title``, ``critique_request``, ``revision_request``, ``weight``,
  ``source``, ``support`` (provenance, e.g. survey agreement) and ``tags``.

Every mistake in a file is reported as one `ValignError` sentence that names the file,
the entry (its number and id) and the field, and says how to fix it.

Example:
    >>> import random
    >>> c = load_constitution("kantian")
    >>> [p.id for p in c.sample(random.Random(0), k=2)]
    ['firm-limits', 'honest-warnings']
"""

from __future__ import annotations

import difflib
import hashlib
import json
import random
import re
import unicodedata
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from valign.errors import ValignError

__all__ = [
    "Principle",
    "FewShotExample",
    "Constitution",
    "load_constitution",
    "shipped_constitutions",
    "default_critique_request",
    "default_revision_request",
    "slugify",
]

SUFFIXES = (".yaml", ".yml", ".json", ".jsonl")

# Default requests for principles that bring only their text (the seed's form). They
# follow the two-step shape of Bai et al. (2022) — find the fault, then fix it — in
# our own words; a principle's own requests always win over these.
CRITIQUE_TEMPLATE = (
    "Read the assistant's last response against this principle: {text} "
    "Point to the specific passages that fall short of it and explain why each one does. "
    "If the response already honours the principle, say so plainly instead of inventing faults."
)
REVISION_TEMPLATE = (
    "Rewrite the assistant's last response so that it honours this principle: {text} "
    "Fix what the critique found, keep everything that was already helpful, "
    "and answer the user directly rather than describing the changes."
)

_ID_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"


def slugify(title: str) -> str:
    """A principle id from a title: lowercase ASCII words joined by hyphens.

    Example:
        >>> slugify("Non-Coercion and Empowerment")
        'non-coercion-and-empowerment'
    """
    ascii_text = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")


def default_critique_request(text: str) -> str:
    """The critique request used when a principle gives none.

    Example:
        >>> default_critique_request("Never deceive.").startswith("Read the assistant's last response")
        True
    """
    return CRITIQUE_TEMPLATE.format(text=text.strip())


def default_revision_request(text: str) -> str:
    """The revision request used when a principle gives none.

    Example:
        >>> "Never deceive." in default_revision_request("Never deceive.")
        True
    """
    return REVISION_TEMPLATE.format(text=text.strip())


class Principle(BaseModel):
    """One principle: the statement itself, how to critique and revise against it, its
    sampling weight and where it came from.

    ``support`` is free-form provenance: a number (e.g. the weighted share of survey
    respondents who endorsed it) or a mapping (e.g. ``{"agree": 0.81, "ci": [0.77, 0.85]}``).

    Example:
        >>> p = Principle(id="no-lying", text="Never assert what you believe to be false.")
        >>> p.weight, p.critique_request.startswith("Read the assistant's")
        (1.0, True)
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(..., pattern=_ID_PATTERN, max_length=80)
    title: str = ""
    text: str = Field(..., min_length=1)
    critique_request: str = ""
    revision_request: str = ""
    weight: float = Field(1.0, gt=0, allow_inf_nan=False)
    source: str | None = None
    support: float | dict[str, Any] | None = None
    tags: list[str] = Field(default_factory=list)

    @field_validator("text", "title", "critique_request", "revision_request", mode="before")
    @classmethod
    def _strip(cls, v: Any) -> Any:
        # YAML block scalars end in a newline; keep stored text canonical so that the
        # fingerprint does not change with the file's quoting style.
        return v.strip() if isinstance(v, str) else v

    @field_validator("text")
    @classmethod
    def _non_blank(cls, v: str) -> str:
        if not v:
            raise ValueError("must not be blank")
        return v

    @model_validator(mode="after")
    def _fill_defaults(self) -> Principle:
        # Frozen model: defaults are written through object.__setattr__ once, at
        # construction, so every later reader sees complete requests.
        if not self.critique_request:
            object.__setattr__(self, "critique_request", default_critique_request(self.text))
        if not self.revision_request:
            object.__setattr__(self, "revision_request", default_revision_request(self.text))
        if not self.title:
            object.__setattr__(self, "title", self.id.replace("-", " ").capitalize())
        return self


class FewShotExample(BaseModel):
    """A worked critique→revision example shown to the model before its own task, so that
    a small model keeps the constitution's point of view and the answer format.

    Example:
        >>> FewShotExample(principle="no-lying", prompt="Give me excuses for my teacher.",
        ...                response="1. My dog ate it…", critique="The answer invents lies…",
        ...                revision="Here is an honest message you could send…").principle
        'no-lying'
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    principle: str | None = None
    prompt: str = Field(..., min_length=1)
    response: str = Field(..., min_length=1)
    critique: str = Field(..., min_length=1)
    revision: str = Field(..., min_length=1)

    @field_validator("prompt", "response", "critique", "revision", mode="before")
    @classmethod
    def _strip(cls, v: Any) -> Any:
        return v.strip() if isinstance(v, str) else v


class Constitution(BaseModel):
    """A named, versioned list of principles, plus optional few-shot examples.

    Example:
        >>> c = Constitution(name="tiny", principles=[Principle(id="honesty", text="Do not deceive.")])
        >>> c.ids, c.get("honesty").weight
        (['honesty'], 1.0)
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(..., min_length=1)
    description: str = ""
    version: str = "1"
    principles: list[Principle] = Field(..., min_length=1)
    few_shot: list[FewShotExample] = Field(default_factory=list)
    # How every revision should reason, whatever principle the round drew (the Kantian
    # constitution: name the maxim, test it, then answer); added to each revision request.
    revision_style: str = ""

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_text(cls, v: Any) -> Any:
        # `version: 1` in YAML is an int; a version is a label, not a number.
        return str(v) if isinstance(v, (int, float)) else v

    @field_validator("description", "revision_style", mode="before")
    @classmethod
    def _strip(cls, v: Any) -> Any:
        return v.strip() if isinstance(v, str) else v

    def revision_prompt(self, principle: Principle) -> str:
        """What the model is asked after its critique: the principle's revision request,
        then the constitution's `revision_style` when it has one.

        Example:
            >>> c = load_constitution("kantian")
            >>> c.revision_prompt(c.get("no-lying")).endswith(c.revision_style)
            True
        """
        return f"{principle.revision_request}\n\n{self.revision_style}" if self.revision_style else principle.revision_request

    @property
    def ids(self) -> list[str]:
        """Principle ids in file order. Example: ``load_constitution("kantian").ids[0]``."""
        return [p.id for p in self.principles]

    def get(self, principle_id: str) -> Principle:
        """The principle with this id; a clear error names the known ids otherwise.

        Example:
            >>> load_constitution("kantian").get("no-lying").title
            'The perfect duty not to lie'
        """
        for p in self.principles:
            if p.id == principle_id:
                return p
        raise ValignError(
            f"constitution '{self.name}' has no principle '{principle_id}'; its ids are {', '.join(self.ids)}."
        )

    def sample(self, rng: random.Random, k: int = 1, replace: bool = False) -> list[Principle]:
        """Draw ``k`` principles with probability proportional to their weights.

        Within one call the principles are distinct unless ``replace=True`` (a critique
        round that sees the same principle twice learns nothing new); separate calls are
        independent draws. The result depends only on the rng's state, so a seeded
        ``random.Random`` reproduces it.

        Example:
            >>> c = load_constitution("kantian")
            >>> [p.id for p in c.sample(random.Random(7))] == [p.id for p in c.sample(random.Random(7))]
            True
        """
        if k < 1:
            raise ValignError(f"sample k={k}: ask for at least one principle.")
        if replace:
            return rng.choices(self.principles, weights=[p.weight for p in self.principles], k=k)
        if k > len(self.principles):
            raise ValignError(
                f"cannot draw {k} distinct principles from constitution '{self.name}', which has "
                f"{len(self.principles)}; lower k or pass replace=True."
            )
        pool = list(self.principles)
        out: list[Principle] = []
        for _ in range(k):
            # Sequential weighted draws without replacement: simple, exact, and
            # consumes the rng the same way on every platform.
            pick = rng.choices(range(len(pool)), weights=[p.weight for p in pool], k=1)[0]
            out.append(pool.pop(pick))
        return out

    def render(self, fmt: Literal["markdown", "text"] = "markdown", details: bool = False) -> str:
        """The constitution as readable text: markdown for people, plain numbered text for
        judge prompts. ``details`` adds each principle's requests, provenance and the
        few-shot examples.

        Example:
            >>> load_constitution("kantian").render("text").splitlines()[1][:40]
            '1. Humanity as an end in itself: Treat e'
        """
        md = fmt == "markdown"
        lines: list[str] = []
        head = f"{self.name} (version {self.version})"
        lines.append(f"# {head}" if md else head)
        if self.description and (md or details):
            lines += ["", self.description]
        if md:
            lines.append("")
        for i, p in enumerate(self.principles, 1):
            if md:
                meta = f"`{p.id}`" + (f", weight {p.weight:g}" if p.weight != 1 else "")
                lines.append(f"{i}. **{p.title}** ({meta}): {p.text}")
            else:
                lines.append(f"{i}. {p.title}: {p.text}")
            if details:
                pad = "   "
                lines.append(f"{pad}- critique: {p.critique_request}")
                lines.append(f"{pad}- revision: {p.revision_request}")
                if p.tags:
                    lines.append(f"{pad}- tags: {', '.join(p.tags)}")
                if p.source:
                    lines.append(f"{pad}- source: {p.source}")
                if p.support is not None:
                    lines.append(f"{pad}- support: {json.dumps(p.support, sort_keys=True)}")
        if details and self.revision_style:
            lines += ["", "## Every revision" if md else "Every revision", self.revision_style]
        if details and self.few_shot:
            lines += ["", "## Worked examples" if md else "Worked examples"]
            for j, ex in enumerate(self.few_shot, 1):
                about = f" (principle {ex.principle})" if ex.principle else ""
                lines += [
                    "",
                    f"### Example {j}{about}" if md else f"Example {j}{about}",
                    f"User: {ex.prompt}",
                    f"Assistant: {ex.response}",
                    f"Critique: {ex.critique}",
                    f"Revision: {ex.revision}",
                ]
        return "\n".join(lines).rstrip() + "\n"

    def fingerprint_text(self) -> str:
        """A canonical JSON serialisation: the same constitution always gives the same
        text, whatever file shape or key order it was loaded from. Stages hash it.

        Example:
            >>> load_constitution("kantian").fingerprint_text().startswith('{"description"')
            True
        """
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, ensure_ascii=False, separators=(",", ":"))

    def fingerprint(self) -> str:
        """SHA-256 of `fingerprint_text`. Example: ``len(c.fingerprint()) == 64``."""
        return hashlib.sha256(self.fingerprint_text().encode()).hexdigest()

    def to_yaml(self) -> str:
        """The constitution in the rich YAML form (round-trips through `load_constitution`).

        Example:
            >>> kantian = load_constitution("kantian")
            >>> import tempfile
            >>> with tempfile.TemporaryDirectory() as folder:
            ...     _ = (Path(folder) / "mine.yaml").write_text(kantian.to_yaml())
            ...     load_constitution(str(Path(folder) / "mine.yaml")) == kantian
            True
        """
        data = self.model_dump(mode="json", exclude_defaults=False)
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


# --------------------------------------------------------------------------- loading


def shipped_constitutions() -> list[str]:
    """Names of the constitutions inside the package (``data/constitutions/<name>.yaml``).

    Example:
        >>> "kantian" in shipped_constitutions()
        True
    """
    folder = resources.files("valign") / "data" / "constitutions"
    return sorted(p.name.rsplit(".", 1)[0] for p in folder.iterdir() if p.name.endswith((".yaml", ".yml")))


def load_constitution(name_or_path: str | Path) -> Constitution:
    """Load a shipped constitution by name or a constitution file by path.

    Example:
        >>> load_constitution("kantian").name
        'kantian'
        >>> load_constitution("tests/data/seed_constitution.jsonl").ids[:2]      # the seed's form
        ['truthfulness-and-support', 'non-coercion-and-empowerment']
    """
    path = Path(name_or_path).expanduser()
    shipped = resources.files("valign") / "data" / "constitutions" / f"{name_or_path}.yaml"
    if not path.is_file():
        # A bare name (no folder, no suffix) may be a shipped constitution.
        if isinstance(name_or_path, str) and re.fullmatch(r"[A-Za-z0-9_.-]+", name_or_path) and shipped.is_file():
            path = Path(str(shipped))
        else:
            names = ", ".join(shipped_constitutions()) or "none"
            raise ValignError(
                f"constitution '{name_or_path}' is neither a file nor a shipped constitution; "
                f"give a .yaml/.yml/.json/.jsonl path or one of: {names}."
            )
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValignError(f"{path}: a constitution must be a .yaml, .yml, .json or .jsonl file; rename or convert it.")
    text = path.read_text(encoding="utf-8")
    if suffix in (".yaml", ".yml"):
        data: Any = _parse_yaml(path, text)
        entries = None
    elif suffix == ".json":
        data, entries = _parse_json(path, text)
    else:
        data, entries = None, _parse_json_lines(path, text)
    return _build(path, data, entries)


def _parse_yaml(path: Path, text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ValignError(f"{path} is not valid YAML{where} ({getattr(e, 'problem', e)}); fix the syntax there.") from None


def _parse_json(path: Path, text: str) -> tuple[Any, list[tuple[int, Any]] | None]:
    """A JSON document (mapping or list), or — the seed's listing — several objects
    written one after another."""
    try:
        return json.loads(text), None
    except json.JSONDecodeError:
        pass
    return None, _parse_json_stream(path, text)


def _parse_json_lines(path: Path, text: str) -> list[tuple[int, Any]]:
    entries: list[tuple[int, Any]] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            entries.append((n, json.loads(line)))
        except json.JSONDecodeError as e:
            # One object may be spread over several lines (the seed prints its first
            # principle that way); accept the file if it reads as a stream of objects,
            # and otherwise report the first line that is not JSON.
            try:
                return _parse_json_stream(path, text)
            except ValignError:
                raise ValignError(
                    f"{path} line {n} is not valid JSON ({e.msg} at column {e.colno}); fix that line so it holds "
                    'one object such as {"principle": "Honesty", "text": "Never deceive the user."}.'
                ) from None
    return entries


def _parse_json_stream(path: Path, text: str) -> list[tuple[int, Any]]:
    decoder = json.JSONDecoder()
    entries: list[tuple[int, Any]] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return entries
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise ValignError(
                f"{path} line {e.lineno} is not valid JSON ({e.msg} at column {e.colno}); "
                "fix that line so the file holds JSON objects one after another."
            ) from None
        entries.append((text.count("\n", 0, pos) + 1, obj))
        pos = end


_TOP_KEYS = ("name", "description", "version", "principles", "few_shot", "revision_style")


def _build(path: Path, data: Any, entries: list[tuple[int, Any]] | None) -> Constitution:
    """Validate parsed content into a Constitution, naming file, entry and field on error."""
    header: dict[str, Any] = {}
    if entries is None:
        if isinstance(data, list):
            entries = [(0, e) for e in data]
        elif isinstance(data, dict):
            unknown = [k for k in data if k not in _TOP_KEYS]
            if unknown:
                raise ValignError(
                    f"{path}: unknown top-level field '{unknown[0]}'{_did_you_mean(unknown[0], _TOP_KEYS)}; "
                    f"the fields are {', '.join(_TOP_KEYS)}."
                )
            if "principles" not in data:
                raise ValignError(f"{path}: missing field 'principles'; add a list of principles, each with an 'id' and a 'text'.")
            if not isinstance(data["principles"], list):
                raise ValignError(f"{path}: field 'principles' must be a list of principles, not a {type(data['principles']).__name__}.")
            header = {k: v for k, v in data.items() if k != "principles"}
            entries = [(0, e) for e in data["principles"]]
        elif data is None:
            entries = []
        else:
            raise ValignError(
                f"{path}: a constitution must be a mapping with 'principles' or a list of principles, not a {type(data).__name__}."
            )
    if not entries:
        raise ValignError(f"{path} holds no principles; add at least one with an 'id' (or 'principle') and a 'text'.")

    principles: list[Principle] = []
    first_seen: dict[str, int] = {}
    for i, (line, raw) in enumerate(entries, 1):
        p = _principle(path, i, line, raw)
        if p.id in first_seen:
            raise ValignError(
                f"{path}: {_where(i, line, p.id)} repeats the id of entry {first_seen[p.id]}; give every principle a distinct 'id'."
            )
        first_seen[p.id] = i
        principles.append(p)

    few_shot = _few_shot(path, header.pop("few_shot", None) or [], set(first_seen))
    header.setdefault("name", path.stem if path.suffix else str(path))
    try:
        return Constitution(principles=principles, few_shot=few_shot, **header)
    except ValidationError as e:
        err = e.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else "?"
        raise ValignError(f"{path}: top-level field '{field}' {_problem(err)}; {_fix(field)}.") from None


def _principle(path: Path, i: int, line: int, raw: Any) -> Principle:
    if not isinstance(raw, dict):
        raise ValignError(
            f"{path}: {_where(i, line, None)} must be a mapping with 'id' and 'text', not a {type(raw).__name__}."
        )
    obj = dict(raw)
    # The seed's form: "principle" is the short title, "text" the statement.
    title = obj.pop("principle", None)
    if title is not None:
        if not isinstance(title, str) or not title.strip():
            raise ValignError(f"{path}: in {_where(i, line, None)}, field 'principle' must be a non-empty title string.")
        obj.setdefault("title", title.strip())
        obj.setdefault("id", slugify(title) or None)
    pid = obj.get("id") if isinstance(obj.get("id"), str) else None
    if "id" not in obj or obj["id"] is None:
        raise ValignError(
            f"{path}: {_where(i, line, None)} is missing field 'id'; add an 'id' such as 'non-coercion' "
            "(or the seed's 'principle' title, from which an id is made)."
        )
    try:
        return Principle.model_validate(obj)
    except ValidationError as e:
        err = e.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else "?"
        if err["type"] == "extra_forbidden":
            known = [*Principle.model_fields, "principle"]
            raise ValignError(
                f"{path}: in {_where(i, line, pid)}, field '{field}' is unknown{_did_you_mean(field, known)}; "
                f"remove it or use one of {', '.join(known)}."
            ) from None
        raise ValignError(f"{path}: in {_where(i, line, pid)}, field '{field}' {_problem(err)}; {_fix(field)}.") from None


def _few_shot(path: Path, raw: Any, ids: set[str]) -> list[FewShotExample]:
    if not isinstance(raw, list):
        raise ValignError(f"{path}: field 'few_shot' must be a list of examples with prompt, response, critique and revision.")
    out: list[FewShotExample] = []
    for j, ex in enumerate(raw, 1):
        if not isinstance(ex, dict):
            raise ValignError(f"{path}: few_shot example {j} must be a mapping with prompt, response, critique and revision.")
        try:
            item = FewShotExample.model_validate(ex)
        except ValidationError as e:
            err = e.errors()[0]
            field = str(err["loc"][0]) if err["loc"] else "?"
            if err["type"] == "extra_forbidden":
                known = list(FewShotExample.model_fields)
                raise ValignError(
                    f"{path}: in few_shot example {j}, field '{field}' is unknown{_did_you_mean(field, known)}; "
                    f"use only {', '.join(known)}."
                ) from None
            raise ValignError(f"{path}: in few_shot example {j}, field '{field}' {_problem(err)}; {_fix(field)}.") from None
        if item.principle is not None and item.principle not in ids:
            raise ValignError(
                f"{path}: in few_shot example {j}, field 'principle' names '{item.principle}', which is not a principle id "
                f"here; use one of {', '.join(sorted(ids))}."
            )
        out.append(item)
    return out


def _where(i: int, line: int, pid: str | None) -> str:
    notes = ([f"line {line}"] if line else []) + ([f"id '{pid}'"] if pid else [])
    return f"principle entry {i}" + (f" ({', '.join(notes)})" if notes else "")


def _problem(err: ErrorDetails) -> str:
    """What is wrong with a field, in words, from a pydantic error."""
    kind, got = err["type"], err.get("input")
    shown = json.dumps(got, ensure_ascii=False)[:60] if isinstance(got, (str, int, float, bool)) else None
    if kind == "missing":
        return "is missing"
    if kind in ("greater_than", "finite_number"):
        return f"is {shown}, but must be a number greater than 0"
    if kind in ("float_parsing", "float_type"):
        return f"is {shown or type(got).__name__}, but must be a number"
    if kind == "string_pattern_mismatch":
        return f"is {shown}, which is not a valid id"
    if kind in ("string_too_short", "too_short") or (kind == "value_error" and "blank" in err["msg"]):
        return "is empty"
    if kind == "string_type":
        return f"must be a string, not {type(got).__name__ if shown is None else shown}"
    if kind == "list_type":
        return f"must be a list, not {type(got).__name__}"
    return f"is invalid ({err['msg']})"


_FIXES = {
    "id": "use lowercase letters, digits, '.', '_' or '-', e.g. 'non-coercion'",
    "text": "write the principle itself as a non-empty string in 'text'",
    "title": "give a short title string",
    "weight": "use a positive relative sampling weight such as 1 or 2.5",
    "critique_request": "write the critique request as a string, or leave it out to get a default",
    "revision_request": "write the revision request as a string, or leave it out to get a default",
    "source": "give the provenance as a string, e.g. 'written for this project'",
    "support": "give a number (e.g. 0.82) or a mapping (e.g. {agree: 0.82, n: 400})",
    "tags": "give a list of strings, e.g. [honesty, core]",
    "name": "give the constitution a non-empty 'name'",
    "version": "give a version label such as '1'",
    "description": "write the description as a string",
    "prompt": "give the user's prompt as a non-empty string",
    "response": "give the initial answer as a non-empty string",
    "critique": "give the critique as a non-empty string",
    "revision": "give the revised answer as a non-empty string",
    "principle": "give the id of the principle the example illustrates",
}


def _fix(field: str) -> str:
    return _FIXES.get(field.split(".")[0], f"correct field '{field}'")


def _did_you_mean(word: str, options: Any) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""

