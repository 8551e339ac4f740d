"""``valign survey …``: serve the survey, migrate its database, invite, simulate, export, flag, erase.

Heavy imports (FastAPI, SQLAlchemy, pandas) happen inside the commands, so
``valign --help`` stays instant.

Example:
    $ valign survey serve                       # the demo instrument on ./survey.db, port 8000
    $ VALIGN_ADMIN_TOKEN=… valign survey simulate --n 50 --url http://127.0.0.1:8000
    $ valign survey weight --margins nz-census-2023
    $ valign survey export --out survey-export/   # constitution, DPO/KTO rows, evaluation set
    $ valign survey data responses.sav            # the respondent-level table
    $ valign survey import-polis openData/brexit-consensus   # a Polis conversation, analysed as polis:<id>
    $ valign survey erase 3f9a0c1d2b4e5f60        # delete one respondent's response
    $ valign survey purge --retention-days 30     # delete incomplete responses untouched for 30 days
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer

from valign.errors import ValignError

__all__ = ["survey_app"]

survey_app = typer.Typer(help="The public values survey: web app, database, invitations, synthetic respondents, exports.", no_args_is_help=True)

_INSTRUMENT = typer.Option("demo", "--instrument", "-i", help="Instrument YAML file or shipped name (demo).")
_DB = typer.Option(None, "--db", help="Database URL or SQLite path; default $VALIGN_SURVEY_DB or sqlite:///survey.db.")


@survey_app.command("check")
def check(instrument: str = typer.Argument("demo", help="Instrument YAML file or shipped name.")) -> None:
    """Validate an instrument and summarise it (mistakes name the place and the fix)."""
    from valign.survey.flow import plan_pages
    from valign.survey.instrument import load_instrument

    inst = load_instrument(instrument)
    kinds: dict[str, int] = {}
    for item in inst.items():
        kinds[item.kind] = kinds.get(item.kind, 0) + 1
    typer.echo(f"{inst.id} v{inst.version}: {inst.title}")
    typer.echo(f"  {'validated' if inst.validated else 'NOT a validated instrument'}; fingerprint {inst.fingerprint()}")
    typer.echo("  " + ", ".join(f"{n} {k}" for k, n in kinds.items()))
    typer.echo(f"  {len(plan_pages(inst, seed=0))} pages of at most {inst.page_size} questions")
    if len(inst.languages) > 1:
        typer.echo(f"  languages: {', '.join(inst.languages)} (base {inst.language}); every text translated")
    for cell in inst.quota_cells():
        typer.echo(f"  quota {cell.label}: target {cell.target} completed responses")


@survey_app.command("migrate")
def migrate_cmd(db: Optional[str] = _DB) -> None:
    """Create or upgrade the survey's tables (Alembic); safe to run any time."""
    from valign.survey.db import make_engine, migrate, resolve_db_url, schema_revision

    engine = make_engine(resolve_db_url(db))
    migrate(engine)
    typer.echo(f"{engine.url.render_as_string(hide_password=True)} is at revision {schema_revision(engine)}")


