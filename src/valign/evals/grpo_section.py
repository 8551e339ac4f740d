"""The report's GRPO section: what to look at for reward hacking, per step.

Online RL optimises whatever the reward measures, including its flaws: a judge that
likes long answers gets long answers, a reward with no refusal penalty gets refusals.
This section draws, from the stage's ``train_log.jsonl``, each reward's mean and the
weighted total, the KL to the starting model, the mean answer length and the refusal
rate on each kind of prompt, and shows the sampled answers the stage wrote
(``samples.jsonl``) with their rewards, so a reader sees what the numbers rewarded.
"""

from __future__ import annotations

from typing import Any

from valign.evals.plots import BASE_COLOR, TUNED_COLOR, pyplot
from valign.evals.rundata import RunData, read_rows_loose
from valign.evals.section import ReportEnv, Section

__all__ = ["grpo_section", "grpo_curves"]

_PALETTE = (TUNED_COLOR, "#c2410c", "#15803d", "#7c3aed", "#b91c1c", BASE_COLOR)


def grpo_curves(log: list[dict[str, Any]], reward_names: list[str], spread: tuple[str, ...] = ()) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """The section's panels: {panel: {line: [(step, value)]}} from TRL's log entries.

    Rewards named in ``spread`` are drawn by their spread within the step (TRL's
    ``rewards/<name>/std``) instead of their mean: a pairwise reward's win rates average
    0.5 in every group by construction, so only how decisively the judge separates the
    samples moves.

    Example:
        >>> grpo_curves([{"step": 1, "reward": 0.2, "rewards/judge/mean": 0.5, "rewards/judge/std": 0.1, "kl": 0.0,
        ...               "completions/mean_length": 30, "watch/refusal_rate/benign": 0.25}], ["judge"], ("judge",))["reward"]
        {'total (weighted)': [(1, 0.2)], 'judge (spread)': [(1, 0.1)]}
    """
    from valign.stages.grpo_trainer import WATCH_PREFIX

    panels: dict[str, dict[str, list[tuple[int, float]]]] = {"reward": {}, "KL to the start": {}, "answer length (tokens)": {}, "refusal rate": {}}
    rewards = {f"{n} (spread)" if n in spread else n: f"rewards/{n}/{'std' if n in spread else 'mean'}" for n in reward_names}
    lines = {"reward": {"total (weighted)": "reward", **rewards},
             "KL to the start": {"KL": "kl"}, "answer length (tokens)": {"mean": "completions/mean_length"}}
    for n, entry in enumerate(log, 1):
        step = int(entry.get("step", n))
        for panel, keys in lines.items():
            for line, key in keys.items():
                if isinstance(entry.get(key), (int, float)):
                    panels[panel].setdefault(line, []).append((step, float(entry[key])))
        for key, value in entry.items():
            if key.startswith(WATCH_PREFIX) and isinstance(value, (int, float)):
                panels["refusal rate"].setdefault(key.removeprefix(WATCH_PREFIX), []).append((step, float(value)))
    return {p: lines_ for p, lines_ in panels.items() if lines_}


def grpo_section(run: RunData, env: ReportEnv) -> Section | None:
    """Reward components, KL, length, refusal rates and sampled answers of each grpo stage."""
    from valign.stages.grpo_trainer import read_samples

    stages = []
    for s in run.stages:
        m = s.manifest or {}
        if s.name != "grpo" or "train" not in m:
            continue
        names = [r["name"] for r in m.get("rewards", [])]
        spread = tuple(r["name"] for r in m.get("rewards", []) if r.get("kind") == "pairwise" and r.get("against", "group") == "group")
        log_path = s.dir / "train_log.jsonl"
        panels = grpo_curves(read_rows_loose(log_path) if log_path.is_file() else [], names, spread)
        if not panels:
            continue
        plt = pyplot()
        fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 2.7), squeeze=False)
        for ax, (title, lines) in zip(axes[0], panels.items()):
            for colour, (label, pts) in zip(_PALETTE, lines.items()):
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.5, color=colour, label=label)
            ax.set_title(title)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            if len(lines) > 1:
                ax.legend(fontsize=7)
        fig.tight_layout()
        last = {f"{title}: {label}": pts[-1][1] for title, lines in panels.items() for label, pts in lines.items()}
        first = {f"{title}: {label}": pts[0][1] for title, lines in panels.items() for label, pts in lines.items()}
        samples = read_samples(s.dir / "samples.jsonl")
        stages.append({
            "folder": s.dir.name,
            "src": env.figure(fig),
            "alt": "GRPO per step: " + "; ".join(f"{k} from {first[k]:.3f} to {v:.3f}" for k, v in last.items()),
            "rewards": m.get("rewards", []),
            "sampler": m.get("sampler") or {},
            "steps": (m.get("train") or {}).get("steps"),
            "prompts": (m.get("counts") or {}).get("train_rows"),
            "changes": [{"what": k, "first": first[k], "last": v} for k, v in last.items()],
            "samples": samples[-12:],
            "names": names,
        })
    if not stages:
        return None
    return Section("grpo", "GRPO: rewards and reward hacking", env.render("grpo.html.j2", stages=stages))
