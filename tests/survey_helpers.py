"""Shared pieces of the survey tests: databases (SQLite, a throwaway PostgreSQL database),
a real `valign survey serve` in a subprocess on a free loopback port, and form helpers."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import yaml

ADMIN_TOKEN = "test-admin-token-" + "x" * 16
PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
SRC = str(Path(__file__).resolve().parents[1] / "src")

# The databases a survey test runs on, as pytest params: the PostgreSQL one is marked, so
# `make test-fast` leaves it out.
DB_BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def _pg_up() -> bool:
    import psycopg

    try:
        psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", connect_timeout=3).close()
        return True
    except psycopg.OperationalError:
        return False


def ensure_postgres() -> None:
    """Start the machine's PostgreSQL cluster if it is down (as ENVIRONMENT.md says)."""
    if _pg_up():
        return
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"], check=False, capture_output=True)
    for _ in range(50):
        if _pg_up():
            return
        time.sleep(0.2)
    raise RuntimeError("PostgreSQL at 127.0.0.1:5432 is not reachable and could not be started")


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh database ``valign_test_<random>``, dropped afterwards."""
    import psycopg

    ensure_postgres()
    name = f"valign_test_{secrets.token_hex(4)}"
    with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A `valign survey serve` subprocess; ``url`` is its base address."""

    def __init__(self, db_url: str, instrument: str = "demo", *args: str, admin_token: str | None = ADMIN_TOKEN, log: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db_url = db_url
        env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
        env.pop("VALIGN_ADMIN_TOKEN", None)
        if admin_token:
            env["VALIGN_ADMIN_TOKEN"] = admin_token
        env.setdefault("VALIGN_SURVEY_SECRET", "test-secret-" + "s" * 24)
        cmd = [sys.executable, "-m", "valign.cli", "survey", "serve", "--db", db_url, "--instrument", instrument, "--port", str(self.port), *args]
        self.log = open(log or os.devnull, "w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the survey server exited with code {self.proc.returncode}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the survey server did not start within 30 s")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush — what a crash looks like."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def hidden(html: str) -> dict[str, str]:
    """The hidden fields of a page's form (csrf, shown)."""
    return dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', html))


def radio_names(html: str) -> list[str]:
    return list(dict.fromkeys(re.findall(r'type="radio" id="[^"]+" name="([^"]+)"', html)))


def instrument_file(tmp: Path, **quality: object) -> Path:
    """The demo instrument with changed quality settings, written to ``tmp``."""
    from importlib import resources

    data = yaml.safe_load((resources.files("valign") / "data" / "instruments" / "demo.yaml").read_text(encoding="utf-8"))
    data["quality"].update(quality)
    path = tmp / "instrument.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def multipart_body(fields: list[tuple[str, str | bytes, bool]], boundary: str = "b0und", charset: str = "") -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body and its Content-Type header from (name, value, as a file?)
    parts, written by hand so that anything at all can be in it."""
    out = b""
    for name, value, is_file in fields:
        data = value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")
        filename = '; filename="f.txt"' if is_file else ""
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"{filename}\r\n\r\n'.encode("utf-8", "surrogatepass") + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return out, {"content-type": f"multipart/form-data; boundary={boundary}" + (f"; charset={charset}" if charset else "")}
