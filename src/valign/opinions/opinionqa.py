"""OpinionQA (Santurkar et al. 2023): Pew American Trends Panel questions with answer counts per group.

The published data (``data/human_resp/American_Trends_Panel_W<k>/`` in the OpinionQA
repository) is one folder per survey wave holding

* ``<ATTRIBUTE>_data.json`` per demographic attribute (``SEX``, ``AGE``, ``POLPARTY``,
  ``POLPARTY_SEX``, …): ``{question key: {"MC_options": [...], "question_text": "...",
  <group>: {option: count, …}, …}}``; ``NONE_data.json`` holds everyone (split by an
  arbitrary variable), so its groups summed are the whole sample;
* ``info.csv`` (optional) with, per ``key``, ``references`` (the options in order, a
  Python list repr) and ``option_ordinal`` (each option's position on its scale).

One item per question key, with a group ``<attribute>=<group>`` (attribute lower-cased,
e.g. ``sex=Female``) per group of every attribute file. ``Refused`` is dropped as an
option (a refusal is not an opinion; OpinionQA leaves it out too) and as a group (those
who did not give the attribute). The options come from ``references`` where
``info.csv`` has the key; without it, from the answers, in ``MC_options`` order
(``MC_options`` splits options at commas: ``"Yes, likely"`` appears as ``"Yes",
"likely"``, so an answer is placed where its first part is). An item is ordinal when
``option_ordinal`` gives each option a distinct position; the options are then sorted
by it (``"Stay about the same"`` at 1.5 goes between 1 and 2) and the Wasserstein
distance uses their ranks. ``n`` is the group's total count (OpinionQA's counts are
respondents, not weighted).

FILE is a wave folder, a folder of wave folders (all waves), or one ``*_data.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from valign.errors import ValignError
from valign.opinions.build import MAX_OPTIONS, group_key, normalise, pooled
from valign.opinions.formats import Conversion, Format
from valign.opinions.tables import literal, read_table
from valign.survey.opinion import GroupDistribution, OpinionItem

__all__ = ["FORMAT", "load_opinionqa"]

REFUSED = "refused"
EVERYONE_FILE = "NONE"


def load_opinionqa(path: Path, codebook: Path | None = None) -> Conversion:
    """Items from OpinionQA's per-attribute JSON files (one wave, several waves or one file)."""
    waves = _waves(path)
    if not waves:
        raise ValignError(f"{path} holds no OpinionQA '<ATTRIBUTE>_data.json' file; give a wave folder such as data/human_resp/American_Trends_Panel_W27.")
    out = Conversion([])
    for folder, files in waves:
        info = _info(folder / "info.csv")
        questions: dict[str, dict[str, Any]] = {}
        for file in files:
            attribute = file.name.removesuffix("_data.json")
            try:
                data = json.loads(file.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise ValignError(f"{file} is not JSON ({e.msg} at line {e.lineno}); download it again.") from None
            for key, entry in data.items():
                if not isinstance(entry, dict) or "MC_options" not in entry:
                    raise ValignError(f"{file}: question '{key}' lacks MC_options; is this an OpinionQA file?")
                q = questions.setdefault(key, {"text": entry.get("question_text", ""), "mc": entry["MC_options"], "groups": {}, "everyone": {}})
                for group, counts in entry.items():
                    if group in ("MC_options", "question_text") or not isinstance(counts, dict):
                        continue
                    if attribute == EVERYONE_FILE:
                        for option, c in counts.items():
                            q["everyone"][option] = q["everyone"].get(option, 0.0) + float(c)
                    elif group.strip().lower() != REFUSED:
                        q["groups"][group_key(attribute.lower(), group)] = counts
        for key, q in questions.items():
            item = _item(key, q, info.get(key), out)
            if item is not None:
                out.items.append(item)
    return out


def _waves(path: Path) -> list[tuple[Path, list[Path]]]:
    if path.is_file():
        return [(path.parent, [path])]
    own = sorted(path.glob("*_data.json"))
    if own:
        return [(path, own)]
    return [(sub, sorted(sub.glob("*_data.json"))) for sub in sorted(p for p in path.iterdir() if p.is_dir()) if any(sub.glob("*_data.json"))]


def _info(path: Path) -> dict[str, dict[str, Any]]:
    """info.csv by question key: the ordered options and their scale positions."""
    if not path.exists():
        return {}
    df = read_table(path)
    if "key" not in df.columns or "references" not in df.columns:
        raise ValignError(f"{path} lacks the 'key' and 'references' columns of OpinionQA's info.csv; remove it or fix it.")
    out = {}
    for i, row in enumerate(df.to_dict("records")):
        refs = [str(o) for o in literal(row["references"], "references", path, i + 2)]
        ordinal = literal(row["option_ordinal"], "option_ordinal", path, i + 2) if isinstance(row.get("option_ordinal"), str) else None
        out[str(row["key"])] = {"references": refs, "ordinal": ordinal}
    return out


def _options(q: dict[str, Any], info: dict[str, Any] | None) -> tuple[list[str], bool]:
    answered = {o for counts in q["groups"].values() for o in counts} | set(q["everyone"])
    if info is not None:
        options = [o for o in info["references"] if o.strip().lower() != REFUSED]
        positions = info["ordinal"]
        if isinstance(positions, list) and len(positions) == len(options) and len(set(positions)) == len(positions):
            ranked = sorted(zip(positions, options))
            return [o for _, o in ranked], True
        return options, False
    mc = [str(o) for o in q["mc"]]

    def place(option: str) -> tuple[int, str]:
        for i, m in enumerate(mc):
            if option == m or option.startswith(m + ","):
                return (i, option)
        return (len(mc), option)

    return sorted((o for o in answered if o.strip().lower() != REFUSED), key=place), False


def _item(key: str, q: dict[str, Any], info: dict[str, Any] | None, out: Conversion) -> OpinionItem | None:
    options, ordinal = _options(q, info)
    if not 2 <= len(options) <= MAX_OPTIONS:
        out.skip(f"fewer than 2 or more than {MAX_OPTIONS} options")
        return None
    groups: dict[str, tuple[list[float], int | None]] = {}
    for gkey, counts in q["groups"].items():
        values = [float(counts.get(o, 0.0)) for o in options]
        dist = normalise(values)
        if dist is not None:
            groups[gkey] = (dist, round(sum(values)))
    everyone = [float(q["everyone"].get(o, 0.0)) for o in options]
    overall = normalise(everyone) if q["everyone"] else None
    if overall is None and not groups:
        out.skip("no answers")
        return None
    return OpinionItem(
        id=key, kind="opinion", question=str(q["text"]).strip() or key, options=options, ordinal=ordinal,
        distribution=overall if overall is not None else pooled(groups), n=round(sum(everyone)) if overall is not None else 0,
        groups={k: GroupDistribution(distribution=d, n=n) for k, (d, n) in groups.items()},
    )


FORMAT = Format(
    name="opinionqa",
    about="OpinionQA (Santurkar et al. 2023): Pew American Trends Panel waves, answer counts per demographic group",
    load=load_opinionqa,
    download="https://github.com/tatsu-lab/opinions_qa (data/human_resp/American_Trends_Panel_W*/)",
)
