"""The files of a Polis conversation export, read and written without a database.

Polis (pol.is) exports a conversation as a folder of CSV files; the Polis project
publishes many in its openData repository. valign reads and writes four of them:

* ``comments.csv`` — ``timestamp, datetime, comment-id, author-id, agrees,
  disagrees, moderated, comment-body`` (newer exports add ``is-meta``, ``is-seed``…):
  one statement a row. ``moderated`` is 1 (accepted), 0 (not yet moderated: shown)
  or -1 (moderated out: hidden); ``is-meta`` true marks a statement about the
  participant rather than an opinion. ``agrees`` and ``disagrees`` count every vote
  row, a changed vote twice, so they are not read.
* ``votes.csv`` — ``timestamp, datetime, comment-id, voter-id, vote``: every vote
  cast, in the export's sign convention **1 = agree, -1 = disagree, 0 = pass**
  (in openData's brexit-consensus, "I voted to Leave" has 3 agrees and 162
  disagrees, and its votes are nearly all -1). A participant who voted on a comment
  twice has two rows; the later one counts.
* ``participants-votes.csv`` — ``participant, group-id, n-comments, n-votes,
  n-agree, n-disagree`` and then one column per comment id holding that
  participant's vote (blank: not seen). ``group-id`` is the opinion group Polis
  placed them in (blank: too few votes to place).
* ``summary.csv`` — ``key,value`` rows: ``topic``, ``url``, ``conversation-description``…

``timestamp`` is milliseconds since 1970 (UTC); ``datetime`` is the same instant as
text and is not read. Only ``comments.csv`` and one of ``votes.csv`` /
``participants-votes.csv`` are required: with both, votes (and their times) come
from ``votes.csv`` and groups from ``participants-votes.csv``. Every mistake is one
`ValignError` naming the file, the line and the column.

Comment text that begins with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return
is written with a leading ``'`` so a spreadsheet shows it as text instead of running
it (OWASP's advice on CSV injection); reading removes exactly that quote again.

Example:
    >>> import tempfile
    >>> conv = PolisConversation(topic="Tea", comments=[PolisComment("0", "Tea is good.")],
    ...                          votes=[PolisVote("0", "7", 1)], groups={"7": "0"})
    >>> folder = Path(tempfile.mkdtemp())
    >>> sorted(p.name for p in write_polis(conv, folder))
    ['comments.csv', 'participants-votes.csv', 'summary.csv', 'votes.csv']
    >>> back = read_polis(folder)
    >>> back.topic, back.votes[0].vote, back.groups
    ('Tea', 1, {'7': '0'})
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from valign.errors import ValignError
from valign.survey.cells import neutralise_cell, restore_cell

__all__ = ["PolisComment", "PolisVote", "PolisConversation", "read_polis", "write_polis", "POLIS_FILES", "VOTE_CODES"]

POLIS_FILES = ("comments.csv", "votes.csv", "participants-votes.csv", "summary.csv")
VOTE_CODES = {1: "agree", -1: "disagree", 0: "pass"}  # Polis export vote → valign's principle option code


@dataclass(frozen=True)
class PolisComment:
    """One statement: its Polis id, text, author (a participant id, or None) and moderation (1, 0 or -1)."""

    id: str
    text: str
    author_id: str | None = None
    moderated: int = 1
    created_at: datetime | None = None
    is_meta: bool = False  # a statement about the participant ("I live in town"), not an opinion

    @property
    def analysed(self) -> bool:
        """Whether the comment is an opinion to analyse: not moderated out, not meta (Polis leaves both out of its groups and consensus)."""
        return self.moderated != -1 and not self.is_meta


@dataclass(frozen=True)
class PolisVote:
    """One participant's vote on one comment: 1 agree, -1 disagree, 0 pass."""

    comment_id: str
    voter_id: str
    vote: int
    at: datetime | None = None