@survey_app.command("serve")
def serve(
    instrument: str = _INSTRUMENT,
    db: Optional[str] = _DB,
    host: str = typer.Option("127.0.0.1", help="Interface to bind (0.0.0.0 to serve others; put TLS in front)."),
    port: int = typer.Option(8000, help="Port."),
    invitations: str = typer.Option("open", help="open: anyone with the address; required: only /i/<token> links."),
    workers: int = typer.Option(1, min=1, help="Worker processes; sessions, CSRF and rate limits hold across them (rate limits are kept in the database)."),
    rate_limit_session: int = typer.Option(60, help="Form submissions per minute per browser session (0 = off)."),
    rate_limit_ip: int = typer.Option(600, help="Form submissions per minute per client address (0 = off); counted in the database under a keyed hash, never the address."),
    public_url: Optional[str] = typer.Option(None, help="The address respondents use, e.g. https://survey.example.org: resume and invitation links are built from it (also turns on Secure cookies when https)."),
    max_body_bytes: int = typer.Option(64 * 1024, min=1024, help="Largest request body accepted; larger ones get 413 before they are read (a page's form is a few KiB)."),
    retention_days: Optional[int] = typer.Option(None, "--retention-days", min=1, help="Delete incomplete responses untouched for this many days, at start and hourly (default: keep them)."),
    allowed_host: list[str] = typer.Option([], "--allowed-host", help="Without --public-url: a Host name links may be built from (repeatable); default localhost, 127.0.0.1, ::1 and --host. Other Hosts get a 400 where a link is shown."),
    forwarded_allow_ips: Optional[str] = typer.Option(None, "--forwarded-allow-ips", help="Comma-separated addresses of the proxies whose X-Forwarded-For/-Proto to trust (e.g. 127.0.0.1 for a proxy on this machine); default none, so the client address is the connection's."),
    pool_size: int = typer.Option(10, min=1, help="Database connections each worker keeps open (up to twice as many more on demand)."),
) -> None:
    """Serve the survey. Admin pages need VALIGN_ADMIN_TOKEN; cookies are signed with VALIGN_SURVEY_SECRET or a generated key kept in the database."""
    import uvicorn

    from valign.survey.app import SurveySettings, create_app
    from valign.survey.db import make_engine, migrate, resolve_db_url
    from valign.survey.instrument import load_instrument

    if invitations not in ("open", "required"):
        raise ValignError(f"--invitations '{invitations}' is not one of open, required.")
    inst = load_instrument(instrument)
    url = resolve_db_url(db)
    migrate(make_engine(url))  # once, before any worker starts
    hosts = list(allowed_host) or ["localhost", "127.0.0.1", "::1", *([host] if host not in ("0.0.0.0", "::", "") else [])]
    settings = dict(invitations=invitations, rate_limit_session=rate_limit_session, rate_limit_ip=rate_limit_ip, public_url=public_url, allowed_hosts=hosts, pool_size=pool_size, max_body_bytes=max_body_bytes, migrate=False, retention_days=retention_days)
    if not public_url and not allowed_host and host in ("0.0.0.0", "::"):
        typer.echo("note: without --public-url or --allowed-host, pages with a resume link answer 400 for any Host but localhost, 127.0.0.1 and ::1.", err=True)
    if not os.environ.get("VALIGN_ADMIN_TOKEN"):
        typer.echo("note: VALIGN_ADMIN_TOKEN is not set, so the admin pages are disabled.", err=True)
    typer.echo(f"survey '{inst.id}' on http://{host}:{port}/ ({make_engine(url).url.render_as_string(hide_password=True)})", err=True)
    import sys

    # Handlers run in threads beside the event loop; a shorter GIL switch interval (5 ms
    # by default) lets a finished handler hand its page back without waiting a whole slice.
    sys.setswitchinterval(float(os.environ.get("VALIGN_SWITCH_INTERVAL", "0.0005")))
    # No access log: request lines would carry resume and invitation tokens and client addresses.
    # Forwarded-for headers rewrite the client address (and so the rate limits' keys):
    # trusted only from the proxies named, never by default (uvicorn's own default trusts 127.0.0.1).
    proxies = [a.strip() for a in (forwarded_allow_ips or "").split(",") if a.strip()]
    common = dict(host=host, port=port, access_log=False, log_level="warning", timeout_keep_alive=20, proxy_headers=bool(proxies), forwarded_allow_ips=proxies or None)
    if workers == 1:
        uvicorn.run(create_app(inst, url, SurveySettings(**settings)), **common)
    else:
        # Each worker builds its own app from this variable; the buckets table exists before they start.
        from valign.web.ratelimit import ensure_bucket_table

        ensure_bucket_table(make_engine(url))
        os.environ["VALIGN_SURVEY_APP"] = json.dumps({"instrument": str(instrument), "db_url": url, **settings})
        uvicorn.run("valign.survey.app:app_from_env", factory=True, workers=workers, **common)


