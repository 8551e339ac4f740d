"""Polis conversations in the survey database: ``valign survey import-polis`` and
``valign survey export --format polis``.

**Import.** A Polis export (`valign.survey.polis_files`) becomes, under the name
``<conversation>`` (its pol.is id, or ``--conversation``):

* each comment a statement in ``proposals`` (``source`` = ``polis:<conversation>``,
  ``external_id`` = the comment id): accepted and unmoderated comments
  ``approved``; moderated-out and meta ones ``rejected`` (kept, never analysed,
  their votes not imported), as Polis leaves them out of its analysis;
* each participant a respondent (same ``source``, ``external_id`` = the participant
  id, ``completed``, not ``synthetic``; no resume token can open it) of the
  instrument ``polis-<conversation>``, so no analysis of a live instrument sees them;
* each vote an answer on ``prop-<n>``: 1 → ``agree``, -1 → ``disagree``, 0 → ``pass``;
* each opinion group membership a demographic answer ``polis-group`` (margin
  ``opinion_group``), which the group-aware consensus partitions by, as Polis does.

Importing the same conversation again replaces its votes and groups and updates its
statements in place (their ``prop-<n>`` ids stay): no duplicates. Live survey pages
never show imported statements.

**Analysis** (`valign.survey.polis_instrument`): ``--instrument polis:<conversation>``,
for every ``valign survey`` command that reads responses and the run's ``survey``
stage; each participant counts once (``--margins participants``).

**Export.** `export_polis` writes an instrument's principle statements (its own and
the approved proposals) and the votes on them as a Polis export. Participants are
numbered 0, 1, … afresh (no respondent id, token or address leaves), comment authors
are left blank and vote times are cut to the day.

Example::

    summary = import_polis("sqlite:///survey.db", Path("openData/brexit-consensus"))
    frames = load_checked("sqlite:///survey.db", f"polis:{summary.conversation}")
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from valign.errors import ValignError
from valign.survey.polis_files import VOTE_CODES, PolisComment, PolisConversation, PolisVote, read_polis, write_polis
from valign.survey.polis_instrument import GROUP_ITEM, GROUP_MARGIN, POLIS_PREFIX, instrument_id, polis_source

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

__all__ = ["ImportSummary", "import_polis", "export_polis"]

_CODES_TO_VOTE = {code: vote for vote, code in VOTE_CODES.items()}


@dataclass(frozen=True)
class ImportSummary:
    """What an import brought in (counts after the import, not differences)."""

    conversation: str
    comments: int
    left_out: int  # moderated out or meta: kept as rejected statements, not analysed
    participants: int
    votes: int
    groups: dict[str, int]

    def sentence(self) -> str:
        """One line for the terminal.

        Example:
            >>> ImportSummary("c", 5, 1, 20, 80, {"0": 12, "1": 8}).sentence()
            'polis:c: 5 comments (1 moderated out or meta, not analysed), 20 participants, 80 votes, 2 opinion groups (0: 12, 1: 8)'
        """
        groups = f"{len(self.groups)} opinion groups ({', '.join(f'{g}: {n}' for g, n in self.groups.items())})" if self.groups else "no opinion groups"
        return f"{POLIS_PREFIX}{self.conversation}: {self.comments} comments ({self.left_out} moderated out or meta, not analysed), {self.participants} participants, {self.votes} votes, {groups}"


def _digest(*parts: str) -> str:
    return hashlib.sha256(":".join(parts).encode()).hexdigest()



# -- import --------------------------------------------------------------------------------


def import_polis(db: "str | Engine | None", folder: str | Path, conversation: str | None = None) -> ImportSummary:
    """Read the Polis export in ``folder`` into the survey database (migrated first), in
    one transaction; see the module docstring. ``conversation`` defaults to the
    pol.is id in ``summary.csv``, else the folder's name."""
    from sqlalchemy.engine import Engine

    from valign.survey.db import Database, make_engine, migrate, resolve_db_url

    data = read_polis(folder)
    source = polis_source(conversation or data.conversation_id or Path(folder).resolve().name)
    engine = db if isinstance(db, Engine) else make_engine(resolve_db_url(db))
    try:
        migrate(engine)
        with Database(engine).write() as s:
            return _store(s, data, source)
    finally:
        if not isinstance(db, Engine):
            engine.dispose()