@dataclass(frozen=True)
class PolisConversation:
    """A conversation: its topic, comments, the last vote of each participant on each
    comment, and participant id → opinion group id for those Polis placed in a group."""

    topic: str = ""
    comments: list[PolisComment] = field(default_factory=list)
    votes: list[PolisVote] = field(default_factory=list)
    groups: dict[str, str] = field(default_factory=dict)
    url: str = ""
    description: str = ""

    @property
    def conversation_id(self) -> str:
        """The id at the end of the conversation's pol.is address ('' if unknown).

        Example:
            >>> PolisConversation(url="https://pol.is/7wmvbjcjhp").conversation_id
            '7wmvbjcjhp'
        """
        return self.url.rstrip("/").rsplit("/", 1)[-1] if self.url else ""


# -- reading -------------------------------------------------------------------------------


class _Table:
    """A CSV file's rows as dicts, with the file's name and each row's line for errors."""

    def __init__(self, path: Path, required: tuple[str, ...]) -> None:
        self.path = path
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as e:
            raise ValignError(f"{path} is not UTF-8 text (byte {e.start}); export it again from Polis or convert it to UTF-8.") from None
        reader = csv.reader(io.StringIO(text, newline=""))
        try:
            header = next(reader)
        except StopIteration:
            raise ValignError(f"{path} is empty; a Polis export's {path.name} starts with a header line ({', '.join(required)}, …).") from None
        self.header = [h.strip() for h in header]
        missing = [c for c in required if c not in self.header]
        if missing:
            raise ValignError(f"{path}, line 1: there is no column '{missing[0]}' (the header has {', '.join(self.header) or 'nothing'}); "
                              f"a Polis {path.name} needs {', '.join(required)}.")
        self.rows: list[tuple[int, dict[str, str]]] = []
        try:
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) > len(self.header):
                    raise self.error(reader.line_num, self.header[-1], f"the row has {len(row)} cells but the header {len(self.header)}; quote text that contains commas")
                self.rows.append((reader.line_num, dict(zip(self.header, (c.strip() for c in row)))))
        except csv.Error as e:
            raise ValignError(f"{path}, line {reader.line_num}: {e}; check the quoting of that line.") from None

    def error(self, line: int, column: str, problem: str) -> ValignError:
        return ValignError(f"{self.path}, line {line}, column '{column}': {problem}.")

    def integer(self, line: int, row: dict[str, str], column: str, allowed: tuple[int, ...] | None = None, *, blank_ok: bool = False) -> int | None:
        value = row.get(column, "")
        if value == "" and blank_ok:
            return None
        try:
            number = int(float(value)) if value.endswith(".0") else int(value)
        except ValueError:
            want = f"one of {', '.join(map(str, allowed))}" if allowed else "a whole number"
            raise self.error(line, column, f"'{value[:40]}' is not {want}") from None
        if allowed is not None and number not in allowed:
            raise self.error(line, column, f"{number} is not one of {', '.join(map(str, allowed))}")
        if allowed is None and number < 0:
            raise self.error(line, column, f"{number} is negative; Polis ids are whole numbers from 0")
        return number

    def instant(self, line: int, row: dict[str, str]) -> datetime | None:
        value = row.get("timestamp", "")
        if not value:
            return None
        try:
            return datetime.fromtimestamp(float(value) / 1000, tz=timezone.utc)
        except (ValueError, OverflowError, OSError):
            raise self.error(line, "timestamp", f"'{value[:40]}' is not milliseconds since 1970") from None


