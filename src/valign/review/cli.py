"""``valign review …``: serve the blinded review of a finished evaluation, invite reviewers, export.

Example:
    $ valign review serve runs/kantian-demo --db review.db --invite 3   # prints 3 invitation links
    $ valign review invite --db review.db --n 2 --url https://review.example.org
    $ valign review export --db review.db --out runs/kantian-demo/review --run runs/kantian-demo
    $ valign judge calibrate --judge embedded --pairs runs/kantian-demo/review/human_pairs.jsonl --mode pairwise
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

__all__ = ["review_app"]

review_app = typer.Typer(help="Expert review: people grade the key-case answer pairs blind, beside the AI judge.", no_args_is_help=True)

_DB = typer.Option("sqlite:///review.db", "--db", help="Database URL or SQLite path holding the review (one review per database).")


def _links(tokens: list[str], base: str) -> list[str]:
    return [f"{base.rstrip('/')}/i/{t}" for t in tokens]


@review_app.command("serve")
def serve(
    source: Path = typer.Argument(..., help="A run folder, a `valign eval --out` folder (its key cases), or a JSONL file of id/prompt/answer_a/answer_b."),
    db: str = _DB,
    host: str = typer.Option("127.0.0.1", help="Interface to bind (0.0.0.0 to serve others; put TLS in front)."),
    port: int = typer.Option(8010, help="Port."),
    invite: int = typer.Option(0, "--invite", min=0, help="Make this many new reviewers first and print their invitation links."),
    public_url: Optional[str] = typer.Option(None, "--public-url", help="The address reviewers use, for the printed links (default http://HOST:PORT)."),
) -> None:
    """Load the pairs into the database (once) and serve the review pages."""
    import uvicorn

    from valign.review.app import create_app
    from valign.review.pairs import load_pairs
    from valign.review.store import ReviewStore

    store = ReviewStore.open(db)
    n = store.load(load_pairs(source))
    base = public_url or f"http://{host}:{port}"
    for link in _links(store.invite(invite), base) if invite else []:
        typer.echo(link)
    typer.echo(f"review of {n} cases on http://{host}:{port}/ (invitation links: valign review invite --db {db})", err=True)
    uvicorn.run(create_app(store, os.environ.get("VALIGN_REVIEW_SECRET") or None), host=host, port=port, access_log=False, log_level="warning")


@review_app.command("invite")
def invite_cmd(
    db: str = _DB,
    n: int = typer.Option(1, "--n", min=1, help="How many reviewers to invite."),
    url: str = typer.Option("http://127.0.0.1:8010", "--url", help="The review's address, from which the links are built."),
) -> None:
    """Make reviewers and print one invitation link each (shown once: only a hash is kept)."""
    from valign.review.store import ReviewStore

    for link in _links(ReviewStore.open(db).invite(n), url):
        typer.echo(link)


@review_app.command("export")
def export_cmd(
    out: Path = typer.Option(..., "--out", help="Folder for grades.jsonl, grades.csv, human_pairs.jsonl, summary.json (RUN/review to show them in the report)."),
    db: str = _DB,
    run: Optional[Path] = typer.Option(None, "--run", help="The run or evaluation folder whose AI judge the summary compares with."),
) -> None:
    """Write the grades (reviewers pseudonymous), human-labelled pairs and the agreement summary."""
    from valign.review.export import write_export
    from valign.review.store import ReviewStore

    judge_rows = []
    if run is not None:
        from valign.evals.rundata import load_run

        judge_rows = [r for r in load_run(run).rows("evaluate") if r.get("type") == "keycase"]
    summary = write_export(ReviewStore.open(db), out, judge_rows)
    alpha = summary["alpha_ordinal"]
    typer.echo(
        f"wrote {summary['grades']} grades by {summary['reviewers']} reviewers on {len(summary['cases'])} cases to {out}; "
        f"Krippendorff's ordinal alpha {'n/a' if alpha is None else alpha}; judge vs humans: {summary['judge']}"
    )
