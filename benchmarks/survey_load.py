"""Load benchmark of the survey: N concurrent synthetic respondents against SQLite and PostgreSQL.

For each backend it starts the real server (`valign survey serve`, uvicorn, in a
subprocess on 127.0.0.1) on a fresh database, runs N synthetic respondents at once
through the real pages (`valign.survey.simulate`: each parses every form, CSRF token
included, thinks ``--think`` seconds per question, and submits), then reads the
database and checks every answer the respondents sent against what is stored.

Reported per backend: started and completed respondents, answers sent vs stored,
duplicated (more than one row per respondent and question) and lost answers (sent but
missing or different), request latency p50/p95/p99 over every HTTP request, request
rate, and the load average before and after (other work on the machine skews latency).

    PYTHONPATH=src python benchmarks/survey_load.py                 # 200 respondents, both backends
    PYTHONPATH=src python benchmarks/survey_load.py --n 50 --backends sqlite --json /tmp/x.json

Target: p95 < 300 ms (`P95_TARGET_MS`), completed == started, zero lost or duplicated
answers. A backend that misses any of them is marked `<-- MISSED: …` in the output and
lists what it missed under `missed_targets` in the JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from tests.survey_helpers import ADMIN_TOKEN, Server, postgres_database  # noqa: E402
from valign.survey.db import Answer, Respondent, make_engine  # noqa: E402
from valign.survey.instrument import load_instrument  # noqa: E402
from valign.survey.simulate import Population, SimResult, simulate  # noqa: E402

P95_TARGET_MS = 300  # request latency the survey must stay under at the 95th percentile


def missed_targets(row: dict, n: int) -> list[str]:
    """The targets a backend's run missed (empty: all met)."""
    missed = []
    if not row["completed"] == row["started"] == n:
        missed.append(f"completed {row['completed']}/{row['started']} of {n}")
    if row["lost"] or row["duplicated"]:
        missed.append(f"{row['lost']} lost, {row['duplicated']} duplicated")
    if row.get("kill_requested") and not row.get("worker_killed"):
        missed.append("no worker was killed (--kill-worker-after needs --workers 2 or more)")
    if not row["p95_ms"] < P95_TARGET_MS:
        missed.append(f"p95 {row['p95_ms']} ms >= {P95_TARGET_MS} ms")
    return missed


def check_database(db_url: str, result) -> dict:  # noqa: ANN001
    """Compare what the simulated respondents sent with what the database holds."""
    from sqlalchemy import func, select
    from sqlalchemy.orm import Session

    engine = make_engine(db_url)
    with Session(engine) as s:
        ids = dict(s.execute(select(Respondent.public_id, Respondent.id)).all())
        started = len(ids)
        completed = s.scalar(select(func.count()).select_from(Respondent).where(Respondent.completed.is_(True)))
        synthetic = s.scalar(select(func.count()).select_from(Respondent).where(Respondent.synthetic.is_(True)))
        stored = {(r, i): (c, st, t) for r, i, c, st, t in s.execute(select(Answer.respondent_id, Answer.item_id, Answer.choice, Answer.strength, Answer.text))}
        dup = s.execute(select(Answer.respondent_id, Answer.item_id).group_by(Answer.respondent_id, Answer.item_id).having(func.count() > 1)).all()
    engine.dispose()
    sent = lost = 0
    for rec in result.respondents:
        pk = ids.get(rec.respondent_id) if rec.respondent_id else None
        for item, (choice, strength, text) in rec.answers.items():
            sent += 1
            row = stored.get((pk, item))
            if row is None or row[0] != choice or (strength is not None and row[1] != strength) or (text is not None and row[2] != text):
                lost += 1
    return {"started": started, "completed": completed, "synthetic": synthetic, "answers_sent": sent, "answers_stored": len(stored), "lost": lost, "duplicated": len(dup)}


def _simulate_share(url: str, n: int, seed: int, think: float, ramp: float) -> SimResult:
    """One load-generator process's share of the respondents (run in a child process)."""
    inst = load_instrument("demo")
    pop = Population(seed=seed, profiles={"clean": 1.0}, seconds_per_item=think, propose=0.05)
    return asyncio.run(simulate(url, n, inst, pop, ADMIN_TOKEN, concurrency=n, ramp_seconds=ramp, timeout=120))


