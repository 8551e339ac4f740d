"""`valign opinions show`: what an evaluation set holds — questions, populations, sizes."""

from __future__ import annotations

from statistics import median

from valign.opinions.populations import population_counts
from valign.survey.opinion import OpinionItem

__all__ = ["describe_items"]


def describe_items(items: list[OpinionItem], questions: int = 5, populations: int = 20) -> str:
    """A plain-text summary: counts, kinds, option counts, each population's items and median size, sample questions."""
    kinds: dict[str, int] = {}
    for item in items:
        kinds[item.kind] = kinds.get(item.kind, 0) + 1
    ordinal = sum(item.ordinal for item in items)
    sizes = [len(item.options) for item in items]
    lines = [
        f"{len(items)} items ({', '.join(f'{n} {k}' for k, n in kinds.items())}); {ordinal} ordered, {len(items) - ordinal} unordered; "
        f"{min(sizes)}{'' if min(sizes) == max(sizes) else f'-{max(sizes)}'} options",
    ]
    counts = population_counts(items)
    lines.append(f"{len(counts)} populations (items with a distribution; median respondents):")
    for key, count in list(counts.items())[:populations]:
        ns = [item.n for item in items] if key == "all" else [item.groups[key].n for item in items if key in item.groups]
        known = [n for n in ns if n]
        size = f"median n {median(known):g}" if known else "size not published"
        lines.append(f"  {key}: {count} items, {size}")
    if len(counts) > populations:
        lines.append(f"  … and {len(counts) - populations} more")
    lines.append("questions:")
    for item in items[:questions]:
        top = max(range(len(item.options)), key=lambda k: item.distribution[k])
        lines.append(f"  {item.id}: {item.question[:90]}{'…' if len(item.question) > 90 else ''}")
        lines.append(f"    {' / '.join(item.options)} (most chosen: {item.options[top]}, {item.distribution[top]:.0%})")
    if len(items) > questions:
        lines.append(f"  … and {len(items) - questions} more")
    return "\n".join(lines)
