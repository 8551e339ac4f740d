"""`valign serve` as a process, as deployed: SIGTERM during generation, the API key, and an
access log without client addresses (unless asked)."""

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


def test_sigterm_during_generation_answers_503_and_exits_in_time():
    proc, root = _start()
    try:
        answer: list[httpx.Response] = []
        body = {"model": "embedded", "messages": STORY, "max_tokens": 2000, "n": 4, "temperature": 1.0}
        asking = threading.Thread(target=lambda: answer.append(httpx.post(f"{root}/v1/chat/completions", json=body, timeout=120)))
        asking.start()
        time.sleep(2.0)  # four 2,000-token stories: generating for a good while yet
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        took = time.monotonic() - sent
        asking.join(10)
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