@survey_app.command("invite")
def invite(
    n: int = typer.Option(1, "--n", min=1, max=100_000, help="Invitations to create."),
    db: Optional[str] = _DB,
    base_url: str = typer.Option("http://127.0.0.1:8000", help="The survey's public address, for the printed links."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the links to this file instead of printing them."),
    lang: Optional[str] = typer.Option(None, "--lang", help="The language the survey opens in (one of the instrument's languages); default: the respondent chooses."),
    instrument: str = typer.Option("demo", "--instrument", "-i", help="The instrument served, to check --lang against its languages."),
) -> None:
    """Create invitation links (one response each). Only their hashes are stored: keep the output."""
    from valign.survey.admin import create_invitations
    from valign.survey.db import Database, make_engine, migrate, resolve_db_url
    from valign.survey.instrument import load_instrument

    if lang is not None:
        languages = load_instrument(instrument).languages
        if lang not in languages:
            raise ValignError(f"--lang '{lang}' is not one of the instrument's languages ({', '.join(languages)}); pick one of those or leave it out.")
    engine = make_engine(resolve_db_url(db))
    migrate(engine)
    links = [f"{base_url.rstrip('/')}/i/{t}" for t in create_invitations(Database(engine), n, language=lang)]
    if out is not None:
        out.write_text("\n".join(links) + "\n", encoding="utf-8")
        typer.echo(f"wrote {n} invitation links to {out}", err=True)
    else:
        typer.echo("\n".join(links))


@survey_app.command("erase")
def erase(
    respondent_id: str = typer.Argument(..., help="The response number (the exports' respondent_id, shown on the thank-you page)."),
    db: Optional[str] = _DB,
) -> None:
    """Delete one respondent and every row tied to them; the erasure log keeps only the counts."""
    from valign.survey.db import Database, make_engine, migrate, resolve_db_url
    from valign.survey.erasure import erase_respondent

    engine = make_engine(resolve_db_url(db))
    migrate(engine)
    done = erase_respondent(Database(engine), respondent_id.strip(), "admin")
    if done is None:
        raise ValignError(f"there is no respondent '{respondent_id}' in {engine.url.render_as_string(hide_password=True)}; check the number (the exports' respondent_id column lists them) and --db.")
    typer.echo(f"erased respondent {respondent_id.strip()}: " + ", ".join(f"{k} {v}" for k, v in sorted(done.rows.items())))


@survey_app.command("purge")
def purge(
    retention_days: int = typer.Option(..., "--retention-days", min=1, help="Delete incomplete responses untouched for this many days."),
    db: Optional[str] = _DB,
) -> None:
    """Delete incomplete responses nobody touched for N days (what `serve --retention-days` does hourly); completed ones stay."""
    from valign.survey.db import Database, make_engine, migrate, resolve_db_url
    from valign.survey.erasure import purge_incomplete

    engine = make_engine(resolve_db_url(db))
    migrate(engine)
    done = purge_incomplete(Database(engine), retention_days)
    detail = ", ".join(f"{k} {v}" for k, v in sorted(done.rows.items()) if k != "respondents")
    typer.echo(f"deleted {done.respondents} incomplete responses untouched for {retention_days} days" + (f" ({detail})" if detail else ""))


def _frames(db: Optional[str], instrument: str):
    from valign.survey.quality import load_checked

    return load_checked(db, instrument)


@survey_app.command("data")
def data(
    out: Path = typer.Argument(..., help="Output file: .csv, .json or .sav (SPSS, with labels)."),
    instrument: str = _INSTRUMENT,
    db: Optional[str] = _DB,
    include_excluded: bool = typer.Option(False, help="Keep respondents the quality checks exclude."),
    completed_only: bool = typer.Option(False, help="Only respondents who finished."),
    synthetic: bool = typer.Option(True, help="--no-synthetic drops simulated respondents."),
) -> None:
    """Write the respondent-level table (demographics, answers, flags; no tokens or addresses)."""
    from valign.survey.data import write_export

    rows = write_export(_frames(db, instrument), out, include_excluded=include_excluded, completed_only=completed_only, synthetic=synthetic)
    typer.echo(f"wrote {rows} respondents to {out}")


_MARGINS = typer.Option(None, "--margins", "-m", help="A margins YAML file or shipped name (nz-census-2023), or 'participants' (each counted once); default nz-census-2023, participants for --instrument polis:<name>.")
_TRIM = typer.Option(None, "--trim", help="Bounds on weight / mean weight as LOW,HIGH, e.g. 0.2,5 (default: no trimming).")
_MISSING = typer.Option("own_category", "--missing", help="A skipped raking question: own_category, impute_mode or drop.")
_SYNTHETIC = typer.Option(False, "--synthetic/--no-synthetic", help="Count simulated respondents (for demos; off by default).")


@survey_app.command("weight")
def weight(
    db: Optional[str] = _DB,
    margins: Optional[str] = _MARGINS,
    instrument: str = _INSTRUMENT,
    trim: Optional[str] = _TRIM,
    missing: str = _MISSING,
    synthetic: bool = _SYNTHETIC,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the diagnostics and every respondent's weight to this JSON file."),
) -> None:
    """Rake the completed respondents to population margins with svy; report design effect, ESS and ASMD."""
    from valign.survey.polis_instrument import margins_for
    from valign.survey.weighting import rake_frames

    frames = _frames(db, instrument).select(completed_only=True, synthetic=synthetic)
    if frames.respondents.empty:
        raise ValignError("no completed respondents to weight" + ("" if synthetic else " (add --synthetic to count simulated ones)") + ".")
    result = rake_frames(frames, margins_for(frames, instrument, margins), trim=parse_trim(trim), missing=missing)  # type: ignore[arg-type]
    typer.echo(result.report())
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(weighting_json(result), encoding="utf-8")
        typer.echo(f"wrote {out}")


@survey_app.command("export")
def export(
    out: Path = typer.Option(..., "--out", "-o", help="Folder for constitution.yaml, dpo.jsonl, kto.jsonl, eval_items.jsonl, consensus.csv, summary.json."),
    db: Optional[str] = _DB,
    instrument: str = _INSTRUMENT,
    fmt: str = typer.Option("valign", "--format", help="valign: the weighted export; polis: statements and votes as a Polis export (comments.csv, votes.csv, participants-votes.csv)."),
    margins: Optional[str] = _MARGINS,
    trim: Optional[str] = _TRIM,
    missing: str = _MISSING,
    synthetic: bool = _SYNTHETIC,
    replicates: int = typer.Option(200, "--replicates", "-B", min=2, help="Bootstrap replicates (each re-raked) for the intervals."),
    threshold: float = typer.Option(0.6, min=0.5, max=1.0, help="A statement becomes a principle when the lower bound of its per-group agreement clears this."),
    min_group_n: int = typer.Option(10, help="Leave out subgroup distributions of fewer respondents."),
    seed: int = typer.Option(0, help="Seed of the bootstrap."),
) -> None:
    """Weighted survey → a constitution (group-aware consensus), DPO/KTO rows and an evaluation set; or, with --format polis, a Polis export."""
    from valign.survey.consensus import ConsensusSettings
    from valign.survey.export import ExportSettings, export_survey

    if fmt not in ("valign", "polis"):
        raise ValignError(f"--format '{fmt}' is not one of valign, polis.")
    if fmt == "polis":
        from valign.survey.polis import export_polis

        conv = export_polis(db, instrument, out, synthetic=synthetic)
        typer.echo(f"{len(conv.comments)} statements, {len({v.voter_id for v in conv.votes})} participants, {len(conv.votes)} votes → {out} (Polis export)")
        return

    settings = ExportSettings(B=replicates, seed=seed, min_group_n=min_group_n, consensus=ConsensusSettings(threshold=threshold))
    summary = export_survey(db, instrument, margins, out, settings, trim=parse_trim(trim), missing=missing, synthetic=synthetic)
    counts = summary["counts"]
    typer.echo(f"{summary['respondents']['weighted']} weighted respondents → {out}: " + ", ".join(f"{k} {v}" for k, v in counts.items() if not isinstance(v, dict)))


@survey_app.command("import-polis")
def import_polis_cmd(
    folder: Path = typer.Argument(..., help="A Polis export folder: comments.csv and votes.csv and/or participants-votes.csv (summary.csv optional)."),
    db: Optional[str] = _DB,
    conversation: Optional[str] = typer.Option(None, "--conversation", help="Name to import it under; default the pol.is id in summary.csv, else the folder's name."),
) -> None:
    """Bring a Polis conversation's comments, votes and opinion groups into the survey database (again: replaces, never duplicates)."""
    from valign.survey.polis import import_polis

    summary = import_polis(db, folder, conversation)
    typer.echo(summary.sentence())
    typer.echo(f"analyse it with --instrument polis:{summary.conversation}, e.g. valign survey export --instrument polis:{summary.conversation} --out export/")


def parse_trim(text: str | None) -> tuple[float, float] | None:
    """``"0.2,5"`` → ``(0.2, 5.0)``; None stays None.

    Example:
        >>> parse_trim("0.2,5")
        (0.2, 5.0)
    """
    if text is None or not text.strip():
        return None
    parts = [p.strip() for p in text.split(",")]
    try:
        low, high = (float(p) for p in parts)
    except ValueError:
        raise ValignError(f"--trim '{text}' is not two numbers; write the bounds on weight/mean weight as LOW,HIGH, e.g. --trim 0.2,5.") from None
    return (low, high)


def weighting_json(result) -> str:  # noqa: ANN001
    """The report's data plus every respondent's weight (null: no weight), as JSON text."""
    data = result.to_dict()
    data["weights"] = {str(k): (None if v != v else float(v)) for k, v in result.weights.items()}
    return json.dumps(data, indent=2, default=str)


@survey_app.command("flags")
def flags(
    instrument: str = _INSTRUMENT,
    db: Optional[str] = _DB,
    show: int = typer.Option(20, help="Flagged respondents to list."),
) -> None:
    """Quality flags: counts per check, then the flagged respondents."""
    from valign.survey.quality import FLAGS, flag_counts

    frames = _frames(db, instrument)
    for name, count in flag_counts(frames).items():
        typer.echo(f"{name}\t{count}")
    r = frames.respondents
    flagged = r[r[list(FLAGS)].any(axis=1)] if len(r) else r
    for rid, row in flagged.head(show).iterrows():
        which = ",".join(name for col, name in FLAGS.items() if row[col])
        typer.echo(f"{rid}\t{which}\texclude={bool(row['exclude'])}\tfactor={row['quality_factor']:g}")


@survey_app.command("simulate")
def simulate(
    n: int = typer.Option(20, "--n", min=1, help="Synthetic respondents."),
    url: str = typer.Option("http://127.0.0.1:8000", "--url", help="The running survey's address."),
    serve_db: Optional[str] = typer.Option(None, "--serve-db", help="Instead of --url: serve the survey on this database in-process for the run (a private admin token is made up)."),
    instrument: str = _INSTRUMENT,
    population: str = typer.Option("demo", "--population", "-p", help="Population YAML (demographics, tendencies, profiles) or shipped name."),
    admin_token: Optional[str] = typer.Option(None, "--admin-token", help="The server's admin token; default $VALIGN_ADMIN_TOKEN.", show_default=False),
    concurrency: int = typer.Option(50, min=1, help="Respondents answering at once."),
    seconds_per_item: Optional[float] = typer.Option(None, help="Thinking time per question (overrides the population's)."),
) -> None:
    """Complete the survey through its real pages with synthetic respondents (marked synthetic)."""
    import contextlib
    import secrets

    from valign.survey.simulate import load_population, run_simulation

    pop = load_population(population)
    if seconds_per_item is not None:
        pop = pop.model_copy(update={"seconds_per_item": seconds_per_item})
    server = contextlib.nullcontext(url)
    if serve_db is not None:
        from valign.serve import serve_in_background
        from valign.survey.app import SurveySettings, create_app
        from valign.survey.db import resolve_db_url
        from valign.survey.instrument import load_instrument

        admin_token = secrets.token_urlsafe(24)
        app = create_app(load_instrument(instrument), resolve_db_url(serve_db), SurveySettings(admin_token=admin_token))
        server = serve_in_background(app)
    with server as address:
        address = address.removesuffix("/v1")
        result = run_simulation(address, n, instrument=instrument, population=pop, admin_token=admin_token, concurrency=concurrency)
    screened = f", screened out {result.screened_out} (quota cell full)" if result.screened_out else ""
    typer.echo(f"started {result.started}, completed {result.completed} of {n}{screened} in {result.seconds:.1f} s; request latency p50 {result.p50 * 1000:.0f} ms, p95 {result.p95 * 1000:.0f} ms")
    for err in result.errors[:10]:
        typer.echo(f"  {err}", err=True)
