"""`valign serve` as a process, as deployed: SIGTERM during generation, the API key, an
access log without client addresses (unless asked), and `--workers 2` (one port, a
killed worker replaced, SIGTERM stopping them all)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.model]

SHUTDOWN_SECONDS = 6
STORY = [{"role": "user", "content": "Write a very long story about a dragon and a lighthouse keeper, in many chapters."}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(*flags: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "valign.cli", "serve", "embedded", "--port", str(port), "--shutdown-seconds", str(SHUTDOWN_SECONDS), *flags],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})},
    )
    root = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"valign serve exited: {proc.stdout.read()}")  # type: ignore[union-attr]
        try:
            httpx.get(f"{root}/openapi.json", timeout=1)
            return proc, root
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise AssertionError("valign serve did not start within 120 s")


def _stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    return out


def _sigterm_during_a_long_generation(proc: subprocess.Popen, root: str, n: int) -> tuple[float, list[httpx.Response]]:
    """Ask for ``n`` 2,000-token stories, send SIGTERM two seconds in, and wait for the
    server to exit: the seconds it took, and the answer the request got (if any)."""
    answer: list[httpx.Response] = []
    body = {"model": "embedded", "messages": STORY, "max_tokens": 2000, "n": n, "temperature": 1.0}
    asking = threading.Thread(target=lambda: answer.append(httpx.post(f"{root}/v1/chat/completions", json=body, timeout=120)))
    asking.start()
    time.sleep(2.0)  # n 2,000-token stories: generating for a good while yet
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    took = time.monotonic() - sent
    asking.join(10)
    return took, answer


def test_sigterm_during_generation_answers_503_and_exits_in_time():
    proc, root = _start()
    try:
        took, answer = _sigterm_during_a_long_generation(proc, root, n=4)
    finally:
        log = _stop(proc)
    assert took < SHUTDOWN_SECONDS, f"SIGTERM took {took:.1f}s to stop the server\n{log}"
    # uvicorn shuts down cleanly, then re-raises the signal it caught: killed by SIGTERM, as a supervisor expects.
    assert proc.returncode in (0, -signal.SIGTERM), log
    assert "Application shutdown complete" in log
    assert answer and answer[0].status_code == 503, log
    assert "shutting down" in answer[0].json()["error"]["message"]
    # The access log has the request, and no client address.
    lines = [line for line in log.splitlines() if '"POST /v1/chat/completions HTTP/1.1"' in line]
    assert lines and not any("127.0.0.1" in line for line in lines), log


def test_api_key_guards_every_v1_route_and_addresses_are_logged_only_when_asked():
    env = {"VALIGN_TEST_SERVE_KEY": "s3cret-key"}
    proc, root = _start("--api-key-env", "VALIGN_TEST_SERVE_KEY", "--access-log-addresses", env=env)
    try:
        ask = {"model": "embedded", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-key"}):
            for method, path, body in (("POST", "/v1/chat/completions", ask), ("GET", "/v1/models", None)):
                r = httpx.request(method, root + path, json=body, headers=headers, timeout=30)
                assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", (path, headers, r.text)
                assert r.headers["www-authenticate"] == "Bearer"
        good = {"Authorization": "Bearer s3cret-key"}
        assert httpx.get(f"{root}/v1/models", headers=good, timeout=30).status_code == 200
        assert httpx.post(f"{root}/v1/chat/completions", json=ask, headers=good, timeout=60).status_code == 200
        assert httpx.get(f"{root}/chat", timeout=30).status_code == 404, "the chat page cannot send a key, so it is off"
    finally:
        log = _stop(proc)
    lines = [line for line in log.splitlines() if '"POST /v1/chat/completions HTTP/1.1"' in line]
    assert lines and all("127.0.0.1:" in line for line in lines), log


def test_api_key_env_must_hold_a_key():
    env = {k: v for k, v in os.environ.items() if k != "VALIGN_TEST_SERVE_UNSET"}
    r = subprocess.run([sys.executable, "-m", "valign.cli", "serve", "embedded", "--api-key-env", "VALIGN_TEST_SERVE_UNSET"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode != 0 and "VALIGN_TEST_SERVE_UNSET is unset or empty" in r.stdout + r.stderr


def _workers_of(parent: int) -> set[int]:
    """The worker processes `valign serve --workers` started (not multiprocessing's resource tracker)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and b"spawn_main" in cmdline:
            found.add(int(entry))
    return found


def test_two_workers_share_the_port_a_killed_one_is_replaced_and_sigterm_stops_all():
    proc, root = _start("--workers", "2")
    try:
        deadline = time.monotonic() + 120
        while len(_workers_of(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.3)
        workers = _workers_of(proc.pid)
        assert len(workers) == 2
        hi = {"model": "embedded", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
        answers: list[int] = []
        askers = [threading.Thread(target=lambda: answers.append(httpx.post(f"{root}/v1/chat/completions", json=hi, timeout=60).status_code)) for _ in range(6)]
        for t in askers:
            t.start()
        for t in askers:
            t.join(90)
        assert answers == [200] * 6

        # A worker killed outright is replaced; the other one answers meanwhile.
        killed = sorted(workers)[0]
        os.kill(killed, signal.SIGKILL)
        assert httpx.post(f"{root}/v1/chat/completions", json=hi, timeout=60).status_code == 200
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            now = _workers_of(proc.pid)
            if len(now) == 2 and killed not in now:
                break
            time.sleep(0.3)
        replaced = _workers_of(proc.pid)
        assert len(replaced) == 2 and killed not in replaced

        # SIGTERM during a long generation: every process is gone within the deadline.
        took, _ = _sigterm_during_a_long_generation(proc, root, n=2)
    finally:
        log = _stop(proc)
    assert took < SHUTDOWN_SECONDS + 2, f"SIGTERM took {took:.1f}s to stop the workers\n{log}"
    assert proc.returncode in (0, -signal.SIGTERM), log
    assert f"worker {killed} exited" in log
    assert not any(_running(pid) for pid in replaced), "a worker outlived the server"


def _running(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