def generate_load(url: str, args: argparse.Namespace) -> SimResult:
    """The respondents, from ``args.generators`` processes: one Python event loop driving
    200 HTTP clients saturates its core, and its own queueing then shows in the
    latencies it measures; several processes split that work (on the same machine)."""
    if args.generators == 1:
        return _simulate_share(url, args.n, 1, args.think, args.ramp)
    from concurrent.futures import ProcessPoolExecutor

    shares = [args.n // args.generators + (i < args.n % args.generators) for i in range(args.generators)]
    with ProcessPoolExecutor(len(shares)) as pool:
        parts = list(pool.map(_simulate_share, [url] * len(shares), shares, range(1, len(shares) + 1), [args.think] * len(shares), [args.ramp] * len(shares)))
    return SimResult([r for p in parts for r in p.respondents], [x for p in parts for x in p.latencies], max(p.seconds for p in parts))


def worker_pids(parent: int) -> list[int]:
    """The uvicorn worker processes under ``parent`` (multiprocessing's spawned children)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
                if ppid == parent and b"spawn_main" in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return sorted(found)


def kill_a_worker_later(parent: int, seconds: float, killed: list[int]) -> threading.Thread:
    """SIGKILL one server worker ``seconds`` into the run (it needs ``--workers`` ≥ 2)."""

    def kill() -> None:
        time.sleep(seconds)
        pids = worker_pids(parent)
        if pids:
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread


def run_backend(backend: str, args: argparse.Namespace, tmp: Path) -> dict:
    # Everyone completes (profile "clean" in `_simulate_share`): problem profiles change the flags, not the load.
    def go(db_url: str) -> dict:
        extra = ["--workers", str(args.workers)]  # default rate limits: synthetic respondents are exempt
        with Server(db_url, "demo", *extra, log=tmp / f"{backend}.log") as server:
            load_before = os.getloadavg()
            killed: list[int] = []
            if args.kill_worker_after:
                kill_a_worker_later(server.proc.pid, args.kill_worker_after, killed)
            t0 = time.perf_counter()
            result = generate_load(server.url, args)
            wall = time.perf_counter() - t0
            load_after = os.getloadavg()
        checks = check_database(db_url, result)
        lat = result.latencies
        return {
            "backend": backend,
            "respondents": args.n,
            "workers": args.workers,
            "generators": args.generators,
            "kill_requested": bool(args.kill_worker_after),
            "worker_killed": killed[0] if killed else None,
            **checks,
            "simulator_completed": result.completed,
            "errors": result.errors[:5],
            "requests": len(lat),
            "requests_per_s": round(len(lat) / wall, 1),
            "p50_ms": round(result.p50 * 1000, 1),
            "p95_ms": round(result.p95 * 1000, 1),
            "p99_ms": round(result.percentile(0.99) * 1000, 1),
            "max_ms": round(max(lat) * 1000, 1) if lat else None,
            "wall_s": round(wall, 1),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in load_after],
        }

    if backend == "sqlite":
        return go(f"sqlite:///{tmp / 'load.db'}")
    with postgres_database() as url:
        return go(url)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200, help="concurrent synthetic respondents")
    ap.add_argument("--think", type=float, default=0.5, help="seconds each respondent spends per question (people take 5–10)")
    ap.add_argument("--ramp", type=float, default=5.0, help="seconds over which respondents arrive")
    ap.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    ap.add_argument("--generators", type=int, default=2, help="load-generator processes sharing the respondents (one saturates its core at 200 and measures its own queueing)")
    ap.add_argument("--kill-worker-after", type=float, default=None, metavar="SECONDS", help="SIGKILL one server worker this far into the run (with --workers 2 or more); nothing may be lost")
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "survey_load.json")
    args = ap.parse_args()
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends.split(","):
            row = run_backend(backend, args, Path(tmp))
            missed = missed_targets(row, args.n)
            row["missed_targets"] = missed
            rows.append(row)
            print(
                f"{backend:10s} completed {row['completed']}/{row['started']} started, answers {row['answers_stored']} stored / {row['answers_sent']} sent, "
                f"lost {row['lost']}, duplicated {row['duplicated']}; {row['requests']} requests at {row['requests_per_s']}/s, "
                f"p50 {row['p50_ms']} ms, p95 {row['p95_ms']} ms, p99 {row['p99_ms']} ms; load {row['load_average_before'][0]} → {row['load_average_after'][0]}"
                + (f"; worker killed: {row['worker_killed']}" if args.kill_worker_after else "")
                + ("" if not missed else "  <-- MISSED: " + "; ".join(missed))
            )
    out = {
        "benchmark": "survey_load",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}",
        "settings": {"respondents": args.n, "think_seconds_per_question": args.think, "ramp_seconds": args.ramp, "workers": args.workers, "generators": args.generators, "kill_worker_after_s": args.kill_worker_after, "instrument": "demo"},
        "target": {"p95_ms": P95_TARGET_MS, "completed_equals_started": True, "lost": 0, "duplicated": 0},
        "results": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
