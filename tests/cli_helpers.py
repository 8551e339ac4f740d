"""Running the `valign` command line in-process, as a user would run it."""

from __future__ import annotations

import sys


def valign_cli(args: list[str], monkeypatch) -> tuple[int, str, str]:
    """The installed `valign` entry point (`valign.cli:main`, which turns user errors into
    exit 2 with one line) run in-process under Typer's CliRunner isolation, 200 columns
    wide so rich wraps no line: (exit code, stdout, stderr)."""
    from typer.testing import CliRunner

    from valign.cli import main

    monkeypatch.setattr(sys, "argv", ["valign", *args])
    monkeypatch.setenv("COLUMNS", "200")
    with CliRunner().isolation() as (out, err, _):
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        return code, out.getvalue().decode(), err.getvalue().decode()