def _store(s: Any, data: PolisConversation, source: str) -> ImportSummary:
    from sqlalchemy import delete, insert, select

    from valign.survey.db import Answer, Proposal, Respondent, Setting
    from valign.web.database import utcnow

    now = utcnow()
    # Statements: updated in place by comment id, so their item ids (prop-<n>) stay.
    existing = {p.external_id: p for p in s.scalars(select(Proposal).where(Proposal.source == source))}
    shown: dict[str, Proposal] = {}
    for c in data.comments:
        p = existing.pop(c.id, None)
        status = "approved" if c.analysed else "rejected"
        if p is None:
            p = Proposal(source=source, external_id=c.id, text=c.text, status=status, created_at=c.created_at or now)
            s.add(p)
        elif (p.text, p.status) != (c.text, status):
            p.text, p.status, p.moderated_at = c.text, status, now  # a changed statement, as a moderator's change would be
        if status == "approved":
            shown[c.id] = p
    for gone in existing.values():
        s.delete(gone)
    s.flush()
    items = {cid: p.item_id for cid, p in shown.items()}  # ids exist after the flush

    votes = [v for v in data.votes if v.comment_id in items]
    times: dict[str, list[datetime]] = {}
    for v in data.votes:
        times.setdefault(v.voter_id, [])
        if v.at is not None:
            times[v.voter_id].append(v.at)
    participants = sorted(set(times) | set(data.groups), key=int)
    inst_id = instrument_id(source)
    people = {r.external_id: r for r in s.scalars(select(Respondent).where(Respondent.source == source))}
    for pid in participants:
        r = people.pop(pid, None)
        when = sorted(times.get(pid) or [r.started_at if r is not None else now])
        if r is None:
            key = _digest(source, pid)
            r = Respondent(
                public_id=f"polis-{key[:16]}",
                resume_hash=f"imported:{key[:55]}",  # not a sha-256 hex digest: no resume token opens it
                instrument_id=inst_id, instrument_fingerprint=key[:16], seed=0, shown_proposals="[]",
                source=source, external_id=pid, synthetic=False,
            )
            s.add(r)
        r.completed, r.started_at, r.finished_at = True, when[0], when[-1]
    for gone in people.values():  # participants no longer in the export
        s.execute(delete(Answer).where(Answer.respondent_id == gone.id))
        s.delete(gone)
    s.flush()
    ids = dict(s.execute(select(Respondent.external_id, Respondent.id).where(Respondent.source == source)).all())
    theirs = select(Respondent.id).where(Respondent.source == source)
    # Answers are replaced; a time the export does not give keeps the one first recorded,
    # so importing the same files again changes nothing.
    earlier = {(rid, item): at for rid, item, at in s.execute(select(Answer.respondent_id, Answer.item_id, Answer.answered_at).where(Answer.respondent_id.in_(theirs)))}
    s.execute(delete(Answer).where(Answer.respondent_id.in_(theirs)))

    def row(pid: str, item: str, kind: str, choice: str, at: datetime | None) -> dict[str, Any]:
        rid = ids[pid]
        return {"respondent_id": rid, "item_id": item, "kind": kind, "choice": choice, "strength": None, "text": None,
                "answered_at": at or earlier.get((rid, item)) or now}

    rows = [row(v.voter_id, items[v.comment_id], "principle", VOTE_CODES[v.vote], v.at) for v in votes]
    rows += [row(pid, GROUP_ITEM, "demographic", group, max(times[pid]) if times.get(pid) else None) for pid, group in data.groups.items()]
    if rows:
        s.execute(insert(Answer), rows)
    groups = sorted(set(data.groups.values()), key=int)
    meta = json.dumps({"topic": data.topic, "url": data.url, "description": data.description, "groups": groups})
    setting = s.get(Setting, source)
    if setting is None:
        s.add(Setting(key=source, value=meta))
    else:
        setting.value = meta
    counts = {g: sum(1 for x in data.groups.values() if x == g) for g in groups}
    return ImportSummary(source.removeprefix(POLIS_PREFIX), len(data.comments), len(data.comments) - len(items), len(participants), len(votes), counts)


# -- export --------------------------------------------------------------------------------


def export_polis(db: str | None, instrument: str, out: str | Path, *, synthetic: bool = False) -> PolisConversation:
    """Write the instrument's statements and the votes on them as a Polis export in
    ``out`` (comments.csv, votes.csv, participants-votes.csv, summary.csv).

    Respondents the quality checks exclude are left out, and simulated ones unless
    ``synthetic``; only respondents who voted are written."""
    from valign.survey.quality import load_checked

    frames = load_checked(db, instrument).select(completed_only=False, synthetic=synthetic)
    resp = frames.respondents
    if "exclude" in resp.columns:
        resp = resp[~resp["exclude"].fillna(False).astype(bool)]
    statements = [i for i in frames.instrument.items() if i.kind == "principle"]
    if not statements:
        raise ValignError(f"instrument '{frames.instrument.id}' has no principle statements to export as Polis comments; choose an instrument with a principles section.")
    comment_of = {item.id: str(n) for n, item in enumerate(statements)}
    a = frames.answers
    a = a[a["item_id"].isin(list(comment_of)) & a["choice"].isin(list(_CODES_TO_VOTE)) & a["respondent_id"].isin(resp.index)]
    voted = set(a["respondent_id"])
    voters = [rid for rid in resp.index if rid in voted]
    voter_of = {rid: str(n) for n, rid in enumerate(voters)}
    votes = [
        PolisVote(comment_of[item], voter_of[rid], _CODES_TO_VOTE[choice], _day(at))
        for rid, item, choice, at in a[["respondent_id", "item_id", "choice", "answered_at"]].itertuples(index=False)
    ]
    groups = {}
    if GROUP_MARGIN in resp.columns:
        groups = {voter_of[rid]: str(g) for rid, g in resp[GROUP_MARGIN].items() if rid in voter_of and g is not None and g == g}
    inst = frames.instrument
    conversation = PolisConversation(
        topic=inst.title, description=inst.description,
        comments=[PolisComment(comment_of[i.id], i.text, None, 1) for i in statements],
        votes=votes, groups=groups,
    )
    write_polis(conversation, out)
    return conversation


def _day(at: Any) -> datetime | None:
    """A vote's time cut to its day (UTC): enough to order a conversation, too coarse to time a person."""
    if at is None or at != at:
        return None
    return datetime(at.year, at.month, at.day, tzinfo=timezone.utc)