def read_polis(folder: str | Path) -> PolisConversation:
    """Read a Polis export folder (see the module docstring for the files and columns).

    Raises a `ValignError` naming the file, line and column of the first mistake.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValignError(f"{folder} is not a folder; give the folder of a Polis export (comments.csv, votes.csv, participants-votes.csv).")
    comments_path = folder / "comments.csv"
    if not comments_path.is_file():
        raise ValignError(f"{folder} has no comments.csv; a Polis export folder holds comments.csv and votes.csv or participants-votes.csv.")
    comments = _read_comments(_Table(comments_path, ("comment-id", "comment-body")))
    known = {c.id for c in comments}
    groups: dict[str, str] = {}
    matrix_votes: list[PolisVote] = []
    pv_path = folder / "participants-votes.csv"
    if pv_path.is_file():
        groups, matrix_votes = _read_participants(_Table(pv_path, ("participant", "group-id")), known)
    votes_path = folder / "votes.csv"
    if votes_path.is_file():
        votes = _read_votes(_Table(votes_path, ("comment-id", "voter-id", "vote")), known)
    elif pv_path.is_file():
        votes = matrix_votes
    else:
        raise ValignError(f"{folder} has comments.csv but neither votes.csv nor participants-votes.csv; copy the whole Polis export folder.")
    summary = _read_summary(folder / "summary.csv")
    return PolisConversation(
        topic=restore_cell(summary.get("topic", "")), url=summary.get("url", ""), description=restore_cell(summary.get("conversation-description", "")),
        comments=comments, votes=votes, groups=groups,
    )


def _read_comments(table: _Table) -> list[PolisComment]:
    out: dict[str, PolisComment] = {}
    for line, row in table.rows:
        cid = str(table.integer(line, row, "comment-id"))
        if cid in out:
            raise table.error(line, "comment-id", f"comment {cid} appears twice; each comment has one row")
        text = restore_cell(row.get("comment-body", ""))
        if not text:
            raise table.error(line, "comment-body", f"comment {cid} has no text")
        if "\x00" in text:
            raise table.error(line, "comment-body", f"comment {cid} contains a NUL character; remove it")
        author = table.integer(line, row, "author-id", blank_ok=True) if "author-id" in row else None
        moderated = table.integer(line, row, "moderated", (1, 0, -1), blank_ok=True) if "moderated" in row else None
        meta = row.get("is-meta", "").lower()
        if meta not in ("", "true", "false", "1", "0"):
            raise table.error(line, "is-meta", f"'{meta[:20]}' is not true or false")
        out[cid] = PolisComment(cid, text, None if author is None else str(author), 0 if moderated is None else moderated, table.instant(line, row), meta in ("true", "1"))
    return list(out.values())


def _read_votes(table: _Table, comments: set[str]) -> list[PolisVote]:
    last: dict[tuple[str, str], PolisVote] = {}
    for line, row in table.rows:
        cid = str(table.integer(line, row, "comment-id"))
        if cid not in comments:
            raise table.error(line, "comment-id", f"comment {cid} is not in comments.csv; use the comments.csv of the same export")
        voter = str(table.integer(line, row, "voter-id"))
        vote = table.integer(line, row, "vote", (1, -1, 0))
        at = table.instant(line, row)
        key = (voter, cid)
        earlier = last.get(key)
        # A participant may change a vote: the later one (by timestamp, else by row) counts.
        if earlier is None or at is None or earlier.at is None or at >= earlier.at:
            last[key] = PolisVote(cid, voter, int(vote), at)  # type: ignore[arg-type]
    return list(last.values())


def _read_participants(table: _Table, comments: set[str]) -> tuple[dict[str, str], list[PolisVote]]:
    vote_columns = [c for c in table.header if c.isdigit()]
    unknown = [c for c in vote_columns if c not in comments]
    if unknown:
        raise ValignError(f"{table.path}, line 1, column '{unknown[0]}': comment {unknown[0]} is not in comments.csv; use the files of one export.")
    groups: dict[str, str] = {}
    votes: list[PolisVote] = []
    seen: set[str] = set()
    for line, row in table.rows:
        pid = str(table.integer(line, row, "participant"))
        if pid in seen:
            raise table.error(line, "participant", f"participant {pid} appears twice; each participant has one row")
        seen.add(pid)
        group = table.integer(line, row, "group-id", blank_ok=True)
        if group is not None:
            groups[pid] = str(group)
        for cid in vote_columns:
            vote = table.integer(line, row, cid, (1, -1, 0), blank_ok=True)
            if vote is not None:
                votes.append(PolisVote(cid, pid, vote))
    return groups, votes


def _read_summary(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    try:
        rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8-sig"), newline="")))
    except (UnicodeDecodeError, csv.Error) as e:
        raise ValignError(f"{path} cannot be read as UTF-8 CSV ({e}); export it again or delete it (it is optional).") from None
    return {row[0].strip(): row[1].strip() for row in rows if len(row) >= 2}


# -- writing -------------------------------------------------------------------------------


def _stamp(at: datetime | None) -> tuple[str, str]:
    if at is None:
        return "", ""
    at = at.astimezone(timezone.utc)
    return str(int(at.timestamp() * 1000)), at.strftime("%a %b %d %H:%M:%S UTC %Y")


def write_polis(conversation: PolisConversation, folder: str | Path) -> list[Path]:
    """Write ``conversation`` as a Polis export (the four files of the module docstring);
    returns the paths written. Participant and comment ids are written as they are;
    meta comments are left out (a valign export has none)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    comments = [c for c in conversation.comments if not c.is_meta]
    comment_ids = [c.id for c in comments]
    votes = sorted((v for v in conversation.votes if v.comment_id in set(comment_ids)), key=lambda v: (int(v.comment_id), int(v.voter_id)))
    by_comment: dict[str, list[int]] = {}
    for v in votes:
        by_comment.setdefault(v.comment_id, []).append(v.vote)
    paths = []

    def table(name: str, header: list[str], rows: list[list[object]]) -> None:
        path = folder / name
        with path.open("w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(header)
            w.writerows(rows)
        paths.append(path)

    # The classic openData layout (no is-meta: meta comments are never written).
    table("comments.csv", ["timestamp", "datetime", "comment-id", "author-id", "agrees", "disagrees", "moderated", "comment-body"], [
        [*_stamp(c.created_at), c.id, c.author_id or "", by_comment.get(c.id, []).count(1), by_comment.get(c.id, []).count(-1), c.moderated, neutralise_cell(c.text)]
        for c in comments
    ])
    table("votes.csv", ["timestamp", "datetime", "comment-id", "voter-id", "vote"], [[*_stamp(v.at), v.comment_id, v.voter_id, v.vote] for v in votes])
    per_voter: dict[str, dict[str, int]] = {}
    for v in votes:
        per_voter.setdefault(v.voter_id, {})[v.comment_id] = v.vote
    authored: dict[str, int] = {}
    for c in comments:
        if c.author_id is not None:
            authored[c.author_id] = authored.get(c.author_id, 0) + 1
    participants = sorted(set(per_voter) | set(conversation.groups), key=int)
    table("participants-votes.csv", ["participant", "group-id", "n-comments", "n-votes", "n-agree", "n-disagree", *comment_ids], [
        [pid, conversation.groups.get(pid, ""), authored.get(pid, 0), len(per_voter.get(pid, {})),
         list(per_voter.get(pid, {}).values()).count(1), list(per_voter.get(pid, {}).values()).count(-1),
         *(per_voter.get(pid, {}).get(cid, "") for cid in comment_ids)]
        for pid in participants
    ])
    summary = [  # key,value lines: summary.csv has no header
        ("topic", neutralise_cell(conversation.topic)), ("url", conversation.url), ("voters", len(per_voter)), ("voters-in-conv", len(per_voter)),
        ("commenters", len(authored)), ("comments", len(comments)), ("groups", len(set(conversation.groups.values()))),
        ("conversation-description", neutralise_cell(conversation.description)),
    ]
    with (folder / "summary.csv").open("w", encoding="utf-8", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(summary)
    paths.append(folder / "summary.csv")
    return paths
